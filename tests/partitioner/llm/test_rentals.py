"""Rentals: which devices of a fleet an LLM deployment pays for, each priced at least at what a plan on them costs,
and a search in money per token that rents no more than pays.

Each expected figure is worked out by hand from the numbers on the page.
"""

from __future__ import annotations

import dataclasses

import pytest

from partitioner.llm.planning import plan_llm
from partitioner.llm.rentals import per_million_output_tokens, rentals
from partitioner.placement.problem import TargetTerms
from partitioner.placement.solver import CLOSE_ENOUGH
from targets.fleet import load_fleet
from tests.partitioner.llm.test_llm_serving import load_workload_text, small_llama
from tests.partitioner.placement.problem_builders import GIB, make_problem, node, value

# Two identical cheap devices ($1/h, 10 GiB) and a dear fast one ($10/h, 80 GiB).
CHEAP = (TargetTerms("cheap.0", 1.0, 10 * GIB), TargetTerms("cheap.1", 1.0, 10 * GIB))
DEAR = TargetTerms("dear", 10.0, 80 * GIB)


def fleet_problem(*nodes):
    return make_problem(nodes, [value(nodes[0].name, nodes[1].name)], targets=(*CHEAP, DEAR), fallback="dear",
                        device_groups={"cheap.0": "cheap", "cheap.1": "cheap"})


def test_every_count_of_each_group_of_identical_devices_is_a_rental_priced_at_its_least_work_shared_evenly():
    problem = fleet_problem(node("a", **{"cheap.0": 2.0, "cheap.1": 2.0, "dear": 1.0}),
                            node("b", **{"cheap.0": 2.0, "cheap.1": 2.0, "dear": 1.0}))

    found = {rental.devices: rental for rental in rentals(problem, "co-located", 1, output_tokens=100,
                                                           memory_needed=0)}

    # Identical devices are interchangeable: one cheap device or two (never "the second alone"), with the dear
    # one or without. Each op at its fastest among the kinds rented, the sum shared out evenly.
    assert set(found) == {("cheap.0",), ("cheap.0", "cheap.1"), ("dear",), ("cheap.0", "dear"),
                          ("cheap.0", "cheap.1", "dear")}
    least = {("cheap.0",): 4.0, ("cheap.0", "cheap.1"): 2.0, ("dear",): 2.0, ("cheap.0", "dear"): 1.0,
             ("cheap.0", "cheap.1", "dear"): 2.0 / 3}
    for devices, seconds in least.items():
        price = sum(10.0 if device == "dear" else 1.0 for device in devices)
        assert found[devices].price_per_hour == price
        assert found[devices].floor == pytest.approx(1e6 * price / 3600 * seconds / 100)
    assert per_million_output_tokens(3600.0, 1.0, 10**6) == pytest.approx(1.0)


def test_a_rental_without_room_for_the_weights_or_a_device_for_every_op_is_none():
    problem = dataclasses.replace(fleet_problem(node("a", **{"cheap.0": 2.0, "cheap.1": 2.0, "dear": 1.0}),
                                                node("only_dear", dear=1.0)), separate_phases=True)

    found = [r.devices for r in rentals(problem, "disaggregated", 4, output_tokens=100, memory_needed=15 * GIB)]

    # `only_dear` needs the dear device; kept apart, the phases need two devices; 15 GiB needs more than one cheap.
    assert found == [("cheap.0", "dear"), ("cheap.0", "cheap.1", "dear")]


def test_the_plan_rents_one_of_two_identical_devices_when_the_second_only_adds_hops_and_proves_it_cheapest():
    short = load_workload_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nmax_batch_size = 4\n')

    plan = plan_llm(small_llama(), short, load_fleet("cuda-h100=2"), time_limit_seconds=20)

    # Two H100s serve at best twice as fast for twice the price, and pay for the hops between them: one is
    # cheaper per token, and the floors of the rentals left prove it.
    assert len(set(plan.best.assignment.values())) == 1
    assert plan.best.batch_size == 4
    assert plan.gap <= CLOSE_ENOUGH
    assert plan.cost_floor_per_million_output_tokens <= plan.best.cost_per_million_output_tokens


def test_without_time_to_search_the_plan_is_the_cheapest_baseline_of_any_batch_and_its_gap_says_how_far_it_may_be():
    short = load_workload_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nmax_batch_size = 4\n')

    plan = plan_llm(small_llama(), short, load_fleet("npu-example=2,cuda-h100=1"), time_limit_seconds=1e-6)

    # Every (deployment, batch)'s baselines are scored before any search: the plan is the cheapest of them, and
    # the rentals left unsearched say so, with the least they may cost.
    assert plan.best.solver is None
    assert plan.best.cost_per_million_output_tokens == min(
        t.result.cost_per_million_output_tokens for t in plan.tried if t.result is not None and t.refusal is None)
    assert 0 < plan.gap < 1
    assert any("not searched in the time" in (t.refusal or "") for t in plan.tried)


def test_the_bottleneck_floor_held_to_a_tpot_limit_is_the_least_any_plan_within_it_has():
    from partitioner.llm.joint import joint_problem
    from partitioner.placement.floors import bottleneck_relaxation
    from tests.partitioner.llm.test_llm_serving import phases

    prefill, decode = phases(kv_bytes=10**6)
    joint = joint_problem(prefill, decode, frozenset({"kv"}), 1.0, 1.0, False)

    # Co-located, the prefill op (gpu 1 s, hbm 10 s) and the decode op (gpu 4 s, hbm 1 s) share a weight: in
    # shares, x of both on the gpu loads it 5x and the hbm 11 (1 - x), balanced at x = 11/16 (3.4375 s). Held to
    # 2 s of decode compute (1 + 3x <= 2), x is at most 1/3: the hbm is busy 22/3 s.
    assert bottleneck_relaxation(joint).value == pytest.approx(55 / 16, rel=1e-5)
    assert bottleneck_relaxation(joint, phase_limits={"decode": 2.0}).value == pytest.approx(22 / 3, rel=1e-5)
    assert not bottleneck_relaxation(joint, phase_limits={"decode": 0.5}).fits  # under the hbm's 1 s
