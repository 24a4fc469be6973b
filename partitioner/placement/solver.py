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
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Mapping

from ortools.sat.python import cp_model

from partitioner.errors import PartitionerError
from partitioner.fields import number, text, whole
from partitioner.placement.cp_sat_model import TIED_GROUPS, PlacementModel, SearchOutOfTime
from partitioner.placement.infeasibility import explain_infeasible
from partitioner.placement.integer_units import OBJECTIVE_UNITS, objective_scale
from partitioner.placement.memory import targets_whose_memory_can_bind
from partitioner.placement.objectives import LATENCY, Objective, objective_named, registered_objectives
from partitioner.placement.problem import PlacementProblem, check_assignment
from partitioner.placement.reduction import Reduction, reduce_problem
from partitioner.placement.rounding import ROUNDED_FLOOR, rounded_placements
from partitioner.placement.scoring import Score, score
from partitioner.placement.structure import structured_problem, worth_structuring
from partitioner.placement.tidy import tidy

# DEFAULT_WORKERS and SolverOptions are re-exported: callers configure a solve from here.
from partitioner.placement.search import (DEFAULT_WORKERS, SolverOptions, configured_solver, phases,  # noqa: F401, I001
                                          progress_watcher, refining_phases, run_search)

# Share of the time limit each seeding objective's solve may take (see `_seed_plans`): on graphs too large for
# the makespan search to get far (Llama-70B), a seed is the plan, so it gets the time a good one needs.
SEED_SHARE = 0.25
# Shares of the time limit the structured search takes (see `solve`): placing blocks whole, then refining the
# blocks at its stage boundaries op by op; how close to the objective's floor its plan must come for the op-level
# search to be left out (it could gain at most that much), and the most ops (after exact reduction) that search
# is tried on after a structured one.
WHOLE_BLOCKS_SHARE = 0.15
REFINING_SHARE = 0.35
CLOSE_ENOUGH = 1e-3
FLOOR_TOLERANCE = 2e-6  # a floor is GLOP's optimum less 1e-6 of it (partitioner/placement/floors.py)
MOST_OP_LEVEL_NODES = 1000
# A proof of optimality is claimed only for a plan worth at least OBJECTIVE_UNITS / FINEST_PROOF integer units: below
# that, rounding each term to a unit could hide differences of a per cent.
FINEST_PROOF = 10**4


