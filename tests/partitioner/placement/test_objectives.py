"""Objectives are values: each reads its figure, prices busy seconds, and builds its CP-SAT terms; a registry
names them, and a new objective is one definition plus its registration."""

from __future__ import annotations

from typing import Sequence

import pytest
import torch
from torch import nn

import partitioner
from partitioner.errors import PartitionerError
from partitioner.placement import objectives
from partitioner.placement.objectives import (COST, LATENCY, MAKESPAN, BusySecondsObjective, objective_named,
                                              objective_names, register_objective)
from partitioner.placement.problem import PlacementProblem
from partitioner.placement.scoring import Score, score
from partitioner.placement.solver import SolverOptions, solve
from partitioner.plan import Plan
from partitioner.units import DOLLARS, SECONDS
from tests.partitioner.placement.problem_builders import CUDA, NPU, make_problem, node, value

FAST = SolverOptions(time_limit_seconds=10.0, workers=1)


def sandwich() -> PlacementProblem:
    """a (npu or cuda) -> b (cuda only) -> c (npu or cuda): the NPU is slower but ten times cheaper."""
    return make_problem(
        nodes=[node("a", npu=2.0, cuda=1.0), node("b", cuda=1.0), node("c", npu=2.0, cuda=1.0)],
        values=[value("a", "b"), value("b", "c")],
    )


def test_each_objective_reads_its_own_figure_from_a_score():
    result = score(sandwich(), {"a": "npu", "b": "cuda", "c": "npu"})

    assert LATENCY.value(result) == result.latency_seconds
    assert COST.value(result) == result.cost_per_request
    assert MAKESPAN.value(result) == result.makespan_seconds


def test_units_say_how_figures_print():
    assert (LATENCY.unit, COST.unit, MAKESPAN.unit) == (SECONDS, DOLLARS, SECONDS)
    assert LATENCY.format(0.0025) == "2.5 ms"
    assert COST.format(0.125) == "$0.125"


def test_a_busy_second_is_a_second_for_latency_and_the_busy_targets_price_for_cost():
    problem = sandwich()

    assert LATENCY.rate(problem, ("npu", "cuda")) == 1.0
    assert MAKESPAN.rate(problem, ("npu",)) == 1.0
    assert COST.rate(problem, ("npu", "cuda")) == pytest.approx(NPU.price_per_second + CUDA.price_per_second)


def test_only_makespan_schedules_ops_refuses_a_latency_limit_and_has_its_own_column():
    assert [o.schedules_ops for o in (LATENCY, COST, MAKESPAN)] == [False, False, True]
    assert [o.accepts_latency_limit for o in (LATENCY, COST, MAKESPAN)] == [True, True, False]
    assert [o.table_column for o in (LATENCY, COST, MAKESPAN)] == [None, None, "makespan"]


def test_makespan_and_latency_know_a_bound_before_any_search():
    # a -> b -> c at their fastest (1 s each) is a 3 s chain; 3 s of work spread over two devices is 1.5 s.
    assert MAKESPAN.lower_bound(sandwich()) == pytest.approx(3.0)
    assert LATENCY.lower_bound(sandwich()) == pytest.approx(3.0, rel=1e-5)  # its floor: each op at its fastest


def test_the_registry_names_each_objective_once_and_returns_the_same_value():
    assert objective_names()[:3] == ("latency", "cost", "makespan")
    assert objective_named("cost") is COST
    assert objective_named(COST) is COST
    assert register_objective(objectives.Cost()) is COST  # a re-run notebook cell registers nothing new


def test_another_objective_under_a_taken_name_is_refused():
    class Imposter(objectives.Latency):
        __slots__ = ()
        name = "cost"

    with pytest.raises(PartitionerError, match="an objective named 'cost' is already registered .*Fix: give yours"):
        register_objective(Imposter())


def test_an_objective_equals_its_name_as_plans_that_held_the_name_did():
    assert COST == "cost" and "cost" == COST and COST != "latency"
    assert len({COST, objective_named("cost")}) == 1


def test_an_unknown_name_is_a_user_error_that_lists_the_choices():
    with pytest.raises(PartitionerError, match="unknown objective 'throughput-per-watt'. Fix: use one of latency, "
                                               "cost, makespan, throughput, serving-cost"):
        objective_named("throughput-per-watt")


class SecondsOn(BusySecondsObjective):
    """Seconds that one target is busy: e.g. keep the scarce fallback as free as possible."""

    __slots__ = ("target",)
    name = "fallback-seconds"
    description = "seconds the fallback is busy"
    unit = SECONDS
    table_column = "on cuda"

    def __init__(self, target: str):
        self.target = target

    def value(self, result: Score) -> float:
        return result.busy_seconds[self.target]

    def rate(self, problem: PlacementProblem, busy_targets: Sequence[str]) -> float:
        return float(self.target in busy_targets)


def test_a_new_objective_needs_only_its_definition_to_be_solved():
    # The NPU is slower, so latency keeps a and c on cuda; keeping cuda free sends them to the NPU.
    problem = sandwich()

    assert solve(problem, LATENCY, FAST).assignment == dict.fromkeys("abc", "cuda")
    placement = solve(problem, SecondsOn("cuda"), FAST)
    assert placement.assignment == {"a": "npu", "b": "cuda", "c": "npu"}
    assert placement.report.status == "OPTIMAL"
    # b's second of compute, plus receiving a's tensor and sending b's (1 ms latency + 1 ms at 1 GB/s each).
    assert placement.report.objective == pytest.approx(1.0 + 2 * 0.002)


def test_a_registered_objective_is_a_choice_of_compile_and_its_plans_save_load_and_summarise(monkeypatch, tmp_path):
    fallback_seconds = SecondsOn("cuda-h100")
    monkeypatch.setitem(objectives._REGISTRY, fallback_seconds.name, fallback_seconds)
    model, inputs = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)), (torch.randn(2, 8),)

    plan = partitioner.compile(model, inputs, objective="fallback-seconds", time_limit_seconds=5.0, workers=1)

    assert plan.objective is fallback_seconds
    assert plan.solver.objective == pytest.approx(fallback_seconds.value(plan.score()))
    loaded = Plan.load(plan.save(tmp_path / "plan.json"))
    assert loaded.objective is fallback_seconds
    assert loaded.score() == plan.score()
    summary = plan.summary()
    assert "objective fallback-seconds" in summary and "on cuda" in summary


def test_a_plan_solved_for_an_objective_this_version_lacks_is_refused_with_a_fix(tmp_path):
    plan = partitioner.compile(nn.Linear(4, 4), (torch.randn(1, 4),), time_limit_seconds=5.0, workers=1)
    data = plan.to_dict()
    data["objective"] = "carbon"

    with pytest.raises(PartitionerError, match="objective 'carbon', which is not registered here. Fix: register it"):
        Plan.from_dict(data)
