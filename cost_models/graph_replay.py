"""A decode step replayed from a captured graph: what its ops cost when the host dispatches none of them.

Serving engines capture an LLM's decode step once per batch size and replay it at every token (vLLM, SGLang and
TensorRT-LLM with CUDA graphs, vLLM on ROCm with HIP graphs): the host launches one graph, not each kernel, and
views leave nothing in it. On a target whose spec gives `graph_kernel_microseconds`, an op of a replayed step
costs its device time (the eager cost less its launch overhead) plus that figure per kernel, and a view or
bookkeeping op nothing. Targets without the figure cost as their specs say: a compiled-graph accelerator's spec
already gives in-graph figures, and a CPU runs eagerly. A measured op loses the spec's launch overhead, not
whatever else eager PyTorch spent around its kernel; a plug-in's cost hook gives its own figure, replayed or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from partitioner.frontend.op_graph import NodeKind, OpNode
from cost_models.base import CostModel
from targets.op_classes import op_class
from targets.spec import Link, Target, TargetSet


@dataclass(frozen=True, slots=True)
class GraphReplay:
    """`eager`'s costs as a captured graph's replay runs them (see the module's docstring)."""

    eager: CostModel

    @property
    def name(self) -> str:
        return f"{self.eager.name}, replayed as a graph"

    @property
    def measured(self) -> Callable[[OpNode, Target], bool] | None:
        """`eager`'s test of whether it measured an op, which `node_seconds` asks before a plug-in's hook."""
        return getattr(self.eager, "measured", None)

    def compute_seconds(self, node: OpNode, target: Target) -> float:
        eager = self.eager.compute_seconds(node, target)
        kernel = target.graph_kernel_seconds
        if kernel is None:
            return eager
        if node.kind is not NodeKind.COMPUTE:
            return 0.0
        launch = target.constants_for(op_class(node.op), node.compute_dtype).launch_overhead_seconds
        return max(eager - launch, 0.0) + kernel

    def link(self, targets: TargetSet, source: str, destination: str) -> Link:
        return self.eager.link(targets, source, destination)
