"""Tidying a solved placement: free nodes the objective is indifferent to move where latency, money, transfers,
targets used and memory are lowest; a placement is never made worse for its objective."""

from __future__ import annotations

import pytest

from partitioner.frontend.op_graph import NodeKind
from partitioner.placement import solver
from partitioner.placement.objectives import COST, LATENCY, MAKESPAN
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from partitioner.placement.tidy import tidy
from targets.spec import Link
from tests.partitioner.placement.problem_builders import make_problem, node, value

HALF_SECOND_LINK = Link(0.5, 1e12)


def view_off_the_critical_path():
    """a (1 s) and long (5 s) share cuda; the view v of a's output feeds c (1 s), which waits for long anyway."""
    return make_problem(
        nodes=[node("a", cuda=1.0), node("long", cuda=5.0), node("v", NodeKind.VIEW, npu=0.0, cuda=0.0),
               node("c", cuda=1.0)],
        values=[value("a", "v", num_bytes=1), value("v", "c", num_bytes=1), value("long", "c", num_bytes=1)],
        links=HALF_SECOND_LINK,
    )


def test_a_view_the_makespan_does_not_feel_goes_back_where_it_saves_two_transfers():
    problem = view_off_the_critical_path()
    on_npu = {"a": "cuda", "long": "cuda", "v": "npu", "c": "cuda"}
    assert score(problem, on_npu).makespan_seconds == score(problem, {**on_npu, "v": "cuda"}).makespan_seconds

    tidied, result = tidy(problem, on_npu, MAKESPAN, allowed=lambda _: True)

    assert tidied["v"] == "cuda"
    assert result.makespan_seconds == pytest.approx(7.0)
    assert result.latency_seconds == pytest.approx(7.0)  # not 8: no round trip through the NPU


def test_tidy_never_makes_the_objective_worse():
    problem = make_problem(nodes=[node("a", npu=1.0, cuda=1.0), node("v", NodeKind.VIEW, npu=0.0, cuda=0.0),
                                  node("b", npu=1.0)],
                           values=[value("a", "v"), value("v", "b")])
    placed = {"a": "cuda", "v": "npu", "b": "npu"}  # v next to its consumer: moving it adds nothing and saves nothing

    tidied, result = tidy(problem, placed, LATENCY, allowed=lambda _: True)

    assert result.latency_seconds <= score(problem, placed).latency_seconds


def test_an_assert_on_a_model_input_sits_on_a_target_the_plan_uses_not_alone_on_another():
    problem = make_problem(nodes=[node("check", NodeKind.BOOKKEEPING, npu=0.0, cuda=0.0), node("a", npu=1.0, cuda=2.0),
                                  node("b", npu=1.0, cuda=2.0)],
                           values=[value("a", "b")])

    placement = solve(problem, COST, SolverOptions(time_limit_seconds=5.0, workers=1))

    assert placement.assignment == dict.fromkeys(("check", "a", "b"), "npu")


def test_makespan_is_seeded_with_the_latency_and_cost_optima():
    problem = view_off_the_critical_path()
    options = SolverOptions(time_limit_seconds=5.0, workers=1)

    seeds = solver._seed_plans(problem, MAKESPAN, options, hints={})

    assert set(seeds) == {"latency plan", "cost plan"}
    assert seeds["latency plan"] == dict(solve(problem, LATENCY, options).assignment)


def test_asserts_on_weights_left_alone_on_a_target_join_the_target_that_holds_their_weights():
    """Two asserts reading only weights, left together on the NPU, kept each other there (and made a partition
    that does nothing, charged their weights a second time)."""
    problem = make_problem(nodes=[node("a", parameters=["w1", "w2"], npu=2.0, cuda=1.0),
                                  node("check_1", NodeKind.BOOKKEEPING, parameters=["w1"], npu=0.0, cuda=0.0),
                                  node("check_2", NodeKind.BOOKKEEPING, parameters=["w2"], npu=0.0, cuda=0.0)],
                           parameter_bytes={"w1": 4096, "w2": 4096})
    placed = {"a": "cuda", "check_1": "npu", "check_2": "npu"}

    tidied, result = tidy(problem, placed, LATENCY, allowed=lambda _: True)

    assert tidied == dict.fromkeys(placed, "cuda")
    assert result.latency_seconds == score(problem, placed).latency_seconds


def test_an_assert_on_a_weight_moves_to_the_used_target_that_already_holds_the_weight():
    problem = make_problem(nodes=[node("a", parameters=["w1"], npu=1.0, cuda=2.0),
                                  node("b", parameters=["w2"], cuda=1.0),
                                  node("check", NodeKind.BOOKKEEPING, parameters=["w2"], npu=0.0, cuda=0.0)],
                           values=[value("a", "b")], parameter_bytes={"w1": 4096, "w2": 4096})

    tidied, _ = tidy(problem, {"a": "npu", "b": "cuda", "check": "npu"}, LATENCY, allowed=lambda _: True)

    assert tidied["check"] == "cuda"
