"""Plan files: those written by earlier versions (schema 1) load, re-score and summarise exactly as they did;
edited or damaged ones are refused on load, in one line.

The fixtures were written by `partitioner compile examples/vision_classifier.py --targets
npu-example,dsp-example,cpu-x86,cuda-h100 --objective cost|makespan` before the package took its
stage-by-stage layout and objectives became values; each `.summary.txt` is what that version printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.placement.objectives import COST, MAKESPAN
from partitioner.plan import Plan

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("objective", [COST, MAKESPAN], ids=lambda o: o.name)
def test_an_earlier_plan_file_loads_and_writes_back_the_same_json_plus_its_serving_figures(objective):
    path = FIXTURES / f"plan_v1_{objective.name}.json"

    plan = Plan.load(path)

    written = plan.to_dict()
    scores = [written["score"], *(entry["score"] for entry in written["baselines"].values())]
    assert all(0 < s.pop("serving")["throughput_per_second"] < float("inf") for s in scores)
    assert plan.objective is objective
    assert written == json.loads(path.read_text())  # every score and baseline re-scored to the same figures


@pytest.mark.parametrize("objective", [COST, MAKESPAN], ids=lambda o: o.name)
def test_an_earlier_plan_file_prints_the_summary_it_printed_then(objective):
    plan = Plan.load(FIXTURES / f"plan_v1_{objective.name}.json")

    assert plan.summary() + "\n" == (FIXTURES / f"plan_v1_{objective.name}.summary.txt").read_text()


# --- tampered plan files: refused on load, in one line, by every command that reads them ------------------------------


def tampered(edit) -> dict:
    data = json.loads((FIXTURES / "plan_v1_cost.json").read_text())
    edit(data)
    return data


def put(data: dict, node: str, target: str) -> None:
    data["placement"][node] = target


def move_partition(data: dict, index: int, target: str) -> None:
    partition = data["partitions"][index]
    partition["target"] = target
    for name in partition["nodes"]:
        data["placement"][name] = target


TAMPERINGS = {
    "an op on a target that refuses it": (lambda d: put(d, "softmax", "npu-example"),
                                          "puts softmax on npu-example, which refuses it"),
    "a whole partition on a target that refuses it": (lambda d: move_partition(d, 2, "npu-example"),
                                                      "which refuses it"),
    "an unknown target": (lambda d: put(d, "relu", "tpu-v9"), "puts relu on tpu-v9, which is not one of its targets"),
    "a node missing": (lambda d: d["placement"].pop("relu"), "does not place every node exactly once"),
    "partitions in reverse order": (lambda d: d["partitions"].reverse(), "out of order"),
    "a changed cost table": (lambda d: d["problem"]["nodes"][0]["compute_seconds"].update({"npu-example": 1.0}),
                             "is not what its placement scores on its cost table"),
    "a made-up solver status": (lambda d: d["solver"].update({"status": "BANANA"}), "'BANANA' is neither"),
    "an impossible gap": (lambda d: d["solver"].update({"gap": -5}), "gap -5 or bound"),
    "a baseline on a refusing target": (lambda d: d["baselines"]["priority"]["placement"].update(
        {"softmax": "npu-example"}), "the baseline priority puts softmax on npu-example"),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_a_tampered_plan_is_refused_on_load_naming_what_is_wrong(tampering):
    edit, expected = TAMPERINGS[tampering]

    with pytest.raises(PartitionerError, match="the plan is inconsistent with its own problem data") as caught:
        Plan.from_dict(tampered(edit))

    assert expected in str(caught.value)
    assert str(caught.value).endswith("Fix: compile the model again (the file was edited or damaged).")


@pytest.mark.parametrize("command", [["report"], ["explain", None, "softmax"], ["run"], ["export", None, "-o", "x"]])
def test_every_command_that_reads_a_tampered_plan_exits_2_with_one_line(command, tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(tampered(lambda d: put(d, "softmax", "npu-example"))))
    argv = [command[0], str(path), *[str(tmp_path / part) if part == "x" else part for part in command[2:]]]

    code = main(argv)

    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("partitioner: error: the plan is inconsistent")
    assert not (tmp_path / "x").exists()
