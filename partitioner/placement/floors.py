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

Hops and transfers are relaxed the same way: a hop into a device costs at
least the share of the next op newly there, and a tensor crosses from a device
to another at most the share its producer has there and at least the share of
a consumer the other device has beyond the producer's own (a flow of shares
over every pair of devices, each pair priced on its link, or on the link
resources its route occupies in the serving model). Without them an op-by-op
split that plays on each device's best ops looks free, and the floor sits far
below any plan a split must pay for. Whether a device is used at all is a yes
or no: a device used is entered at least once a request unless it runs the
first op of a phase (of the request, or of an LLM's prefill or decode step),
which a pipeline's stages pay and shares spread evenly over blocks do not show
(a few binaries, one per device, solved by SCIP; without its proof, the linear
program alone). An op that follows another (a decode layer's matmul and the
prefill one whose weights it shares) takes the same shares. Activations only
add to a plan, so leaving them out keeps every bound valid.

Identical repeated blocks are one block in the program, its figures summed
over the family: averaging any fractional placement over the family's blocks
gives one that places every block alike, as good and as feasible, so the
program's optimum is the same, and a 70B model's program holds one layer
instead of eighty. What passes from one block to the next is counted as if the
blocks formed a ring (the averaging argument needs every block alike), less the
one hop and copy the ring adds. Solved with OR-Tools' GLOP (or SCIP, above).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ortools.linear_solver import pywraplp

from partitioner.placement.problem import PlacementProblem, phase_of

_GIB = 2.0**30


@dataclass(frozen=True, slots=True)
class _Work:
    """An op, or the ops at one position of every block of a family: its compute seconds per device and the
    weights (GiB) it is the first to use, summed over the ops it stands for."""

    compute_seconds: Mapping[str, float]
    new_weights_gib: float
    phase: str = ""  # the phase of a joint problem it belongs to ("" outside one)


@dataclass(frozen=True, slots=True)
class _Pair:
    """Two works (indices into the program's works) run one after the other, `times` per request. A pair from
    one block to the next of a family is counted as if the last block were followed by the first (each block
    alike then, so the averaging argument holds), and the pair that wrap adds, `wrapped` times per request, is
    taken off again as the most it could cost."""

    before: int
    after: int
    times: float
    wrapped: float = 0.0


@dataclass(frozen=True, slots=True)
class _Crossing:
    """A tensor that the work at `producer` writes and the works at `consumers` read (indices into the
    program's works), `times` per request: the tensors at one position of every block of a family are one;
    `wrapped`: 1 where it goes from one block to the next, as for `_Pair`."""

    producer: int
    consumers: tuple[int, ...]
    num_bytes: int
    times: int
    wrapped: int = 0


@dataclass(frozen=True, slots=True)
class _Program:
    """What the linear programs place: the works, the pairs of them run one after the other (with their times per
    request) and the tensors between them."""

    works: list[_Work]
    hop_pairs: list[_Pair]
    crossings: list[_Crossing]
    work_of: Mapping[str, int]  # each node's work
    # The works holding an op no pair leads into (a phase's first op), each with how many ops it stands for: a
    # device that runs none of them is entered by a hop before its first op.
    starts: Mapping[int, int]
    least_times: float  # the fewest times per request a pair runs: what entering a device costs at least, in hops
    ties: list[tuple[int, int]]  # works placed alike (an op that follows another: weights shared by two phases)


# The most places whose every pair the transfer terms price (a flow variable per pair and tensor): beyond it the
# floors leave transfers out, still floors, and a fleet of thousands of devices keeps a small program.
MOST_PLACES_PRICED_FOR_TRANSFERS = 24
# The most places whose use the floor decides as a yes or no (see `_floor`), and the branch-and-bound nodes and
# seconds SCIP gets to prove its optimum (else the floor is the linear program's).
MOST_PLACES_DECIDED_USED = 16
USED_DEVICES_NODES = 200
USED_DEVICES_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Relaxation:
    """A floor and the fractional placement that attains it: per node, its share on each device (the shares of
    the ops at one position of a family of identical blocks are theirs together). Rounded, the shares are a
    plan close to the floor where the floor is close to the optimum (partitioner/placement/rounding.py)."""

    value: float
    shares: Mapping[str, Mapping[str, float]]
    fits: bool = True  # false where the weights fit the devices in no shares at all (the value is then 0)


def latency_floor_seconds(problem: PlacementProblem) -> float:
    """A lower bound on the sequential latency of every placement of `problem` that fits memory."""
    return priced_relaxation(problem, lambda busy: 1.0).value


def priced_relaxation(problem: PlacementProblem, rate: Callable[[Sequence[str]], float],
                       decide_used: bool = True) -> Relaxation:
    """A lower bound on the busy seconds of every placement of `problem` that fits memory, each second that keeps
    devices busy priced at `rate(those devices)` (1: the latency floor; the sum of their prices per second: the
    floor of money per request). `decide_used=False` leaves out the binaries (see `_floor`): a lower floor, found
    in a fraction of the time, for callers that need many."""
    return _floor(problem, rate, bottleneck=False, decide_used=decide_used)


def bottleneck_relaxation(problem: PlacementProblem, decide_used: bool = True,
                          phase_limits: Mapping[str, float] | None = None) -> Relaxation:
    """A lower bound on the busiest resource's seconds per request (the serving model's bottleneck) of every
    placement of `problem` that fits memory (`decide_used` as for `priced_relaxation`) and, per phase of a joint
    problem in `phase_limits`, keeps the compute seconds of that phase's ops within the limit (an LLM's TTFT, or
    its TPOT times the decode steps a request makes: a placement's latency is at least its compute). Where no
    placement in shares does, the relaxation does not fit."""
    return _floor(problem, lambda busy: 1.0, bottleneck=True, decide_used=decide_used,
                  phase_limits=phase_limits or {})


def bottleneck_floor_seconds(problem: PlacementProblem) -> float:
    """`bottleneck_relaxation`'s floor alone."""
    return bottleneck_relaxation(problem).value


def _floor(problem: PlacementProblem, rate: Callable[[Sequence[str]], float], bottleneck: bool,
           decide_used: bool = True, phase_limits: Mapping[str, float] | None = None) -> Relaxation:
    # Whether a device is used at all is a yes or no (a few binaries, searched by SCIP): a pipeline's stages
    # are each entered once a request, which shares of blocks spread evenly do not show. Where SCIP does not
    # prove its optimum within its nodes and time, the program is solved again without them.
    program = _program(problem)
    mixed = decide_used and bool(problem.hop_seconds) and len(problem.targets) <= MOST_PLACES_DECIDED_USED
    limits = phase_limits or {}
    solved = _solved(problem, program, rate, bottleneck, mixed=True, phase_limits=limits) if mixed else None
    return solved or _solved(problem, program, rate, bottleneck, mixed=False, phase_limits=limits)


def _solved(problem: PlacementProblem, program: _Program, rate: Callable[[Sequence[str]], float], bottleneck: bool,
            mixed: bool, phase_limits: Mapping[str, float]) -> Relaxation | None:
    """The floor's program solved, with the devices' use as binaries where `mixed` (None where SCIP does not
    prove its optimum)."""
    solver = pywraplp.Solver.CreateSolver("SCIP" if mixed else "GLOP")
    if mixed:  # a node limit keeps the bound the same from run to run; the time limit is a guard
        solver.SetSolverSpecificParametersAsString(f"limits/nodes = {USED_DEVICES_NODES}\n")
        solver.SetTimeLimit(round(USED_DEVICES_SECONDS * 1000))
    objective = solver.Objective()
    room = {t.name: solver.Constraint(-solver.infinity(), t.memory_bytes / _GIB) for t in problem.targets}
    busiest = solver.NumVar(0.0, solver.infinity(), "busiest") if bottleneck else None
    load: dict[str, pywraplp.Constraint] = {}  # per device and link resource, its seconds <= the busiest's

    def load_of(resource: str) -> pywraplp.Constraint:
        if resource not in load:
            load[resource] = solver.Constraint(-solver.infinity(), 0.0)
            load[resource].SetCoefficient(busiest, -1.0)
        return load[resource]

    def occupy(resource: str, variable: pywraplp.Variable, seconds: float) -> None:
        load_of(resource).SetCoefficient(variable, load_of(resource).GetCoefficient(variable) + seconds)

    def less(terms: Mapping[pywraplp.Variable, float], forgiven: float) -> dict[pywraplp.Variable, float]:
        """`terms` (a sum of variables times coefficients) less `forgiven`, but not below 0: as terms to charge."""
        if not forgiven:
            return dict(terms)
        rest = solver.NumVar(0.0, solver.infinity(), "")
        at_least = solver.Constraint(-forgiven, solver.infinity())  # rest >= terms - forgiven
        at_least.SetCoefficient(rest, 1.0)
        for variable, coefficient in terms.items():
            at_least.SetCoefficient(variable, -coefficient)
        return {rest: 1.0}

    def charge(variable: pywraplp.Variable, target: str, seconds: float) -> None:
        if bottleneck:
            occupy(target, variable, seconds)
        else:
            objective.SetCoefficient(variable, objective.GetCoefficient(variable) + seconds * rate((target,)))

    shares: list[dict[str, pywraplp.Variable]] = []
    for work in program.works:
        whole = solver.Constraint(1.0, 1.0)  # the work runs, in shares, on the targets that support it
        shares.append({})
        for target, seconds in work.compute_seconds.items():
            share = shares[-1][target] = solver.NumVar(0.0, 1.0, "")
            whole.SetCoefficient(share, 1.0)
            charge(share, target, seconds)
            if work.new_weights_gib:
                room[target].SetCoefficient(share, work.new_weights_gib)
    within = {phase: solver.Constraint(-solver.infinity(), limit) for phase, limit in phase_limits.items()}
    for work, placed in zip(program.works, shares):  # a phase's compute within its limit
        if work.phase in within:
            for target, share in placed.items():
                within[work.phase].SetCoefficient(share, work.compute_seconds[target])
    for follower, leader in program.ties:  # placed alike, share for share
        for target, share in shares[follower].items():
            alike = solver.Constraint(0.0, 0.0)
            alike.SetCoefficient(share, 1.0)
            if target in shares[leader]:
                alike.SetCoefficient(shares[leader][target], -1.0)
    hops_into: dict[str, dict[pywraplp.Variable, float]] = {}  # per device, its hops per request as terms
    for pair in program.hop_pairs:  # a hop into a device: at least the share of the work newly there
        for target, share in shares[pair.after].items():
            if problem.hop_seconds.get(target, 0.0) > 0:
                entered = _at_least_the_rise(solver, share, shares[pair.before].get(target))
                for variable, times in less({entered: pair.times}, pair.wrapped).items():
                    hops_into.setdefault(target, {})[variable] = times
    used = _used_devices(solver, problem, shares) if mixed else {}
    for target in problem.target_names:
        if problem.hop_seconds.get(target, 0.0) <= 0 or (target not in hops_into and target not in used):
            continue
        hops = solver.NumVar(0.0, solver.infinity(), "")
        at_least = solver.Constraint(0.0, solver.infinity())  # hops >= the pairs' entries into the device
        at_least.SetCoefficient(hops, 1.0)
        for variable, times in hops_into.get(target, {}).items():
            at_least.SetCoefficient(variable, -times)
        if target in used:  # a device used is entered at least once, unless it runs a phase's first op
            once = solver.Constraint(0.0, solver.infinity())  # hops >= least times x (used - the starts' shares)
            once.SetCoefficient(hops, 1.0)
            once.SetCoefficient(used[target], -program.least_times)
            for start, ops in program.starts.items():
                if target in shares[start]:
                    once.SetCoefficient(shares[start][target], program.least_times * ops)
        charge(hops, target, problem.hop_seconds[target])
    for crossing in program.crossings:
        produced = shares[crossing.producer]
        destinations = dict.fromkeys(target for c in crossing.consumers for target in shares[c])  # in order
        flows = {(source, destination): solver.NumVar(0.0, 1.0, "") for source in produced
                 for destination in destinations if source != destination}
        spent: dict[str, dict[pywraplp.Variable, float]] = {}  # per link resource, or "" (the objective)
        for (source, destination), flow in flows.items():
            at_most_made = solver.Constraint(-solver.infinity(), 0.0)  # flow <= the producer's share at the source
            at_most_made.SetCoefficient(flow, 1.0)
            at_most_made.SetCoefficient(produced[source], -1.0)
            if bottleneck:  # a copy occupies the link resources of its route, not the devices
                for resource in problem.route(source, destination):
                    spent.setdefault(resource, {})[flow] = crossing.num_bytes / problem.bandwidth(resource)
            else:  # both ends are busy for it
                spent.setdefault("", {})[flow] = (problem.transfer_seconds(crossing.num_bytes, source, destination)
                                                  * rate((source, destination)))
        for resource, each in spent.items():  # where the copies may wrap, one copy of the most it costs is forgiven
            terms = less({flow: crossing.times * seconds for flow, seconds in each.items()},
                         crossing.wrapped * max(each.values()))
            for variable, seconds in terms.items():
                if resource:
                    occupy(resource, variable, seconds)
                else:
                    objective.SetCoefficient(variable, objective.GetCoefficient(variable) + seconds)
        for consumer in crossing.consumers:  # what arrives covers the consumer's share beyond the producer's
            for destination, share in shares[consumer].items():
                arrives = solver.Constraint(0.0, solver.infinity())
                arrives.SetCoefficient(share, -1.0)
                if destination in produced:
                    arrives.SetCoefficient(produced[destination], 1.0)
                for source in produced:
                    if source != destination:
                        arrives.SetCoefficient(flows[source, destination], 1.0)
    if bottleneck:
        objective.SetCoefficient(busiest, 1.0)
    objective.SetMinimization()
    exact = pywraplp.MPSolverParameters()  # SCIP stops at a gap of 1e-4 by default: its bound would lose that much
    exact.SetDoubleParam(exact.RELATIVE_MIP_GAP, 1e-7)
    status = solver.Solve(exact)
    if status != pywraplp.Solver.OPTIMAL:
        # SCIP out of nodes or time (solved again as a linear program: its best bound may not even be the linear
        # program's yet), or the weights fit nowhere even in shares (the search says so with its own message).
        return None if mixed else Relaxation(0.0, {}, fits=status != pywraplp.Solver.INFEASIBLE)
    placed = [{target: share.solution_value() for target, share in work.items()} for work in shares]
    # SCIP's optimum is its best bound, to its gap; GLOP's is exact to its tolerances: stay below both.
    value = objective.BestBound() if mixed else objective.Value()
    return Relaxation(max(0.0, value * (1 - 1e-6)), {name: placed[index] for name, index in program.work_of.items()})


def _used_devices(solver: pywraplp.Solver, problem: PlacementProblem, shares: list[dict[str, pywraplp.Variable]]
                  ) -> dict[str, pywraplp.Variable]:
    """Per device, a binary that is 1 where the device runs a share of any work; of a group of identical devices,
    those used are the first ones (any plan can swap identical devices, so the floor stays a floor)."""
    used = {target: solver.BoolVar("") for target in problem.target_names}
    members: dict[str, list[str]] = {}
    for target in problem.target_names:
        members.setdefault(problem.group(target), []).append(target)
    for group in members.values():  # identical devices can swap: the ones used come first (no search over which)
        for earlier, later in zip(group, group[1:]):
            in_order = solver.Constraint(0.0, solver.infinity())
            in_order.SetCoefficient(used[earlier], 1.0)
            in_order.SetCoefficient(used[later], -1.0)
    for work in shares:
        for target, share in work.items():
            at_most = solver.Constraint(-solver.infinity(), 0.0)  # share <= used
            at_most.SetCoefficient(share, 1.0)
            at_most.SetCoefficient(used[target], -1.0)
    return used


def _at_least_the_rise(solver: pywraplp.Solver, after: pywraplp.Variable, before: pywraplp.Variable | None
                       ) -> pywraplp.Variable:
    """A variable in [0, 1] at least `after - before` (`before` None: 0)."""
    rise = solver.NumVar(0.0, 1.0, "")
    step = solver.Constraint(0.0, solver.infinity())
    step.SetCoefficient(rise, 1.0)
    step.SetCoefficient(after, -1.0)
    if before is not None:
        step.SetCoefficient(before, 1.0)
    return rise


def _program(problem: PlacementProblem) -> _Program:
    """The problem's ops as the programs place them: each op alone, except that the ops at one position of a
    family of identical blocks (the same compute on every device) are one, their figures summed. A pair run one
    after the other, or a tensor, within a block or from a block to the next counts where every block of its
    family has it alike (from one block to the next, as a ring: see `_Pair`); others that touch a block are left
    out (less to pay keeps the floor a floor)."""
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
    works, index_of = [], {}
    for node in problem.nodes:
        if node.name in stands_for:
            members = stands_for[node.name]
            index_of.update(dict.fromkeys(members, len(works)))
            works.append(_Work({t: s * len(members) for t, s in node.compute_seconds.items()},
                               sum(new_weights[m] for m in members), phase_of(node.name)))
        elif node.name not in block_of:
            index_of[node.name] = len(works)
            works.append(_Work(node.compute_seconds, new_weights[node.name], phase_of(node.name)))

    outside: dict[tuple, float] = {}  # a pair or a crossing -> its times or bytes per request
    per_block: dict[tuple, dict[int, float]] = {}  # (within or across, family, key) -> per block, the same
    for before, after, times in problem.sequence() if problem.hop_seconds else ():
        _count((index_of[before], index_of[after]), times, (before, after), block_of, outside, per_block)
    if len(problem.targets) <= MOST_PLACES_PRICED_FOR_TRANSFERS:
        for value in problem.values:
            producer = index_of[value.producer]
            consumers = tuple(sorted({index_of[c] for c in value.consumers} - {producer}))
            if consumers and value.num_bytes:
                _count((producer, consumers), value.num_bytes, (value.producer, *value.consumers), block_of,
                       outside, per_block)
    counted = {(key, False): (amount, 1) for key, amount in outside.items()}  # -> (amount each time, times)
    for (where, family, key), amounts in per_block.items():
        blocks = len(problem.blocks[family])
        if len(amounts) == blocks - (where == _ACROSS) and len(set(amounts.values())) == 1:
            counted[key, where == _ACROSS] = (next(iter(amounts.values())), blocks)
    hop_pairs = [_Pair(key[0], key[1], amount * times, amount * wraps)
                 for (key, wraps), (amount, times) in counted.items() if isinstance(key[1], int) and key[0] != key[1]]
    crossings = [_Crossing(key[0], key[1], round(amount), times, int(wraps))
                 for (key, wraps), (amount, times) in counted.items() if isinstance(key[1], tuple)]
    sequence = problem.sequence() if problem.hop_seconds else ()
    entered = {after for _, after, _ in sequence}
    ops_of = Counter(index_of.values())
    starts = {index_of[node.name]: ops_of[index_of[node.name]] for node in problem.nodes if node.name not in entered}
    return _Program(works, hop_pairs, crossings, index_of, starts,
                    min((times for _, _, times in sequence), default=0.0), _ties(problem, index_of))


def _ties(problem: PlacementProblem, index_of: Mapping[str, int]) -> list[tuple[int, int]]:
    """The pairs of works whose shares are equal in every plan: an op and the op it follows, or the ops at one
    position of a family and those at the position they follow, where every op of the one follows an op of the
    other and each of those is followed alike (so their shares, averaged over the family, are equal too)."""
    members: dict[int, list[str]] = {}
    for node in problem.nodes:
        members.setdefault(index_of[node.name], []).append(node.name)
    followed: dict[tuple[int, int], dict[str, int]] = {}  # (follower's work, leader's work) -> leader -> followers
    for node in problem.nodes:
        if node.follows is not None and index_of[node.name] != index_of[node.follows]:
            counts = followed.setdefault((index_of[node.name], index_of[node.follows]), {})
            counts[node.follows] = counts.get(node.follows, 0) + 1
    return [(follower, leader) for (follower, leader), counts in followed.items()
            if sum(counts.values()) == len(members[follower]) and set(counts) == set(members[leader])
            and len(set(counts.values())) == 1]


_WITHIN, _ACROSS = "within", "across"


def _count(key: tuple, amount: float, nodes: Sequence[str], block_of: Mapping[str, tuple[int, int]],
           outside: dict[tuple, float], per_block: dict[tuple, dict[int, float]]) -> None:
    """Add `amount` to what `key` (a pair of works or a crossing, between `nodes`, the first one the earlier)
    carries: outside the blocks, within a block, or across from a block to the next of its family; else (the
    nodes lie elsewhere) it is left out."""
    blocks = [block_of.get(name) for name in nodes]
    if all(block is None for block in blocks):
        outside[key] = outside.get(key, 0.0) + amount
        return
    if blocks[0] is None or any(block is None or block[0] != blocks[0][0] for block in blocks):
        return
    family, number = blocks[0]
    later = {block[1] - number for block in blocks[1:]}
    where = _WITHIN if later == {0} else _ACROSS if later <= {0, 1} else None
    if where is not None:
        amounts = per_block.setdefault((where, family, key), {})
        amounts[number] = amounts.get(number, 0.0) + amount
