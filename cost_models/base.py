"""The cost model interface: what a placement costs, per node and per transfer.

The problem builder asks a `CostModel` for the compute time of each (node,
target) pair and for the link between each pair of targets; transfers are then
`link.seconds(bytes)`, so a plan can be re-scored from the links it stores.
"""

from __future__ import annotations

from typing import Protocol

from partitioner.frontend.op_graph import OpNode
from cost_models.tensor_parallel import collective_seconds, tensor_parallel_seconds
from targets.hooks import hook_seconds
from targets.spec import Link, Target, TargetSet


class CostModel(Protocol):
    """Predicts compute and transfer time; implementations must be pure and deterministic."""

    name: str

    def compute_seconds(self, node: OpNode, target: Target) -> float:
        """Time for `target` to run `node` once, launch overhead included."""
        ...

    def link(self, targets: TargetSet, source: str, destination: str) -> Link:
        """The latency and bandwidth of moving a tensor from `source` to `destination`."""
        ...


def node_seconds(cost_model: CostModel, node: OpNode, target: Target) -> float:
    """Time for `target` to run `node`: the target's plug-in cost hook where it gives one (targets/hooks.py), else
    `cost_model`'s; a measurement of this very op (a profile's) wins over both. On a tensor-parallel place, one
    member's time on its share and the collective after it (cost_models/tensor_parallel.py)."""
    measured = getattr(cost_model, "measured", None)
    if target.tensor_parallel is not None:
        split = target.tensor_parallel
        if node.sharding is not None and measured and measured(node, split.member):
            # A measurement is of the whole op (a shard has its signature): each member does its share of it.
            return cost_model.compute_seconds(node, split.member) / split.degree + collective_seconds(node, target)
        return tensor_parallel_seconds(node, target, lambda op, member: node_seconds(cost_model, op, member))
    if target.hooks and target.hooks.cost and not (measured and measured(node, target)):
        seconds = hook_seconds(target, node)
        if seconds is not None:
            return seconds
    return cost_model.compute_seconds(node, target)
