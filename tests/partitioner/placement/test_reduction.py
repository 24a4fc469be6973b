"""Graph reduction: which nodes merge, what the merged node costs, and that no optimum is lost."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.objectives import COST, LATENCY
from partitioner.placement.reduction import reduce_problem
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from targets.spec import Link
from tests.partitioner.placement.problem_builders import (CUDA, DSP, NPU, brute_force_optimum, make_problem, node,
                                                          random_problems, value)

VIEW = NodeKind.VIEW


def test_a_chain_of_views_joins_the_op_that_produced_their_input():
    problem = make_problem(
        nodes=[node("mm", npu=1.0, cuda=2.0), node("view", VIEW, npu=0.0, cuda=0.0),
               node("transpose", VIEW, npu=0.0, cuda=0.0), node("softmax", cuda=1.0)],
        values=[value("mm", "view"), value("view", "transpose"), value("transpose", "softmax")],
    )

    reduction = reduce_problem(problem, LATENCY)

    assert [n.name for n in reduction.problem.nodes] == ["mm", "softmax"]
    assert reduction.representative == {"mm": "mm", "view": "mm", "transpose": "mm", "softmax": "softmax"}
    assert [(v.producer, v.consumers) for v in reduction.problem.values] == [("mm", ("softmax",))]
    assert reduction.expand({"mm": "npu", "softmax": "cuda"}) == {
        "mm": "npu", "view": "npu", "transpose": "npu", "softmax": "cuda"}


def test_a_view_that_costs_its_dispatch_overhead_still_joins_its_producer_and_adds_that_overhead():
    # Dispatch is dearer on CUDA than the mm's device: the view still never makes a cut of its own.
    problem = make_problem(
        nodes=[node("mm", npu=1.0, cuda=2.0), node("view", VIEW, npu=1e-5, cuda=4e-6), node("softmax", cuda=1.0)],
        values=[value("mm", "view"), value("view", "softmax")],
    )

    reduction = reduce_problem(problem, LATENCY)

    assert reduction.representative == {"mm": "mm", "view": "mm", "softmax": "softmax"}
    assert reduction.problem.node("mm").compute_seconds == {"npu": 1.0 + 1e-5, "cuda": 2.0 + 4e-6}


def test_repeated_blocks_keep_only_the_nodes_that_still_stand_for_themselves():
    problem = make_problem(
        nodes=[node("mm0", npu=1.0, cuda=2.0), node("view0", VIEW, npu=0.0, cuda=0.0),
               node("mm1", npu=1.0, cuda=2.0), node("view1", VIEW, npu=0.0, cuda=0.0), node("softmax", cuda=1.0)],
        values=[value("mm0", "view0"), value("view0", "mm1"), value("mm1", "view1"), value("view1", "softmax")],
        blocks=((("mm0", "view0"), ("mm1", "view1")),),
    )

    assert reduce_problem(problem, LATENCY).problem.blocks == ((("mm0",), ("mm1",)),)


def test_a_view_of_a_tensor_that_others_also_read_is_left_to_the_solver():
    # If the add sits on cuda, the view may be better off there too, sharing mm's move.
    problem = make_problem(
        nodes=[node("mm", npu=1.0, cuda=2.0), node("view", VIEW, npu=0.0, cuda=0.0), node("softmax", cuda=1.0),
               node("add", npu=1.0, cuda=1.0)],
        values=[value("mm", "view", "add"), value("view", "softmax")],
    )

    assert len(reduce_problem(problem, LATENCY).problem.nodes) == 4


def test_a_view_that_grows_its_tensor_is_left_to_the_solver():
    problem = make_problem(
        nodes=[node("mm", npu=1.0, cuda=2.0), node("expand", VIEW, npu=0.0, cuda=0.0), node("softmax", cuda=1.0)],
        values=[value("mm", "expand", num_bytes=1_000), value("expand", "softmax", num_bytes=8_000)],
    )

    assert len(reduce_problem(problem, LATENCY).problem.nodes) == 3


def test_a_view_stays_apart_when_a_detour_through_another_device_is_cheaper():
    # npu -> cuda is slow (10 s); npu -> dsp -> cuda takes 0.1 + 0.1 s, so the view relays on the dsp.
    fast, slow = Link(0.1, 1e12), Link(10.0, 1e12)
    links = {(s.name, d.name): fast for s in (NPU, DSP, CUDA) for d in (NPU, DSP, CUDA) if s != d}
    links["npu", "cuda"] = slow
    problem = make_problem(
        nodes=[node("mm", npu=1.0, cuda=5.0), node("view", VIEW, npu=0.0, dsp=0.0, cuda=0.0),
               node("softmax", cuda=1.0)],
        values=[value("mm", "view"), value("view", "softmax")],
        targets=(NPU, DSP, CUDA), links=links,
    )

    assert len(reduce_problem(problem, LATENCY).problem.nodes) == 3
    placement = solve(problem, LATENCY, SolverOptions(time_limit_seconds=5.0, workers=1))
    assert placement.assignment == {"mm": "npu", "view": "dsp", "softmax": "cuda"}
    assert placement.report.objective == pytest.approx(1.0 + 0.1 + 0.1 + 1.0, rel=1e-6)


def test_a_free_node_that_reads_nothing_joins_its_only_consumer():
    problem = make_problem(
        nodes=[node("positions", VIEW, npu=0.0, cuda=0.0), node("embedding", cuda=1.0)],
        values=[value("positions", "embedding")],
    )

    reduction = reduce_problem(problem, COST)

    assert [n.name for n in reduction.problem.nodes] == ["embedding"]
    assert reduction.representative == {"positions": "embedding", "embedding": "embedding"}
    assert reduction.problem.values == ()


def test_followers_merge_with_their_leader_and_add_their_compute_and_parameters():
    problem = make_problem(
        nodes=[node("split", parameters=["w"], npu=1.0, cuda=2.0),
               node("first", NodeKind.BOOKKEEPING, follows="split", npu=0.0, cuda=0.0),
               node("scale_", parameters=["s"], follows="split", npu=0.5, cuda=0.25)],
        values=[value("split", "first"), value("first", "scale_")],
        parameter_bytes={"w": 10, "s": 2},
    )

    reduced = reduce_problem(problem, LATENCY).problem

    assert len(reduced.nodes) == 1
    assert dict(reduced.nodes[0].compute_seconds) == {"npu": 1.5, "cuda": 2.25}
    assert reduced.nodes[0].parameters == ("w", "s")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=random_problems(max_nodes=7), objective=st.sampled_from([LATENCY, COST]))
def test_reduction_keeps_the_brute_force_optimum_and_every_score(problem, objective):
    reduction = reduce_problem(problem, objective)

    assert brute_force_optimum(reduction.problem, objective) == pytest.approx(
        brute_force_optimum(problem, objective), rel=1e-9)
    everything_on_cuda = {n.name: "cuda" for n in reduction.problem.nodes}
    original = score(problem, reduction.expand(everything_on_cuda))
    reduced = score(reduction.problem, everything_on_cuda)
    assert objective.value(original) == pytest.approx(objective.value(reduced), rel=1e-12)
    assert (original.transfer_count, original.memory_bytes) == (reduced.transfer_count, reduced.memory_bytes)
