"""Rounding the floor's fractional placement into a plan: a seed for the search that starts near the floor.

The floors' linear programs (partitioner/placement/floors.py) place each op in
shares, and the ops at one position of a family of identical blocks together:
"the MLP of 91% of the layers on the H100, the rest on an L4". Where the floor
is close to the optimum, a plan that follows those shares is close to both, and
CP-SAT, which on a large model may not find such a plan in its time (every
layer split between two devices, in the right proportions), only has to polish
it. Each op outside the blocks goes where its largest share is; the blocks of a
family are dealt out in order, each segment's blocks to devices in proportion
to its shares, a segment staying on the device of the segment before it in its
block, or of its place in the block before, while that device's quota lasts, so
the plan hops as little as the shares allow. The blocks are dealt out by the
segments the structured search places (partitioner/placement/structure.py), so
the plan is one of its plans.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from partitioner.placement.problem import PlacementProblem
from partitioner.placement.structure import block_segments, op_work

# The rounded plan's name among the plans a search starts from (and its origin where nothing found beats it).
ROUNDED_FLOOR = "rounded floor"
# A device's quota at a position (its share times the family's blocks) takes one more block while at least this
# much of it is left: shares round to whole blocks, to the nearest.
LEAST_QUOTA = 0.5


def rounded_placements(problem: PlacementProblem, shares: Mapping[str, Mapping[str, float]]
                       ) -> tuple[dict[str, str], dict[str, str]]:
    """Two placements of every node of `problem` following the fractional `shares` (node -> device -> share, as a
    floor's relaxation gives them), see the module's docstring: segments dealt out whole, and the same stages
    cut at their share of a block's work (a stage of 6.4 blocks ends 40% into its seventh), which balances the
    devices as the shares do at the price of a split inside a segment."""
    whole: dict[str, str] = {}
    for node in problem.nodes:
        whole[node.name] = _largest(shares.get(node.name, {}), node.compute_seconds)
    cut = dict(whole)
    for family in problem.blocks:
        segments = block_segments(problem, family)
        members = [[index for index, segment in enumerate(segments) if segment == number]
                   for number in range(max(segments) + 1)]
        quotas = [_quota(problem, shares, family, positions) for positions in members]
        _deal_whole(problem, family, members, [dict(quota) for quota in quotas], whole)
        _deal_cut(problem, family, members, quotas, _stage_order(problem, family, whole), cut)
    for placed in (whole, cut):
        _follow(problem, placed)
        for family in problem.blocks:
            _with_leaders(problem, family, placed)
        _follow(problem, placed)
    return whole, cut


def _follow(problem: PlacementProblem, placed: dict[str, str]) -> None:
    """Put every node that follows another with it."""
    for node in problem.nodes:
        if node.follows is not None:
            placed[node.name] = placed[node.follows]


def _with_leaders(problem: PlacementProblem, family: tuple[tuple[str, ...], ...], placed: dict[str, str]) -> None:
    """Move each segment of the family's blocks whose ops follow others (a decode layer's matmuls sit with the
    prefill layer holding the same weights) to where most of its followers went, where every op of it runs
    (its followers then follow their own leaders again): dealt out on its own, the rest of the segment would hop
    to and fro between its followers' device and its own."""
    segments = block_segments(problem, family)
    for block in family:
        for number in range(max(segments) + 1):
            names = [name for name, segment in zip(block, segments) if segment == number]
            leaders = Counter(placed[name] for name in names if problem.node(name).follows is not None)
            if leaders:
                target = leaders.most_common(1)[0][0]
                if all(target in problem.node(name).compute_seconds for name in names):
                    placed.update({name: target for name in names if problem.node(name).follows is None})


