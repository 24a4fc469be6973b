"""The makespan objective: devices run concurrently, transfers delay consumers; optima worked out by hand."""

from __future__ import annotations

import pytest

from partitioner.errors import PartitionerError
from partitioner.placement.objectives import LATENCY, MAKESPAN
from partitioner.placement.schedule import makespan_seconds
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from targets.spec import Link
from tests.partitioner.placement.problem_builders import GIB, make_problem, node, value

FAST = SolverOptions(time_limit_seconds=10.0, workers=1)
# Moving a 1-byte tensor takes 0.5 s: the link's latency.
HALF_SECOND_LINK = Link(0.5, 1e12)


def fork_and_join():
    """source (cuda) feeds two 3 s branches that either device runs; join (cuda) reads both."""
    return make_problem(
        nodes=[node("source", cuda=1.0), node("left", npu=3.0, cuda=3.0), node("right", npu=3.0, cuda=3.0),
               node("join", cuda=1.0)],
        values=[value("source", "left", "right", num_bytes=1), value("left", "join", num_bytes=1),
                value("right", "join", num_bytes=1)],
        links=HALF_SECOND_LINK,
    )


def test_independent_ops_on_two_devices_overlap():
    problem = make_problem(nodes=[node("a", npu=2.0, cuda=2.0), node("b", npu=2.0, cuda=2.0)])

    assert makespan_seconds(problem, {"a": "npu", "b": "cuda"}) == 2.0
    assert makespan_seconds(problem, {"a": "cuda", "b": "cuda"}) == 4.0
    placement = solve(problem, MAKESPAN, FAST)
    assert sorted(placement.assignment.values()) == ["cuda", "npu"]
    assert placement.report.status == "OPTIMAL"
    assert placement.report.objective == pytest.approx(2.0)


def test_a_transfer_delays_its_consumer_by_the_link_time():
    problem = fork_and_join()

    # source 0-1; left waits for the move (1.5-4.5), right runs on cuda 1-4; join waits for left's move: 5-6.
    split_branches = {"source": "cuda", "left": "npu", "right": "cuda", "join": "cuda"}
    assert makespan_seconds(problem, split_branches) == pytest.approx(6.0)
    assert makespan_seconds(problem, dict.fromkeys(split_branches, "cuda")) == pytest.approx(8.0)


def test_makespan_runs_branches_concurrently_where_latency_keeps_them_together():
    problem = fork_and_join()

    by_latency = solve(problem, LATENCY, FAST)
    by_makespan = solve(problem, MAKESPAN, FAST)

    # Sequentially the split only adds two 0.5 s moves (9 s against 8 s); concurrently it saves 2 s.
    assert set(by_latency.assignment.values()) == {"cuda"}
    assert sorted(by_makespan.assignment[n] for n in ("left", "right")) == ["cuda", "npu"]
    assert by_makespan.report.status == "OPTIMAL"
    assert by_makespan.report.objective == pytest.approx(6.0)
    assert by_makespan.report.bound == pytest.approx(6.0)
    assert score(problem, by_makespan.assignment, by_makespan.order).makespan_seconds == pytest.approx(6.0)


def test_the_solver_order_is_the_order_that_achieves_its_makespan():
    # Two chains share cuda: running the long chain's cuda op first lets its npu tail overlap.
    problem = make_problem(
        nodes=[node("short", cuda=1.0), node("long_head", cuda=1.0), node("long_tail", npu=4.0, cuda=8.0)],
        values=[value("long_head", "long_tail", num_bytes=1)],
        links=Link(0.0, 1e12),
    )

    placement = solve(problem, MAKESPAN, FAST)

    assert placement.assignment["long_tail"] == "npu"
    assert placement.order.index("long_head") < placement.order.index("short")
    assert placement.report.objective == pytest.approx(5.0)
    assert makespan_seconds(problem, placement.assignment) == pytest.approx(6.0)  # the graph's order is worse


def test_makespan_respects_memory_limits():
    # Both ops would overlap on two devices, but only cuda has room for the weights.
    problem = make_problem(nodes=[node("a", parameters=["w"], npu=2.0, cuda=2.0),
                                  node("b", parameters=["w"], npu=2.0, cuda=2.0)],
                           parameter_bytes={"w": 9 * GIB})

    placement = solve(problem, MAKESPAN, FAST)

    assert placement.assignment == {"a": "cuda", "b": "cuda"}
    assert placement.report.objective == pytest.approx(4.0)


def test_a_latency_limit_with_makespan_is_refused():
    with pytest.raises(PartitionerError, match="Fix: drop the limit, or use it with one of these objectives: latency, cost"):
        solve(fork_and_join(), MAKESPAN, FAST, max_latency_seconds=1.0)
