"""The cost model interface: what a placement costs, per node and per transfer.

The problem builder asks a `CostModel` for the compute time of each (node,
target) pair and for the link between each pair of targets; transfers are then
`link.seconds(bytes)`, so a plan can be re-scored from the links it stores.
"""

from __future__ import annotations

from typing import Protocol

from partitioner.frontend.op_graph import OpNode
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