def _deal_whole(problem: PlacementProblem, family: tuple[tuple[str, ...], ...], members: list[list[int]],
                quotas: list[dict[str, float]], placed: dict[str, str]) -> None:
    """Deal the family's blocks out segment by segment, each whole, in proportion to `quotas` (used up)."""
    previous_block: tuple[str, ...] | None = None
    for block in family:
        previous: str | None = None  # the device of the block's segment before
        for positions, quota in zip(members, quotas):
            supported = _supported_by_all(problem, [block[index] for index in positions])
            preferred = (previous, placed[previous_block[positions[0]]] if previous_block else None)
            target = next((t for t in preferred if t in supported and quota.get(t, 0.0) >= LEAST_QUOTA),
                          None) or _largest(quota, supported)
            quota[target] = quota.get(target, 0.0) - 1.0
            placed.update({block[index]: target for index in positions})
            previous = target
        previous_block = block


def _stage_order(problem: PlacementProblem, family: tuple[tuple[str, ...], ...], placed: Mapping[str, str]
                 ) -> list[str]:
    """The devices in the order the family's blocks reach them in `placed` (by the mean index of the blocks each
    holds a segment of; devices holding none last), so that every segment's stages follow one order."""
    blocks_of: dict[str, list[int]] = {}
    for number, block in enumerate(family):
        for target in dict.fromkeys(placed[name] for name in block):
            blocks_of.setdefault(target, []).append(number)
    mean = {target: sum(numbers) / len(numbers) for target, numbers in blocks_of.items()}
    return sorted(problem.target_names, key=lambda target: mean.get(target, float("inf")))


def _deal_cut(problem: PlacementProblem, family: tuple[tuple[str, ...], ...], members: list[list[int]],
              quotas: list[dict[str, float]], order: list[str], placed: dict[str, str]) -> None:
    """Deal the family's blocks out as stages in `order`, each segment's stage on a device as long as its quota
    (in blocks), cut inside a segment where a quota ends: an op goes to the stage that holds the middle of its
    work, counted in blocks from the family's start."""
    for positions, quota in zip(members, quotas):
        weights = [op_work(problem.node(family[0][index])) for index in positions]
        total = sum(weights) or 1.0
        ends, reached = [], 0.0  # each stage's end, in blocks
        for target in order:
            reached += quota.get(target, 0.0)
            ends.append((reached, target))
        middles, done = [], 0.0
        for weight in weights:
            middles.append((done + weight / 2) / total)
            done += weight
        for number, block in enumerate(family):
            for index, middle in zip(positions, middles):
                at = number + middle
                target = next((t for end, t in ends if at < end and quota.get(t, 0.0) > 0), ends[-1][1])
                if target in problem.node(block[index]).compute_seconds:
                    placed[block[index]] = target


def _quota(problem: PlacementProblem, shares: Mapping[str, Mapping[str, float]],
           family: tuple[tuple[str, ...], ...], positions: list[int]) -> dict[str, float]:
    """How many of the family's blocks the segment at `positions` should place on each device: the segment's
    shares, each op's weighted by its work, summed over the blocks."""
    quota: dict[str, float] = {}
    for block in family:
        nodes = [problem.node(block[index]) for index in positions]
        weights = [op_work(node) for node in nodes]
        total = sum(weights)
        for node, weight in zip(nodes, weights):
            part = weight / total if total > 0 else 1.0 / len(nodes)
            for target, share in shares.get(node.name, {}).items():
                quota[target] = quota.get(target, 0.0) + share * part
    return quota


def _supported_by_all(problem: PlacementProblem, names: list[str]) -> list[str]:
    """The devices that run every one of the nodes `names`, in the first one's priority order."""
    first = problem.node(names[0]).compute_seconds
    return [t for t in first if all(t in problem.node(name).compute_seconds for name in names[1:])]


def _largest(shares: Mapping[str, float], supported: Mapping[str, float] | list[str]) -> str:
    """The supported device with the largest share (the first in priority order on ties)."""
    order = list(supported)
    best = max(range(len(order)), key=lambda index: (shares.get(order[index], float("-inf")), -index))
    return order[best]
