"""Tidying a solved placement: free nodes the objective is indifferent to go where the other figures are best.

A free node (a view, a runtime assert, dead code: no compute anywhere) can
often sit on several targets at the same objective: a makespan plan does not
care where a weight `transpose` waits, and an assert on a model input runs
nowhere at all. Left where the search dropped it, such a node costs latency,
money or a partition of its own. `tidy` moves each free node (with the nodes
that must follow it) to the neighbouring target where its tensors' transfers
take less time, then money, then bytes, or, with no transfers at stake, where
the plan uses one target fewer. Moves are judged on the tensors they touch, so
a 70B graph tidies in seconds; the whole result is then scored once, and kept
only if its objective is no worse and it is still allowed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, Iterable, Mapping

from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.objectives import COST, Objective
from partitioner.placement.problem import PlacementProblem, ProblemNode, ProblemValue
from partitioner.placement.scoring import Score, score


def tidy(problem: PlacementProblem, assignment: Mapping[str, str], objective: Objective,
         allowed: Callable[[Score], bool], order: tuple[str, ...] = ()) -> tuple[dict[str, str], Score]:
    """`assignment` with free nodes moved where their transfers cost less; `assignment` itself (and its score)
    when the moves together would make the objective worse or the plan not `allowed` (memory, a latency limit)."""
    original = score(problem, assignment, order or None)
    moved = dict(assignment)
    groups = _follower_groups(problem)
    touching = _values_touching(problem)
    runs = Counter(moved.values())
    for node in problem.nodes:
        if not _is_free(node) or node.follows is not None:
            continue
        members = groups[node.name]
        values = list(dict.fromkeys(v for m in members for v in touching[m]))
        here = moved[node.name]
        best, best_key = here, (0.0, 0.0, 0, 0)
        for target in _candidates(problem, members, values, moved, runs):
            trial = {**moved, **dict.fromkeys(members, target)}
            before, after = _transfer_figures(problem, values, moved), _transfer_figures(problem, values, trial)
            fewer_targets = -1 if runs[here] == len(members) and runs[target] > 0 else 0
            key = (*(_change(old, new) for old, new in zip(before, after)), fewer_targets)
            if key < best_key:
                best, best_key = target, key
        if best != here:
            moved.update(dict.fromkeys(members, best))
            runs[here] -= len(members)
            runs[best] += len(members)
    result = score(problem, moved, order or None)
    tolerance = 1e-12 * max(abs(objective.value(original)), 1e-30)
    if allowed(result) and objective.value(result) <= objective.value(original) + tolerance:
        return moved, result
    return dict(assignment), original


def _change(old: float, new: float) -> float:
    """`new - old`, with rounding noise (a sum taken in another order) read as no change."""
    return 0.0 if abs(new - old) <= 1e-12 * max(abs(old), abs(new)) else new - old


def _is_free(node: ProblemNode) -> bool:
    """Does no work worth a cut: a view or bookkeeping op, or computes nothing anywhere. Unlike the reduction's
    `is_free`, it may hold weights (an assert on a buffer): tidy checks memory on its result."""
    return node.kind is not NodeKind.COMPUTE or all(seconds == 0 for seconds in node.compute_seconds.values())


def _candidates(problem: PlacementProblem, members: list[str], values: list[ProblemValue],
                assignment: Mapping[str, str], runs: Counter) -> list[str]:
    """Targets the group could move to: those of its neighbours (only they can save a transfer) or, for a group
    with none (an assert on a model input, dead code), every target the plan uses; all must support it."""
    supported = set.intersection(*(set(problem.node(m).supported) for m in members))
    neighbours = {name for v in values for name in (v.producer, *v.consumers)} - set(members)
    near = {assignment[name] for name in neighbours} or {t for t, count in runs.items() if count > 0}
    here = assignment[members[0]]
    return [t for t in problem.target_names if t in near and t in supported and t != here]


def _transfer_figures(problem: PlacementProblem, values: Iterable[ProblemValue],
                      assignment: Mapping[str, str]) -> tuple[float, float, int]:
    """Seconds, money and bytes of the transfers of `values` under `assignment` (once per tensor and device)."""
    seconds = money = 0.0
    moved_bytes = 0
    for value in values:
        source = assignment[value.producer]
        for destination in dict.fromkeys(assignment[c] for c in value.consumers):
            if destination != source:
                time = problem.transfer_seconds(value.num_bytes, source, destination)
                seconds += time
                money += time * COST.rate(problem, (source, destination))
                moved_bytes += value.num_bytes
    return seconds, money, moved_bytes


def _values_touching(problem: PlacementProblem) -> dict[str, list[ProblemValue]]:
    """For each node, the tensors it produces or reads."""
    touching: dict[str, list[ProblemValue]] = defaultdict(list)
    for value in problem.values:
        touching[value.producer].append(value)
        for consumer in dict.fromkeys(value.consumers):
            touching[consumer].append(value)
    return touching


def _follower_groups(problem: PlacementProblem) -> dict[str, list[str]]:
    """Each node with the nodes that must sit with it (a multi-output op's getitems, in-place writers)."""
    leader: dict[str, str] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for node in problem.nodes:  # topological: a node's leader is known before it
        leader[node.name] = leader[node.follows] if node.follows is not None else node.name
        groups[leader[node.name]].append(node.name)
    return groups
