"""Architectures beyond the first zoo, as a new user runs them: compile, run --check, export, run-onnx --check.

An encoder-decoder (T5), ConvNeXt, Swin in float16, Whisper, a Mixtral mixture of experts (a transformers custom
op, exported with transformers' own ONNX translation) and a Qwen2 decode step whose KV cache is a DynamicCache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import partitioner
from partitioner.cli import main
from partitioner.placement.scoring import score
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
    plan = Plan.load(plan_path)
    # No partition of dead code or of asserts alone: each hands a value on or returns one.
    assert all(partition.outputs for partition in plan.partitions)


@pytest.mark.parametrize("builder", ["mixtral", "qwen2_decode_step", "t5_small"])
def test_makespan_plan_is_no_worse_on_makespan_than_the_latency_and_cost_plans(builder):
    model, inputs = BEYOND_THE_ZOO[builder]()
    targets = TARGETS.split(",")
    plans = {objective: partitioner.compile(model, inputs, targets=targets, objective=objective,
                                            time_limit_seconds=5.0, workers=1)
             for objective in ("latency", "cost", "makespan")}

    makespan = plans["makespan"].score().makespan_seconds
    for objective in ("latency", "cost"):
        assert makespan <= score(plans["makespan"].problem, plans[objective].placement).makespan_seconds * (1 + 1e-9)
