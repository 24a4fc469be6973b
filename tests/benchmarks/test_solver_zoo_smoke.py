"""A smoke-size run of `benchmarks/solver_zoo.py`: tiny zoo models, 1 s solver limit, outputs checked."""

from __future__ import annotations

import json

import pytest

from partitioner.placement.objectives import registered_objectives
from tests.benchmarks import benchmark_script

MODELS = ("resnet50", "llama-70b")


@pytest.fixture(scope="module")
def solver_zoo():
    with benchmark_script("solver_zoo") as module:
        yield module


# The serving objectives have a benchmark of their own (benchmarks/serving.py).
ONE_REQUEST = [o.name for o in registered_objectives() if not o.serving]


def test_smoke_run_writes_one_row_per_model_objective_and_strategy_and_the_solver_beats_every_baseline(
        solver_zoo, tmp_path, capsys):
    assert solver_zoo.main(["--smoke", "--models", ",".join(MODELS), "--out", str(tmp_path)]) == 0

    markdown = (tmp_path / "solver_zoo.md").read_text()
    rows = json.loads((tmp_path / "solver_zoo.json").read_text())["rows"]
    strategies = ("fallback", "priority", "capability", "cp-sat")
    keys = [(r["model"], r["objective"], r["strategy"]) for r in rows]
    assert sorted(keys) == sorted((m, o, s) for m in MODELS for o in ONE_REQUEST for s in strategies)
    assert markdown.removeprefix("# Solver zoo benchmark (examples)\n\n") in capsys.readouterr().out
    assert sum(line.startswith(f"| {m} |") for line in markdown.splitlines() for m in MODELS) == len(rows)
    for model in MODELS:
        for objective in ONE_REQUEST:
            group = {r["strategy"]: r for r in rows if (r["model"], r["objective"]) == (model, objective)}
            solver = group["cp-sat"]
            assert solver["fits_memory"] and solver["bound"] <= solver["value"] * (1 + 1e-9)
            assert 0 < solver["reduced_ops"] <= solver["ops"]
            for name in strategies[:-1]:
                if group[name]["fits_memory"]:
                    assert solver["value"] <= group[name]["value"] * (1 + 1e-9), (model, objective, name)