@dataclass(frozen=True, slots=True)
class SolverReport:
    """How the placement was found and how close to optimal it is proven to be.

    `gap` is (objective - bound) / objective; 0 means proven optimal. `origin` is
    "cp-sat", or the baseline's name when no solver plan beat it in time.
    `solved_nodes` is how many nodes the solver placed after exact graph reduction. `method` says how the search
    went where it searched the model's structure (partitioner/placement/structure.py), e.g. "structured: 90 pieces,
    then 12 blocks op by op; op-level search left out (1,555 ops)"; empty otherwise.
    """

    status: str
    objective: float
    bound: float
    gap: float
    wall_seconds: float
    origin: str
    solved_nodes: int = 0
    method: str = ""

    def to_dict(self) -> dict:
        return {"status": self.status, "objective": self.objective, "bound": self.bound, "gap": self.gap,
                "wall_seconds": self.wall_seconds, "origin": self.origin, "solved_nodes": self.solved_nodes,
                **({"method": self.method} if self.method else {})}

    @classmethod
    def from_dict(cls, data: Mapping) -> SolverReport:
        return cls(text(data, "status"), number(data, "objective"), number(data, "bound"),
                   number(data, "gap", maximum=1.0), number(data, "wall_seconds"), text(data, "origin"),
                   whole(data, "solved_nodes", 0), text(data, "method", ""))


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
    A model with repeated blocks is searched by its structure first (partitioner/placement/structure.py), with
    WHOLE_BLOCKS_SHARE and REFINING_SHARE of the time; the op-level search then starts from that plan.
    """
    _check_limits(objective, max_latency_seconds, min_throughput)
    started, time_limit = time.perf_counter(), options.time_limit_seconds
    seeds = _seed_plans(problem, objective, options, hints or {})
    hints = {**(hints or {}), **seeds}
    relaxation = objective.relaxation(problem)
    floor = relaxation.value if relaxation is not None else objective.lower_bound(problem)
    if relaxation is not None and relaxation.shares:  # the floor's shares, rounded: a plan that starts near it
        hints[ROUNDED_FLOOR] = min(rounded_placements(problem, relaxation.shares),
                                   key=lambda rounded: _rank("", score(problem, rounded), objective))
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
    search = _Search(problem, reduce_problem(problem, objective), objective, allowed, candidates,
                     max_latency_seconds, min_throughput, hint_scores, floor)
    # The time limit covers building the model too; where it is counted in work, the clock stops building only,
    # at four times the limit, as it stops a deterministic search.
    deadline = started + time_limit * (4 if options.deterministic else 1)
    scale = objective_scale(reference)
    op_level = len(search.reduction.problem.nodes) <= MOST_OP_LEVEL_NODES
    method, structured = [], worth_structuring(problem)
    if structured:
        # Too large a graph for the op-level search to get anywhere in the time (Llama-7B: 1,555 ops on 5 devices,
        # no plan in minutes) leaves all the time to the structured search.
        whole = options.time_limit_seconds * WHOLE_BLOCKS_SHARE
        refine = options.time_limit_seconds * (REFINING_SHARE if op_level else 1 - WHOLE_BLOCKS_SHARE)
        restriction = structured_problem(search.reduction, objective)
        search.run(scale, replace(options, time_limit_seconds=whole), min(deadline, time.perf_counter() + whole),
                   restriction=restriction)
        method.append(f"structured: blocks as {len(restriction.problem.nodes):,} pieces")
        if (best := _best(candidates, objective)) is not None:  # refine: its stage boundaries' blocks op by op
            refining = structured_problem(search.reduction, objective, around=candidates[best][0])
            search.run(scale, replace(options, time_limit_seconds=refine),
                       min(deadline, time.perf_counter() + refine), restriction=refining)
            method[-1] += f", then refined as {len(refining.problem.nodes):,} around its stage boundaries"
        options = replace(options, time_limit_seconds=max(0.0, options.time_limit_seconds - whole - refine))
    best = _best(candidates, objective)
    best_value = objective.value(candidates[best][1]) if best is not None else math.inf
    on_floor = best_value <= floor * (1 + FLOOR_TOLERANCE)
    close = not on_floor and best_value <= floor * (1 + CLOSE_ENOUGH)
    if on_floor or (structured and (close or not op_level)):
        # The best plan is as good as any (on a large model, as good as any to CLOSE_ENOUGH), or the op-level search
        # hopeless: the floor is the bound, and a plan on it (to GLOP's tolerance) is optimal.
        search.bound_units, search.proven = floor * scale, on_floor
        if structured:
            method.append(f"op-level search left out ({len(search.reduction.problem.nodes):,} ops"
                          f"{', the plan on the floor' if on_floor else ''}"
                          f"{f', the plan within {CLOSE_ENOUGH:.1%} of the floor' if close else ''})")
    else:
        search.run(scale, options, deadline)
        if structured:
            method.append("then the op-level search")
    kept = objective.value(candidates["cp-sat"][1]) if "cp-sat" in candidates else 0.0
    if search.searched and 0 < kept * scale < OBJECTIVE_UNITS / FINEST_PROOF:
        # The reference (a baseline dominated by some absurdly slow op, or the rough estimate) was so far above
        # the plans found that rounding hid their differences: search again, at the scale of the best one, in
        # the time left (at least a tenth of the limit; all of it again where time is counted in work).
        scale = objective_scale(kept)
        search.run(scale, options, max(deadline, time.perf_counter() + time_limit / 10))
    proven, bound_units, order = search.proven, search.bound_units, search.order
    origin = _best(candidates, objective)
    # A limit of 0 asks for the best baseline, and gets it quietly; a structured plan is the solver's own.
    if search.out_of_time and time_limit > 0 and origin != "cp-sat":
        _out_of_time(search.reduction.problem, time_limit, origin, hint_scores, max_latency_seconds,
                     min_throughput)
    if origin is None:
        raise PartitionerError(_nothing_qualifies(time_limit, hint_scores, max_latency_seconds,
                                                  min_throughput))
    order = order if origin == "cp-sat" else ()
    assignment, result = tidy(problem, candidates[origin][0], objective, allowed, order)
    value = objective.value(result)
    check_assignment(problem, assignment)
    # A baseline chosen over a proven optimum ties with it, so it is proven optimal too.
    bound = value if proven else max(0.0, min(bound_units / scale, value))
    report = SolverReport("OPTIMAL" if proven else "FEASIBLE", value, bound,
                          0.0 if proven or value <= 0 else max(0.0, (value - bound) / value),
                          time.perf_counter() - started, origin, len(search.reduction.problem.nodes),
                          "; ".join(method))
    return Placement(assignment, objective, report, order)


def _check_limits(objective: Objective, max_latency_seconds: float | None, min_throughput: float | None) -> None:
    """Refuse limits the objective cannot take or that are no limits: one error naming the fix."""
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


class _Search:
    """The phases of one solve's search (partitioner/placement/search.py), run at a given scale: each phase starts
    from the best plan so far, and every allowed plan found joins `candidates` as "cp-sat"."""

    def __init__(self, problem: PlacementProblem, reduction: Reduction, objective: Objective,
                 allowed: Callable[[Score], bool], candidates: dict[str, tuple[Mapping[str, str], Score]],
                 max_latency_seconds: float | None, min_throughput: float | None,
                 hint_scores: Mapping[str, tuple[Mapping[str, str], Score]], floor: float):
        self.problem, self.reduction, self.objective = problem, reduction, objective
        self.allowed, self.candidates, self.hint_scores = allowed, candidates, hint_scores
        self.max_latency_seconds, self.min_throughput = max_latency_seconds, min_throughput
        self.floor = floor  # the objective's own bound (partitioner/placement/floors.py), valid for any search
        self.proven, self.bound_units, self.order, self.out_of_time = False, 0.0, (), False
        self.searched = False  # whether an op-level search ran

    def run(self, scale: float, options: SolverOptions, deadline: float, restriction: Reduction | None = None
            ) -> None:
        """Build the model at `scale` and run the phases in what is left until `deadline` (perf_counter seconds;
        where time is counted in work, the phases take their nominal limits and the clock only stops building);
        `proven` and `bound_units` (at `scale`) say what the last run proved, `out_of_time` whether building
        took all the time. With a `restriction` (the structured search), its plans join the candidates, and
        what it proves, about the restricted plans alone, is not kept."""
        objective, candidates = self.objective, self.candidates
        reduction = restriction or self.reduction
        if restriction is None:
            # Where the search ends before proving a bound (large graphs), the objective's own bound still holds.
            self.proven, self.bound_units, self.searched = False, self.floor * scale, True
        try:
            untied = PlacementModel(reduction.problem, scale, deadline)
            untied.model.minimize(objective.add_to(untied))
            if self.max_latency_seconds is not None:
                untied.limit_latency(self.max_latency_seconds)
            if self.min_throughput is not None:
                untied.require_throughput(self.min_throughput)
            untied.check_time()
        except SearchOutOfTime:
            self.out_of_time = restriction is None
            return
        if not options.deterministic:
            options = replace(options, time_limit_seconds=min(options.time_limit_seconds,
                                                              deadline - time.perf_counter()))
        runs = (phases(options, objective, has_blocks=_worth_tying(reduction.problem)) if restriction is None
                else refining_phases(options))
        for phase in runs:
            model = untied.with_blocks_tied() if phase.tied else untied
            model.model.clear_hints()
            best_so_far = _best(candidates, objective)
            if best_so_far is not None and (phase.workers > 1 or restriction is not None):
                model.hint(reduction.restrict(candidates[best_so_far][0]))
            solver = configured_solver(phase, options)
            watcher = (progress_watcher(solver, options.on_progress, scale, phase.tied) if options.on_progress
                       else None)
            status = run_search(solver, model.model, watcher, options.stop)
            if status == cp_model.INFEASIBLE and restriction is not None:
                return  # no plan of the restricted shape: the op-level search looks further
            if status == cp_model.INFEASIBLE and not phase.tied:
                raise PartitionerError(explain_infeasible(self.problem, self.max_latency_seconds, self.hint_scores,
                                                          self.min_throughput))
            accepted = False
            if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                found = reduction.expand(model.read_assignment(solver))
                found_order = reduction.expand_order(model.read_order(solver))
                result = score(self.problem, found, found_order or None)
                accepted = self.allowed(result)  # CP-SAT's rounded costs may admit a plan a hair over a limit
                if accepted and ("cp-sat" not in candidates or _rank("cp-sat", result, objective)
                                 < _rank("cp-sat", candidates["cp-sat"][1], objective)):
                    candidates["cp-sat"], self.order = (found, result), found_order
            if not phase.tied and restriction is None:  # a tied or restricted search bounds only its own plans
                self.bound_units = max(self.bound_units, solver.best_objective_bound)
                if status == cp_model.OPTIMAL:
                    # Only a plan we keep can carry the proof, and only at a scale fine enough for it (nothing
                    # beats a plan that costs nothing).
                    units = objective.value(result) * scale if accepted else 0.0
                    self.proven = accepted and (units <= 0 or units >= OBJECTIVE_UNITS / FINEST_PROOF)
                    break


def _out_of_time(problem: PlacementProblem, seconds: float, origin: str | None,
                 hint_scores: Mapping[str, tuple[Mapping[str, str], Score]], max_latency_seconds: float | None,
                 min_throughput: float | None) -> None:
    """Say that building the search took all the time: a warning where a baseline qualifies (it is the plan),
    else an error naming what rules each out."""
    what = (f"the time limit ran out while building the search for {len(problem.nodes)} ops on "
            f"{len(problem.targets)} devices ({seconds:.3g} s were left for it), before any search ran")
    fix = "raise the time limit (--time-limit), or plan on fewer devices"
    if origin is None:
        why = _why_baselines_fail(hint_scores, max_latency_seconds, min_throughput)
        raise PartitionerError(f"{what}, and no baseline to fall back on qualifies{why}. Fix: {fix}.")
    warnings.warn(f"{what}: the plan is the best one it would have started from, {origin}. Fix: {fix}.",
                  stacklevel=3)


def _nothing_qualifies(seconds: float, hint_scores: Mapping[str, tuple[Mapping[str, str], Score]],
                       max_latency_seconds: float | None, min_throughput: float | None) -> str:
    """Why no plan came out: the search found none in time, and what rules out each seed plan (baselines)."""
    why = _why_baselines_fail(hint_scores, max_latency_seconds, min_throughput)
    memory = any(not result.fits_memory for _, result in hint_scores.values())
    return (f"the search found no placement within {seconds:g} s, and no baseline to fall back on qualifies{why}. "
            f"Fix: raise the time limit (--time-limit){', or add memory (a larger target)' if memory else ''}.")


def _why_baselines_fail(hint_scores: Mapping[str, tuple[Mapping[str, str], Score]],
                        max_latency_seconds: float | None, min_throughput: float | None) -> str:
    """` (fallback, priority do not fit in memory)`: the rules each baseline breaks ("" where none was given)."""
    broken: dict[str, list[str]] = {}
    for name, (_, result) in hint_scores.items():
        if not result.fits_memory:
            broken.setdefault("do not fit in memory", []).append(name)
        if result.phase_conflicts:
            broken.setdefault("give a device to both phases", []).append(name)
        if max_latency_seconds is not None and result.latency_seconds > max_latency_seconds:
            broken.setdefault("exceed the latency limit", []).append(name)
        if min_throughput is not None and result.serving.throughput_per_second < min_throughput * (1 - 1e-9):
            broken.setdefault("serve less than the required throughput", []).append(name)
    said = "; ".join(f"{', '.join(names)} {rule}" for rule, names in broken.items())
    return f" ({said})" if said else ""


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
    pairs = problem.distinct_moves()
    for value in problem.values:
        total += max((problem.transfer_seconds(value.num_bytes, s, d) * objective.rate(problem, (s, d))
                      for s, d in pairs), default=0.0)
    return total
