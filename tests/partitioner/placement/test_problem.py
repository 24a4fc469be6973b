"""Scoring a placement: latency, money, transfers and memory on hand-built problems."""

from __future__ import annotations

import json

import pytest

from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.problem import PlacementProblem, TargetTerms, check_assignment
from partitioner.placement.scoring import score, transfers
from targets.spec import Link
from tests.conftest import problem_of
from tests.partitioner.hand_made_models import FilledBuffer, UpdatesItsState, random_inputs
from tests.partitioner.placement.problem_builders import CUDA, DSP, GIB, NPU, make_problem, node, value

# Different links each way, so a test notices if a move is costed over the wrong one.
NPU_TO_CUDA = Link(latency_seconds=0.001, bandwidth_bytes_per_second=1e9)
CUDA_TO_NPU = Link(latency_seconds=0.002, bandwidth_bytes_per_second=2e9)
LINKS = {("npu", "cuda"): NPU_TO_CUDA, ("cuda", "npu"): CUDA_TO_NPU}

THREE_TARGET_LINKS = {
    (source, destination): Link(0.001 * (i + 1), 1e9)
    for i, (source, destination) in enumerate(
        (s, d) for s in ("npu", "dsp", "cuda") for d in ("npu", "dsp", "cuda") if s != d
    )
}


def sandwich() -> PlacementProblem:
    """a -> b -> c where b runs only on cuda: placing a and c on the npu cuts twice."""
    return make_problem(
        nodes=[node("a", npu=1.0, cuda=2.0), node("b", cuda=3.0), node("c", npu=4.0, cuda=5.0)],
        values=[value("a", "b", num_bytes=1_000_000), value("b", "c", num_bytes=4_000_000)],
        links=LINKS,
    )


def test_latency_is_compute_plus_every_transfer():
    result = score(sandwich(), {"a": "npu", "b": "cuda", "c": "npu"})

    a_to_b = 0.001 + 1_000_000 / 1e9   # npu -> cuda
    b_to_c = 0.002 + 4_000_000 / 2e9   # cuda -> npu
    assert result.latency_seconds == pytest.approx(1.0 + 3.0 + 4.0 + a_to_b + b_to_c)
    assert result.transfer_seconds == pytest.approx(a_to_b + b_to_c)
    assert result.transfer_count == 2
    assert result.transfer_bytes == 5_000_000
    assert result.compute_seconds == pytest.approx({"npu": 5.0, "cuda": 3.0})


def test_placement_on_one_target_moves_nothing():
    result = score(sandwich(), {"a": "cuda", "b": "cuda", "c": "cuda"})

    assert result.latency_seconds == pytest.approx(2.0 + 3.0 + 5.0)
    assert result.transfer_count == 0
    assert result.transfer_seconds == 0.0


def test_transfers_name_the_tensor_and_the_link_it_crosses():
    moves = list(transfers(sandwich(), {"a": "npu", "b": "cuda", "c": "npu"}))

    assert [(m.producer, m.source, m.destination, m.num_bytes) for m in moves] == [
        ("a", "npu", "cuda", 1_000_000),
        ("b", "cuda", "npu", 4_000_000),
    ]
    assert moves[1].seconds == pytest.approx(CUDA_TO_NPU.seconds(4_000_000))


def fan_out(targets=(NPU, CUDA), links=LINKS) -> PlacementProblem:
    """a feeds both b and c."""
    return make_problem(
        nodes=[node("a", npu=1.0, dsp=1.0, cuda=1.0), node("b", npu=1.0, dsp=1.0, cuda=1.0),
               node("c", npu=1.0, dsp=1.0, cuda=1.0)],
        values=[value("a", "b", "c", num_bytes=2_000_000)],
        targets=targets,
        links=links,
    )


def test_tensor_read_by_two_consumers_on_the_same_other_device_moves_once():
    result = score(fan_out(), {"a": "npu", "b": "cuda", "c": "cuda"})

    assert result.transfer_count == 1
    assert result.latency_seconds == pytest.approx(3.0 + NPU_TO_CUDA.seconds(2_000_000))


def test_tensor_read_on_two_other_devices_moves_to_each():
    problem = fan_out(targets=(NPU, DSP, CUDA), links=THREE_TARGET_LINKS)
    result = score(problem, {"a": "cuda", "b": "npu", "c": "dsp"})

    to_npu = THREE_TARGET_LINKS["cuda", "npu"].seconds(2_000_000)
    to_dsp = THREE_TARGET_LINKS["cuda", "dsp"].seconds(2_000_000)
    assert result.transfer_count == 2
    assert result.transfer_bytes == 4_000_000
    assert result.latency_seconds == pytest.approx(3.0 + to_npu + to_dsp)


