"""Edited or damaged exports are refused in one line before anything runs: the manifest is checked against
itself and against the files it names."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from partitioner.cli import main
from partitioner.onnx.export import MANIFEST_NAME
from tests.partitioner.test_cli_run import compile_small_model

pytestmark = [pytest.mark.filterwarnings("ignore:.*emulating it on the CPU:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*is not available here; running on CPUExecutionProvider")]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    _, plan_path = compile_small_model(folder)
    assert main(["export", str(plan_path), "-o", str(folder / "onnx")]) == 0
    return folder / "onnx"


def edited_copy(export: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "onnx"
    shutil.copytree(export, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    edit(data, copy)
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    return copy


def first_input(data: dict) -> dict:
    return next(p for p in data["partitions"] if p["inputs"])["inputs"][0]


def swap_files(data: dict, _folder: Path) -> None:
    first, second = data["partitions"][0], data["partitions"][1]
    first["file"], second["file"] = second["file"], first["file"]


def garbage_file(data: dict, folder: Path) -> None:
    (folder / data["partitions"][0]["file"]).write_bytes(b"not a model")


def pipe_for_a_file(data: dict, folder: Path) -> None:
    file = folder / data["partitions"][0]["file"]
    file.unlink()
    os.mkfifo(file)


EDITS = {
    "a changed shape": (lambda d, _: first_input(d).update({"shape": [7, 7]}),
                        "as float32[7, 7] from 'input', and no model input or earlier file makes it so"),
    "a changed dtype": (lambda d, _: first_input(d).update({"dtype": "int8"}),
                        "as int8[2, 3, 16, 16] from 'input', and no model input or earlier file makes it so"),
    "a changed source": (lambda d, _: first_input(d).update({"source": 99}),
                         "from 99, and no model input or earlier file makes it so"),
    "a file listed twice": (lambda d, _: d["partitions"].append(dict(d["partitions"][-1])),
                            "its files are not each listed once, in run order"),
    "a dtype torch lacks": (lambda d, _: d["inputs"][0].update({"dtype": "float128"}),
                            "names the dtype 'float128', which torch does not have"),
    "no model outputs": (lambda d, _: d.update({"outputs": []}), "it lists no model outputs"),
    "a whole-model file outside the folder": (lambda d, _: d.update({"whole_model_file": "../plan.json"}),
                                              "its whole-model file '../plan.json' is not a file in the export"),
    "another opset than the files'": (lambda d, _: d.update({"opset": 17}), "its files are of opset 18"),
    "a path outside the folder": (lambda d, _: d["partitions"][0].update({"file": "../../etc/passwd.onnx"}),
                                  "is not an .onnx file in the export folder"),
    "a bogus execution provider": (lambda d, _: d["partitions"][0].update({"execution_provider": "ToasterEP"}),
                                   "'ToasterEP' is not an ONNX Runtime execution provider"),
    "no partitions": (lambda d, _: d.update({"partitions": []}), "it lists no partitions"),
    "swapped files": (swap_files, "does not match the manifest"),
    "a garbage file": (garbage_file, "is not an ONNX file ONNX Runtime can load"),
    "a pipe for a file": (pipe_for_a_file, "is not a regular file"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_run_onnx_of_an_edited_export_exits_2_with_one_line(edit, export, tmp_path, capsys):
    change, expected = EDITS[edit]
    folder = edited_copy(export, tmp_path, change)
    capsys.readouterr()

    code = main(["run-onnx", str(folder), "--check"])

    errors = [line for line in capsys.readouterr().err.strip().splitlines() if "warning" not in line]
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("partitioner: error: ")
    assert expected in errors[0] and errors[0].endswith("Fix: export the plan again.")


def test_run_onnx_of_a_model_rebuilt_with_other_weights_says_so_rather_than_failing_the_comparison(tmp_path, capsys):
    model = tmp_path / "unseeded.py"
    model.write_text("import torch\n\ndef build():\n    return torch.nn.Linear(8, 8).eval(), (torch.ones(2, 8),)\n")
    assert main(["compile", str(model), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert main(["export", str(tmp_path / "out" / "plan.json"), "-o", str(tmp_path / "onnx")]) == 0
    capsys.readouterr()

    assert main(["run-onnx", str(tmp_path / "onnx"), "--check"]) == 2

    error = capsys.readouterr().err
    assert "has other weights than the exported files hold" in error and "Fix: make build() give the same" in error
