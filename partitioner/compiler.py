"""`compile`: the whole planning pipeline as one call, shared by the Python API and the CLI.

capture -> annotate -> tag -> cost -> baselines -> solve -> Plan. Each step
is a pass of its own module; this module only composes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from time import monotonic
from typing import Any, Callable, Sequence

import torch

from cost_models.base import CostModel
from cost_models.roofline import RooflineCostModel
from partitioner.errors import PartitionerError
from partitioner.execution.partition_compilers import CompilerRefusal, CompilerVerdicts, refuse
from partitioner.execution.split import Partition, split
from partitioner.frontend.capture import CapturedModel, capture
from partitioner.frontend.op_graph import OpGraph, annotate
from partitioner.placement.baselines import BASELINES, SERVING_BASELINES
from partitioner.placement.objectives import Objective, objective_named
from partitioner.placement.pins import Pin, apply_pins, parse_pins
from partitioner.placement.problem import DEFAULT_ENGINE_HOP_SECONDS, PlacementProblem, build_problem
from partitioner.placement.solver import Placement, SolverOptions, solve
from partitioner.placement.tagging import Tagging, tag
from partitioner.plan import Plan
from partitioner.plan_records import ModelInfo, NodeRecord, target_records
from partitioner.progress import Progress
from targets.fleet import Fleet
from targets.loader import as_target_set
from targets.spec import TargetSet

# Planning again after compiler refusals: each round refuses more, so it ends, but a compiler that refuses a
# little at a time must not keep the user waiting for ever; the rounds share one time limit, each with a floor.
MAX_PLANNING_ROUNDS = 10
ROUND_FLOOR_SECONDS = 1.0
ROUND_FLOOR_SHARE = 0.1

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
    progress: Progress | None = None,
    engine_hop_seconds: float = DEFAULT_ENGINE_HOP_SECONDS,
) -> Plan:
    """`compile` for a model that is already captured (e.g. loaded from a file by the CLI); `progress` shows each
    round of planning again after targets' compilers refused part of a plan. `engine_hop_seconds` is what the
    serving engine adds to every hop between partitions (partitioner/placement/hops.py): its default is an
    in-process pipeline's; a distributed engine's is measured by `benchmarks/engine_hop.py`."""
    started = monotonic()  # the time limit covers all of planning: costing and building as well as searching
    objective = objective_named(objective)
    graph = annotate(captured.program)
    # A fleet's identical devices beyond one per op can never all be used: they are left out of the search.
    target_set = (targets.target_set(fallback, most_of_each=len(graph)) if isinstance(targets, Fleet)
                  else as_target_set(targets, fallback))
    cost_model = cost_model or RooflineCostModel()
    tagging = apply_pins(graph, tag(graph, target_set), target_set, pins)
    planned = _plan_until_compilers_accept(
        captured, graph, tagging, target_set, lambda tags: build_problem(graph, tags, target_set, cost_model,
                                                                         engine_hop_seconds),
        objective, solver_options, progress,
        {"max_latency_seconds": max_latency_seconds, "min_throughput": min_throughput}, started)
    placement = planned.placement
    return Plan(
        model=ModelInfo(captured.name, captured.source, graph.fingerprint(), len(graph),
                        sum(graph.parameter_bytes.values()), graph.total_flops),
        targets=target_records(target_set),
        objective=objective,
        cost_model=cost_model.name,
        problem=planned.problem,
        nodes=_node_records(graph, planned.tagging, target_set, cost_model),
        placement=placement.assignment,
        solver=placement.report,
        baselines=planned.baselines,
        partitions=planned.partitions,
        max_latency_seconds=max_latency_seconds,
        order=placement.order,
        min_throughput=min_throughput,
        fleet=(targets.describe(planned_on=len(target_set), ops=len(graph)) if isinstance(targets, Fleet)
               else None),
        pins=tuple(pins),
        captured=captured,
        compiler_refusals=planned.refusals,
    )


@dataclass(frozen=True, slots=True)
class _Planned:
    """The plan that every target's compiler took, what it was solved from, and what they refused on the way."""

    problem: PlacementProblem
    baselines: dict[str, Placement]
    placement: Placement
    partitions: tuple[Partition, ...]
    tagging: Tagging
    refusals: tuple[CompilerRefusal, ...]


