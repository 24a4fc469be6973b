"""A torch.compile backend: each graph Dynamo captures is planned, split and run as placed.

    compiled = torch.compile(model, backend=partitioner.backend(targets=["npu-example", "cuda-h100"]))

Dynamo hands the backend one GraphModule per region between graph breaks; each
goes through capture -> `compile_captured` -> `Plan.module` on its own, and the
backend keeps every plan it made in `plans`, so one can see where each graph went.
Dynamo passes the model's weights as graph inputs; they are captured as the
plan's weights (so memory and weight transfers are priced) and bound at each call.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch._dynamo.source import (
    AttrSource,
    ChainedSource,
    DictGetItemSource,
    LocalSource,
    NNModuleSource,
    ParamBufferSource,
    UnspecializedParamBufferSource,
)

from cost_models.base import CostModel
from partitioner.compiler import compile_captured
from partitioner.execution.partitioned_module import (
    PartitionedModule,
    same_device,
    resolve_devices,
)
from partitioner.frontend.capture import capture
from partitioner.placement.objectives import Objective, objective_named
from partitioner.placement.solver import SolverOptions
from partitioner.plan import Plan
from targets.loader import as_target_set
from targets.spec import TargetSet

CompiledGraph = Callable[..., Any]


class PartitioningBackend:
    """What `backend` returns: a Dynamo backend that records the plan of every graph it placed.

    Dynamo calls it with a GraphModule and the graph's example inputs (the real
    tensors of the first call: parameters and buffers included, as Dynamo passes
    them as inputs; fake tensors when the model runs under a FakeTensorMode; SymInts
    for sizes under dynamic shapes, then each shape is planned on its first call).
    The inputs that are the model's weights are captured as the plan's parameters and
    buffers, so the plan prices their memory and residency as a CLI plan of the model
    does. It returns a callable that takes the same flat inputs (see `_PlacedGraph`).
    """

    def __init__(self, target_set: TargetSet, objective: Objective, solver_options: SolverOptions,
                 cost_model: CostModel | None, device_map: Mapping[str, str] | None):
        self.target_set = target_set
        self.objective = objective
        self.solver_options = solver_options
        self.cost_model = cost_model
        self.device_map = dict(device_map or {})
        self.plans: list[Plan] = []

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> CompiledGraph:
        if _has_symbolic_sizes(example_inputs):
            return _PlacedPerShape(lambda inputs: self.place(graph_module, inputs))
        return self.place(graph_module, example_inputs)

    def place(self, graph_module: torch.fx.GraphModule, inputs: Sequence[Any]) -> CompiledGraph:
        """Plan `graph_module` for `inputs`, record the plan, and return its partitioned module as a callable."""
        weights = _weight_inputs(graph_module, inputs)
        data = tuple(value for position, value in enumerate(inputs) if position not in weights)
        captured = capture(_GraphWithWeights(graph_module, inputs, weights), data,
                           name=f"dynamo_graph_{len(self.plans)}")
        plan = compile_captured(captured, self.target_set, self.objective, solver_options=self.solver_options,
                                cost_model=self.cost_model)
        self.plans.append(plan)
        return _PlacedGraph(plan.module(self.device_map), weights, inputs)


def backend(
    targets: Sequence[str] | TargetSet | None = None,
    objective: str | Objective = "latency",
    *,
    fallback: str | None = None,
    time_limit_seconds: float = 30.0,
    workers: int = 0,
    seed: int = 0,
    deterministic: bool = False,
    cost_model: CostModel | None = None,
    device_map: Mapping[str, str] | None = None,
) -> PartitioningBackend:
    """A backend for `torch.compile` that places each captured graph on `targets` for `objective`.

    Arguments mean what they mean for `partitioner.compile`; `device_map` what it
    means for `Plan.module`. Targets, objective and device map are checked here,
    so a mistake raises a `PartitionerError` now rather than inside Dynamo.
    """
    objective = objective_named(objective)
    target_set = as_target_set(targets, fallback)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulation warnings come again, once per graph, from Plan.module
        resolve_devices({t.name: t.torch_device for t in target_set}, device_map)
    options = SolverOptions(time_limit_seconds=time_limit_seconds, workers=workers, seed=seed,
                            deterministic=deterministic)
    return PartitioningBackend(target_set, objective, options, cost_model, device_map)


class _PlacedPerShape:
    """A graph with symbolic sizes, placed once per concrete input shape it is called with.

    Plans are for static shapes (targets may accept only those), so a dynamic
    graph gets a plan of its own for each shape it actually meets.
    """

    def __init__(self, place: Callable[[Sequence[Any]], CompiledGraph]):
        self._place = place
        self._compiled: dict[tuple, CompiledGraph] = {}

    def __call__(self, *inputs: Any) -> Any:
        key = tuple(_shape_key(value) for value in inputs)
        if key not in self._compiled:
            self._compiled[key] = self._place(inputs)
        return self._compiled[key](*inputs)


def _has_symbolic_sizes(example_inputs: Sequence[Any]) -> bool:
    """Whether Dynamo traced the graph with dynamic shapes (a size input, or a tensor with symbolic sizes)."""
    for value in example_inputs:
        if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return True
        if isinstance(value, torch.Tensor) and any(isinstance(size, torch.SymInt) for size in value.shape):
            return True
    return False


def _shape_key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.dtype, value.device
    return value  # a size passed as a Python number: the plan is specialised to it


_GRAPH_ATTRIBUTE = "dynamo_graph"  # where `_GraphWithWeights` keeps Dynamo's graph, beside the weights
# Names a weight's path cannot use: each of its steps is an attribute of an nn.Module, the first of the wrapper.
_MODULE_ATTRIBUTES = frozenset(dir(torch.nn.Module()))
_WRAPPER_ATTRIBUTES = frozenset({_GRAPH_ATTRIBUTE, "_weight_names", "_input_count"})


def _weight_inputs(graph_module: torch.fx.GraphModule, inputs: Sequence[Any]) -> dict[int, str]:
    """Input position -> weight name, for the inputs that are the model's parameters and buffers.

    An input is a weight when Dynamo read it from a module's `_parameters` or
    `_buffers` (the `source` of its placeholder's `grapharg` says so), or when it is
    an `nn.Parameter` however it came. Names are module paths (`blocks.0.weight`), as
    in a plan of the model itself; the placeholder's name where the source gives none.
    A path starts at the module Dynamo's frame got (a local such as `self` or `fn`),
    and with that local's name when weights come from more than one such module.
    """
    placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != len(inputs):
        return {}  # not a graph Dynamo made: nothing says which inputs are weights
    paths: dict[int, tuple[str, str] | None] = {}
    for position, (node, value) in enumerate(zip(placeholders, inputs)):
        source = getattr(node.meta.get("grapharg"), "source", None)
        if isinstance(value, torch.Tensor) and (isinstance(value, torch.nn.Parameter) or _reads_a_weight(source)):
            paths[position] = _module_path(source)
    one_root = len({path[0] for path in paths.values() if path is not None}) <= 1
    names = {position: placeholders[position].name if path is None else path[1] if one_root else ".".join(path)
             for position, path in paths.items()}
    if not _is_a_module_tree(list(names.values())):  # e.g. two roots' paths met: flat names cannot clash
        names = {position: placeholders[position].name for position in paths}
    return names


def _reads_a_weight(source: Any) -> bool:
    """Whether `source` reads through a module's `_parameters` or `_buffers` (Dynamo's sources for weights)."""
    while source is not None:
        if isinstance(source, (UnspecializedParamBufferSource, ParamBufferSource)):
            return True
        source = source.base if isinstance(source, ChainedSource) else None
    return False


def _module_path(source: Any) -> tuple[str, str] | None:
    """`L['self']._modules['blocks']._modules['0']._parameters['weight']` -> `("self", "blocks.0.weight")`.

    None for any other source than such a chain of module dictionaries from a local variable.
    """
    parts: list[str] = []
    while not isinstance(source, LocalSource):
        if isinstance(source, NNModuleSource):  # marks the module a source reaches; adds no step to the path
            source = source.base
            continue
        if not (isinstance(source, DictGetItemSource) and isinstance(source.index, str)
                and isinstance(source.base, AttrSource)
                and source.base.member in ("_modules", "_parameters", "_buffers")):
            return None
        parts.append(source.index)
        source = source.base.base
    return (source.local_name, ".".join(reversed(parts))) if parts else None


def _is_a_module_tree(names: Sequence[str]) -> bool:
    """Whether `names` can all be registered as weights at their paths in a `_GraphWithWeights`."""
    if len(set(names)) != len(names):
        return False
    leaves = set(names)
    for name in names:
        parts = name.split(".")
        if parts[0] in _WRAPPER_ATTRIBUTES or any(
                part in _MODULE_ATTRIBUTES or not (part.isidentifier() or part.isdigit()) for part in parts):
            return False
        if any(".".join(parts[:end]) in leaves for end in range(1, len(parts))):
            return False  # a weight where another one needs a module
    return True


class _GraphWithWeights(torch.nn.Module):
    """Dynamo's graph as a model that holds its weight inputs and takes only its data inputs.

    Capturing this, rather than the graph, makes the weights the program's parameters
    and buffers (torch.export's InputKind.PARAMETER / BUFFER): `annotate` then sees
    them, and the plan prices their bytes and where they reside, as for the model itself.
    The weights are the very tensors Dynamo passed, not copies.
    """

    def __init__(self, graph_module: torch.fx.GraphModule, inputs: Sequence[Any], weights: Mapping[int, str]):
        super().__init__()
        setattr(self, _GRAPH_ATTRIBUTE, graph_module)
        for position, name in weights.items():
            owner_path, _, leaf = name.rpartition(".")
            owner = self._module_at(owner_path)
            if isinstance(inputs[position], torch.nn.Parameter):
                owner.register_parameter(leaf, inputs[position])
            else:
                owner.register_buffer(leaf, inputs[position])
        self._weight_names = dict(weights)
        self._input_count = len(inputs)

    def _module_at(self, path: str) -> torch.nn.Module:
        owner: torch.nn.Module = self
        for part in path.split(".") if path else ():
            if part not in owner._modules:
                owner.add_module(part, torch.nn.Module())
            owner = owner._modules[part]
        return owner

    def forward(self, *data: Any) -> Any:
        remaining = iter(data)
        flat = [self._weight(self._weight_names[position]) if position in self._weight_names else next(remaining)
                for position in range(self._input_count)]
        return getattr(self, _GRAPH_ATTRIBUTE)(*flat)

    def _weight(self, name: str) -> torch.Tensor:
        owner_path, _, leaf = name.rpartition(".")
        return getattr(self.get_submodule(owner_path), leaf)


@dataclass(frozen=True, slots=True)
class _WeightSlot:
    """One place in a partitioned module that holds a weight: `holder[name]`, on `device`.

    `holder` is a module's `_parameters` or `_buffers`: the graph code reads the weight from there at each call.
    """

    holder: dict[str, torch.Tensor | None]
    name: str
    device: torch.device


class _PlacedGraph:
    """What the backend gives Dynamo for a graph: it takes Dynamo's flat inputs and runs the plan's module.

    The plan's module holds the weights and takes only the data inputs. Yet each
    call binds the weights Dynamo passes, for they need not be those of compile
    time: Dynamo calls one graph for every instance of a module class (each with
    its own weights), and training updates weights in place. A partition on a
    weight's own device holds the tensor itself, so it sees in-place updates and
    gradients reach the model. A partition on another device holds a copy, made
    anew when Dynamo passes another tensor or the tensor changed (its version
    counter moved), and, while autograd needs the weight's gradient, a
    differentiable copy per call: run inference under `torch.no_grad()` to keep
    such weights resident there. (A buffer the graph writes, such as batch-norm
    statistics in training, is written in the copy there, not in the model.)
    When nothing changed, binding costs an identity check per weight.
    """

    def __init__(self, module: PartitionedModule, weights: Mapping[int, str], inputs: Sequence[Any]):
        self.module = module
        self._weight_positions = tuple(weights)
        self._data_positions = tuple(position for position in range(len(inputs)) if position not in weights)
        self._slots = tuple(_weight_slots(module, name) for name in weights.values())
        self._bound: list[torch.Tensor | None] = [None] * len(weights)
        self._versions = [0] * len(weights)
        self._copied = [False] * len(weights)
        for index, position in enumerate(self._weight_positions):
            self._adopt(index, inputs[position])

    def __call__(self, *inputs: Any) -> Any:
        needs_grad = torch.is_grad_enabled()
        for index, position in enumerate(self._weight_positions):
            weight = inputs[position]
            if weight is not self._bound[index] or self._copied[index] and (
                    _version(weight) != self._versions[index] or needs_grad and weight.requires_grad):
                self._bind(index, weight, needs_grad)
        return self.module(*(inputs[position] for position in self._data_positions))

    def _adopt(self, index: int, weight: torch.Tensor) -> None:
        """Bind the weight the plan was made with, keeping the copies `Plan.module` already made of it."""
        for slot in self._slots[index]:
            if same_device(weight.device, slot.device):
                slot.holder[slot.name] = weight  # moving a partition may have re-wrapped it in a new Parameter
        self._remember(index, weight, any(not same_device(weight.device, slot.device) for slot in self._slots[index]))

    def _bind(self, index: int, weight: torch.Tensor, needs_grad: bool) -> None:
        copied = False
        for slot in self._slots[index]:
            if same_device(weight.device, slot.device):
                value = weight
            elif needs_grad and weight.requires_grad:
                value = weight.to(slot.device)  # autograd carries the gradient back to the model's weight
            else:
                value = weight.detach().to(slot.device)
            slot.holder[slot.name] = value
            copied = copied or value is not weight
        self._remember(index, weight, copied)

    def _remember(self, index: int, weight: torch.Tensor, copied: bool) -> None:
        self._bound[index] = weight
        self._versions[index] = _version(weight)
        self._copied[index] = copied


def _weight_slots(module: PartitionedModule, name: str) -> tuple[_WeightSlot, ...]:
    """Every place in `module` that holds the weight `name`: each partition that reads it has it at that path.

    The top-level graph counts only if it reads the weight itself: it keeps the captured weights as attributes.
    """
    owner_path, _, leaf = name.rpartition(".")
    read_at_top = any(node.op == "get_attr" and node.target == name for node in module.graph_module.graph.nodes)
    roots = [module.submodule(partition) for partition in module.partitions]
    slots: dict[int, _WeightSlot] = {}
    for root in [module.graph_module, *roots] if read_at_top else roots:
        owner: torch.nn.Module | None = root
        for part in owner_path.split(".") if owner_path else ():
            owner = owner._modules.get(part) if owner is not None else None
        for holder in (owner._parameters, owner._buffers) if owner is not None else ():
            if isinstance(holder.get(leaf), torch.Tensor):
                slots[id(owner)] = _WeightSlot(holder, leaf, holder[leaf].device)
    return tuple(slots.values())


def _version(tensor: torch.Tensor) -> int:
    """The tensor's version counter, which in-place writes advance (inference tensors have none: they stay 0)."""
    return 0 if tensor.is_inference() else tensor._version
