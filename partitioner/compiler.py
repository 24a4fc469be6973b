"""`compile`: the whole planning pipeline as one call, shared by the Python API and the CLI.

capture -> annotate -> tag -> cost -> baselines -> solve -> Plan. Each step
is a pass of its own module; this module only composes them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cost_models.base import CostModel
from cost_models.roofline import RooflineCostModel
from partitioner.execution.partition_compilers import CompilerRefusal, refuse, refused_by_compilers
from partitioner.execution.split import split
from partitioner.frontend.capture import CapturedModel, capture
from partitioner.frontend.op_graph import OpGraph, annotate
from partitioner.placement.baselines import BASELINES, SERVING_BASELINES
from partitioner.placement.objectives import Objective, objective_named
from partitioner.placement.pins import Pin, apply_pins, parse_pins
from partitioner.placement.problem import build_problem
from partitioner.placement.solver import SolverOptions, solve
from partitioner.placement.tagging import Tagging, tag
from partitioner.plan import Plan
from partitioner.plan_records import ModelInfo, NodeRecord, TargetRecord
from targets.fleet import Fleet
from targets.loader import as_target_set
from targets.spec import TargetSet


def compile(  # noqa: A001 - the public name users asked for: partitioner.compile(...)
    model: torch.nn.Module,
    example_inputs: Any,
    targets: Sequence[str] | TargetSet | Fleet | None = None,
    objective: str | Objective = "latency",
    *,
    max_latency_seconds: float | None = None,
    min_throughput: float | None = None,
    fallback: str | None = None,
    time_limit_seconds: float = 30.0,
    workers: int = 0,
    seed: int = 0,
    deterministic: bool = False,
    cost_model: CostModel | None = None,
    name: str | None = None,
    pins: Sequence[str | Pin] = (),
    forbids: Sequence[str | Pin] = (),
) -> Plan:
    """Plan where each op of `model` runs: the cheapest placement on `targets` for `objective`.

    `targets` are built-in names or spec paths in priority order (default:
    npu-example and cuda-h100); `objective` is a registered objective or its
    name: "latency" (ops one after another), "cost" (money per request) or
    "makespan" (devices run concurrently); `max_latency_seconds` adds a
    latency limit (an SLO) to "latency" or "cost". `targets` may be a `Fleet` (targets/fleet.py: several devices
    of a kind, hosts and their links); "throughput" and "serving-cost" price a plan under many requests in flight
    (partitioner/placement/serving.py), the latter sized to `min_throughput` requests per second. `pins`
    (`"PATTERN=TARGET"`: an op key or module path, e.g. `"layers.*.self_attn=cuda-h100"`) put the matching ops on
    a target and `forbids` keep them off one (partitioner/placement/pins.py). The model may live on the `meta`
    device: planning needs no weights.
    """
    captured = capture(model, example_inputs, name=name)
    options = SolverOptions(time_limit_seconds=time_limit_seconds, workers=workers, seed=seed,
                            deterministic=deterministic)
    return compile_captured(captured, targets, objective, max_latency_seconds=max_latency_seconds,
                            min_throughput=min_throughput, fallback=fallback, solver_options=options,
                            cost_model=cost_model, pins=parse_pins(pins, forbids))


def compile_captured(
    captured: CapturedModel,
    targets: Sequence[str] | TargetSet | Fleet | None = None,
    objective: str | Objective = "latency",
    *,
    max_latency_seconds: float | None = None,
    min_throughput: float | None = None,
    fallback: str | None = None,
    solver_options: SolverOptions = SolverOptions(),
    cost_model: CostModel | None = None,
    pins: Sequence[Pin] = (),
) -> Plan:
    """`compile` for a model that is already captured (e.g. loaded from a file by the CLI)."""
    objective = objective_named(objective)
    target_set = targets.target_set(fallback) if isinstance(targets, Fleet) else as_target_set(targets, fallback)
    cost_model = cost_model or RooflineCostModel()
    graph = annotate(captured.program)
    tagging = apply_pins(graph, tag(graph, target_set), target_set, pins)
    strategies = {**BASELINES, **(SERVING_BASELINES if objective.serving else {})}
    refusals: list[CompilerRefusal] = []
    while True:  # again after each compiler refusal: refusals only narrow the tagging, so this ends
        problem = build_problem(graph, tagging, target_set, cost_model)
        baselines = {name: strategy(problem) for name, strategy in strategies.items()}
        placement = solve(problem, objective, solver_options, hints=baselines,
                          max_latency_seconds=max_latency_seconds, min_throughput=min_throughput)
        partitions = split(graph, placement.assignment)
        refused = refused_by_compilers(captured.program, graph, partitions, target_set)
        if not refused:
            break
        refusals += refused
        tagging = refuse(tagging, refused, target_set)
    return Plan(
        model=ModelInfo(captured.name, captured.source, graph.fingerprint(), len(graph),
                        sum(graph.parameter_bytes.values()), graph.total_flops),
        targets=_target_records(target_set),
        objective=objective,
        cost_model=cost_model.name,
        problem=problem,
        nodes=_node_records(graph, tagging, target_set, cost_model),
        placement=placement.assignment,
        solver=placement.report,
        baselines=baselines,
        partitions=partitions,
        max_latency_seconds=max_latency_seconds,
        order=placement.order,
        min_throughput=min_throughput,
        fleet=targets.describe() if isinstance(targets, Fleet) else None,
        pins=tuple(pins),
        captured=captured,
        compiler_refusals=tuple(refusals),
    )


def _target_records(targets: TargetSet) -> tuple[TargetRecord, ...]:
    """Each target as the plan records it; a fleet's device also says which spec it is and on which host."""
    topology = targets.topology
    return tuple(TargetRecord(t.name, t.kind, t.description, t.torch_device, t.onnx_execution_provider, t.spec_path,
                              spec=topology.spec_of[t.name] if topology else "",
                              host=topology.host_of[t.name] if topology else "", origin=t.origin)
                 for t in targets)


def _node_records(graph: OpGraph, tagging: Tagging, targets: TargetSet, cost_model: CostModel
                  ) -> tuple[NodeRecord, ...]:
    measured = getattr(cost_model, "measured", None)  # only cost models that measure can say what they measured
    return tuple(
        NodeRecord(
            name=node.name,
            op=node.op,
            module_path=node.module_path,
            output_shapes=tuple(t.shape for t in node.output_tensors),
            dtypes=tuple(dict.fromkeys(t.dtype for t in node.input_tensors + node.output_tensors)),
            flops=node.flops,
            bytes_read=node.bytes_read,
            bytes_written=node.bytes_written,
            parameter_bytes=node.parameter_bytes,
            refusals=tagging.refusals[node.name],
            measured_on=tuple(t.name for t in targets if measured and measured(node, t)),
            flops_known=node.flops_known,
        )
        for node in graph
    )
