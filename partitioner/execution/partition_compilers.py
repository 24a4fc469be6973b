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

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
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
from targets.hooks import CompiledPartition, PartitionRefused, PartitionToCompile, compile_with_hook, plugin_fault
from targets.loader import load_target, plugin_targets
from targets.spec_reader import read_toml
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


class CompilerVerdicts:
    """What the compilers of a target set answered, by partition content (its place, nodes and outputs).

    Planning again after a refusal hands a compiler only the partitions it has not judged: the same content on
    the same place gets the same answer, so an unchanged partition is not compiled again. Each compiler is
    handed its partition built on the meta device (shapes, no weights): planning needs only the verdicts
    (export compiles again, with real weights).
    """

    def __init__(self, program: ExportedProgram, graph: OpGraph, targets: TargetSet):
        self._program, self._graph, self._targets = program, graph, targets
        self._answers: dict[tuple[str, tuple[str, ...], tuple[str, ...]], CompilerRefusal | None] = {}

    def refusals(self, partitions: Sequence[Partition]) -> tuple[CompilerRefusal, ...]:
        """What the compilers refuse of `partitions`."""
        by_name = {target.name: target for target in self._targets}
        compiling = [p for p in partitions if (hooks := by_name[p.target].hooks) and hooks.compile]
        new = [p for p in compiling if _content(p) not in self._answers]
        if new:
            module = build_partitioned_module(self._program, partitions,
                                              {name: torch.device("meta") for name in by_name})
            for partition in new:
                self._answers[_content(partition)] = self._verdict(by_name[partition.target], partition, module)
        answers = ((p, self._answers[_content(p)]) for p in compiling)
        return tuple(replace(answer, partition=p.name) for p, answer in answers if answer is not None)

    def _verdict(self, target: Target, partition: Partition, module: PartitionedModule) -> CompilerRefusal | None:
        try:
            compile_partition(target, partition, module, self._graph)
        except PartitionRefused as refusal:
            return _refusal(refusal, partition, self._graph, self._targets, target)
        return None


def compile_partition(target: Target, partition: Partition, module: PartitionedModule, graph: OpGraph,
                      inputs: tuple[Any, ...] | None = None) -> CompiledPartition:
    """`partition` built by `target`'s compiler hook; raises PartitionRefused as the compiler does."""
    request = PartitionToCompile(target, partition.name, module.submodule(partition),
                                 tuple(graph[name] for name in partition.nodes), inputs)
    return compile_with_hook(target, request)


def plan_compilers(records: Sequence[TargetRecord], partitions: Sequence[Partition]) -> dict[str, Target]:
    """The places of a saved plan whose partitions a plug-in's compiler builds at export, by name, each loaded
    from the installed plug-in and named for its place, as planning handed it to the compiler.

    A plug-in is needed only where it has a partition to compile; where its installed version is not the one
    the plan was made with, one warning says so.
    """
    used = {partition.target for partition in partitions}
    found: dict[str, Target] = {}
    changed: dict[tuple[str, str], list[str]] = {}
    for record in records:
        if not (record.compiles and record.name in used):
            continue
        target = _installed_compiler(record)
        if target.origin != record.origin:
            changed.setdefault((record.origin, target.origin), []).append(record.name)
        found[record.name] = replace(target, name=record.name)
    for (planned, installed), names in changed.items():
        warnings.warn(f"the plan was made with {planned} and {installed} is installed here, so a compiler other "
                      f"than the one planning asked builds the partitions on {', '.join(names)}. Fix: compile the "
                      "plan again with this version, or install the one it was made with.", stacklevel=2)
    return found


def _installed_compiler(record: TargetRecord) -> Target:
    """The target of `record` with its compiler hook, from the installed plug-in: by name, or by the path of a
    spec file that takes a plug-in's hooks (`hooks_from`: a calibrated copy of a plug-in's spec)."""
    registered = record.spec_name in plugin_targets()
    path = Path(record.spec_path)
    if not registered and not (path.is_file() and "hooks_from" in read_toml(path)):
        raise _compiler_missing(record, f"no installed plug-in provides {record.spec_name}")
    try:
        target = load_target(record.spec_name if registered else path)
    except PartitionerError as error:
        raise _compiler_missing(record, str(error).partition(". Fix:")[0]) from None
    if not (target.hooks and target.hooks.compile):
        raise _compiler_missing(record, f"{target.origin} gives {record.spec_name} no compiler")
    return target


def _compiler_missing(record: TargetRecord, problem: str) -> PartitionerError:
    words = record.origin.split()
    package = words[1] if len(words) > 1 else record.origin
    install = f"pip install '{package}=={words[2]}', the version the plan was made with" if len(words) > 2 else \
        f"install the package of {record.origin}"
    return PartitionerError(f"the plan's partitions on {record.name} are built at export by the compiler of "
                            f"{record.origin}, which is not here ({problem}). Fix: {install}, and export again.")


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


def _content(partition: Partition) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """What a compiler's answer depends on: the place, the ops, and which of their values leave the partition."""
    return partition.target, partition.nodes, partition.outputs
