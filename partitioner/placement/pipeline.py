"""The contiguous pipeline: the baseline pipeline partitioners use, solved exactly by dynamic programming.

The ops, in graph order, are cut into consecutive stages, one per device in
the target set's order (a device may take none), each stage on a device that
supports all of its ops; the cuts minimise the busiest device's compute seconds
per request (the serving model's bottleneck, links aside; the plan is then
scored in full). Long graphs are first grouped into at most MAX_SEGMENTS runs
of neighbouring ops, so the search stays quadratic in that number.
"""

from __future__ import annotations

import math

from partitioner.placement.problem import PlacementProblem, check_assignment

MAX_SEGMENTS = 240


def pipeline_placement(problem: PlacementProblem) -> dict[str, str]:
    """The contiguous stages, one per device in order, with the least busiest-device compute time."""
    segments = _segments(problem)
    places = problem.target_names
    # cost[j][s] = compute seconds of segment s on place j (inf where some op of it is not supported there)
    cost = [[sum(problem.node(n).compute_seconds.get(place, math.inf) for n in segment) for segment in segments]
            for place in places]
    count = len(segments)
    best = [[math.inf] * (count + 1) for _ in range(len(places) + 1)]
    cut = [[0] * (count + 1) for _ in range(len(places) + 1)]
    best[0][0] = 0.0
    for j, place_cost in enumerate(cost):
        for start in range(count + 1):
            if best[j][start] == math.inf:
                continue
            stage = 0.0
            if best[j][start] < best[j + 1][start]:  # the device takes no stage
                best[j + 1][start], cut[j + 1][start] = best[j][start], start
            for end in range(start + 1, count + 1):
                stage += place_cost[end - 1]
                if stage == math.inf:
                    break
                value = max(best[j][start], stage)
                if value < best[j + 1][end]:
                    best[j + 1][end], cut[j + 1][end] = value, start
    if best[len(places)][count] == math.inf:  # no contiguous cut is supported: every op on the fallback
        return {node.name: problem.home(node.name) for node in problem.nodes}
    assignment: dict[str, str] = {}
    end = count
    for j in range(len(places), 0, -1):
        start = cut[j][end]
        for segment in segments[start:end]:
            assignment.update(dict.fromkeys(segment, places[j - 1]))
        end = start
    for node in problem.nodes:  # a follower (getitem, in-place write) sits with its leader
        if node.follows is not None:
            assignment[node.name] = assignment[node.follows]
    check_assignment(problem, assignment)
    return assignment


def _segments(problem: PlacementProblem) -> list[list[str]]:
    """The nodes in graph order, grouped into at most MAX_SEGMENTS runs of about equal fallback compute; a
    follower stays in its leader's run."""
    nodes = problem.nodes
    total = sum(n.compute_seconds.get(problem.fallback, 0.0) for n in nodes) or 1.0
    share = total / MAX_SEGMENTS if len(nodes) > MAX_SEGMENTS else 0.0
    segments: list[list[str]] = []
    current: list[str] = []
    seconds = 0.0
    for node in nodes:
        if current and node.follows is None and seconds >= share:
            segments.append(current)
            current, seconds = [], 0.0
        current.append(node.name)
        seconds += node.compute_seconds.get(problem.fallback, 0.0)
    if current:
        segments.append(current)
    return segments