def test_consumer_beside_its_producer_needs_no_move():
    result = score(fan_out(), {"a": "npu", "b": "npu", "c": "cuda"})

    assert result.transfer_count == 1
    assert result.latency_seconds == pytest.approx(3.0 + NPU_TO_CUDA.seconds(2_000_000))


def test_money_is_busy_seconds_times_price_and_transfers_keep_both_ends_busy():
    result = score(sandwich(), {"a": "npu", "b": "cuda", "c": "npu"})

    a_to_b = NPU_TO_CUDA.seconds(1_000_000)
    b_to_c = CUDA_TO_NPU.seconds(4_000_000)
    npu_busy = 1.0 + 4.0 + a_to_b + b_to_c    # computes a and c, sends a, receives b
    cuda_busy = 3.0 + a_to_b + b_to_c         # computes b, receives a, sends b
    assert result.busy_seconds == pytest.approx({"npu": npu_busy, "cuda": cuda_busy})
    assert result.cost_per_request == pytest.approx(npu_busy * 3.6 / 3600 + cuda_busy * 36.0 / 3600)


def test_idle_target_costs_nothing():
    result = score(sandwich(), {"a": "cuda", "b": "cuda", "c": "cuda"})

    assert result.busy_seconds["npu"] == 0.0
    assert result.cost_per_request == pytest.approx(10.0 * 36.0 / 3600)


def weights_problem(npu_memory_bytes: int = 8 * GIB) -> PlacementProblem:
    """Two layers share `embedding`; `head` is used by the last only."""
    npu = TargetTerms("npu", NPU.price_per_hour, npu_memory_bytes)
    return make_problem(
        nodes=[node("lookup", parameters=["embedding"], npu=1.0, cuda=1.0),
               node("tied", parameters=["embedding", "head"], npu=1.0, cuda=1.0)],
        values=[value("lookup", "tied")],
        targets=(npu, CUDA),
        parameter_bytes={"embedding": 3 * GIB, "head": 2 * GIB},
    )


def test_parameter_used_on_two_targets_counts_in_both_memories():
    result = score(weights_problem(), {"lookup": "npu", "tied": "cuda"})

    assert result.memory_bytes == {"npu": 3 * GIB, "cuda": 5 * GIB}
    assert result.fits_memory


def test_parameter_used_twice_on_one_target_counts_once():
    result = score(weights_problem(), {"lookup": "npu", "tied": "npu"})

    assert result.memory_bytes == {"npu": 5 * GIB, "cuda": 0}


def test_over_capacity_bytes_reports_how_far_over_each_target_is():
    result = score(weights_problem(npu_memory_bytes=4 * GIB), {"lookup": "npu", "tied": "npu"})

    assert result.over_capacity_bytes == {"npu": 1 * GIB}
    assert not result.fits_memory


def test_parameters_exactly_filling_memory_fit():
    result = score(weights_problem(npu_memory_bytes=5 * GIB), {"lookup": "npu", "tied": "npu"})

    assert result.over_capacity_bytes == {}
    assert result.fits_memory


def test_a_target_that_runs_anything_reserves_room_for_the_largest_working_set_it_could_run():
    # The npu (8 GiB) could run mm (3 GiB of activations) but not huge (9 GiB), so its arena is 3 GiB.
    problem = make_problem(
        nodes=[node("mm", parameters=["w"], working_bytes=3 * GIB, npu=1.0, cuda=1.0),
               node("add", working_bytes=2 * GIB, npu=1.0, cuda=1.0),
               node("huge", working_bytes=9 * GIB, npu=1.0, cuda=1.0)],
        parameter_bytes={"w": 4 * GIB},
    )

    everything_on_cuda = score(problem, {"mm": "cuda", "add": "cuda", "huge": "cuda"})
    add_on_the_npu = score(problem, {"mm": "cuda", "add": "npu", "huge": "cuda"})
    huge_on_the_npu = score(problem, {"mm": "cuda", "add": "cuda", "huge": "npu"})

    assert everything_on_cuda.memory_bytes == {"npu": 0, "cuda": 4 * GIB + 9 * GIB}
    assert add_on_the_npu.memory_bytes == {"npu": 3 * GIB, "cuda": 4 * GIB + 9 * GIB}
    assert huge_on_the_npu.over_capacity_bytes == {"npu": 1 * GIB}