def _plan_until_compilers_accept(captured: CapturedModel, graph: OpGraph, tagging: Tagging, targets: TargetSet,
                                 problem_of: Callable[[Tagging], PlacementProblem], objective: Objective,
                                 options: SolverOptions,
                                 progress: Progress | None, limits: dict[str, float | None],
                                 started: float) -> _Planned:
    """Solve, split, and hand each partition to its target's compiler; while a compiler refuses, plan again
    without what it refused, in at most MAX_PLANNING_ROUNDS rounds that share the one time limit (counted from
    `started`, monotonic seconds)."""
    strategies = {**BASELINES, **(SERVING_BASELINES if objective.serving else {})}
    verdicts = CompilerVerdicts(captured.program, graph, targets)
    refusals: list[CompilerRefusal] = []
    for round_number in range(1, MAX_PLANNING_ROUNDS + 1):
        if round_number > 1 and progress is not None:
            count = f"{len(refusals)} refusal{'s' if len(refusals) != 1 else ''}"
            progress.counted(round_number, MAX_PLANNING_ROUNDS,
                             f"rounds: planning again without what compilers refused ({count} so far)")
        if progress is not None:
            progress.note(f"costing {len(graph)} ops on {len(targets)} devices")
        problem = problem_of(tagging)
        baselines = {name: strategy(problem) for name, strategy in strategies.items()}
        if progress is not None:
            progress.note(f"searching ({', '.join(baselines)} found; {_moves(problem):,} possible moves of tensors)")
        placement = solve(problem, objective, _round_options(options, started, round_number), hints=baselines,
                          **limits)
        partitions = split(graph, placement.assignment)
        refused = verdicts.refusals(partitions)
        if not refused:
            return _Planned(problem, baselines, placement, partitions, tagging, tuple(refusals))
        refusals += refused
        tagging = refuse(tagging, refused, targets)
    raise _still_refused(refusals)


def _round_options(options: SolverOptions, started: float, round_number: int) -> SolverOptions:
    """The solver's options for one round of planning: the rounds share the user's time limit with the costing
    before them, each taking what is left, but no less than a floor in which a round still finds a plan. In
    deterministic mode what is left cannot be read off the clock without losing determinism, so the first round
    gets the whole limit and every round after it the floor."""
    limit = options.time_limit_seconds
    floor = min(limit, max(ROUND_FLOOR_SECONDS, ROUND_FLOOR_SHARE * limit))
    if options.deterministic:
        return options if round_number == 1 else replace(options, time_limit_seconds=floor)
    return replace(options, time_limit_seconds=max(limit - (monotonic() - started), floor))


def _moves(problem: PlacementProblem) -> int:
    """How many (tensor, source, destination) moves the search weighs: what makes a fleet's search large."""
    return sum(len(problem.node(v.producer).supported) * len({t for c in v.consumers
                                                              for t in problem.node(c).supported})
               for v in problem.values)


def _still_refused(refusals: Sequence[CompilerRefusal]) -> PartitionerError:
    """The error when the compilers still refuse after the last round: the refusals that kept coming back."""
    causes = Counter((refusal.target, refusal.reason) for refusal in refusals)
    named = "; ".join(f"{target}'s compiler {count} time{'s' if count != 1 else ''}: {reason}"
                      for (target, reason), count in causes.most_common(3))
    target = causes.most_common(1)[0][0][0]
    return PartitionerError(
        f"the targets' compilers still refused part of the plan after {MAX_PLANNING_ROUNDS} rounds of planning, "
        f"each without what they had refused ({named}). Fix: keep the ops they refuse off {target} with --forbid "
        f"PATTERN={target}, plan without {target}, or report the refusals to its vendor.")


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
