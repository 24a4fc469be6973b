"""A plan checked against itself: every name it refers to is present, and its figures still hold.

A plan file's fields are checked one by one as they are read (partitioner/fields.py); what no single field
shows is checked here, once, on load, so that no command acts on an edited or damaged plan: the names its
parts share (targets, nodes, parameters, links, pins, compiler refusals), the placement and partitions against
its problem, the limits it was solved within (memory, latency, throughput) on its own cost table, and the
solver's figures.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Protocol

from partitioner.placement.baselines import BASELINES, SERVING_BASELINES
from partitioner.placement.objectives import registered_objectives
from partitioner.placement.pins import Pin
from partitioner.placement.problem import PlacementProblem
from partitioner.placement.rounding import ROUNDED_FLOOR
from partitioner.reporting.summary import ReportedPlan
from targets.spec_reader import torch_dtype_names


class CheckedPlan(ReportedPlan, Protocol):
    """What the checks read of a plan: what reports read, and its baselines, order and pins; `partitioner.plan.Plan`
    is one (a protocol, so that this module stays below partitioner/plan.py, which checks every plan it reads)."""

    @property
    def baselines(self) -> Mapping[str, Mapping[str, str]]: ...
    @property
    def order(self) -> tuple[str, ...]: ...
    @property
    def pins(self) -> tuple[Pin, ...]: ...


def plan_inconsistency(plan: CheckedPlan) -> str | None:
    """What in `plan` contradicts itself, or None. The checks run in order, each relying on those before it
    (names first, since scoring a placement looks every name up)."""
    for check in (_problem_names, _record_names, _fallback_inconsistency, _placement_inconsistency,
                  _limits_inconsistency, _report_inconsistency):
        problem = check(plan)
        if problem is not None:
            return problem
    return None


def _problem_names(plan: CheckedPlan) -> str | None:
    """A name the problem uses that it does not define: a node, target, parameter, link or link resource."""
    return next(_unknown_problem_names(plan.problem), None)


def _unknown_problem_names(problem: PlacementProblem) -> Iterator[str]:
    targets, nodes = list(problem.target_names), [node.name for node in problem.nodes]
    if len(set(targets)) != len(targets) or len(set(nodes)) != len(nodes):
        yield "its problem names a target or a node twice"
    if problem.fallback not in targets:
        yield f"its fallback {problem.fallback!r} is not one of its targets"
    known = set(nodes)
    for node in problem.nodes:
        strange = next((t for t in node.compute_seconds if t not in targets), None)
        if strange is not None:
            yield f"{node.name} has a compute time on {strange!r}, which is not one of its targets"
        if node.follows is not None and (node.follows not in known or node.follows == node.name):
            yield f"{node.name} follows {node.follows!r}, which is not another of its nodes"
        missing = next((p for p in node.parameters if p not in problem.parameter_bytes), None)
        if missing is not None:
            yield f"{node.name} uses the parameter {missing!r}, whose size it does not record"
    position = {name: index for index, name in enumerate(nodes)}
    for value in problem.values:
        stranger = next((n for n in (value.producer, *value.consumers) if n not in known), None)
        if stranger is not None:
            yield f"a value of {value.producer!r} names {stranger!r}, which is not one of its nodes"
        elif any(position[consumer] <= position[value.producer] for consumer in value.consumers):
            yield f"the value of {value.producer} is read by a node before it (its nodes run in graph order)"
    pairs = {(source, destination) for source in targets for destination in targets if source != destination}
    if set(problem.links) != pairs:
        yield "its links are not one per ordered pair of its targets"
    for pair, resources in problem.routes.items():
        unknown = next((r for r in resources if r not in problem.resource_bandwidth
                        and tuple(r.split("->")) not in problem.links), None)
        if pair not in pairs or unknown is not None:
            yield (f"its route from {pair[0]} to {pair[1]} crosses {unknown!r}, a link resource of no known bandwidth"
                   if unknown is not None else f"it routes copies from {pair[0]} to {pair[1]}, not a pair of targets")
    block_node = next((n for family in problem.blocks for block in family for n in block if n not in known), None)
    if block_node is not None:
        yield f"a block of its problem names {block_node!r}, which is not one of its nodes"
    hop_place = next((place for place in problem.hop_seconds if place not in targets), None)
    if hop_place is not None:
        yield f"it prices hops into {hop_place!r}, which is not one of its targets"
    adjacent_node = next((n for pair in problem.adjacent or () for n in pair[:2] if n not in known), None)
    if adjacent_node is not None:
        yield f"its sequence of ops names {adjacent_node!r}, which is not one of its nodes"


def _record_names(plan: CheckedPlan) -> str | None:
    """A name the plan's records use that its problem does not define."""
    targets = list(plan.problem.target_names)
    if [t.name for t in plan.targets] != targets:
        return "its targets differ from its problem's targets"
    names = {node.name for node in plan.problem.nodes}
    if {record.name for record in plan.nodes} != names or len(plan.nodes) != len(names):
        return "its node records differ from its problem's nodes"
    if plan.model.node_count != len(names):
        return f"its model has {plan.model.node_count} nodes by its own count and {len(names)} in its problem"
    for record in plan.nodes:
        strange = next((t for t in (*record.refusals, *record.measured_on) if t not in targets), None)
        if strange is not None:
            return f"node {record.name} names {strange!r}, which is not one of its targets"
        dtype = next((d for d in record.dtypes if d not in torch_dtype_names()), None)
        if dtype is not None:
            return f"node {record.name} names the dtype {dtype!r}, which torch does not have"
    specs = {t.spec_name for t in plan.targets} | set(targets)
    for pin in plan.pins:
        if pin.target not in specs:
            return f"{pin} names {pin.target!r}, which is not one of its targets"
        if not any(pin.matches(record) for record in plan.nodes):
            return f"{pin} matches none of its nodes"
    for refusal in plan.compiler_refusals:
        unknown = next((n for n in refusal.nodes if n not in names), None)
        if refusal.target not in specs or unknown is not None:
            return (f"a compiler refusal names the node {unknown!r}, which is not one of its nodes" if unknown
                    else f"a compiler refusal names {refusal.target!r}, which is not one of its targets")
    return None


