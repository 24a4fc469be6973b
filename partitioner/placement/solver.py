"""The CP-SAT placement solver: the best placement for an objective within memory limits, with a proven bound.

Data, model, objective, solve, read back, in that order: the problem is
reduced exactly (partitioner/placement/reduction.py), built as a CP-SAT model
(partitioner/placement/cp_sat_model.py), given the objective's terms, and
searched in phases (partitioner/placement/search.py). Baseline placements seed
the search, and the returned plan is never worse than the best baseline that
fits in memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Mapping

from ortools.sat.python import cp_model

from partitioner.errors import PartitionerError
from partitioner.fields import number, text, whole
from partitioner.placement.cp_sat_model import OBJECTIVE_UNITS, TIED_GROUPS, PlacementModel
from partitioner.placement.infeasibility import explain_infeasible
from partitioner.placement.memory import targets_whose_memory_can_bind
from partitioner.placement.objectives import LATENCY, Objective, objective_named, registered_objectives
from partitioner.placement.problem import PlacementProblem, check_assignment
from partitioner.placement.reduction import reduce_problem
from partitioner.placement.scoring import Score, score
from partitioner.placement.tidy import tidy

# DEFAULT_WORKERS and SolverOptions are re-exported: callers configure a solve from here.
from partitioner.placement.search import (DEFAULT_WORKERS, SolverOptions, configured_solver, phases,  # noqa: F401, I001
                                          progress_watcher)

# Share of the time limit each seeding objective's solve may take (see `_seed_plans`): on graphs too large for
# the makespan search to get far (Llama-70B), a seed is the plan, so it gets the time a good one needs.
SEED_SHARE = 0.25


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
        return cls(text(data, "status"), number(data, "objective"), number(data, "bound"),
                   number(data, "gap", maximum=1.0), number(data, "wall_seconds"), text(data, "origin"),
                   whole(data, "solved_nodes", 0))


@dataclass(frozen=True, slots=True)
class Placement:
    """A target for every node, the objective it was chosen for, and the solver's report.

    `order` is the order the nodes run in when the objective is makespan (else empty: the graph's order).
    """

    assignment: Mapping[str, str]
    objective: Objective
    report: SolverReport
    order: tuple[str, ...] = ()


def solve(problem: PlacementProblem, objective: Objective = LATENCY, options: SolverOptions = SolverOptions(),
          hints: Mapping[str, Mapping[str, str]] | None = None,
          max_latency_seconds: float | None = None, min_throughput: float | None = None) -> Placement:
    """Minimise `objective` (see partitioner.placement.objectives) over placements that fit every target's memory.

    `max_latency_seconds` is a latency limit (an SLO), typically with cost; `min_throughput` (requests per
    second at full load, under the serving model) is a load to serve, which `serving-cost` needs.
    `hints` maps a baseline's name to its assignment; the best one that fits
    memory (and the limit) seeds the search and is returned if the solver finds nothing better.
    """
    if max_latency_seconds is not None and max_latency_seconds <= 0:
        raise PartitionerError(f"latency limit {max_latency_seconds} s is not positive. Fix: give a positive limit.")
    if max_latency_seconds is not None and not objective.accepts_latency_limit:
        accepting = ", ".join(o.name for o in registered_objectives() if o.accepts_latency_limit)
        raise PartitionerError(f"a latency limit bounds the sequential latency, which {objective.name} does not "
                               f"measure. Fix: drop the limit, or use it with one of these objectives: {accepting}.")
    if min_throughput is not None and not (min_throughput > 0 and math.isfinite(min_throughput)):
        raise PartitionerError(f"throughput {min_throughput} requests/s is not positive. Fix: give e.g. 50/s.")
    if objective.needs_min_throughput and min_throughput is None:
        raise PartitionerError(f"{objective.name} sizes the fleet to a load, and none was given. Fix: add "
                               "--min-throughput N/s (min_throughput=N), or use --objective throughput.")
    started = time.perf_counter()
    seeds = _seed_plans(problem, objective, options, hints or {})
    hints = {**(hints or {}), **seeds}
    if seeds:  # the search gets what the seeds left: all but their share, or, on the clock, all they did not use
        nominal = options.time_limit_seconds * (1 - SEED_SHARE * len(seeds))
        left = nominal if options.deterministic else options.time_limit_seconds - (time.perf_counter() - started)
        options = replace(options, time_limit_seconds=max(left, nominal))

    def allowed(result: Score) -> bool:
        return (result.fits_memory and not result.phase_conflicts
                and (max_latency_seconds is None or result.latency_seconds <= max_latency_seconds)
                and (min_throughput is None or result.serving.throughput_per_second >= min_throughput * (1 - 1e-9)))

    hint_scores = {name: (assignment, score(problem, assignment)) for name, assignment in (hints or {}).items()}
    candidates = {name: entry for name, entry in hint_scores.items() if allowed(entry[1])}
    best_hint = _best(candidates, objective)
    reference = objective.value(candidates[best_hint][1]) if best_hint else _upper_estimate(problem, objective)
    scale = OBJECTIVE_UNITS / reference if reference > 0 else 1.0

    reduction = reduce_problem(problem, objective)

    untied = PlacementModel(reduction.problem, scale)
    untied.model.minimize(objective.add_to(untied))
    if max_latency_seconds is not None:
        untied.limit_latency(max_latency_seconds)
    if min_throughput is not None:
        untied.require_throughput(min_throughput)

    # Where the search ends before proving a bound (large graphs), the objective's own bound still holds.
    proven, bound_units, order = False, objective.lower_bound(problem) * scale, ()
    for phase in phases(options, objective, has_blocks=_worth_tying(reduction.problem)):
        model = untied.with_blocks_tied() if phase.tied else untied
        model.model.clear_hints()
        best_so_far = _best(candidates, objective)
        if best_so_far is not None and phase.workers > 1:
            model.hint(reduction.restrict(candidates[best_so_far][0]))
        solver = configured_solver(phase, options)
        watcher = progress_watcher(solver, options.on_progress, scale, phase.tied) if options.on_progress else None
        status = solver.solve(model.model, watcher)
        if status == cp_model.INFEASIBLE and not phase.tied:
            raise PartitionerError(explain_infeasible(problem, max_latency_seconds, hint_scores, min_throughput))
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
            f"{' and the latency limit' if max_latency_seconds is not None else ''}"
            f"{' and serves the required throughput' if min_throughput is not None else ''}. "
            "Fix: raise the time limit (--time-limit) or add memory (a larger target)."
        )
    order = order if origin == "cp-sat" else ()
    assignment, result = tidy(problem, candidates[origin][0], objective, allowed, order)
    value = objective.value(result)
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
    return Placement(assignment, objective, report, order)


def _seed_plans(problem: PlacementProblem, objective: Objective, options: SolverOptions,
                hints: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """The plans of the objectives that seed `objective`'s search (see `Objective.seeded_by`), each solved with
    SEED_SHARE of the time limit; named like hints, e.g. "latency plan", and not solved again when `hints`
    already hold one by that name."""
    seeds = {}
    for name in objective.seeded_by:
        if f"{name} plan" in hints:  # the caller solved it already, e.g. for another objective of the same model
            continue
        seed = objective_named(name)
        seed_options = replace(options, time_limit_seconds=options.time_limit_seconds * SEED_SHARE, on_progress=None)
        seeds[f"{seed.name} plan"] = dict(solve(problem, seed, seed_options, hints=hints).assignment)
    return seeds


def _rank(name: str, result: Score, objective: Objective) -> tuple[float, float, bool]:
    """Lower is better: the objective; on ties (to 1e-9) the lower latency, then the solver's plan, the one the
    bound speaks for. A makespan tie, e.g., goes to the plan that adds no needless moves."""
    return float(f"{objective.value(result):.9e}"), result.latency_seconds, name != "cp-sat"


def _best(candidates: Mapping[str, tuple[Mapping[str, str], Score]], objective: Objective) -> str | None:
    """The name of the best candidate (see `_rank`), or None when there is none."""
    return min(candidates, key=lambda name: _rank(name, candidates[name][1], objective), default=None)


def _worth_tying(problem: PlacementProblem) -> bool:
    """Whether some family of repeated blocks is long enough for tied runs to shrink the search, and memory
    may force blocks apart (without a binding limit the untied search is fast on its own)."""
    return any(len(family) >= 2 * TIED_GROUPS for family in problem.blocks) and bool(
        targets_whose_memory_can_bind(problem))


def _upper_estimate(problem: PlacementProblem, objective: Objective) -> float:
    """A rough scale for the objective when no hint is available: the costliest target per node
    and the dearest link per tensor (without it, a graph of free views would round every move to 0)."""
    total = 0.0
    for node in problem.nodes:
        total += max(seconds * objective.rate(problem, (t,)) for t, seconds in node.compute_seconds.items())
    for value in problem.values:
        total += max(
            (problem.transfer_seconds(value.num_bytes, s, d) * objective.rate(problem, (s, d))
             for s, d in problem.links),
            default=0.0,
        )
    return total
