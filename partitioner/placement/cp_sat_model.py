"""The CP-SAT model of one placement problem, kept apart from the problem data.

One boolean per (node, supporting target), a transfer boolean per (tensor,
source, destination) that counts a tensor once per device it must reach, and a
residency boolean per (parameter, target) for memory. Objectives pick the
pieces they need (`add_transfers`, `priced_seconds`, `add_schedule`); the
solver (partitioner/placement/solver.py) builds, hints, runs and reads it back.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Mapping, Sequence

from ortools.sat.python import cp_model

from partitioner.placement.integer_units import OBJECTIVE_UNITS, floor_units, whole_units
from partitioner.placement.memory import activation_arena_bytes, targets_whose_memory_can_bind
from partitioner.placement.problem import PlacementProblem, ProblemNode, phase_of
from partitioner.placement.schedule import Schedule

# Repeated blocks are tied in this many runs of neighbouring blocks.
TIED_GROUPS = 8


class SearchOutOfTime(Exception):
    """Building the model took past its deadline (a graph of many ops on many devices): no search can run."""


class PlacementModel:
    """Placement variables, memory limits and (optionally) tied blocks; objective pieces on request.

    `scale` is how many integer units one unit of the objective is worth (partitioner/placement/integer_units.py:
    every coefficient is capped, so any figure the problem holds builds a valid model). Building past `deadline`
    (time.perf_counter seconds) raises SearchOutOfTime, so the time limit covers building too.
    """

    def __init__(self, problem: PlacementProblem, scale: float, deadline: float = math.inf):
        self.problem = problem
        self.model = cp_model.CpModel()
        self.scale = scale
        self.deadline = deadline
        # Every (boolean, seconds, targets it keeps busy): compute and, once added, transfers.
        self.busy_terms: list[tuple[cp_model.IntVar, float, tuple[str, ...]]] = []
        # Auxiliary variables and what they equal for a given assignment, so hints can be complete.
        self.derived: list[tuple[cp_model.IntVar, Callable[[Mapping[str, str]], int]]] = []
        self.schedule: Schedule | None = None
        self.transfers_added = False
        # Every (move boolean, bytes, source, destination, whether an assignment moves it), once transfers are
        # added: what the serving model's links carry.
        self.move_terms: list[tuple[cp_model.IntVar, int, str, str, Callable[[Mapping[str, str]], bool]]] = []
        self.bottleneck: cp_model.IntVar | None = None
        self.on = self._placement_variables()
        # Every (boolean, seconds, device entered, whether an assignment sets it): the plan's hops (hops.py).
        self.hop_terms = self._hop_variables()
        self._memory_limits()
        if problem.separate_phases:
            self._separate_phases()

    def priced_seconds(self, rate: Callable[[tuple[str, ...]], float]) -> cp_model.LinearExpr:
        """Every busy term at `rate` (what one second keeping those targets busy is worth), in integer units."""
        terms = [(var, whole_units(seconds * rate(busy), self.scale)) for var, seconds, busy in self.busy_terms]
        return cp_model.LinearExpr.weighted_sum([var for var, c in terms if c > 0], [c for _, c in terms if c > 0])

    def limit_latency(self, max_latency_seconds: float) -> None:
        """Keep the sequential latency (compute plus transfers) within `max_latency_seconds`.

        Seconds are scaled so the limit is 10^9 units and rounded down per term,
        so the model may admit a plan up to ~1e-9 per term over; callers re-check with `score`. A term over the
        limit on its own is capped just above it: it rules its boolean out all the same.
        """
        self.add_transfers()  # the latency counts them whatever the objective
        terms = [(var, floor_units(seconds / max_latency_seconds, OBJECTIVE_UNITS, most=OBJECTIVE_UNITS + 1))
                 for var, seconds, _ in self.busy_terms if seconds > 0]
        self.model.add(cp_model.LinearExpr.weighted_sum([v for v, _ in terms], [c for _, c in terms])
                       <= OBJECTIVE_UNITS)

    def add_transfers(self) -> None:
        """For each tensor and each device it must reach, pay the move from wherever it was produced (once: a
        second call adds nothing)."""
        if self.transfers_added:
            return
        self.transfers_added = True
        for value in self.problem.values:
            self.check_time()
            sources = self.problem.node(value.producer).supported
            needed_on = self._needed_on(value.consumers)
            for destination, needed in needed_on.items():
                moves = []
                for source in sources:
                    if source == destination:
                        continue
                    def is_set(a: Mapping[str, str], v=value, s=source, d=destination) -> bool:
                        return a[v.producer] == s and any(a[c] == d for c in v.consumers)

                    if len(sources) == 1:  # produced where it must be: it moves exactly when needed there
                        moved = needed
                    else:
                        moved = self.model.new_bool_var("")
                        self.model.add_bool_or([self.on[value.producer, source].Not(), needed.Not(), moved])
                        self.derived.append((moved, is_set))
                    seconds = self.problem.transfer_seconds(value.num_bytes, source, destination)
                    self.busy_terms.append((moved, seconds, (source, destination)))
                    self.move_terms.append((moved, value.num_bytes, source, destination, is_set))
                    moves.append(moved)
                # Redundant but much tighter in the LP relaxation (a min-cut inequality):
                # if the tensor is needed on `destination` and not produced there, it moves there.
                if len(sources) > 1:
                    produced_here = self.on.get((value.producer, destination), 0)
                    self.model.add(sum(moves) >= needed - produced_here)

    def add_bottleneck(self) -> cp_model.IntVar:
        """The serving model's bottleneck (partitioner/placement/serving.py): a variable, in objective units, at least
        every device's compute seconds per request and every link resource's bytes over its bandwidth. Identical
        devices are ordered by load, so the search does not explore their permutations."""
        if self.bottleneck is not None:
            return self.bottleneck
        # Per resource: (boolean, integer units, whether an assignment sets the boolean).
        loads = {resource: [(var, whole_units(seconds, self.scale), is_set) for var, seconds, is_set in terms]
                 for resource, terms in self._resource_loads().items()}
        top = sum(units for terms in loads.values() for _, units, _ in terms) + 1
        self.bottleneck = self.model.new_int_var(0, top, "bottleneck")
        expressions = {}
        for resource, terms in loads.items():
            expressions[resource] = cp_model.LinearExpr.weighted_sum([t[0] for t in terms], [t[1] for t in terms])
            self.model.add(expressions[resource] <= self.bottleneck)
        self.derived.append((self.bottleneck, lambda a: max(
            (sum(units for _, units, is_set in terms if is_set(a)) for terms in loads.values()), default=0)))
        for first, second in self._interchangeable_pairs():
            self.model.add(expressions.get(first, 0) >= expressions.get(second, 0))
        return self.bottleneck

    def require_throughput(self, requests_per_second: float) -> None:
        """Keep every resource's seconds per request at or below 1 / `requests_per_second`: each resource's load is
        scaled so that the limit is 10^9 units and rounded down per term (callers re-check with `score`), as
        `limit_latency` does, whatever scale the objective has."""
        for terms in self._resource_loads().values():
            units = [floor_units(seconds * requests_per_second, OBJECTIVE_UNITS, most=OBJECTIVE_UNITS + 1)
                     for _, seconds, _ in terms]
            self.model.add(cp_model.LinearExpr.weighted_sum([t[0] for t in terms], units) <= OBJECTIVE_UNITS)

    def _resource_loads(self) -> dict[str, list[tuple[cp_model.IntVar, float, Callable[[Mapping[str, str]], bool]]]]:
        """Per serving resource (a device, a link resource): each boolean that loads it, the seconds per request it
        adds, and whether an assignment sets the boolean."""
        self.add_transfers()
        loads: dict[str, list] = {}
        for node in self.problem.nodes:
            self.check_time()
            for target, seconds in node.compute_seconds.items():
                loads.setdefault(target, []).append((self.on[node.name, target], seconds,
                                                     lambda a, n=node.name, t=target: a[n] == t))
        for var, seconds, destination, is_set in self.hop_terms:
            loads.setdefault(destination, []).append((var, seconds, is_set))
        for var, num_bytes, source, destination, is_set in self.move_terms:
            for resource in self.problem.route(source, destination):
                loads.setdefault(resource, []).append((var, num_bytes / self.problem.bandwidth(resource), is_set))
        return loads

    def used_price_per_hour(self) -> cp_model.LinearExpr:
        """The hourly price of the devices that compute anything, in objective units."""
        terms = []
        for target in self.problem.targets:
            used = self.model.new_bool_var(f"used[{target.name}]")
            for node in self.problem.nodes:
                if node.compute_seconds.get(target.name, 0) > 0:
                    self.model.add_implication(self.on[node.name, target.name], used)
            self.derived.append((used, lambda a, t=target.name: any(
                a[n.name] == t and n.compute_seconds.get(t, 0) > 0 for n in self.problem.nodes)))
            terms.append((used, whole_units(target.price_per_hour, self.scale)))
        return cp_model.LinearExpr.weighted_sum([v for v, _ in terms], [c for _, c in terms])

    def _interchangeable_pairs(self) -> list[tuple[str, str]]:
        """Neighbouring places of one group of identical devices (a fleet's: same spec, host, price, memory and
        links) that also cost the same for every node (a pin on one place would set it apart)."""
        names = self.problem.target_names
        return [(first, second) for first, second in zip(names, names[1:])
                if self.problem.group(first) == self.problem.group(second)
                and all(n.compute_seconds.get(first) == n.compute_seconds.get(second) for n in self.problem.nodes)]

    def add_schedule(self) -> Schedule:
        """Start times on every device at once (see partitioner.placement.schedule), read back as the order."""
        self.schedule = Schedule(self.model, self.problem, self.on, units_per_second=self.scale,
                                 check_time=self.check_time)
        return self.schedule

    def check_time(self) -> None:
        """Raise SearchOutOfTime once the deadline has passed; called between steps of building."""
        if time.perf_counter() > self.deadline:
            raise SearchOutOfTime

    def _placement_variables(self) -> dict[tuple[str, str], cp_model.IntVar]:
        on: dict[tuple[str, str], cp_model.IntVar] = {}
        for node in self.problem.nodes:
            for target, seconds in node.compute_seconds.items():
                var = self.model.new_bool_var(f"on[{node.name},{target}]")
                on[node.name, target] = var
                self.busy_terms.append((var, seconds, (target,)))
            self.model.add_exactly_one(on[node.name, t] for t in node.compute_seconds)
            if node.follows is not None:
                for target in node.compute_seconds:
                    self.model.add(on[node.name, target] == on[node.follows, target])
        return on

    def _hop_variables(self) -> list[tuple[cp_model.IntVar, float, str, Callable[[Mapping[str, str]], bool]]]:
        """Per pair of ops that run one after the other (problem.sequence) and device the second may run on, a
        boolean that is true when the second runs there and the first does not: a hop into that device (a
        reduced problem's sequence names each pair once, partitioner/placement/reduction.py)."""
        terms = []
        for before, after, times in self.problem.sequence() if self.problem.hop_seconds else ():
            self.check_time()
            for target in self.problem.node(after).compute_seconds:
                seconds = times * self.problem.hop_seconds.get(target, 0.0)
                if seconds <= 0:
                    continue
                def is_set(a: Mapping[str, str], b=before, n=after, t=target) -> bool:
                    return a[n] == t and a[b] != t

                if (before, target) not in self.on:  # the first never runs there: a hop whenever the second does
                    entered = self.on[after, target]
                else:
                    entered = self.model.new_bool_var("")
                    self.model.add(entered >= self.on[after, target] - self.on[before, target])
                    self.derived.append((entered, is_set))
                terms.append((entered, seconds, target, is_set))
                self.busy_terms.append((entered, seconds, (target,)))
        return terms

    def _needed_on(self, consumers: Sequence[str]) -> dict[str, cp_model.IntVar]:
        """Per target, a boolean that is true when some consumer sits there."""
        by_target: dict[str, list[cp_model.IntVar]] = {}
        for consumer in consumers:
            for target in self.problem.node(consumer).supported:
                by_target.setdefault(target, []).append(self.on[consumer, target])
        needed = {}
        for target, placed in by_target.items():
            if len(placed) == 1:
                needed[target] = placed[0]
                continue
            var = self.model.new_bool_var("")
            for on in placed:
                self.model.add_implication(on, var)
            self.derived.append((var, lambda a, t=target: any(a[c] == t for c in consumers)))
            needed[target] = var
        return needed

    def _memory_limits(self) -> None:
        """Parameters used on a target are resident there; with its activation arena, their bytes must fit
        its memory. An op whose working set alone exceeds the memory cannot run there."""
        for target in targets_whose_memory_can_bind(self.problem):
            self.check_time()
            user_names: dict[str, list[str]] = {}
            for node in self.problem.nodes:
                if target.name in node.compute_seconds:
                    if node.working_bytes > target.memory_bytes:
                        self.model.add(self.on[node.name, target.name] == 0)
                    for parameter in node.parameters:
                        user_names.setdefault(parameter, []).append(node.name)
            resident_terms = []
            for parameter, names in user_names.items():
                resident = self.model.new_bool_var(f"resident[{parameter},{target.name}]")
                for name in names:
                    self.model.add_implication(self.on[name, target.name], resident)
                self.derived.append((resident, lambda a, n=names, t=target.name: any(a[name] == t for name in n)))
                resident_terms.append(self.problem.parameter_bytes[parameter] * resident)
            arena = activation_arena_bytes(self.problem, target.name)
            self.model.add(sum(resident_terms) <= target.memory_bytes - arena)

    def _separate_phases(self) -> None:
        """Each device serves one phase at most (see PlacementProblem.separate_phases)."""
        nodes_of: dict[str, list[ProblemNode]] = {}
        for node in self.problem.nodes:
            nodes_of.setdefault(phase_of(node.name), []).append(node)
        for target in self.problem.target_names:
            serves = []
            for phase, nodes in nodes_of.items():
                var = self.model.new_bool_var(f"serves[{phase},{target}]")
                for node in nodes:
                    if target in node.compute_seconds:
                        self.model.add_implication(self.on[node.name, target], var)
                members = [n.name for n in nodes]
                self.derived.append((var, lambda a, t=target, m=members: any(a[n] == t for n in m)))
                serves.append(var)
            self.model.add_at_most_one(serves)

    def with_blocks_tied(self) -> PlacementModel:
        """A copy of this model (its variables, constraints and objective) that also puts corresponding nodes of
        neighbouring repeated blocks on one target, the blocks of each family cut into TIED_GROUPS runs: a
        restriction that presolve shrinks to the size of a few blocks. The copy shares this model's variables
        (CP-SAT variables are indices), so hints and plans read the same way from both."""
        tied = copy.copy(self)
        tied.model = self.model.clone()
        tied._tie_blocks()
        return tied

    def _tie_blocks(self) -> None:
        for family in self.problem.blocks:
            run_length = -(-len(family) // TIED_GROUPS)
            for index in range(1, len(family)):
                if index % run_length:
                    self._tie_pair(family[index - 1], family[index])

    def _tie_pair(self, first: Sequence[str], second: Sequence[str]) -> None:
        for a, b in zip(first, second):
            targets = self.problem.node(a).supported
            if targets == self.problem.node(b).supported:
                for target in targets:
                    self.model.add(self.on[a, target] == self.on[b, target])

    def hint(self, assignment: Mapping[str, str]) -> None:
        """Suggest `assignment`, with every auxiliary boolean set to match, so the solver starts from it."""
        self.model.clear_hints()
        variables = [var.index for var in self.on.values()] + [var.index for var, _ in self.derived]
        values = [int(assignment[node] == target) for node, target in self.on]
        values += [int(value_for(assignment)) for _, value_for in self.derived]
        hint = self.model.proto.solution_hint  # filled in bulk: one add_hint call per variable is slow at 10^5
        hint.vars.extend(variables)
        hint.values.extend(values)

    def read_assignment(self, solver: cp_model.CpSolver) -> dict[str, str]:
        return {node: target for (node, target), var in self.on.items() if solver.boolean_value(var)}

    def read_order(self, solver: cp_model.CpSolver) -> tuple[str, ...]:
        return self.schedule.order(solver, self.problem) if self.schedule is not None else ()
