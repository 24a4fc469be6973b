"""The analytic roofline cost model, from the figures in each target's spec.

An op takes its launch overhead plus the longer of its compute time (FLOPs over
derated peak for its dtype) and its memory time (bytes over derated bandwidth),
with the efficiencies, size curve and overhead of its op class and dtype where
the spec gives them; a matmul's, convolution's or attention's compute efficiency
also depends on its tiles, their depth and their waves over the device's units
(cost_models/kernel_shapes.py). A
view, or any other non-compute node that dispatches a torch op returning a
tensor, takes the target's view overhead (eager dispatch, no device work);
runtime asserts and Python-level bookkeeping (a getitem) cost nothing, so they
go wherever saves a transfer. Transfers use the links in the specs.
"""

from __future__ import annotations

from cost_models.kernel_shapes import kernel_shape, shape_efficiency
from partitioner.frontend.op_graph import NodeKind, OpNode
from targets.op_classes import op_class
from targets.spec import Link, Target, TargetSet


class RooflineCostModel:
    """Roofline estimates: no measurements needed, right to within the efficiency guesses."""

    name = "roofline"

    def compute_seconds(self, node: OpNode, target: Target) -> float:
        if node.kind is not NodeKind.COMPUTE:
            return target.view_overhead_seconds if node.costs_dispatch else 0.0
        constants = target.constants_for(op_class(node.op), node.compute_dtype)
        usable = shape_efficiency(kernel_shape(node), target, constants)
        compute = constants.compute_seconds(node.flops, target.peak_for(node.compute_dtype) * usable)
        bandwidth = target.memory_bandwidth_bytes_per_second
        memory = constants.memory_seconds(node.bytes_read + node.bytes_written, bandwidth)
        return constants.launch_overhead_seconds + max(compute, memory)

    def link(self, targets: TargetSet, source: str, destination: str) -> Link:
        return targets.link(source, destination)
