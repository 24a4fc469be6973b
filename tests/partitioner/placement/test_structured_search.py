"""The structured search and the price of a hop: repeated blocks placed as the pieces they are, stages that split
only where a split pays for its hops, and a bound that holds for the whole problem.

Every problem here is a stack of identical blocks written out by hand, so each optimum can be worked out on
paper (and, where small enough, by brute force).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from partitioner.placement.floors import bottleneck_floor_seconds, bottleneck_relaxation
from partitioner.placement.objectives import THROUGHPUT
from partitioner.placement.problem import PlacementProblem, TargetTerms
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from partitioner.placement.reduction import reduce_problem
from partitioner.placement.rounding import rounded_placements
from partitioner.placement.structure import stage_boundaries, structured_problem
from targets.spec import Link
from tests.partitioner.placement.problem_builders import GIB, make_problem, node, value

TWIN = (TargetTerms("gpu.0", 2.0, 80 * GIB), TargetTerms("gpu.1", 2.0, 80 * GIB))
GROUPS = {"gpu.0": "gpu", "gpu.1": "gpu"}


def stack(blocks: int, hop_seconds: float, targets: tuple[TargetTerms, ...] = TWIN,
          seconds: dict[str, float] | None = None, inner_bytes: int = 1_000_000,
          mlp_seconds: dict[str, float] | None = None) -> PlacementProblem:
    """`blocks` identical blocks of two ops (attention, mlp), 1 s each on every target unless `seconds` (and
    `mlp_seconds` for the mlp) say, each handing 1 MB to the next block and `inner_bytes` from its attention to
    its mlp, with a hop into any target costing `hop_seconds`."""
    seconds = seconds or {t.name: 1.0 for t in targets}
    nodes, values, family = [], [], []
    for index in range(blocks):
        names = (f"attention_{index}", f"mlp_{index}")
        nodes += [node(names[0], **seconds), node(names[1], **(mlp_seconds or seconds))]
        values.append(value(names[0], names[1], num_bytes=inner_bytes))
        if index:
            values.append(value(f"mlp_{index - 1}", names[0]))
        family.append(names)
    problem = make_problem(nodes, values, targets=targets, fallback=targets[-1].name,
                           links=Link(0.0, 1e12), blocks=(tuple(family),),
                           device_groups=GROUPS if targets == TWIN else None)
    return dataclasses.replace(problem, hop_seconds={t.name: hop_seconds for t in targets})


def per_device(placement) -> dict[str, int]:
    counts: dict[str, int] = {}
    for target in placement.assignment.values():
        counts[target] = counts.get(target, 0) + 1
    return counts


def test_two_identical_devices_split_the_layers_evenly_and_pay_one_hop():
    problem = stack(blocks=4, hop_seconds=0.01)

    placement = solve(problem, THROUGHPUT, SolverOptions(time_limit_seconds=5))

    # 8 ops of 1 s: 4 on each device, and the device entered at the split pays one hop: 4.01 s per request.
    assert sorted(per_device(placement).values()) == [4, 4]
    assert placement.report.objective == pytest.approx(4.01)
    assert score(problem, placement.assignment).hop_count == 1


def test_a_hop_dearer_than_what_the_split_saves_keeps_the_model_on_one_device():
    problem = stack(blocks=4, hop_seconds=7.5)

    placement = solve(problem, THROUGHPUT, SolverOptions(time_limit_seconds=5))

    # Whole, one device is busy 8 s. Split k ops / 8 - k, the device entered is busy 8 - k + 7.5 s, at least 8.5 s
    # (k = 7); at a hop of 5 s the 6 / 2 split would pay (6 s against 2 + 5 s).
    assert len(set(placement.assignment.values())) == 1
    assert placement.report.objective == pytest.approx(8.0)


def test_hops_make_a_plan_that_scatters_ops_lose_to_one_that_keeps_stages_whole():
    problem = stack(blocks=4, hop_seconds=0.25)
    alternating = {n.name: TWIN[index % 2].name for index, n in enumerate(problem.nodes)}
    stages = {n.name: TWIN[index // 4].name for index, n in enumerate(problem.nodes)}

    # Alternating op by op: 7 hops, 3 or 4 into each device (4 s + 1 s); in two stages: one hop (4.25 s).
    assert score(problem, alternating).serving.bottleneck_seconds == pytest.approx(5.0)
    assert score(problem, stages).serving.bottleneck_seconds == pytest.approx(4.25)
    assert score(problem, stages).latency_seconds == pytest.approx(8.25)


def test_the_structured_restriction_places_each_block_whole_and_expands_to_the_same_score():
    problem = stack(blocks=6, hop_seconds=0.01, inner_bytes=3_000_000)

    restriction = structured_problem(reduce_problem(problem, THROUGHPUT), THROUGHPUT)

    # One piece per block: both ops run on every device, and more crosses between them (3 MB) than enters a block.
    assert len(restriction.problem.nodes) == 6
    placed = {n.name: TWIN[index // 3].name for index, n in enumerate(restriction.problem.nodes)}
    expanded = restriction.expand(placed)
    assert score(restriction.problem, placed).serving.bottleneck_seconds == pytest.approx(
        score(problem, expanded).serving.bottleneck_seconds)


def test_a_block_is_cut_at_its_waist_where_no_more_crosses_than_enters_a_block():
    problem = stack(blocks=6, hop_seconds=0.01, inner_bytes=1_000_000)

    restriction = structured_problem(reduce_problem(problem, THROUGHPUT), THROUGHPUT)

    # 1 MB enters each block and 1 MB crosses from its attention to its mlp: a split there costs what one between
    # blocks does, so each half is a piece.
    assert len(restriction.problem.nodes) == 12


def test_halves_of_every_block_go_to_the_device_best_at_each_and_the_floor_and_its_rounding_say_so():
    # The npu runs attention in 1 s and the mlp in 4 s; the gpu the other way round. Whole blocks on either
    # device take 5 s each: 4 blocks share out at best 2 + 2, 10 s on each device. Split at the waist, every
    # attention on the npu and every mlp on the gpu: 4 s each, plus a hop into each device per block.
    npu, gpu = TargetTerms("npu", 1.0, 80 * GIB), TargetTerms("gpu", 1.0, 80 * GIB)
    problem = stack(blocks=4, hop_seconds=0.01, targets=(npu, gpu), seconds={"npu": 1.0, "gpu": 4.0},
                    mlp_seconds={"npu": 4.0, "gpu": 1.0})

    placement = solve(problem, THROUGHPUT, SolverOptions(time_limit_seconds=5))
    relaxation = bottleneck_relaxation(problem)

    names = [n.name for n in problem.nodes]
    best = min(score(problem, dict(zip(names, places))).serving.bottleneck_seconds
               for places in itertools.product(["npu", "gpu"], repeat=len(names)))
    assert best == pytest.approx(4.04)  # 4 hops into the gpu (4.04 s); 3 back into the npu (4.03 s)
    assert placement.report.objective == pytest.approx(best)
    assert placement.assignment == {**{f"attention_{i}": "npu" for i in range(4)},
                                    **{f"mlp_{i}": "gpu" for i in range(4)}}
    # In shares, x of the mlps on the gpu: the gpu is busy 4x + 0.04x; the npu 4 + 16 (1 - x), plus the hops back
    # into it between blocks, counted as a ring (0.04x) less the one hop the ring adds (0.01). Even at x = 0.9995.
    assert relaxation.value == pytest.approx(4.04 * 19.99 / 20, rel=1e-5)
    assert placement.assignment in rounded_placements(problem, relaxation.shares)


def test_the_floor_prices_the_copies_a_split_block_makes_on_the_links_they_cross():
    # As above, but each attention hands its mlp 1 GB over a 1 GB/s link: 1 s per block on the npu's way out.
    # Split, the link is busy 4 s a request at least, as busy as the devices; whole blocks, 10 s on each device.
    npu, gpu = TargetTerms("npu", 1.0, 80 * GIB), TargetTerms("gpu", 1.0, 80 * GIB)
    problem = dataclasses.replace(
        stack(blocks=4, hop_seconds=0.0, targets=(npu, gpu), seconds={"npu": 1.0, "gpu": 4.0},
              mlp_seconds={"npu": 4.0, "gpu": 1.0}, inner_bytes=10**9),
        links={("npu", "gpu"): Link(0.0, 1e9), ("gpu", "npu"): Link(0.0, 1e9)})

    # Every mlp on the gpu moves 1 GB; with only 1 MB moving back, the link the other way stays idle.
    assert bottleneck_floor_seconds(problem) == pytest.approx(4.0, rel=1e-5)
    slower_link = dataclasses.replace(problem, links={("npu", "gpu"): Link(0.0, 0.5e9),
                                                      ("gpu", "npu"): Link(0.0, 0.5e9)})
    # At 0.5 GB/s the link would be busy 8 s: the floor mixes splits and whole blocks, above 4 s.
    assert bottleneck_floor_seconds(slower_link) > 4.0 * (1 + 1e-3)


def test_a_block_with_an_op_only_the_fallback_runs_is_cut_into_pieces_alike_in_every_block():
    cheap, fallback = TargetTerms("npu", 1.0, 80 * GIB), TargetTerms("cuda", 10.0, 80 * GIB)
    problem = stack(blocks=4, hop_seconds=0.01, targets=(cheap, fallback))
    nodes = [dataclasses.replace(n, compute_seconds={"cuda": 1.0}) if n.name.startswith("attention") else n
             for n in problem.nodes]
    problem = problem.with_graph(nodes, problem.values)

    restriction = structured_problem(reduce_problem(problem, THROUGHPUT), THROUGHPUT)

    assert len(restriction.problem.nodes) == 8  # attention on the fallback, the mlp anywhere: two pieces a block


def test_the_blocks_at_a_stage_boundary_are_freed_for_the_refining_search():
    problem = stack(blocks=6, hop_seconds=0.01, inner_bytes=3_000_000)  # no waist: one piece a block
    stages = {n.name: TWIN[0].name if index < 6 else TWIN[1].name for index, n in enumerate(problem.nodes)}

    freed = stage_boundaries(problem, stages)

    assert freed == {"attention_2", "attention_3"}  # the last block of the first stage and the first of the next
    refining = structured_problem(reduce_problem(problem, THROUGHPUT), THROUGHPUT, around=stages)
    assert len(refining.problem.nodes) == 4 + 4  # four blocks whole, two op by op


def test_the_bottleneck_floor_shares_the_work_as_the_devices_speeds_allow():
    fast, slow = TargetTerms("fast", 1.0, 80 * GIB), TargetTerms("slow", 1.0, 80 * GIB)
    problem = stack(blocks=3, hop_seconds=0.0, targets=(fast, slow), seconds={"fast": 1.0, "slow": 2.0})

    # 6 ops: in shares, the fast device does 4 of them (4 s) and the slow one 2 at half the speed (4 s).
    assert bottleneck_floor_seconds(problem) == pytest.approx(4.0, rel=1e-5)


def test_the_plan_is_the_true_optimum_and_its_bound_holds_for_every_placement():
    devices = (TargetTerms("a", 1.0, 80 * GIB), TargetTerms("b", 1.0, 80 * GIB), TargetTerms("c", 1.0, 80 * GIB))
    problem = stack(blocks=4, hop_seconds=0.3, targets=devices, seconds={"a": 1.0, "b": 1.5, "c": 2.0})

    placement = solve(problem, THROUGHPUT, SolverOptions(time_limit_seconds=5))

    names = [n.name for n in problem.nodes]
    best = min(score(problem, dict(zip(names, places))).serving.bottleneck_seconds
               for places in itertools.product([d.name for d in devices], repeat=len(names)))
    assert placement.report.objective == pytest.approx(best)
    assert placement.report.bound <= best * (1 + 1e-9)


def test_the_floor_charges_every_device_used_one_hop_unless_it_runs_the_first_op():
    layers = stack(blocks=4, hop_seconds=0.01)
    embed = node("embed", **{"gpu.0": 0.0, "gpu.1": 0.0})
    problem = dataclasses.replace(layers.with_graph((embed, *layers.nodes), (value("embed", "attention_0"),
                                                                            *layers.values)),
                                  hop_seconds=layers.hop_seconds)

    # In shares, the two devices take 4 s of work each, hop-free. But a device used that does not run the first
    # op is entered at least once a request: 0.01 s more on one of them, 4.005 s balanced in shares (a plan of
    # whole ops pays 4.01).
    assert bottleneck_floor_seconds(problem) == pytest.approx(4.005, rel=1e-5)
    assert solve(problem, THROUGHPUT, SolverOptions(time_limit_seconds=5)).report.objective == pytest.approx(4.01)


def test_a_device_that_runs_the_first_op_of_a_later_phase_is_not_charged_a_hop_into_it():
    # Two phases, each its own graph run once a request (prefill, then a decode step): each phase on a device of
    # its own takes 2 s there and never hops, so the floor must not charge either device an entry.
    ops = [node(name, **{"gpu.0": 1.0, "gpu.1": 1.0}) for name in ("prefill_a", "prefill_b", "decode_a", "decode_b")]
    problem = dataclasses.replace(
        make_problem(ops, [value("prefill_a", "prefill_b"), value("decode_a", "decode_b")], targets=TWIN,
                     fallback="gpu.1", links=Link(0.0, 1e12), device_groups=GROUPS),
        adjacent=(("prefill_a", "prefill_b", 1.0), ("decode_a", "decode_b", 1.0)),
        hop_seconds={"gpu.0": 0.01, "gpu.1": 0.01})

    assert bottleneck_floor_seconds(problem) == pytest.approx(2.0, rel=1e-5)
    assert solve(problem, THROUGHPUT, SolverOptions(time_limit_seconds=5)).report.objective == pytest.approx(2.0)


def test_a_rounded_block_whose_ops_follow_another_family_sits_with_the_block_it_follows():
    # Co-located LLM phases: each decode block's mlp shares its weights with (follows) the prefill block's mlp. The
    # decode family's own shares lean to gpu.0, the prefill family's are even; dealt out alone, decode blocks
    # would hop between gpu.0 and wherever their mlps must go. Each goes whole where its prefill block went.
    nodes, values, families = [], [], []
    for phase in ("prefill", "decode"):
        family = []
        for index in range(4):
            attention, mlp = f"{phase}/attention_{index}", f"{phase}/mlp_{index}"
            nodes += [node(attention, **{"gpu.0": 1.0, "gpu.1": 1.0}),
                      node(mlp, parameters=[f"w{index}"], follows=f"prefill/mlp_{index}" if phase == "decode" else None,
                           **{"gpu.0": 1.0, "gpu.1": 1.0})]
            values.append(value(attention, mlp, num_bytes=3_000_000))
            if index:
                values.append(value(f"{phase}/mlp_{index - 1}", attention))
            family.append((attention, mlp))
        families.append(tuple(family))
    problem = make_problem(nodes, values, targets=TWIN, fallback="gpu.1", links=Link(0.0, 1e12),
                           blocks=tuple(families), device_groups=GROUPS,
                           parameter_bytes={f"w{index}": GIB for index in range(4)})
    shares = {n.name: ({"gpu.0": 0.9, "gpu.1": 0.1} if n.name.startswith("decode/attention")
                       else {"gpu.0": 0.5, "gpu.1": 0.5}) for n in problem.nodes}

    for placed in rounded_placements(problem, shares):
        for index in range(4):
            where = placed[f"prefill/mlp_{index}"]
            assert {placed[f"{phase}/{op}_{index}"] for phase in ("prefill", "decode")
                    for op in ("attention", "mlp")} == {where}
        assert sorted(placed.values()).count("gpu.0") == 8  # the prefill family's even shares, kept
