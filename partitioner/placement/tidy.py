"""Tidying a solved placement: free nodes the objective is indifferent to go where the other figures are best.

A free node (a view, a runtime assert, dead code: no compute anywhere) can
often sit on several targets at the same objective: a makespan plan does not
care where a weight `transpose` waits, and an assert on a model input runs
nowhere at all. Left where the search dropped it, such a node costs latency,
money or a partition of its own. `tidy` moves each free node (with the nodes
that must follow it) to the neighbouring target where its tensors' transfers
take less time, then money, then bytes, or, with no transfers at stake, where
the plan uses one target fewer. A group that exchanges no tensor at all (an
assert on a weight or a model input) goes to a target the rest of the plan
uses, one holding its weights if any does. Moves are judged on the tensors they touch, so
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
    tethered, untethered = [], []
    for node in problem.nodes:
        if _is_free(node) and node.follows is None:
            members = groups[node.name]
            values = list(dict.fromkeys(v for m in members for v in touching[m]))
            (tethered if values else untethered).append((members, values))
    runs = Counter(moved[name] for name in moved if name not in {m for members, _ in untethered for m in members})
    for members, values in tethered:
        _move_if_cheaper(problem, members, values, moved, runs)
    _set_down(problem, [members for members, _ in untethered], moved)
    result = score(problem, moved, order or None)
    tolerance = 1e-12 * max(abs(objective.value(original)), 1e-30)
    if allowed(result) and objective.value(result) <= objective.value(original) + tolerance:
        return moved, result
    return dict(assignment), original


def _move_if_cheaper(problem: PlacementProblem, members: list[str], values: list[ProblemValue],
                     assignment: dict[str, str], runs: Counter) -> None:
    """Move a free group to the neighbouring target where its tensors' transfers take less time, then money, then
    bytes, or, with no transfers at stake, where the plan uses one target fewer."""
    here = assignment[members[0]]
    best, best_key = here, (0.0, 0.0, 0, 0)
    for target in _candidates(problem, members, values, assignment, runs):
        trial = {**assignment, **dict.fromkeys(members, target)}
        before, after = _transfer_figures(problem, values, assignment), _transfer_figures(problem, values, trial)
        fewer_targets = -1 if runs[here] == len(members) and runs[target] > 0 else 0
        key = (*(_change(old, new) for old, new in zip(before, after)), fewer_targets)
        if key < best_key:
            best, best_key = target, key
    if best != here:
        assignment.update(dict.fromkeys(members, best))
        runs[here] -= len(members)
        runs[best] += len(members)


def _set_down(problem: PlacementProblem, untethered: list[list[str]], assignment: dict[str, str]) -> None:
    """Put each group that exchanges no tensor with any node (an assert on a weight or a model input) on a target
    the rest of the plan uses, preferring one that already holds its weights, else staying where it is.

    Judged against the other nodes only: groups like these, left together on a target nothing else uses, would
    each see the others keep it busy and stay, and make a partition that does nothing.
    """
    grouped = {name for members in untethered for name in members}
    hosts: Counter = Counter()
    held: dict[str, set[str]] = defaultdict(set)
    for node in problem.nodes:
        if node.name not in grouped:
            hosts[assignment[node.name]] += 1
            held[assignment[node.name]].update(node.parameters)
    for members in untethered:
        here = assignment[members[0]]
        supported = set.intersection(*(set(problem.node(m).supported) for m in members))
        options = [t for t in problem.target_names if hosts[t] > 0 and t in supported]
        if not options:
            continue  # nothing else in the plan: wherever it is, it is where the plan runs
        weights = {p for m in members for p in problem.node(m).parameters}

        def added_bytes(target: str, weights: set[str] = weights) -> int:
            return sum(problem.parameter_bytes.get(p, 0) for p in weights - held[target])

        best = min(options, key=lambda t: (added_bytes(t), t != here))
        assignment.update(dict.fromkeys(members, best))
        held[best].update(weights)


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
    whose tensors stay inside it, every target the plan uses; all must support it."""
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
