"""The structured search: a model's repeated blocks placed as the few pieces they are made of.

An LLM is a stack of identical decoder layers; placing each of their ops on
its own gives the solver a million booleans for a 70B model and plans that
scatter a layer over several devices. Here each block of a family
(partitioner/placement/blocks.py) is cut into segments: runs of its ops, next
to each other in graph order, that the same devices support, and that lie on
one side of the block's waists. A waist is a point inside the block where no
more crosses than what enters a block (a decoder layer's residual stream
between its attention and its MLP): a split there costs what a split between
layers does, and lets each half go to the device best at it (attention on a
cheap GPU, the MLP's large matmuls on a fast one). A segment is placed whole,
so a layer is a few pieces, the same in every layer. The ops outside the blocks (the
embeddings, the final norm, the LM head) and graphs without repeated blocks
keep the op-level model.

The restricted problem is an ordinary placement problem (built with the exact
reduction's machinery, partitioner/placement/reduction.py, so its placements
expand back to the original's with the same score), solved first by the same
solver. A plan of whole blocks balances its stages only to a block, so a second
search frees the blocks at its stage boundaries to be placed op by op (a
neighbourhood of that plan, a few blocks wide). Their plan seeds the op-level
search, which may then only improve on it.
Its bound speaks for the restricted plans alone, so it is never reported: the
bound a plan carries comes from the op-level search and from the floors of
partitioner/placement/floors.py, both valid for the whole problem.
"""

from __future__ import annotations

from typing import Mapping

from partitioner.placement.objectives import Objective
from partitioner.placement.problem import PlacementProblem, ProblemNode
from partitioner.placement.reduction import Reduction, NodeGroups

# A family this long or longer is worth the structured search: below it, the op-level search is fast on its own.
LEAST_FAMILY = 4


def worth_structuring(problem: PlacementProblem) -> bool:
    """Whether some family of repeated blocks is long enough for the structured search to pay."""
    return any(len(family) >= LEAST_FAMILY for family in problem.blocks)


def structured_problem(exact: Reduction, objective: Objective, around: Mapping[str, str] | None = None
                       ) -> Reduction:
    """The restriction of a problem, given as its exact reduction, that places every segment of every repeated
    block whole (see the module's docstring), but for the blocks at the stage boundaries of the placement `around`
    (of the original problem), placed op by op. Built on the exact reduction, so that its plans keep what the
    reduction keeps together (a view with its data), where the op-level search's bound speaks for them too."""
    problem = exact.problem
    op_level = stage_boundaries(problem, exact.restrict(around)) if around is not None else frozenset()
    groups = NodeGroups(problem)
    if not objective.schedules_ops:
        for node in problem.nodes:
            if node.follows is not None:
                groups.merge(node.name, into=node.follows)
    block_of = {name: (index, number, piece) for index, family in enumerate(problem.blocks)
                for number, block in enumerate(family) if block[0] not in op_level
                for name, piece in zip(block, _pieces(problem, family))}
    # A segment is a run of ops next to each other in graph order (a run that an op from outside the block
    # interrupts is two), so the segments keep the graph's order: none waits on an op placed after it.
    start = None
    for node in problem.nodes:
        if node.follows is not None:  # placed with what it follows (an assert on the last block's output, say)
            continue
        block = block_of.get(node.name)
        if block is not None and start is not None and block_of.get(start) == block \
                and set(node.compute_seconds) == set(problem.node(start).compute_seconds):
            groups.merge(node.name, into=start)
        else:
            start = node.name if block is not None else None
    segments = groups.reduction()
    return Reduction(segments.problem, {name: segments.representative[group]
                                        for name, group in exact.representative.items()})


# A waist splits a block only where each side has at least this share of the block's compute (on the devices
# slowest at each op): a waist next to a free op (an assert, a view) would make a piece not worth a hop.
LEAST_PIECE_SHARE = 0.1


def op_work(node: ProblemNode) -> float:
    """What an op weighs within its block: its seconds on the device slowest at it."""
    return max(node.compute_seconds.values(), default=0.0)


def block_segments(problem: PlacementProblem, family: tuple[tuple[str, ...], ...]) -> list[int]:
    """Per position of the family's blocks, which segment of the block it lies in (see the module's docstring):
    a new one at each waist and wherever the devices that support the ops change."""
    segments, segment, before = [], -1, None
    for piece, name in zip(_pieces(problem, family), family[0]):
        here = (piece, frozenset(problem.node(name).compute_seconds))
        segment += here != before
        segments.append(segment)
        before = here
    return segments


def _pieces(problem: PlacementProblem, family: tuple[tuple[str, ...], ...]) -> list[int]:
    """Per position of the family's blocks, which piece of the block it lies in: the block cut at its waists
    (see the module's docstring), found on a block that follows another (whose input is a block's output)."""
    block = family[min(1, len(family) - 1)]
    position = {name: index for index, name in enumerate(block)}
    crossing = [0] * (len(block) + 1)  # bytes live across the cut before each position (0: what enters)
    for value in problem.values:
        uses = [position[c] for c in value.consumers if c in position]
        made = position.get(value.producer)
        if made is None and uses:  # made before the block: live until its last use in it
            first, last = 0, max(uses)
        elif made is not None and value.consumers:  # live until its last use, or past the block if used after it
            first, last = made + 1, len(block) if len(uses) < len(value.consumers) else max(uses)
        else:
            continue
        for cut in range(first, last + 1):
            crossing[cut] += value.num_bytes
    work = [op_work(problem.node(name)) for name in block]
    total, done, pieces, piece, since = sum(work), 0.0, [], 0, 0.0
    for index, seconds in enumerate(work):
        if (index and crossing[index] <= crossing[0] and since >= LEAST_PIECE_SHARE * total
                and total - done >= LEAST_PIECE_SHARE * total):
            piece, since = piece + 1, 0.0
        pieces.append(piece)
        done, since = done + seconds, since + seconds
    return pieces


def stage_boundaries(problem: PlacementProblem, assignment: Mapping[str, str]) -> frozenset[str]:
    """The blocks (named by their first node) next to a change of devices in `assignment`: a block whose devices
    differ from its neighbour's in the family. Placing their ops one by one is how a plan of whole blocks
    balances its stages finer than a block, so the refining search frees them (see `structured_problem`)."""
    freed = set()
    for family in problem.blocks:
        devices = [frozenset(assignment[name] for name in block) for block in family]
        for index in range(1, len(family)):
            if devices[index] != devices[index - 1]:
                freed.update((family[index - 1][0], family[index][0]))
    return frozenset(freed)
