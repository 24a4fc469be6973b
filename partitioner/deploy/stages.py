"""A partitioned module as stages: which partition runs where, and where each of its arguments comes from.

The top level of a `PartitionedModule` is a small fx graph: model inputs, one
call per partition, items taken from a partition's results, copies to other
devices, and the outputs. An engine that runs partitions in other processes
(partitioner/deploy/ray_engine.py) needs that graph as data it can ship: each
stage says its partition, its target and the source of every argument, and the
model's flat outputs say where they come from. Copies disappear: moving a
value to the device that reads it is the receiving worker's job.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch.fx import _pytree as fx_pytree
from torch.utils import _pytree as pytree

from partitioner.errors import PartitionerError
from partitioner.execution.partitioned_module import PartitionedModule, partition_index, to_device


@dataclass(frozen=True, slots=True)
class FromInput:
    """The model's flat input at `position` (inputs flattened as the captured program flattens them)."""

    position: int


@dataclass(frozen=True, slots=True)
class FromPartition:
    """Item `item` of partition `partition`'s results, or all of them (a partition with one result) for None."""

    partition: int
    item: int | None = None


@dataclass(frozen=True, slots=True)
class Constant:
    """A value fixed when the model was captured (a size, None, a weight the model returns as is)."""

    value: Any


Source = Union[FromInput, FromPartition, Constant]


@dataclass(frozen=True, slots=True)
class Stage:
    """One partition's call: where it runs and where each of its arguments comes from."""

    partition: int
    target: str
    arguments: tuple[Source, ...]

    @property
    def upstream(self) -> tuple[FromInput | FromPartition, ...]:
        """The distinct values this stage receives, in a fixed order: whole partition results and model inputs.

        A worker is sent these and picks its arguments out of them (`arguments_from`).
        """
        seen: dict[FromInput | FromPartition, None] = {}
        for argument in self.arguments:
            if isinstance(argument, FromInput):
                seen.setdefault(argument)
            elif isinstance(argument, FromPartition):
                seen.setdefault(FromPartition(argument.partition))
        return tuple(seen)

    @property
    def reads_request(self) -> bool:
        """Whether this stage is sent the request's inputs: it reads one, or it reads nothing else.

        A Ray Compiled Graph reaches every call from its input, so a stage that computes from constants alone
        (a mask, positions) is sent the request too, and ignores it.
        """
        return not self.upstream or any(isinstance(source, FromInput) for source in self.upstream)

    def arguments_given(self, inputs: Sequence[Any] | None, results: Sequence[Any]) -> list[Any]:
        """This stage's arguments, given the request's flat inputs (None where it reads none) and the results
        of the partitions it reads, in the order of `upstream`."""
        partition_results = iter(results)
        received = [inputs[source.position] if isinstance(source, FromInput) else next(partition_results)
                    for source in self.upstream]
        return self.arguments_from(received)

    def arguments_from(self, received: Sequence[Any]) -> list[Any]:
        """This stage's arguments, given the values of `upstream` in order."""
        slot = {source: position for position, source in enumerate(self.upstream)}
        arguments = []
        for argument in self.arguments:
            if isinstance(argument, Constant):
                arguments.append(argument.value)
            elif isinstance(argument, FromInput):
                arguments.append(received[slot[argument]])
            else:
                whole = received[slot[FromPartition(argument.partition)]]
                arguments.append(whole if argument.item is None else whole[argument.item])
        return arguments


