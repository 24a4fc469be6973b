"""Plan files written by earlier versions (schema 1) load, re-score and summarise exactly as they did.

The fixtures were written by `partitioner compile examples/vision_classifier.py --targets
npu-example,dsp-example,cpu-x86,cuda-h100 --objective cost|makespan` before the package took its
stage-by-stage layout and objectives became values; each `.summary.txt` is what that version printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from partitioner.placement.objectives import COST, MAKESPAN
from partitioner.plan import Plan

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("objective", [COST, MAKESPAN], ids=lambda o: o.name)
def test_an_earlier_plan_file_loads_and_writes_back_the_same_json(objective):
    path = FIXTURES / f"plan_v1_{objective.name}.json"

    plan = Plan.load(path)

    assert plan.objective is objective
    assert plan.to_dict() == json.loads(path.read_text())  # every score and baseline re-scored to the same figures


@pytest.mark.parametrize("objective", [COST, MAKESPAN], ids=lambda o: o.name)
def test_an_earlier_plan_file_prints_the_summary_it_printed_then(objective):
    plan = Plan.load(FIXTURES / f"plan_v1_{objective.name}.json")

    assert plan.summary() + "\n" == (FIXTURES / f"plan_v1_{objective.name}.summary.txt").read_text()
