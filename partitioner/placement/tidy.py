"""Tidying a solved placement: free nodes the objective is indifferent to go where the other figures are best.

A free node (a view, a runtime assert, dead code: no compute, no weights) can
often sit on several targets at the same objective: a makespan plan does not
care where a weight `transpose` waits, and an assert on a model input runs
nowhere at all. Left where the search dropped it, such a node costs latency,
money or a partition of its own. `tidy` moves each free node (with the nodes
that must follow it) to the target where, the objective no worse, latency,
then money per request, transfer bytes, targets used and memory held are lowest.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping

from partitioner.placement.objectives import Objective
from partitioner.placement.problem import PlacementProblem, ProblemNode
from partitioner.placement.scoring import Score, score


def tidy(problem: PlacementProblem, assignment: Mapping[str, str], objective: Objective,
         allowed: Callable[[Score], bool], order: tuple[str, ...] = ()) -> tuple[dict[str, str], Score]:
    """`assignment` with free nodes moved where the objective is no worse and the secondary figures better;
    only placements `allowed` accepts (memory, a latency limit) are taken. Returns it and its score."""
    assignment = dict(assignment)
    current = score(problem, assignment, order or None)
    groups = _follower_groups(problem)
    neighbours = _neighbours(problem)
    for node in problem.nodes:
        if not _is_free(node) or node.follows is not None:
            continue
        members = groups[node.name]
        supported = set.intersection(*(set(problem.node(m).supported) for m in members))
        # Only a neighbour's target can save a transfer; a node with none at all (an assert on a model input,
        # dead code) should at least not hold a target that runs nothing else.
        near = {assignment[n] for m in members for n in neighbours[m] if n not in members}
        candidates = near or {assignment[n.name] for n in problem.nodes if n.name not in members}
        for target in sorted((candidates & supported) - {assignment[node.name]}, key=problem.target_names.index):
            moved = {**assignment, **dict.fromkeys(members, target)}
            result = score(problem, moved, order or None)
            if allowed(result) and _better(result, moved, current, assignment, objective):
                assignment, current = moved, result
    return assignment, current


def _is_free(node: ProblemNode) -> bool:
    return not node.parameters and all(seconds == 0 for seconds in node.compute_seconds.values())


def _neighbours(problem: PlacementProblem) -> dict[str, set[str]]:
    """For each node, the nodes whose tensors it reads and the nodes that read its tensors."""
    neighbours: dict[str, set[str]] = defaultdict(set)
    for value in problem.values:
        for consumer in value.consumers:
            neighbours[consumer].add(value.producer)
            neighbours[value.producer].add(consumer)
    return neighbours


def _follower_groups(problem: PlacementProblem) -> dict[str, list[str]]:
    """Each node with the nodes that must sit with it (a multi-output op's getitems, in-place writers)."""
    leader: dict[str, str] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for node in problem.nodes:  # topological: a node's leader is known before it
        leader[node.name] = leader[node.follows] if node.follows is not None else node.name
        groups[leader[node.name]].append(node.name)
    return groups


def _better(result: Score, moved: Mapping[str, str], current: Score, assignment: Mapping[str, str],
            objective: Objective) -> bool:
    """Whether `result` (of `moved`) is no worse than `current` (of `assignment`) for the objective (to 1e-12) and
    better by latency, money, bytes moved, targets used (each is a device to provision), then memory held."""
    new, old = objective.value(result), objective.value(current)
    if new > old + 1e-12 * max(abs(old), 1e-30):
        return False
    if new < old - 1e-12 * max(abs(old), 1e-30):
        return True
    return _secondary(result, moved) < _secondary(current, assignment)


def _secondary(result: Score, assignment: Mapping[str, str]) -> tuple[float, float, int, int, int]:
    return (result.latency_seconds, result.cost_per_request, result.transfer_bytes, len(set(assignment.values())),
            sum(result.memory_bytes.values()))
