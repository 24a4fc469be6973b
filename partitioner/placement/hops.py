"""Hops: what crossing from one partition to the next costs, beyond the bytes it moves.

A plan runs as partitions, one after another; every boundary is a
synchronisation, a launch of another compiled graph and a hand-off through the
serving engine. That costs a fixed time however few bytes cross, so a plan that
cuts a model into a hundred pieces pays for it, and the solver splits a model
only where the split pays for its hops.

The model counts a hop wherever two ops that run one after the other (the
problem's `sequence`: its nodes in graph order, or pairs a reduction kept) sit
on different devices, and charges the device entered its `hop_seconds`: its
stage launch (the spec's `stage_launch_microseconds`) plus the engine's own
per-hop time. A hop keeps that device busy (the serving model) and adds to one
request's latency and to its money; the makespan does not count hops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

from partitioner.placement.problem import PlacementProblem


@dataclass(frozen=True, slots=True)
class Hop:
    """A device change between two ops that run one after the other: `times` per request on `destination`."""

    before: str
    after: str
    destination: str
    times: float
    seconds: float  # per request: times x the destination's hop_seconds


def hops(problem: PlacementProblem, assignment: Mapping[str, str]) -> Iterator[Hop]:
    """Every hop `assignment` makes (none where the problem prices no hop)."""
    if not problem.hop_seconds:
        return
    for before, after, times in problem.sequence():
        destination = assignment[after]
        if assignment[before] != destination:
            yield Hop(before, after, destination, times, times * problem.hop_seconds.get(destination, 0.0))