def test_an_op_working_set_is_its_activations_in_and_out_without_its_weights():
    import torch

    from tests.conftest import problem_of

    problem = problem_of(torch.nn.Linear(256, 512, dtype=torch.float16).eval(),
                         (torch.zeros(8, 256, dtype=torch.float16),))

    (linear,) = [n for n in problem.nodes if n.parameters]
    assert linear.working_bytes == (8 * 256 + 8 * 512) * 2


def test_problem_survives_a_round_trip_through_json():
    problem = make_problem(
        nodes=[node("mm", parameters=["w"], working_bytes=64, npu=1.5, cuda=2.5),
               node("split", npu=0.1, cuda=0.2),
               node("first", NodeKind.BOOKKEEPING, follows="split", npu=0.0, cuda=0.0),
               node("flat", NodeKind.VIEW, cuda=0.0, npu=0.0)],
        values=[value("mm", "split", num_bytes=10), value("split", "first", "flat", num_bytes=20)],
        parameter_bytes={"w": 4096},
        links=LINKS,
    )

    restored = PlacementProblem.from_dict(json.loads(json.dumps(problem.to_dict())))

    assert restored == problem
    assert restored.node("flat").supported == ("cuda", "npu")  # priority order survives
    assert restored.node("first").follows == "split"
    assert score(restored, {"mm": "npu", "split": "cuda", "first": "cuda", "flat": "npu"}) == score(
        problem, {"mm": "npu", "split": "cuda", "first": "cuda", "flat": "npu"})


def test_check_assignment_rejects_a_node_on_a_target_that_does_not_support_it():
    with pytest.raises(AssertionError, match="b placed on npu"):
        check_assignment(sandwich(), {"a": "npu", "b": "npu", "c": "npu"})


def test_check_assignment_rejects_a_follower_apart_from_its_node():
    problem = make_problem(
        nodes=[node("split", npu=1.0, cuda=1.0), node("first", NodeKind.BOOKKEEPING, follows="split",
                                                         npu=0.0, cuda=0.0)],
        values=[value("split", "first")],
    )

    with pytest.raises(AssertionError, match="first must sit with split"):
        check_assignment(problem, {"split": "npu", "first": "cuda"})
    check_assignment(problem, {"split": "npu", "first": "npu"})


def test_writes_and_the_views_they_go_through_sit_with_the_memory_later_nodes_read():
    problem = problem_of(FilledBuffer().eval(), random_inputs((4, 8)))

    assert {name: problem.node(name).follows for name in ("slice_1", "copy_", "slice_2", "copy__1")} == \
        dict.fromkeys(("slice_1", "copy_", "slice_2", "copy__1"), "new_empty")
    assert problem.node("mul").follows is None  # what reads the memory may sit anywhere


def test_every_user_of_a_buffer_the_model_updates_sits_with_its_first_writer():
    problem = problem_of(UpdatesItsState().eval(), random_inputs((2, 8)))
    leaders = {node.name: node.follows or node.name for node in problem.nodes}

    # total: add_ writes it, mul_ writes it again through a slice; cache: copy_ writes it, layer_norm reads it.
    assert leaders["slice_1"] == leaders["mul_"] == "add_"
    assert leaders["copy_"] == leaders["layer_norm"] == leaders["slice_2"]


def test_a_problem_on_part_of_the_fleet_keeps_those_devices_their_links_and_a_fallback_among_them():
    problem = make_problem([node("a", npu=1.0, dsp=2.0, cuda=3.0), node("b", dsp=1.0, cuda=1.0)],
                           [value("a", "b")], targets=(NPU, DSP, CUDA), links=THREE_TARGET_LINKS)

    kept = problem.on_devices(["npu", "dsp"])

    assert kept.target_names == ("npu", "dsp")
    assert dict(kept.node("a").compute_seconds) == {"npu": 1.0, "dsp": 2.0}
    assert set(kept.links) == {("npu", "dsp"), ("dsp", "npu")}
    assert kept.fallback == "npu"  # cuda is not kept: the kept device with the most memory (8 GiB, the dsp 4)
    assert problem.on_devices(["cuda", "npu"]).fallback == "cuda"
    assert problem.on_devices(["npu"]) is None  # b runs on neither dsp nor cuda there