def _fallback_inconsistency(plan: CheckedPlan) -> str | None:
    """A fallback that refuses some op for a reason of its own: the fallback runs every op, and only a pin or
    its compiler's refusal keeps one off it."""
    fallback = plan.problem.fallback
    spec = next(t.spec_name for t in plan.targets if t.name == fallback)
    for record in plan.nodes:
        if fallback not in record.refusals:
            continue
        pinned = any(pin.matches(record) for pin in plan.pins)
        refused = any(r.target in (fallback, spec) and record.name in r.nodes for r in plan.compiler_refusals)
        if not (pinned or refused):
            return (f"its fallback {fallback} refuses {record.name} ({record.refusals[fallback]}), so it cannot "
                    "run every op")
    return None


def _placement_inconsistency(plan: CheckedPlan) -> str | None:
    """A placement, baseline, partition or order that its problem does not allow."""
    problem = plan.problem
    names = [node.name for node in problem.nodes]
    for label, assignment in {"placement": plan.placement, **{f"baseline {n}": a for n, a in plan.baselines.items()}
                              }.items():
        reason = _assignment_inconsistency(problem, assignment)
        if reason is not None:
            return f"the {label} {reason}"
    home = {name: partition.index for partition in plan.partitions for name in partition.nodes}
    if sorted(home) != sorted(names) or sum(len(p.nodes) for p in plan.partitions) != len(names):
        return "its partitions do not hold every node exactly once"
    for index, partition in enumerate(plan.partitions):
        if not partition.nodes:
            return f"partition {partition.name} holds no node"
        if partition.index != index or any(plan.placement[name] != partition.target for name in partition.nodes):
            return f"partition {partition.name} is out of order or not on the target of its nodes"
    boundary = _boundary_inconsistency(plan, home)
    if boundary is not None:
        return boundary
    backwards = next((value.producer for value in problem.values for consumer in value.consumers
                      if home[value.producer] > home[consumer]), None)
    if backwards is not None:
        return f"the value of {backwards} flows back to an earlier partition"
    if plan.order and sorted(plan.order) != sorted(names):
        return "its order does not list every node once"
    return None


def _boundary_inconsistency(plan: CheckedPlan, home: Mapping[str, int]) -> str | None:
    """A partition input or output that is no value crossing its boundary, or a crossing value it does not list."""
    for partition in plan.partitions:
        strange = next((n for n in partition.inputs if n not in home or home[n] >= partition.index), None)
        if strange is not None:
            return f"partition {partition.name} reads {strange!r}, which no earlier partition makes"
        strange = next((n for n in partition.outputs if home.get(n) != partition.index), None)
        if strange is not None:
            return f"partition {partition.name} hands on {strange!r}, which it does not hold"
    for value in plan.problem.values:
        source = plan.partitions[home[value.producer]]
        for consumer in value.consumers:
            reader = plan.partitions[home[consumer]]
            if reader is not source and (value.producer not in source.outputs or value.producer not in reader.inputs):
                return (f"the value of {value.producer} crosses from partition {source.name} to {reader.name}, "
                        "which do not list it as an output and an input")
    return None


