"""Partition compilers: a plug-in target's compiler builds each of its partitions, or refuses some of their ops.

A spec says what a chip supports op by op; its vendor's compiler has the last
word on a whole partition. `compile` (partitioner/compiler.py) hands every
partition placed on a target with a compiler hook (targets/hooks.py) to that
compiler; when it refuses, the refused ops are refused on every device of that
target (`refuse`) and the model is planned again, so the plan that stands is
one each compiler took. The refusals are recorded in the plan and its summary.
`partitioner export` calls the compilers again with real weights and writes
what they make beside each partition's ONNX file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram

from partitioner.errors import PartitionerError
from partitioner.execution.partitioned_module import PartitionedModule, build_partitioned_module
from partitioner.execution.split import Partition
from partitioner.fields import text, texts
from partitioner.frontend.op_graph import NodeKind, OpGraph
from partitioner.placement.tagging import Tagging
from partitioner.plan_records import TargetRecord
from targets.hooks import CompiledPartition, PartitionRefused, PartitionToCompile, call_hook, plugin_fault
from targets.loader import load_target
from targets.spec import Target, TargetSet


@dataclass(frozen=True, slots=True)
class CompilerRefusal:
    """A target's compiler refused these nodes of one partition, for `reason` (the target is its spec: every
    device of that kind was then refused them)."""

    target: str
    partition: str
    nodes: tuple[str, ...]
    reason: str

    def describe(self) -> str:
        count = f"{len(self.nodes)} op{'s' if len(self.nodes) != 1 else ''}"
        return f"{self.target}'s compiler refused {count} of partition {self.partition}: {self.reason}"

    def to_dict(self) -> dict:
        return {"target": self.target, "partition": self.partition, "nodes": list(self.nodes), "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping) -> CompilerRefusal:
        return cls(text(data, "target"), text(data, "partition"), texts(data, "nodes"), text(data, "reason"))


def refused_by_compilers(program: ExportedProgram, graph: OpGraph, partitions: Sequence[Partition],
                         targets: TargetSet) -> tuple[CompilerRefusal, ...]:
    """What the compilers of `targets` refuse of `partitions`, each handed its partition built on the meta
    device (shapes, no weights): planning needs only the verdicts (export compiles again, with real weights)."""
    by_name = {target.name: target for target in targets}
    compiling = [p for p in partitions if (hooks := by_name[p.target].hooks) and hooks.compile]
    if not compiling:
        return ()
    module = build_partitioned_module(program, partitions, {name: torch.device("meta") for name in by_name})
    refusals = []
    for partition in compiling:
        target = by_name[partition.target]
        try:
            compile_partition(target, partition, module, graph)
        except PartitionRefused as refusal:
            refusals.append(_refusal(refusal, partition, graph, targets, target))
    return tuple(refusals)


def compile_partition(target: Target, partition: Partition, module: PartitionedModule, graph: OpGraph,
                      inputs: tuple[Any, ...] | None = None) -> CompiledPartition:
    """`partition` built by `target`'s compiler hook; raises PartitionRefused as the compiler does."""
    request = PartitionToCompile(target, partition.name, module.submodule(partition),
                                 tuple(graph[name] for name in partition.nodes), inputs)
    compiled = call_hook(target, "compile", target.hooks.compile, request)
    if not isinstance(compiled, CompiledPartition):
        raise plugin_fault(target, f"the compiler of {target.origin} returned a {type(compiled).__name__}, not a "
                                   "targets.hooks.CompiledPartition (or raised PartitionRefused)")
    return compiled


def plan_compilers(records: Sequence[TargetRecord]) -> dict[str, Target]:
    """The targets of a saved plan that have a partition compiler, by name, loaded from their plug-ins."""
    found = {}
    for record in records:
        if not record.origin.startswith("plug-in"):
            continue
        try:
            target = load_target(record.spec_name)
        except PartitionerError as error:
            raise PartitionerError(
                f"the plan places work on {record.name}, a target of {record.origin}, which cannot be loaded here "
                f"({error}). Fix: install that package (pip install it) and run this again.") from error
        if target.hooks and target.hooks.compile:
            found[record.name] = target
    return found


def refuse(tagging: Tagging, refusals: Sequence[CompilerRefusal], targets: TargetSet) -> Tagging:
    """`tagging` with each refused node refused on every device of the refusing target (a fleet's places of
    that spec), the compiler's reason kept as the node's refusal there."""
    supported = dict(tagging.supported)
    reasons = {node: dict(by_target) for node, by_target in tagging.refusals.items()}
    if not any(place in supported[node] and _spec(targets, place) == refusal.target
               for refusal in refusals for node in refusal.nodes for place in targets.names):
        raise PartitionerError(f"{refusals[0].describe()}, but those ops are refused there already, so planning "
                               "again would change nothing. Fix: report it to the target's vendor.")
    for refusal in refusals:
        places = [name for name in targets.names if _spec(targets, name) == refusal.target]
        for node in refusal.nodes:
            if targets.fallback in places:
                raise PartitionerError(
                    f"{refusal.describe()}, and {targets.fallback} is the fallback, which must run every op. "
                    "Fix: plan with another fallback (--fallback), or report the refusal to the target's vendor.")
            left = tuple(name for name in supported[node] if name not in places)
            if not left:
                raise PartitionerError(
                    f"{refusal.describe()}; node {node} may run nowhere else (a pin keeps it there). Fix: drop or "
                    "narrow the pin.")
            supported[node] = left
            for place in places:
                reasons[node][place] = f"{refusal.target}'s compiler: {refusal.reason}"
    return Tagging(supported, reasons)


def _refusal(refusal: PartitionRefused, partition: Partition, graph: OpGraph, targets: TargetSet,
             target: Target) -> CompilerRefusal:
    strangers = [name for name in refusal.nodes if name not in partition.nodes]
    if strangers:
        raise plugin_fault(target, f"the compiler of {target.origin} refused node {strangers[0]!r}, which is not "
                                   f"in partition {partition.name}",
                           "update or report the plug-in (it must name the partition's nodes)")
    nodes = (refusal.nodes or tuple(name for name in partition.nodes if graph[name].kind is NodeKind.COMPUTE)
             or partition.nodes)
    return CompilerRefusal(_spec(targets, target.name), partition.name, nodes, refusal.reason or "no reason given")


def _spec(targets: TargetSet, name: str) -> str:
    """The spec a place of `targets` is a device of (itself outside a fleet)."""
    topology = targets.topology
    return topology.spec_of[name] if topology else name
