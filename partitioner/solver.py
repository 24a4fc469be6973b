"""The CP-SAT placement solver: the cheapest placement within memory limits, with a proven bound.

Data, model, variables, constraints, objective, solve, read back, in that
order. The model has one boolean per (node, supporting target), a transfer
boolean per (tensor, source, destination) that counts a tensor once per device
it must reach, and a residency boolean per (parameter, target) for memory.
Baseline placements seed the search, and the returned plan is never worse than
the best baseline that fits in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ortools.sat.python import cp_model

from partitioner.errors import PartitionerError
from partitioner.infeasibility import explain_infeasible
from partitioner.problem import (PlacementProblem, Score, activation_arena_bytes, check_assignment, check_objective,
                                 score, targets_whose_memory_can_bind)
from partitioner.reduction import reduce_problem
from partitioner.schedule import Schedule, makespan_lower_bound
from partitioner.search import (DEFAULT_WORKERS, SolverOptions, configured_solver, phases,  # noqa: F401 - re-exported
                                progress_watcher)

# Objective coefficients are integers: costs are scaled so that the reference
# plan (the best hint) is worth this many units, which keeps rounding far
# below any difference worth reporting.
_OBJECTIVE_UNITS = 1e9
# Repeated blocks are tied in this many runs of neighbouring blocks.
TIED_GROUPS = 8


@dataclass(frozen=True, slots=True)
class SolverReport:
    """How the placement was found and how close to optimal it is proven to be.

    `gap` is (objective - bound) / objective; 0 means proven optimal. `origin` is
    "cp-sat", or the baseline's name when no solver plan beat it in time.
    `solved_nodes` is how many nodes the solver placed after exact graph reduction.
    """

    status: str
    objective: float
    bound: float
    gap: float
    wall_seconds: float
    origin: str
    solved_nodes: int = 0

    def to_dict(self) -> dict:
        return {"status": self.status, "objective": self.objective, "bound": self.bound, "gap": self.gap,
                "wall_seconds": self.wall_seconds, "origin": self.origin, "solved_nodes": self.solved_nodes}

    @classmethod
    def from_dict(cls, data: Mapping) -> SolverReport:
        return cls(data["status"], data["objective"], data["bound"], data["gap"], data["wall_seconds"],
                   data["origin"], data.get("solved_nodes", 0))


@dataclass(frozen=True, slots=True)
class Placement:
    """A target for every node, the objective it was chosen for, and the solver's report.

    `order` is the order the nodes run in when the objective is makespan (else empty: the graph's order).
    """

    assignment: Mapping[str, str]
    objective: str
    report: SolverReport
    order: tuple[str, ...] = ()


def solve(problem: PlacementProblem, objective: str, options: SolverOptions = SolverOptions(),
          hints: Mapping[str, Mapping[str, str]] | None = None,
          max_latency_seconds: float | None = None) -> Placement:
    """Minimise `objective` ("latency", "cost" or "makespan") over placements that fit every target's memory.

    `max_latency_seconds` is a latency limit (an SLO), typically with "cost".
    `hints` maps a baseline's name to its assignment; the best one that fits
    memory (and the limit) seeds the search and is returned if the solver finds nothing better.
    """
    check_objective(objective)
    if max_latency_seconds is not None and max_latency_seconds <= 0:
        raise PartitionerError(f"latency limit {max_latency_seconds} s is not positive. Fix: give a positive limit.")
    if max_latency_seconds is not None and objective == "makespan":
        raise PartitionerError("a latency limit bounds the sequential latency, which makespan does not measure. "
                               "Fix: drop --max-latency, or use it with --objective cost.")
    started = time.perf_counter()

    def allowed(result: Score) -> bool:
        return result.fits_memory and (max_latency_seconds is None or result.latency_seconds <= max_latency_seconds)

    hint_scores = {name: (assignment, score(problem, assignment)) for name, assignment in (hints or {}).items()}
    candidates = {name: entry for name, entry in hint_scores.items() if allowed(entry[1])}
    best_hint = _best(candidates, objective)
    reference = candidates[best_hint][1].objective(objective) if best_hint else _upper_estimate(problem, objective)
    scale = _OBJECTIVE_UNITS / reference if reference > 0 else 1.0

    reduction = reduce_problem(problem, objective)

    def build(tied: bool) -> _PlacementModel:
        model = _PlacementModel(reduction.problem, objective, scale, tied)
        if max_latency_seconds is not None:
            model.limit_latency(max_latency_seconds)
        return model

    # Where the search ends before bounding the makespan (large graphs), the dependency bound still holds.
    floor = makespan_lower_bound(problem) * scale if objective == "makespan" else 0.0
    proven, bound_units, order = False, floor, ()
    untied: _PlacementModel | None = None
    for phase in phases(options, objective, has_blocks=_worth_tying(reduction.problem)):
        model = build(tied=True) if phase.tied else (untied := untied or build(tied=False))
        model.model.clear_hints()
        best_so_far = _best(candidates, objective)
        if best_so_far is not None and phase.workers > 1:
            model.hint(reduction.restrict(candidates[best_so_far][0]))
        solver = configured_solver(phase, options)
        watcher = progress_watcher(solver, options.on_progress, scale, phase.tied) if options.on_progress else None
        status = solver.solve(model.model, watcher)
        if status == cp_model.INFEASIBLE and not phase.tied:
            raise PartitionerError(explain_infeasible(problem, max_latency_seconds, hint_scores))
        accepted = False
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            found = reduction.expand(model.read_assignment(solver))
            found_order = reduction.expand_order(model.read_order(solver))
            result = score(problem, found, found_order or None)
            accepted = allowed(result)  # CP-SAT's rounded costs may admit a plan a hair over the latency limit
            if accepted and ("cp-sat" not in candidates or
                             _rank("cp-sat", result, objective) < _rank("cp-sat", candidates["cp-sat"][1], objective)):
                candidates["cp-sat"], order = (found, result), found_order
        if not phase.tied:  # a tied search bounds only the tied plans
            bound_units = max(bound_units, solver.best_objective_bound)
            if status == cp_model.OPTIMAL:
                proven = accepted  # only a plan we keep can carry the proof
                break
    origin = _best(candidates, objective)
    if origin is None:
        raise PartitionerError(
            f"no placement found within {options.time_limit_seconds:g} s and no baseline fits in memory"
            f"{' and the latency limit' if max_latency_seconds is not None else ''}. "
            "Fix: raise the time limit (--time-limit) or add memory (a larger target)."
        )
    assignment, value = candidates[origin][0], candidates[origin][1].objective(objective)
    check_assignment(problem, assignment)
    # A baseline chosen over a proven optimum ties with it, so it is proven optimal too.
    bound = value if proven else max(0.0, min(bound_units / scale, value))
    report = SolverReport(
        status="OPTIMAL" if proven else "FEASIBLE",
        objective=value,
        bound=bound,
        gap=0.0 if proven or value <= 0 else max(0.0, (value - bound) / value),
        wall_seconds=time.perf_counter() - started,
        origin=origin,
        solved_nodes=len(reduction.problem.nodes),
    )
    return Placement(dict(assignment), objective, report, order if origin == "cp-sat" else ())


def _rank(name: str, result: Score, objective: str) -> tuple[float, float, bool]:
    """Lower is better: the objective; on ties (to 1e-9) the lower latency, then the solver's plan, the one the
    bound speaks for. A makespan tie, e.g., goes to the plan that adds no needless moves."""
    return float(f"{result.objective(objective):.9e}"), result.latency_seconds, name != "cp-sat"


def _best(candidates: Mapping[str, tuple[Mapping[str, str], Score]], objective: str) -> str | None:
    """The name of the best candidate (see `_rank`), or None when there is none."""
    return min(candidates, key=lambda name: _rank(name, candidates[name][1], objective), default=None)


def _worth_tying(problem: PlacementProblem) -> bool:
    """Whether some family of repeated blocks is long enough for tied runs to shrink the search, and memory
    may force blocks apart (without a binding limit the untied search is fast on its own)."""
    return any(len(family) >= 2 * TIED_GROUPS for family in problem.blocks) and bool(
        targets_whose_memory_can_bind(problem))


class _PlacementModel:
    """The CP-SAT model of one placement problem, kept apart from the problem data."""

    def __init__(self, problem: PlacementProblem, objective: str, scale: float, tied: bool = False):
        self.problem = problem
        self.model = cp_model.CpModel()
        self.terms: list[tuple[cp_model.IntVar, int]] = []
        self.seconds: list[tuple[cp_model.IntVar, float]] = []
        self.scale = scale
        self.objective = objective
        # Auxiliary variables and what they equal for a given assignment, so hints can be complete.
        self.derived: list[tuple[cp_model.IntVar, Callable[[Mapping[str, str]], int]]] = []
        self.on = self._placement_variables()
        if tied:
            self._tie_blocks()
        self._memory_limits()
        self.schedule: Schedule | None = None
        if objective == "makespan":
            self.schedule = Schedule(self.model, problem, self.on, units_per_second=scale)
            self.model.minimize(self.schedule.makespan)
        else:
            self._transfer_terms()
            self.model.minimize(sum(coefficient * var for var, coefficient in self.terms))

    def _add_term(self, var: cp_model.IntVar, seconds: float, *busy_targets: str) -> None:
        """`var` being true costs `seconds` of latency, keeping `busy_targets` busy."""
        self.seconds.append((var, seconds))
        coefficient = round(seconds * self.problem.objective_rate(self.objective, *busy_targets) * self.scale)
        if coefficient > 0:
            self.terms.append((var, coefficient))

    def limit_latency(self, max_latency_seconds: float) -> None:
        """Keep the sequential latency (compute plus transfers) within `max_latency_seconds`.

        Seconds are scaled so the limit is 10^9 units and rounded down per term,
        so the model may admit a plan up to ~1e-9 per term over; callers re-check with `score`.
        """
        units = _OBJECTIVE_UNITS / max_latency_seconds
        self.model.add(sum(int(seconds * units) * var for var, seconds in self.seconds if seconds > 0)
                       <= int(_OBJECTIVE_UNITS))

    def _placement_variables(self) -> dict[tuple[str, str], cp_model.IntVar]:
        on: dict[tuple[str, str], cp_model.IntVar] = {}
        for node in self.problem.nodes:
            for target, seconds in node.compute_seconds.items():
                var = self.model.new_bool_var(f"on[{node.name},{target}]")
                on[node.name, target] = var
                self._add_term(var, seconds, target)
            self.model.add_exactly_one(on[node.name, t] for t in node.compute_seconds)
            if node.follows is not None:
                for target in node.compute_seconds:
                    self.model.add(on[node.name, target] == on[node.follows, target])
        return on

    def _transfer_terms(self) -> None:
        """For each tensor and each device it must reach, pay the move from wherever it was produced."""
        for value in self.problem.values:
            sources = self.problem.node(value.producer).supported
            needed_on = self._needed_on(value.consumers)
            for destination, needed in needed_on.items():
                moves = []
                for source in sources:
                    if source == destination:
                        continue
                    moved = self.model.new_bool_var(f"move[{value.producer},{source},{destination}]")
                    self.model.add_bool_or([self.on[value.producer, source].Not(), needed.Not(), moved])
                    self.derived.append((moved, lambda a, v=value, s=source, d=destination:
                                         a[v.producer] == s and any(a[c] == d for c in v.consumers)))
                    seconds = self.problem.transfer_seconds(value.num_bytes, source, destination)
                    self._add_term(moved, seconds, source, destination)
                    moves.append(moved)
                # Redundant but much tighter in the LP relaxation (a min-cut inequality):
                # if the tensor is needed on `destination` and not produced there, it moves there.
                produced_here = self.on.get((value.producer, destination), 0)
                self.model.add(sum(moves) >= needed - produced_here)

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

    def _tie_blocks(self) -> None:
        """Put corresponding nodes of neighbouring repeated blocks on one target, the blocks of each family
        cut into TIED_GROUPS runs: a restriction that presolve shrinks to the size of a few blocks."""
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
        for (node, target), var in self.on.items():
            self.model.add_hint(var, assignment[node] == target)
        for var, value_for in self.derived:
            self.model.add_hint(var, value_for(assignment))

    def read_assignment(self, solver: cp_model.CpSolver) -> dict[str, str]:
        return {node: target for (node, target), var in self.on.items() if solver.boolean_value(var)}

    def read_order(self, solver: cp_model.CpSolver) -> tuple[str, ...]:
        return self.schedule.order(solver, self.problem) if self.schedule is not None else ()


def _upper_estimate(problem: PlacementProblem, objective: str) -> float:
    """A rough scale for the objective when no hint is available: the costliest target per node
    and the dearest link per tensor (without it, a graph of free views would round every move to 0)."""
    total = 0.0
    for node in problem.nodes:
        total += max(seconds * problem.objective_rate(objective, t) for t, seconds in node.compute_seconds.items())
    for value in problem.values:
        total += max(
            (problem.transfer_seconds(value.num_bytes, s, d) * problem.objective_rate(objective, s, d)
             for s, d in problem.links),
            default=0.0,
        )
    return total