def _assignment_inconsistency(problem: PlacementProblem, assignment: Mapping[str, str]) -> str | None:
    if set(assignment) != {node.name for node in problem.nodes}:
        return "does not place every node exactly once"
    for node in problem.nodes:
        target = assignment[node.name]
        if target not in node.compute_seconds:
            known = target in problem.target_names
            return (f"puts {node.name} on {target}, which {'refuses it' if known else 'is not one of its targets'}")
        if node.follows is not None and target != assignment[node.follows]:
            return f"separates {node.name} from {node.follows}, which it must sit with"
    return None


def _limits_inconsistency(plan: CheckedPlan) -> str | None:
    """A limit the plan was solved within that its placement, scored on its own cost table, no longer meets
    (the solver keeps only placements that fit memory, keep phases apart and meet the limits)."""
    objective = plan.objective
    if plan.max_latency_seconds is not None and not objective.accepts_latency_limit:
        return f"it has a latency limit, which its objective {objective.name} does not take"
    if objective.needs_min_throughput and plan.min_throughput is None:
        return f"its objective {objective.name} needs a min_throughput, and it has none"
    result = plan.score()
    if not all(math.isfinite(figure) for figure in (result.latency_seconds, result.cost_per_request,
                                                   result.makespan_seconds)):
        return "its placement's latency or cost, scored on its cost table, is not a finite number"
    for target in plan.problem.targets:
        if target.name in result.over_capacity_bytes:
            return (f"its placement needs {result.memory_bytes[target.name]} bytes on {target.name}, whose "
                    f"memory_bytes is {target.memory_bytes}")
    if result.phase_conflicts:
        return f"its placement gives {result.phase_conflicts[0]} to both phases, which it keeps apart"
    if plan.max_latency_seconds is not None and result.latency_seconds > plan.max_latency_seconds:
        return (f"its placement takes {result.latency_seconds:g} s per request, over its max_latency_seconds "
                f"{plan.max_latency_seconds:g}")
    throughput = result.serving.throughput_per_second
    if plan.min_throughput is not None and throughput < plan.min_throughput * (1 - 1e-9):
        return f"its placement serves {throughput:g} requests/s, below its min_throughput {plan.min_throughput:g}"
    return None


def _report_inconsistency(plan: CheckedPlan) -> str | None:
    report = plan.solver
    if report.status not in ("OPTIMAL", "FEASIBLE"):
        return f"its solver status {report.status!r} is neither OPTIMAL nor FEASIBLE"
    if not 0 <= report.gap <= 1 or not 0 <= report.bound <= report.objective * (1 + 1e-9):
        return f"its solver gap {report.gap:g} or bound {report.bound:g} is impossible"
    gap = (report.objective - report.bound) / report.objective if report.objective > 0 else 0.0
    if abs(report.gap - gap) > 1e-6 or (report.status == "OPTIMAL" and gap > 1e-6):
        return (f"its solver says {report.status} with gap {report.gap:g}, and its objective {report.objective:g} "
                f"and bound {report.bound:g} make the gap {gap:g}")
    strategies = {*BASELINES, *SERVING_BASELINES}
    unknown = next((name for name in plan.baselines if name not in strategies), None)
    if unknown is not None:
        return f"it has a baseline {unknown!r}, which is no strategy of this version ({', '.join(strategies)})"
    seeds = {f"{seeding.name} plan" for seeding in registered_objectives()}
    if report.origin not in {"cp-sat", ROUNDED_FLOOR, *plan.baselines, *seeds}:
        return (f"its solver says its placement came from {report.origin!r}, neither cp-sat, the {ROUNDED_FLOOR} "
                "nor one of its baselines")
    rescored = plan.objective.value(plan.score())
    if not math.isfinite(rescored) or abs(rescored - report.objective) > 1e-9 * max(abs(rescored),
                                                                                    abs(report.objective), 1e-30):
        return (f"its solver objective {report.objective:g} is not what its placement scores on its cost table "
                f"({rescored:g})")
    return None
