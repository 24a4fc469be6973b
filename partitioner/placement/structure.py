"""The structured search: a model's repeated blocks placed as the few pieces they are made of.

An LLM is a stack of identical decoder layers; placing each of their ops on
its own gives the solver a million booleans for a 70B model and plans that
scatter a layer over several devices. Here each block of a family
(partitioner/placement/blocks.py) is cut into segments: runs of its ops, next
to each other in graph order, that the same devices support. A segment is placed whole, so a
layer the cheap devices run entirely is one piece, and one with an op they lack
is a few pieces, the same in every layer. The ops outside the blocks (the
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
from partitioner.placement.problem import PlacementProblem
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
    block_of = {name: (index, number) for index, family in enumerate(problem.blocks)
                for number, block in enumerate(family) if block[0] not in op_level for name in block}
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
