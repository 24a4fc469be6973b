"""What an op costs on a tensor-parallel place: one member's time on its share of the op, plus the collective
that joins the shares (targets/tensor_parallel.py makes the places, frontend/sharding.py marks the ops).

A member runs `1/degree` of a split op's FLOPs and touches `1/degree` of its bytes, save what it must hold
whole: a column-parallel matmul reads its whole input, a row-parallel one writes whole partial sums. Those go
through the same cost model as any op (so launch overhead and small ops' lower efficiency stay), then a row-
parallel result is all-reduced and a gathered one all-gathered over the members' link (ring collectives, as
NCCL runs them). An op the plan does not split runs whole on each member, at one member's time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from partitioner.frontend.op_graph import OpNode, Sharding, TensorMeta
from targets.op_classes import op_class
from targets.spec import Target


def tensor_parallel_seconds(node: OpNode, target: Target, member_seconds: Callable[[OpNode, Target], float]
                            ) -> float:
    """Time for the tensor-parallel place `target` to run `node`, from `member_seconds` (one member's cost of an
    op): its share on one member and the collective after it."""
    split = target.tensor_parallel
    if node.sharding is None:
        return member_seconds(node, split.member)
    return member_seconds(shard_of(node, split.degree), split.member) + collective_seconds(node, target)


def collective_seconds(node: OpNode, target: Target) -> float:
    """The collective a split `node` ends with on `target`'s group: an all-reduce of a row-parallel op's output,
    an all-gather of a gathered column-parallel one's, else none."""
    split = target.tensor_parallel
    if node.sharding is Sharding.ROWS:
        return split.all_reduce_seconds(node.output_bytes)
    if node.sharding is Sharding.COLUMNS_GATHERED:
        return split.all_gather_seconds(node.output_bytes)
    return 0.0


def shard_of(node: OpNode, degree: int) -> OpNode:
    """What one member of a group of `degree` runs of the split `node`: its share of the FLOPs and bytes."""
    kept = 1.0 / degree
    weights = node.parameter_bytes
    read_split = node.bytes_read - (node.bytes_read - weights if node.sharding.reads_input_whole else 0)
    written_split = 0 if node.sharding.writes_output_whole else node.bytes_written
    return dataclasses.replace(node, flops=round(node.flops * kept),
                               unread_bytes=node.unread_bytes + round(read_split * (1 - kept)),
                               unwritten_bytes=node.unwritten_bytes + round(written_split * (1 - kept)),
                               arguments=_member_arguments(node, degree))


def _member_arguments(node: OpNode, degree: int) -> Mapping[str, Any]:
    """`node`'s arguments as one member sees them, where its kernel's shape (and so its efficiency:
    cost_models/kernel_shapes.py) depends on them: an attention's query, key and value with its share of the heads;
    a column-parallel linear's weight with its share of the output features, a row-parallel one's weight and
    input with their share of the input features."""
    kind = op_class(node.op)
    if kind == "attention":
        return _divided(node.arguments, {"query": -3, "key": -3, "value": -3}, degree)
    if node.op == "aten.linear.default" and node.sharding is Sharding.ROWS:
        return _divided(node.arguments, {"weight": -1, "input": -1}, degree)
    if node.op == "aten.linear.default" and node.sharding.reads_input_whole:
        return _divided(node.arguments, {"weight": 0}, degree)
    return node.arguments


def _divided(arguments: Mapping[str, Any], dims: Mapping[str, int], degree: int) -> Mapping[str, Any]:
    """`arguments` with each named tensor's given dimension divided by `degree` where it divides evenly."""
    shared = dict(arguments)
    for name, dim in dims.items():
        tensor = shared.get(name)
        if isinstance(tensor, TensorMeta) and len(tensor.shape) > max(dim, -dim - 1) and \
                isinstance(tensor.shape[dim], int) and tensor.shape[dim] % degree == 0:
            shape = list(tensor.shape)
            shape[dim] //= degree
            shared[name] = dataclasses.replace(tensor, shape=tuple(shape))
    return shared