@dataclass(frozen=True, slots=True)
class StageGraph:
    """The stages of a partitioned module in run order, and the sources of its flat outputs.

    `in_spec` and `out_spec` are the captured program's pytree specs: they turn a
    call's (args, kwargs) into flat inputs and flat outputs back into the model's
    output structure.
    """

    stages: tuple[Stage, ...]
    outputs: tuple[Source, ...]
    input_count: int
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec

    def flat_inputs(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
        try:
            flat = fx_pytree.tree_flatten_spec((tuple(args), dict(kwargs)), self.in_spec)
        except Exception as error:  # pytree raises several types for a structure that does not match
            raise PartitionerError(f"the inputs do not have the structure the model was captured with ({error}). "
                                   "Fix: call it with the inputs the plan was compiled for.") from error
        if len(flat) != self.input_count:
            raise PartitionerError(f"the inputs flatten to {len(flat)} values and the model takes "
                                   f"{self.input_count}. Fix: call it with the inputs the plan was compiled for.")
        return list(flat)

    def model_outputs(self, flat_inputs: Sequence[Any], results: dict[int, Any]) -> Any:
        """The model's outputs, from the flat inputs and each partition's results."""
        flat = [_value(source, flat_inputs, results) for source in self.outputs]
        return pytree.tree_unflatten(flat, self.out_spec)

    @property
    def consumers(self) -> dict[int, set[int | None]]:
        """For each partition, the partitions that read its results (None: the model's outputs read them)."""
        readers: dict[int, set[int | None]] = {stage.partition: set() for stage in self.stages}
        for stage in self.stages:
            for source in stage.upstream:
                if isinstance(source, FromPartition):
                    readers[source.partition].add(stage.partition)
        for source in self.outputs:
            if isinstance(source, FromPartition):
                readers[source.partition].add(None)
        return readers


def stage_graph(module: PartitionedModule) -> StageGraph:
    """The stages of `module`, read from its top-level graph."""
    graph_module = module.graph_module
    codegen = graph_module.graph._codegen
    pytree_info = getattr(codegen, "pytree_info", None)
    if pytree_info is None:
        raise PartitionerError("this partitioned module does not record how its inputs flatten. "
                               "Fix: build it from a captured program (plan.module()).")
    targets = {p.index: p.target for p in module.partitions}
    sources: dict[torch.fx.Node, Source] = {}
    stages = []
    placeholders = 0
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            sources[node] = FromInput(placeholders)
            placeholders += 1
        elif (index := partition_index(node)) is not None:
            arguments = tuple(_source(argument, sources, graph_module) for argument in node.args)
            stages.append(Stage(index, targets[index], arguments))
            sources[node] = FromPartition(index)
        elif node.op == "call_function" and node.target is operator.getitem and node.args[0] in sources:
            parent = sources[node.args[0]]
            if not isinstance(parent, FromPartition) or parent.item is not None:
                raise PartitionerError(f"the partitioned module takes an item of {node.args[0].name}, which is not a "
                                       "partition's results. Fix: report this model: the split should not make this.")
            sources[node] = FromPartition(parent.partition, node.args[1])
        elif node.op == "call_function" and node.target is to_device:
            sources[node] = _source(node.args[0], sources, graph_module)
        elif node.op == "output":
            outputs = tuple(_source(value, sources, graph_module) for value in pytree.tree_leaves(node.args[0]))
        elif node.op == "get_attr" or (node.op == "call_module" and not node.users):
            continue  # a weight read outside any partition, or the input guards, which the driver runs
        else:
            raise PartitionerError(f"the partitioned module runs {node.format_node()} outside any partition. "
                                   "Fix: report this model: every op should sit in a partition.")
    return StageGraph(tuple(stages), outputs, placeholders, pytree_info.in_spec, pytree_info.out_spec)


def _source(value: Any, sources: dict[torch.fx.Node, Source], graph_module: torch.fx.GraphModule) -> Source:
    if not isinstance(value, torch.fx.Node):
        return Constant(value)
    if value in sources:
        return sources[value]
    if value.op == "get_attr":
        return Constant(_attribute(graph_module, value.target))
    raise PartitionerError(f"the partitioned module passes {value.name} ({value.op}) between partitions, which "
                           "no stage makes. Fix: report this model: the split should not make this.")


def _attribute(module: torch.nn.Module, path: str) -> Any:
    value: Any = module
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _value(source: Source, flat_inputs: Sequence[Any], results: dict[int, Any]) -> Any:
    if isinstance(source, Constant):
        return source.value
    if isinstance(source, FromInput):
        return flat_inputs[source.position]
    whole = results[source.partition]
    return whole if source.item is None else whole[source.item]


def run_stages(graph: StageGraph, modules: dict[int, torch.nn.Module], flat_inputs: Sequence[Any]) -> Any:
    """Run the stages one after another in this process (what a worker does for its stages, for all of them)."""
    results: dict[int, Any] = {}
    for stage in graph.stages:
        received = [_value(source, flat_inputs, results) for source in stage.upstream]
        results[stage.partition] = modules[stage.partition](*stage.arguments_from(received))
    return graph.model_outputs(flat_inputs, results)
