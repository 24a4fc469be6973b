"""The floors: the least latency, money or busiest device any placement that fits memory can have, known before any search."""

from __future__ import annotations

import pytest

from partitioner.placement.floors import latency_floor_seconds
from partitioner.placement.problem import TargetTerms
from tests.partitioner.placement.problem_builders import GIB, make_problem, node, value

# A fast device with room for one 1 GiB weight and a slow one with room for all.
FAST, SLOW = TargetTerms("fast", 10.0, GIB), TargetTerms("slow", 1.0, 80 * GIB)


def test_weights_that_do_not_fit_the_fast_device_are_read_by_the_slow_one():
    problem = make_problem([node("a", parameters=["wa"], fast=1.0, slow=10.0),
                            node("b", parameters=["wb"], fast=1.0, slow=10.0)],
                           values=[value("a", "b")], targets=(FAST, SLOW), fallback="slow",
                           parameter_bytes={"wa": GIB, "wb": GIB})

    # One op runs fast (1 s), the other must hold its weight on the slow device (10 s): 11 s, whatever the links.
    assert latency_floor_seconds(problem) == pytest.approx(11.0, rel=1e-5)


def test_a_weight_two_ops_share_is_held_once_and_ops_only_the_slow_device_runs_count_in_full():
    problem = make_problem([node("a", parameters=["w"], fast=1.0, slow=10.0),
                            node("b", parameters=["w"], fast=2.0, slow=20.0),
                            node("norm", slow=3.0)],
                           targets=(FAST, SLOW), fallback="slow", parameter_bytes={"w": GIB})

    assert latency_floor_seconds(problem) == pytest.approx(1.0 + 2.0 + 3.0, rel=1e-5)


def test_a_tensor_between_ops_that_only_different_devices_run_is_copied_in_the_floor_too():
    problem = make_problem([node("a", fast=1.0), node("b", slow=1.0)], values=[value("a", "b")],
                           targets=(FAST, SLOW), fallback="slow")

    # 1 s on each device, and the 1 MB between them must cross the link: 1 ms of latency plus 1 ms at 1 GB/s.
    assert latency_floor_seconds(problem) == pytest.approx(2.002, rel=1e-5)


def test_an_op_that_follows_another_is_placed_with_it_in_the_floor_too():
    # b follows a (the two phases of an LLM share a layer's weights): each is 1 s on its best device and 10 s on
    # the other, but together they run 11 s wherever they go, in any shares.
    problem = make_problem([node("a", parameters=["w"], fast=1.0, slow=10.0),
                            node("b", parameters=["w"], follows="a", fast=10.0, slow=1.0)],
                           targets=(FAST, SLOW), fallback="slow", parameter_bytes={"w": GIB})

    assert latency_floor_seconds(problem) == pytest.approx(11.0, rel=1e-5)
