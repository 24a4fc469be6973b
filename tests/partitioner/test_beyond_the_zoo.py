"""Architectures beyond the first zoo, as a new user runs them: compile, run --check, export, run-onnx --check.

An encoder-decoder (T5), ConvNeXt, Swin in float16, Whisper, a Mixtral mixture of experts (a transformers custom
op, exported with transformers' own ONNX translation) and a Qwen2 decode step whose KV cache is a DynamicCache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from partitioner.cli import main
from partitioner.plan import Plan
from tests.zoo import BEYOND_THE_ZOO

ZOO_FILE = Path(__file__).resolve().parents[1] / "zoo.py"
TARGETS = "npu-example,cpu-x86,cuda-h100"


@pytest.mark.parametrize("builder", sorted(BEYOND_THE_ZOO))
def test_model_compiles_runs_exports_and_its_onnx_files_compute_it(builder, tmp_path, capsys):
    plan_path, onnx_folder = tmp_path / "out" / "plan.json", tmp_path / "onnx"
    source = f"{ZOO_FILE}:{builder}"

    assert main(["compile", source, "--targets", TARGETS, "--objective", "cost", "--time-limit", "5",
                 "--workers", "1", "--quiet", "-o", str(tmp_path / "out")]) == 0
    assert main(["run", str(plan_path), "--check"]) == 0, capsys.readouterr().out
    assert main(["export", str(plan_path), "-o", str(onnx_folder)]) == 0
    capsys.readouterr()
    code = main(["run-onnx", str(onnx_folder), "--check"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert out.rstrip().endswith("PASS")
    assert Plan.load(plan_path).model.node_count > 0
