"""The simple placement rules the solver must beat, computed on the same problem.

`fallback` puts everything on the fallback target. `priority` is the common
rule of thumb: targets, in the order given, claim every op they support (while
their memory lasts); the rest falls back. Both also seed the solver as hints,
and for the serving objectives so does `pipeline`, the contiguous stages
pipeline partitioners cut.
`capability_placement` is torch.fx's CapabilityBasedPartitioner delegating to
one accelerator; it needs the fx graph, so it is not one of `BASELINES`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping, Sequence

import torch
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import create_op_support

from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.memory import activation_arena_bytes, memory_bytes
from partitioner.placement.pipeline import pipeline_placement
from partitioner.placement.problem import PlacementProblem, check_assignment
from partitioner.placement.tagging import Tagging

Assignment = dict[str, str]


def fallback_placement(problem: PlacementProblem) -> Assignment:
    """Every node on the fallback target (a pinned one where its pin says)."""
    assignment = {node.name: problem.home(node.name) for node in problem.nodes}
    check_assignment(problem, assignment)
    return assignment


def priority_placement(problem: PlacementProblem, order: Sequence[str] | None = None,
                       reserve: Mapping[str, int] | None = None) -> Assignment:
    """Each node on the first target (in priority order, or in `order`) that supports it and has memory left
    (less the bytes `reserve` keeps free on a target).

    Views and bookkeeping nodes go where their input is, so they never cause a
    cut on their own; views of model inputs or weights go where their first user is.
    """
    order = tuple(order or problem.target_names)
    producers = _first_producers(problem)
    assignment: Assignment = {}
    used = {t.name: (reserve or {}).get(t.name, 0) for t in problem.targets}
    arena = {t.name: activation_arena_bytes(problem, t.name) for t in problem.targets}
    resident: dict[str, set[str]] = {t.name: set() for t in problem.targets}
    carried: dict[str, list[str]] = defaultdict(list)  # per node, the weights of the nodes that follow it there
    for node in problem.nodes:
        if node.follows is not None:
            carried[node.follows] += node.parameters
    pending = []  # views placed by their users, and the nodes that follow them
    for node in problem.nodes:
        anchor = node.follows or (producers.get(node.name) if node.kind is not NodeKind.COMPUTE else None)
        if anchor is not None and assignment.get(anchor) in node.compute_seconds:
            assignment[node.name] = assignment[anchor]
        elif node.kind is NodeKind.VIEW or node.follows in pending:
            pending.append(node.name)
            continue
        else:
            assignment[node.name] = _first_with_room(problem, node.name, order, used, resident, arena,
                                                     carried[node.name])
        _make_resident(problem, node.name, assignment[node.name], used, resident)
    for name in reversed(pending):
        # A follower's tentative place lets the view it follows see past it to its users.
        assignment[name] = _first_user_target(problem, name, assignment)
    for name in pending:
        follows = problem.node(name).follows
        if follows is not None:
            assignment[name] = assignment[follows]
        _make_resident(problem, name, assignment[name], used, resident)
    check_assignment(problem, assignment)
    return assignment


def capability_placement(problem: PlacementProblem, graph_module: torch.fx.GraphModule,
                         tagging: Tagging) -> Assignment:
    """torch.fx's CapabilityBasedPartitioner plan: its partitions on the first accelerator, the rest on the fallback.

    The accelerator is the first non-fallback target in priority order; a node
    is supported when the tagging says that target runs it. This is how a
    single-delegate backend would split the model, memory unchecked; a group of
    nodes that must share a target goes there only if the partitioner claimed
    all of it. `graph_module` is the captured program's, whose node names the problem uses.
    """
    accelerator = next((name for name in problem.target_names if name != problem.fallback), None)
    if accelerator is None:
        return fallback_placement(problem)
    support = create_op_support(
        lambda submodules, node: node.op == "call_function" and accelerator in tagging.supported.get(node.name, ())
    )
    partitions = CapabilityBasedPartitioner(graph_module, support).propose_partitions()
    claimed = {node.name for partition in partitions for node in partition.nodes}
    groups: dict[str, list[str]] = defaultdict(list)
    for node in problem.nodes:
        groups[node.follows or node.name].append(node.name)
    assignment: Assignment = {}
    for leader, members in groups.items():
        runs_there = accelerator in problem.node(leader).compute_seconds and claimed.issuperset(members)
        assignment.update(dict.fromkeys(members, accelerator if runs_there else problem.home(leader)))
    check_assignment(problem, assignment)
    return assignment


def fastest_first_placement(problem: PlacementProblem) -> Assignment:
    """`priority` with the targets ordered by speed instead: each node on the fastest device with memory left,
    a device's speed being its compute seconds over the fallback's for the ops it runs. The plan that keeps a
    request's latency (an LLM's TTFT and TPOT) low when the model does not fit the fastest device alone."""
    def slowness(target: str) -> float:
        nodes = [n for n in problem.nodes if target in n.compute_seconds and problem.fallback in n.compute_seconds]
        own = sum(n.compute_seconds[target] for n in nodes)
        return own / (sum(n.compute_seconds[problem.fallback] for n in nodes) or own or 1.0)

    order = sorted(problem.target_names, key=slowness)
    reserve: dict[str, int] = defaultdict(int)
    for _ in range(3):  # views and followers placed beside their anchors unchecked may overfill a device a little
        assignment = priority_placement(problem, order, reserve)
        held = memory_bytes(problem, assignment)
        over = {t.name: held[t.name] - t.memory_bytes for t in problem.targets if held[t.name] > t.memory_bytes}
        if not over:
            break
        for target, excess in over.items():
            reserve[target] += excess
    return assignment


BASELINES: dict[str, Callable[[PlacementProblem], Assignment]] = {
    "fallback": fallback_placement,
    "priority": priority_placement,
}
# Baselines of the serving objectives only: what pipeline partitioners do (partitioner/placement/pipeline.py), and
# the fastest devices filled first.
SERVING_BASELINES: dict[str, Callable[[PlacementProblem], Assignment]] = {"pipeline": pipeline_placement,
                                                                         "fastest-first": fastest_first_placement}


def _first_with_room(problem: PlacementProblem, name: str, order: Sequence[str], used: dict[str, int],
                     resident: dict[str, set[str]], arena: dict[str, int], carried: Sequence[str] = ()) -> str:
    """The first supporting target with room for the node's weights (and the `carried` weights of the nodes that
    will follow it there) beside what is already resident there (`used` bytes) and its activation `arena`; the
    node's home (the fallback) when none has room. A fallback early in the priority order (a fleet of one kind)
    is filled like any other device, then the next takes over."""
    node = problem.node(name)
    needs = set(node.parameters) | set(carried)
    for target in (t for t in order if t in node.compute_seconds):
        extra = sum(problem.parameter_bytes[p] for p in needs if p not in resident[target])
        capacity = problem.target(target).memory_bytes
        if used[target] + extra + arena[target] <= capacity and node.working_bytes <= capacity:
            return target
    return problem.home(name)


def _make_resident(problem: PlacementProblem, name: str, target: str, used: dict[str, int],
                   resident: dict[str, set[str]]) -> None:
    for parameter in problem.node(name).parameters:
        if parameter not in resident[target]:
            resident[target].add(parameter)
            used[target] += problem.parameter_bytes[parameter]


def _first_producers(problem: PlacementProblem) -> dict[str, str]:
    """For each node, the producer of the first value it reads."""
    producers: dict[str, str] = {}
    for value in problem.values:
        for consumer in value.consumers:
            producers.setdefault(consumer, value.producer)
    return producers


def _first_user_target(problem: PlacementProblem, name: str, assignment: Assignment) -> str:
    node = problem.node(name)
    for value in problem.values:
        if value.producer == name:
            for consumer in value.consumers:
                if assignment.get(consumer) in node.compute_seconds:
                    return assignment[consumer]
    return problem.home(name)
