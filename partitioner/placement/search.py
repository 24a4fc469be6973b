"""How CP-SAT is run for one solve: options, the phases of the search and their time, and progress.

The placement model (partitioner/placement/cp_sat_model.py) and the objective say what to optimise; this module
says how to search it: how many workers, for how long, counting wall or
deterministic time, and how improvements are reported while it runs.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable

from ortools.sat.python import cp_model

from partitioner.errors import PartitionerError
from partitioner.placement.objectives import Objective

# Workers of the parallel phase (see `_phases`). On 2 cores, 2 or 4 workers were
# measured to stall far from the bound on transformer graphs where 1 or 8 do
# better; 8 workers time-share fine on 2 cores.
DEFAULT_WORKERS = 8
# Share of the time limit for the search with repeated blocks tied (see `phases`).
TIED_SHARE = 0.25
# CP-SAT's random seed is a 32-bit signed integer; more workers than this only time-share the cores.
MOST_SEED = 2**31 - 1
MOST_WORKERS = 256


@dataclass(frozen=True, slots=True)
class SolverOptions:
    """Search limits. `workers=0` means the default two phases: one worker, then DEFAULT_WORKERS.

    `deterministic` searches with one worker and measures the time limit in
    CP-SAT's deterministic seconds (counted work, not the clock), so one seed
    gives the same plan on any machine under any load; the wall clock stops
    it only at 4 times the limit. Otherwise parallel workers race and results
    may differ from run to run when the limit is reached before a proof.
    `stop`, once set from any thread, ends every search run with these
    options as Ctrl-C does (see `run_search`).
    """

    time_limit_seconds: float = 30.0
    workers: int = 0
    seed: int = 0
    log_search: bool = False
    deterministic: bool = False
    # Called with (best objective or None, proven bound or None) as the search improves them.
    on_progress: Callable[[float | None, float | None], None] | None = field(default=None, compare=False)
    stop: threading.Event | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (self.time_limit_seconds >= 0 and math.isfinite(self.time_limit_seconds)):  # 0: the hints alone
            raise PartitionerError(f"time limit {self.time_limit_seconds!r} s is not a number of seconds. Fix: give "
                                   "e.g. 30.")
        if not (isinstance(self.workers, int) and 0 <= self.workers <= MOST_WORKERS):
            raise PartitionerError(f"{self.workers!r} workers: CP-SAT takes 0 (the default search) to "
                                   f"{MOST_WORKERS}. Fix: give a number in that range.")
        if self.deterministic and self.workers > 1:
            raise PartitionerError(f"a deterministic search runs one worker (so every run gives the same plan), and "
                                   f"{self.workers} workers were asked for. Fix: drop the workers, or drop "
                                   "--deterministic.")
        if not (isinstance(self.seed, int) and 0 <= self.seed <= MOST_SEED):
            raise PartitionerError(f"seed {self.seed!r} is not one CP-SAT takes (a whole number from 0 to "
                                   f"{MOST_SEED}). Fix: give a seed in that range.")


@dataclass(frozen=True, slots=True)
class Phase:
    """One CP-SAT run: how many workers, for how long, and whether the limit counts work or wall time."""

    workers: int
    seconds: float
    deterministic: bool = False
    tied: bool = False


def phases(options: SolverOptions, objective: Objective, has_blocks: bool) -> tuple[Phase, ...]:
    """The runs one solve makes, each starting from the best plan so far. By default: with repeated blocks,
    a first run with neighbouring blocks tied together (a much smaller search whose plan is a strong start);
    then a single worker (its LP-guided search proves the zoo's optima fastest and is reproducible); then,
    unless optimality is proven, a parallel portfolio whose local search improves large memory-bound plans.
    An objective that schedules ops (makespan) gets the portfolio throughout: its interval strategies prove optima
    that one LP-guided worker does not (ResNet-50: 0.9 s against 21 s)."""
    limit = options.time_limit_seconds
    if options.deterministic:
        return (Phase(1, limit, deterministic=True),)
    if options.workers:
        return (Phase(options.workers, limit),)
    if objective.schedules_ops:
        return (Phase(DEFAULT_WORKERS, limit),)
    tied = (Phase(1, limit * TIED_SHARE, tied=True),) if has_blocks else ()
    untied = limit * (1 - TIED_SHARE) if has_blocks else limit
    return tied + (Phase(1, untied * 2 / 3), Phase(DEFAULT_WORKERS, untied / 3))


def refining_phases(options: SolverOptions) -> tuple[Phase, ...]:
    """The run a search from a good plan makes (the structured search, partitioner/placement/structure.py): the
    parallel portfolio, whose local search improves on its hint, unless the options fix the workers or count
    deterministic time."""
    limit = options.time_limit_seconds
    if options.deterministic:
        return (Phase(1, limit, deterministic=True),)
    return (Phase(options.workers or DEFAULT_WORKERS, limit),)


def progress_watcher(solver: cp_model.CpSolver, report: Callable[[float | None, float | None], None],
                      scale: float, tied: bool) -> cp_model.CpSolverSolutionCallback:
    """A solution callback (and a bound callback on `solver`) passing improvements on in the objective's unit;
    a tied search's bound is not the problem's, so it is not passed on."""
    state: dict[str, float | None] = {"objective": None, "bound": None}

    def improved(objective: float | None = None, bound: float | None = None) -> None:
        if objective is not None:
            state["objective"] = objective / scale
        if bound is not None and not tied:
            state["bound"] = max(0.0, bound / scale)
        report(state["objective"], state["bound"])

    class _Solutions(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self) -> None:
            improved(objective=self.objective_value)

    solver.best_bound_callback = lambda bound: improved(bound=bound)
    return _Solutions()


def configured_solver(phase: Phase, options: SolverOptions) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = phase.workers
    if phase.deterministic:
        solver.parameters.max_deterministic_time = phase.seconds
        solver.parameters.max_time_in_seconds = 4 * phase.seconds
    else:
        solver.parameters.max_time_in_seconds = phase.seconds
    solver.parameters.random_seed = options.seed
    solver.parameters.log_search_progress = options.log_search
    solver.parameters.linearization_level = 2
    # CP-SAT's own Ctrl-C handler ends the search as if its time ran out, and the plan would go on to be written.
    solver.parameters.catch_sigint_signal = False
    return solver


def run_search(solver: cp_model.CpSolver, model: cp_model.CpModel,
               callback: cp_model.CpSolverSolutionCallback | None = None,
               stop: threading.Event | None = None) -> cp_model.CpSolverStatus:
    """`solver.solve(model, callback)`, ended at once by Ctrl-C in the main thread or by `stop` being set from any
    thread: either way CP-SAT is stopped and KeyboardInterrupt raised, so an interrupted command writes nothing.
    (CP-SAT searches in a thread of its own here, so that this thread keeps answering signals.)"""
    stop = stop or threading.Event()
    if stop.is_set():
        raise KeyboardInterrupt
    outcome: dict[str, object] = {}

    def search() -> None:
        try:
            outcome["status"] = solver.solve(model, callback)
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=search, name="cp-sat search", daemon=True)
    thread.start()
    interrupt: KeyboardInterrupt = KeyboardInterrupt()
    try:
        while thread.is_alive() and not stop.is_set():
            thread.join(0.05)
    except KeyboardInterrupt as raised:  # Ctrl-C, or SIGTERM as the CLI raises it
        interrupt = raised
        stop.set()
    if stop.is_set():
        solver.stop_search()
        thread.join()
        raise interrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome["status"]
