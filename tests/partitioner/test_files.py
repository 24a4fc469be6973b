"""Files a command reads are read within a bound and refused in one line when they are not what they claim to be;
files it writes hold only what JSON can hold."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cost_models.profile import load_profile
from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.files import PLAN, FileKind, read_json, read_text, write_json
from targets.fleet import load_fleet
from targets.loader import load_target
from targets.workload import load_workload

TINY = FileKind("tiny file", 10, "give a smaller one")


def not_a_regular_file(tmp_path: Path, what: str) -> Path:
    if what == "a folder":
        return tmp_path
    if what == "a pipe":  # opening one for reading would wait for a writer for ever
        os.mkfifo(tmp_path / "pipe.json")
        return tmp_path / "pipe.json"
    return Path("/dev/zero")  # reading it never ends


@pytest.mark.parametrize("what, says", [("a folder", "it is a folder"), ("a pipe", "it is a device, pipe or socket"),
                                        ("a device", "it is a device, pipe or socket")])
def test_what_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, what, says):
    path = not_a_regular_file(tmp_path, what)

    with pytest.raises(PartitionerError, match=f"{path} is not a plan file: {says}.*Fix: give the plan.json"):
        read_text(path, PLAN)


def test_a_file_larger_than_any_of_its_kind_is_refused_and_one_within_the_bound_is_read(tmp_path):
    (tmp_path / "small").write_text("0123456789")
    (tmp_path / "large").write_text("0123456789!")

    assert read_text(tmp_path / "small", TINY) == "0123456789"
    with pytest.raises(PartitionerError, match="large is not a tiny file: it holds more than any does.*Fix: give a"):
        read_text(tmp_path / "large", TINY)


@pytest.mark.parametrize("text, says", [
    ('{"a": NaN}', "it holds NaN, a figure that is not finite"),
    ('{"a": -Infinity}', "it holds -Infinity"),
    ("[" * 100_000 + "]" * 100_000, "its JSON nests deeper than Python reads"),
    ('{"a": ' + "9" * 5000 + "}", "it holds a whole number of 5000 digits, far past any figure"),
    ('{"a": 1, "a": 2}', "it holds the key 'a' twice in one object"),  # Python would keep the last silently
    (b"\xff\xfe{}", "it is not a text file"),
], ids=["NaN", "Infinity", "deep", "digits", "a key twice", "binary"])
def test_json_that_is_not_json_or_too_deep_is_one_error(tmp_path, text, says):
    path = tmp_path / "file.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())

    with pytest.raises(PartitionerError, match=f"{path} is not a plan file: .*{says}"):
        read_json(path, PLAN)


def test_a_figure_json_cannot_hold_is_caught_where_it_is_written_and_nothing_is_written(tmp_path):
    with pytest.raises(AssertionError, match=r"plan.json: problem.links\[1\].bandwidth \(inf\) is not finite"):
        write_json(tmp_path / "plan.json", {"problem": {"links": [{"bandwidth": 1.0}, {"bandwidth": float("inf")}]}})

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("load, noun", [(load_target, "target spec"), (load_fleet, "fleet file"),
                                        (load_workload, "workload file"), (lambda p: load_profile(Path(p)), "profile")])
def test_every_kind_of_file_a_user_names_is_read_within_a_bound(load, noun):
    with pytest.raises(PartitionerError, match=f"/dev/zero is not a {noun}: it is a device, pipe or socket"):
        load("/dev/zero")


@pytest.mark.parametrize("argv", [["report", "/dev/zero"], ["explain", "/dev/zero", "relu"], ["run", "/dev/zero"],
                                  ["export", "/dev/zero", "-o", "OUT"], ["run-onnx", "/dev/zero"],
                                  ["targets", "coverage", "model.py", "--targets", "/dev/zero"]])
def test_every_command_given_a_file_that_never_ends_exits_2_with_one_line(argv, tmp_path, capsys):
    code = main([str(tmp_path / "out") if part == "OUT" else part for part in argv])

    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and "/dev/zero is not a " in error[0] and "Fix: " in error[0]
    assert not (tmp_path / "out").exists()


def test_a_plan_with_a_figure_json_cannot_hold_is_refused_in_one_line(tmp_path, capsys):
    plan = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "plan_v1_cost.json").read_text())
    plan["problem"]["links"][0]["bandwidth_bytes_per_second"] = 1e400  # Python's json reads it as infinity
    (tmp_path / "plan.json").write_text(json.dumps(plan).replace("Infinity", "1e400"))

    assert main(["report", str(tmp_path / "plan.json")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"partitioner: error: {tmp_path / 'plan.json'} is not a valid plan file: its field "
        "'problem.links[0].bandwidth_bytes_per_second': inf is not a finite number. Fix: compile the model again "
        "(the file was edited or damaged).")
