"""The serving model: requests in flight on every device at once, the busiest resource setting the throughput.

Each test's optimum is worked out by hand from the numbers on the page.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from partitioner.errors import PartitionerError
from partitioner.placement.objectives import SERVING_COST, THROUGHPUT
from partitioner.placement.problem import TargetTerms
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from targets.spec import Link
from tests.partitioner.placement.problem_builders import CUDA, NPU, make_problem, node, value

OPTIONS = SolverOptions(time_limit_seconds=10, workers=1)


def two_stage(num_bytes: int):
    """Two 4 s ops in a chain, each as fast on either device; the tensor between them crosses a 1 GB/s link."""
    return make_problem(nodes=[node("a", npu=4.0, cuda=4.0), node("b", npu=4.0, cuda=4.0)],
                        values=[value("a", "b", num_bytes=num_bytes)], links=Link(0.0, 1e9))


def test_a_two_stage_pipeline_halves_the_bottleneck_where_one_device_alone_takes_both_stages():
    placement = solve(two_stage(num_bytes=1_000_000), THROUGHPUT, OPTIONS)

    serving = score(two_stage(1_000_000), placement.assignment).serving
    assert placement.assignment["a"] != placement.assignment["b"]
    assert serving.bottleneck_seconds == pytest.approx(4.0)
    assert serving.throughput_per_second == pytest.approx(0.25)
    assert placement.report.status == "OPTIMAL"


def test_copies_overlap_compute_until_the_link_is_the_bottleneck():
    # 6 GB over 1 GB/s: 6 s on the link, still under the 8 s of one device doing both ops.
    split = solve(two_stage(num_bytes=6 * 10**9), THROUGHPUT, OPTIONS)
    serving = score(two_stage(6 * 10**9), split.assignment).serving
    assert serving.bottleneck == "npu->cuda" or serving.bottleneck == "cuda->npu"
    assert serving.bottleneck_seconds == pytest.approx(6.0)

    # 9 GB: 9 s on the link, more than one device taking both: the plan keeps the pair together.
    together = solve(two_stage(num_bytes=9 * 10**9), THROUGHPUT, OPTIONS)
    assert together.assignment["a"] == together.assignment["b"]
    assert score(two_stage(9 * 10**9), together.assignment).serving.bottleneck_seconds == pytest.approx(8.0)


def replicas_problem():
    """Four 1 s ops in a chain; two identical NPUs (one group of a fleet); a slow CUDA; copies nearly free."""
    npus = [TargetTerms(f"npu.{i}", 1.0, NPU.memory_bytes) for i in range(2)]
    nodes = [node(f"op{i}", **{"npu.0": 1.0, "npu.1": 1.0, "cuda": 10.0}) for i in range(4)]
    values = [value(f"op{i}", f"op{i + 1}", num_bytes=1000) for i in range(3)]
    return make_problem(nodes=nodes, values=values, targets=(*npus, replace(CUDA, price_per_hour=10.0)),
                        links=Link(0.0, 1e12), device_groups={"npu.0": "npu@host", "npu.1": "npu@host"})


def test_identical_devices_each_take_half_the_work():
    problem = replicas_problem()

    placement = solve(problem, THROUGHPUT, OPTIONS)

    serving = score(problem, placement.assignment).serving
    assert serving.bottleneck_seconds == pytest.approx(2.0, rel=1e-6)
    assert sorted(placement.assignment.values()) == ["npu.0", "npu.0", "npu.1", "npu.1"]
    assert placement.report.status == "OPTIMAL"


@pytest.mark.parametrize("requests_per_second, devices, price", [(0.5, ["npu.0", "npu.1"], 2.0),
                                                                 (0.25, ["npu.0"], 1.0)])
def test_serving_cost_rents_the_cheapest_devices_that_serve_the_load(requests_per_second, devices, price):
    problem = replicas_problem()

    placement = solve(problem, SERVING_COST, OPTIONS, min_throughput=requests_per_second)

    serving = score(problem, placement.assignment).serving
    assert sorted(serving.used_targets) == devices
    assert serving.price_per_hour == pytest.approx(price)
    assert serving.throughput_per_second >= requests_per_second


def test_serving_cost_without_a_load_to_serve_is_refused_with_the_fix():
    with pytest.raises(PartitionerError, match="serving-cost sizes the fleet to a load, and none was given. Fix: add "
                                               "--min-throughput"):
        solve(replicas_problem(), SERVING_COST, OPTIONS)


def test_a_throughput_no_placement_reaches_names_the_best_there_is():
    with pytest.raises(PartitionerError, match=r"throughput: no placement that fits in memory serves 5 requests/s"):
        solve(replicas_problem(), SERVING_COST, OPTIONS, min_throughput=5.0,
              hints={"fallback": {f"op{i}": "cuda" for i in range(4)}})


def test_across_two_hosts_the_network_decides_whether_a_cut_pays():
    def problem(num_bytes: int):
        base = two_stage(num_bytes)
        routes = {("npu", "cuda"): ("npu:out", "network", "cuda:in"), ("cuda", "npu"): ("cuda:out", "network", "npu:in")}
        bandwidth = {"npu:out": 1e12, "npu:in": 1e12, "cuda:out": 1e12, "cuda:in": 1e12, "network": 1e9}
        return replace(base, routes=routes, resource_bandwidth=bandwidth)

    fast_enough = solve(problem(5 * 10**9), THROUGHPUT, OPTIONS)
    assert score(problem(5 * 10**9), fast_enough.assignment).serving.bottleneck == "network"

    too_slow = solve(problem(10 * 10**9), THROUGHPUT, OPTIONS)
    assert too_slow.assignment["a"] == too_slow.assignment["b"]
