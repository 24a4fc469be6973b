"""A torch.compile backend: each graph Dynamo captures is planned, split and run as placed.

    compiled = torch.compile(model, backend=partitioner.backend(targets=["npu-example", "cuda-h100"]))

Dynamo hands the backend one GraphModule per region between graph breaks; each
goes through capture -> `compile_captured` -> `Plan.module` on its own, and the
backend keeps every plan it made in `plans`, so one can see where each graph went.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from cost_models.base import CostModel
from partitioner.compiler import compile_captured
from partitioner.execution.partitioned_module import resolve_devices
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
    tensors of the first call: parameters included, as Dynamo passes them as
    inputs; fake tensors when the model runs under a FakeTensorMode; SymInts for
    sizes under dynamic shapes, then each shape is planned on its first call). It returns
    the graph's partitioned module, which Dynamo calls with the same flat inputs.
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
        """Plan `graph_module` for `inputs`, record the plan, and return its partitioned module's forward."""
        captured = capture(graph_module, tuple(inputs), name=f"dynamo_graph_{len(self.plans)}")
        plan = compile_captured(captured, self.target_set, self.objective, solver_options=self.solver_options,
                                cost_model=self.cost_model)
        self.plans.append(plan)
        return plan.module(self.device_map).forward


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
