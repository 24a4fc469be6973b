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
from typing import Callable

import torch
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import create_op_support

from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.memory import activation_arena_bytes
from partitioner.placement.pipeline import pipeline_placement
from partitioner.placement.problem import PlacementProblem, check_assignment
from partitioner.placement.tagging import Tagging

Assignment = dict[str, str]


def fallback_placement(problem: PlacementProblem) -> Assignment:
    """Every node on the fallback target (a pinned one where its pin says)."""
    assignment = {node.name: problem.home(node.name) for node in problem.nodes}
    check_assignment(problem, assignment)
    return assignment


def priority_placement(problem: PlacementProblem) -> Assignment:
    """Each node on the first target (in priority order) that supports it and has memory left.

    Views and bookkeeping nodes go where their input is, so they never cause a
    cut on their own; views of model inputs or weights go where their first user is.
    """
    producers = _first_producers(problem)
    assignment: Assignment = {}
    used = {t.name: 0 for t in problem.targets}
    arena = {t.name: activation_arena_bytes(problem, t.name) for t in problem.targets}
    resident: dict[str, set[str]] = {t.name: set() for t in problem.targets}
    pending = []  # views placed by their users, and the nodes that follow them
    for node in problem.nodes:
        anchor = node.follows or (producers.get(node.name) if node.kind is not NodeKind.COMPUTE else None)
        if anchor is not None and assignment.get(anchor) in node.compute_seconds:
            assignment[node.name] = assignment[anchor]
        elif node.kind is NodeKind.VIEW or node.follows in pending:
            pending.append(node.name)
            continue
        else:
            assignment[node.name] = _first_with_room(problem, node.name, used, resident, arena)
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


BASELINES: dict[str, Callable[[PlacementProblem], Assignment]] = {
    "fallback": fallback_placement,
    "priority": priority_placement,
}
# Baselines of the serving objectives only: what pipeline partitioners do (partitioner/placement/pipeline.py).
SERVING_BASELINES: dict[str, Callable[[PlacementProblem], Assignment]] = {"pipeline": pipeline_placement}


def _first_with_room(problem: PlacementProblem, name: str, used: dict[str, int],
                     resident: dict[str, set[str]], arena: dict[str, int]) -> str:
    """The first supporting target with room for the node's weights beside what is already resident there
    (`used` bytes) and its activation `arena`."""
    node = problem.node(name)
    for target in node.supported:
        extra = sum(problem.parameter_bytes[p] for p in node.parameters if p not in resident[target])
        capacity = problem.target(target).memory_bytes
        room = used[target] + extra + arena[target] <= capacity
        if target == problem.fallback or (room and node.working_bytes <= capacity):
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
