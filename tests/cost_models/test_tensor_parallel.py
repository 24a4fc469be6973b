"""Ops on a tensor-parallel group: each member runs its share of a split op, the partial sums of a row-parallel
matmul are all-reduced over the members' link, and an op the plan does not split runs whole on each member.
Figures worked out by hand on a device of round figures."""

from __future__ import annotations

import dataclasses

import pytest

from cost_models.base import node_seconds
from cost_models.roofline import RooflineCostModel
from partitioner.frontend.op_graph import NodeKind, OpNode, Sharding, TensorMeta
from targets.loader import load_target
from targets.spec import Link, TensorParallel

MODEL = RooflineCostModel()
MIB = 1 << 20
NVLINK = Link(latency_seconds=2e-6, bandwidth_bytes_per_second=1e10)


@pytest.fixture(scope="module")
def member():
    """A device of round figures: 2e12 FLOP/s and 5e10 B/s usable at float16, 10 us a launch."""
    return dataclasses.replace(
        load_target("cuda-h100"), name="gpu.0", peak_flops_per_second={"float32": 1e12, "float16": 4e12},
        compute_efficiency=0.5, memory_bandwidth_bytes_per_second=1e11, memory_efficiency=0.5,
        launch_overhead_seconds=1e-5, op_classes={})


def group_of(member, degree: int, link: Link = NVLINK):
    members = tuple(f"gpu.{i}" for i in range(degree))
    return dataclasses.replace(member, name=f"gpu.tp{degree}.0", price_per_hour=member.price_per_hour * degree,
                               memory_bytes=member.memory_bytes * degree,
                               tensor_parallel=TensorParallel(degree, members, member, link))


def matmul(sharding: Sharding | None) -> OpNode:
    """x[512, 1024] @ w[1024, 1024] at float16: 1 MiB in, a 2 MiB weight, 1 MiB out, 2 x 512 x 1024 x 1024 FLOPs."""
    activation, weight = TensorMeta((512, 1024), "float16"), TensorMeta((1024, 1024), "float16")
    return OpNode(name="o_proj", op="aten.mm.default", kind=NodeKind.COMPUTE, inputs=(), parameters=("w",),
                  input_tensors=(activation, weight), output_tensors=(activation,), arguments={},
                  flops=2 * 512 * 1024 * 1024, parameter_bytes=2 * MIB, sharding=sharding)


def test_a_row_parallel_matmul_on_two_devices_does_half_the_work_then_all_reduces_its_output(member):
    one_member = 1e-5 + (2 * 512 * 1024 * 1024 / 2) / 2e12   # half the FLOPs: 268 us, compute-bound
    assert (3 * MIB / 2 + MIB) / 5e10 < one_member            # half its input and weight read, all its output written
    all_reduce = 2 * 2e-6 + 2 * (MIB / 2) / 1e10              # ring of 2: two steps of half the bytes each

    assert node_seconds(MODEL, matmul(Sharding.ROWS), group_of(member, 2)) == pytest.approx(one_member + all_reduce)


def test_a_column_parallel_matmul_reads_its_input_whole_and_needs_no_collective(member):
    slow_memory = dataclasses.replace(member, peak_flops_per_second={"float32": 1e15, "float16": 1e15})
    reads = MIB + 2 * MIB / 4                                 # the whole input, a quarter of the weight
    writes = MIB / 4                                          # a quarter of the output
    assert (2 * 512 * 1024 * 1024 / 4) / 5e14 < (reads + writes) / 5e10  # memory-bound

    assert node_seconds(MODEL, matmul(Sharding.COLUMNS), group_of(slow_memory, 4)) == pytest.approx(
        1e-5 + (reads + writes) / 5e10)


def test_an_op_the_plan_does_not_split_takes_one_members_time(member):
    whole = matmul(None)

    assert node_seconds(MODEL, whole, group_of(member, 8)) == node_seconds(MODEL, whole, member)


def test_over_a_slow_link_the_all_reduce_outweighs_the_halved_work(member):
    slow = Link(latency_seconds=1e-4, bandwidth_bytes_per_second=1e9)  # a 10 Gb/s network between members

    split = node_seconds(MODEL, matmul(Sharding.ROWS), group_of(member, 2, slow))

    assert split > node_seconds(MODEL, matmul(None), member)
