"""Floors: bounds no placement that fits in memory beats, known before any search, from a linear program.

Relaxing each op to run in fractions on the devices that support it, and each
weight to be counted once (with its first user) where those fractions put it,
gives linear programs whose optima no placement beats:

- the latency floor: a request's sequential latency is at least the compute of
  its ops where they run (and its money at least that compute at each
  device's price: the same program, priced). Where the weights do not fit the fastest device, the
  rest of them must be read by slower ones: an LLM's decode step is such a
  case, and the floor tells before any search that a TPOT limit cannot be met
  (partitioner/llm/planning.py);
- the bottleneck floor: under a stream of requests (the serving model), the
  busiest device is busy at least as long as the compute shared out as evenly
  as the devices' speeds and memories allow. It is the throughput search's
  bound (partitioner/placement/objectives.py), valid for the whole problem
  whatever search found the plan (the structured one of
  partitioner/placement/structure.py included).

Transfers, hops and activations only add to a plan, so leaving them out keeps
both bounds valid. Identical repeated blocks are one block in the program, its
figures summed over the family: averaging any fractional placement over the
family's blocks gives one that places every block alike, as good and as
feasible, so the program's optimum is the same, and a 70B model's program
holds one layer instead of eighty. Solved with OR-Tools' GLOP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from ortools.linear_solver import pywraplp

from partitioner.placement.problem import PlacementProblem

_GIB = 2.0**30


@dataclass(frozen=True, slots=True)
class _Work:
    """An op, or the ops at one position of every block of a family: its compute seconds per device and the
    weights (GiB) it is the first to use, summed over the ops it stands for."""

    compute_seconds: Mapping[str, float]
    new_weights_gib: float


def latency_floor_seconds(problem: PlacementProblem) -> float:
    """A lower bound on the sequential latency (compute alone) of every placement of `problem` that fits memory."""
    return priced_floor(problem, lambda target: 1.0)


def priced_floor(problem: PlacementProblem, rate: Callable[[str], float]) -> float:
    """A lower bound on the compute of every placement of `problem` that fits memory, each second on a device
    priced at `rate(device)` (1: the latency floor; its price per second: the floor of money per request)."""
    return _floor(problem, rate, bottleneck=False)


def bottleneck_floor_seconds(problem: PlacementProblem) -> float:
    """A lower bound on the busiest device's seconds per request (the serving model's bottleneck) of every
    placement of `problem` that fits memory."""
    return _floor(problem, lambda target: 1.0, bottleneck=True)


def _floor(problem: PlacementProblem, rate: Callable[[str], float], bottleneck: bool) -> float:
    solver = pywraplp.Solver.CreateSolver("GLOP")
    objective = solver.Objective()
    room = {t.name: solver.Constraint(-solver.infinity(), t.memory_bytes / _GIB) for t in problem.targets}
    busiest = solver.NumVar(0.0, solver.infinity(), "busiest") if bottleneck else None
    load = {t.name: solver.Constraint(-solver.infinity(), 0.0) for t in problem.targets} if bottleneck else {}
    for busy in load.values():
        busy.SetCoefficient(busiest, -1.0)

    def charge(variable: pywraplp.Variable, target: str, seconds: float) -> None:
        if bottleneck:
            load[target].SetCoefficient(variable, seconds)
        else:
            objective.SetCoefficient(variable, seconds * rate(target))

    works, hop_pairs = _work(problem)
    shares: list[dict[str, pywraplp.Variable]] = []
    for work in works:
        whole = solver.Constraint(1.0, 1.0)  # the work runs, in shares, on the targets that support it
        shares.append({})
        for target, seconds in work.compute_seconds.items():
            share = shares[-1][target] = solver.NumVar(0.0, 1.0, "")
            whole.SetCoefficient(share, 1.0)
            charge(share, target, seconds)
            if work.new_weights_gib:
                room[target].SetCoefficient(share, work.new_weights_gib)
    for (before, after), times in hop_pairs.items():  # a hop into a device: at least the share newly there
        for target, share in shares[after].items():
            if problem.hop_seconds.get(target, 0.0) > 0:
                entered = solver.NumVar(0.0, 1.0, "")
                step = solver.Constraint(0.0, solver.infinity())  # entered >= share after - share before
                step.SetCoefficient(entered, 1.0)
                step.SetCoefficient(share, -1.0)
                if target in shares[before]:
                    step.SetCoefficient(shares[before][target], 1.0)
                charge(entered, target, times * problem.hop_seconds[target])
    if bottleneck:
        objective.SetCoefficient(busiest, 1.0)
    objective.SetMinimization()
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return 0.0  # the weights fit nowhere even in shares: the search says so with its own message
    return objective.Value() * (1 - 1e-6)  # GLOP's optimum is exact to its tolerances: stay below it


def _work(problem: PlacementProblem) -> tuple[list[_Work], dict[tuple[int, int], float]]:
    """The problem's ops as the programs place them, and the pairs of them run one after the other (indices into
    the list, with their times per request): each op alone, except that the ops at one position of a family of
    identical blocks (the same compute on every device) are one, their figures summed. A pair within a block
    counts where every block of its family has it alike; pairs across blocks are left out (fewer hops keep the
    floor a floor), so the program stays the same for every order of the blocks."""
    seen: set[str] = set()
    new_weights: dict[str, float] = {}
    for node in problem.nodes:
        new_weights[node.name] = sum(problem.parameter_bytes[p] for p in node.parameters if p not in seen) / _GIB
        seen.update(node.parameters)
    stands_for: dict[str, list[str]] = {}  # the first block's node -> the nodes at its position in every block
    block_of: dict[str, tuple[int, int]] = {}  # a node merged with its position -> (family, block)
    for index, family in enumerate(problem.blocks):
        for position in zip(*family):
            nodes = [problem.node(name) for name in position]
            if block_of.keys().isdisjoint(position) and all(n.compute_seconds == nodes[0].compute_seconds
                                                            for n in nodes):
                stands_for[position[0]] = list(position)
                block_of.update({name: (index, number) for number, name in enumerate(position)})
    work, index_of = [], {}
    for node in problem.nodes:
        if node.name in stands_for:
            members = stands_for[node.name]
            index_of.update(dict.fromkeys(members, len(work)))
            work.append(_Work({t: s * len(members) for t, s in node.compute_seconds.items()},
                              sum(new_weights[m] for m in members)))
        elif node.name not in block_of:
            index_of[node.name] = len(work)
            work.append(_Work(node.compute_seconds, new_weights[node.name]))
    pairs: dict[tuple[int, int], float] = {}
    in_blocks: dict[tuple[int, int], dict[tuple[int, int], float]] = {}  # pair -> per block, its times
    for before, after, times in problem.sequence() if problem.hop_seconds else ():
        pair = index_of[before], index_of[after]
        if pair[0] == pair[1]:
            continue
        if before not in block_of and after not in block_of:
            pairs[pair] = pairs.get(pair, 0.0) + times
        elif block_of.get(before, (-1, -1)) == block_of.get(after):
            per_block = in_blocks.setdefault(pair, {})
            per_block[block_of[after]] = per_block.get(block_of[after], 0.0) + times
    for pair, per_block in in_blocks.items():
        family = problem.blocks[next(iter(per_block))[0]]
        if len(per_block) == len(family) and len(set(per_block.values())) == 1:
            pairs[pair] = sum(per_block.values())
    return work, pairs
