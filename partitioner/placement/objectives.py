"""Objectives: what a placement is chosen to minimise, each one value, registered by name.

An objective reads its figure from a `Score`, knows its unit, says what one
busy second of a set of targets adds to it (how compute and transfers are
priced), and adds what it needs to the CP-SAT placement model. The registry
gives the CLI and the Python API their choices: a new objective is one
subclass and one `register_objective` call, with no branch to edit elsewhere
(a sum of priced busy seconds subclasses `BusySecondsObjective` and says only
what its figure is and what a busy second is worth).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Sequence

from partitioner.errors import PartitionerError
from partitioner.units import DOLLARS, DOLLARS_PER_HOUR, SECONDS, SECONDS_PER_REQUEST, Unit

if TYPE_CHECKING:  # the CLI lists the objectives before it needs the solver, torch or OR-Tools
    from ortools.sat.python import cp_model

    from partitioner.placement.cp_sat_model import PlacementModel
    from partitioner.placement.floors import Relaxation
    from partitioner.placement.problem import PlacementProblem
    from partitioner.placement.scoring import Score


class Objective(ABC):
    """One thing a placement can be optimised for; one instance each, shared by every plan that uses it.

    `schedules_ops` is true when the figure depends on when each op runs, not
    only where: the solver then decides start times too. `accepts_latency_limit`
    says whether a sequential latency limit (an SLO) can be added to it.
    `table_column` heads the summary's column for this figure where the
    standard columns (latency, money per request) do not already show it.
    `seeded_by` names objectives (registered) whose optimal plans, found first
    and fast, seed this one's harder search: the plan is then never worse than them.
    `serving` is true for objectives priced by the serving model (many requests
    in flight, see partitioner/placement/serving.py), false for one request alone;
    `needs_min_throughput` for those that size the fleet to a required load.
    """

    __slots__ = ()
    name: ClassVar[str]
    description: ClassVar[str]
    unit: ClassVar[Unit]
    schedules_ops: ClassVar[bool] = False
    accepts_latency_limit: ClassVar[bool] = True
    table_column: ClassVar[str | None] = None
    seeded_by: ClassVar[tuple[str, ...]] = ()
    serving: ClassVar[bool] = False
    needs_min_throughput: ClassVar[bool] = False

    @abstractmethod
    def value(self, result: Score) -> float:
        """This objective's figure for a scored placement, in its unit."""

    def format(self, value: float) -> str:
        return self.unit.format(value)

    def versus(self, ours: float, theirs: float) -> str:
        """How the plan's figure `ours` compares with another strategy's `theirs`, in words."""
        saving = 1 - ours / theirs if theirs else 0.0
        return f"plan saves {100 * saving:.1f}% {self.name}"

    def rate(self, problem: PlacementProblem, busy_targets: Sequence[str]) -> float:
        """What one second of work that keeps `busy_targets` busy adds to the figure (a second, by default)."""
        return 1.0

    @abstractmethod
    def add_to(self, model: PlacementModel) -> cp_model.LinearExprT:
        """Add this objective's variables and constraints to `model`; return the expression to minimise."""

    def lower_bound(self, problem: PlacementProblem) -> float:
        """A bound no placement beats, known before any search (0 when nothing better is known)."""
        relaxation = self.relaxation(problem)
        return relaxation.value if relaxation is not None else 0.0

    def relaxation(self, problem: PlacementProblem) -> Relaxation | None:
        """The linear relaxation that gives this objective's floor, with its fractional placement
        (partitioner/placement/floors.py); None where the objective has none."""
        return None

    def __eq__(self, other: object) -> bool:
        # Plans once held the objective's name: `plan.objective == "cost"` keeps meaning what it meant.
        return other is self or (isinstance(other, str) and other == self.name)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<objective {self.name}>"

    def __str__(self) -> str:
        return self.name


class BusySecondsObjective(Objective):
    """An objective that is a sum over busy seconds, each at `rate`: every op's compute and every transfer,
    one request at a time. A subclass says only what its figure is and what a busy second is worth."""

    __slots__ = ()

    def add_to(self, model: PlacementModel) -> cp_model.LinearExprT:
        model.add_transfers()
        return model.priced_seconds(lambda busy: self.rate(model.problem, busy))

    def relaxation(self, problem: PlacementProblem) -> Relaxation | None:
        from partitioner.placement.floors import priced_relaxation

        return priced_relaxation(problem, lambda busy: self.rate(problem, busy))


class Latency(BusySecondsObjective):
    """Seconds per request with every op and transfer one after another."""

    __slots__ = ()
    name = "latency"
    description = "seconds per request, ops one after another"
    unit = SECONDS

    def value(self, result: Score) -> float:
        return result.latency_seconds


class Cost(BusySecondsObjective):
    """Money per request: each device's busy seconds (computing, sending, receiving) times its price."""

    __slots__ = ()
    name = "cost"
    description = "money per request"
    unit = DOLLARS

    def value(self, result: Score) -> float:
        return result.cost_per_request

    def rate(self, problem: PlacementProblem, busy_targets: Sequence[str]) -> float:
        return sum(problem.target(name).price_per_second for name in busy_targets)


class Makespan(Objective):
    """Seconds per request with every device running at once (see partitioner.placement.schedule)."""

    __slots__ = ()
    name = "makespan"
    description = "seconds per request, devices running concurrently"
    unit = SECONDS
    schedules_ops = True
    accepts_latency_limit = False
    table_column = "makespan"
    seeded_by = ("latency", "cost")

    def value(self, result: Score) -> float:
        return result.makespan_seconds

    def add_to(self, model: PlacementModel) -> cp_model.LinearExprT:
        return model.add_schedule().makespan

    def lower_bound(self, problem: PlacementProblem) -> float:
        from partitioner.placement.schedule import makespan_lower_bound

        return makespan_lower_bound(problem)


class Throughput(Objective):
    """Requests per second at full load on the given devices: the least seconds per request at the bottleneck."""

    __slots__ = ()
    name = "throughput"
    description = "requests per second at full load (serving model)"
    unit = SECONDS_PER_REQUEST
    serving = True
    table_column = "req/s"

    def value(self, result: Score) -> float:
        return result.serving.bottleneck_seconds

    def versus(self, ours: float, theirs: float) -> str:
        return f"plan serves {theirs / ours:.2f}x the requests" if ours > 0 else "plan serves without limit"

    def add_to(self, model: PlacementModel) -> cp_model.LinearExprT:
        return model.add_bottleneck()

    def relaxation(self, problem: PlacementProblem) -> Relaxation | None:
        from partitioner.placement.floors import bottleneck_relaxation

        return bottleneck_relaxation(problem)


class ServingCost(Objective):
    """The cheapest devices of the fleet that serve the required throughput: least price per hour of the devices
    used (so least money per request at that load), subject to --min-throughput."""

    __slots__ = ()
    name = "serving-cost"
    description = "money per request at full load, the fleet sized to --min-throughput (serving model)"
    unit = DOLLARS_PER_HOUR
    serving = True
    needs_min_throughput = True
    table_column = "fleet $/h"
    seeded_by = ("throughput",)

    def value(self, result: Score) -> float:
        return result.serving.price_per_hour

    def versus(self, ours: float, theirs: float) -> str:
        return f"plan saves {100 * (1 - ours / theirs):.1f}% of the devices' price" if theirs else "-"

    def add_to(self, model: PlacementModel) -> cp_model.LinearExprT:
        model.add_bottleneck()
        return model.used_price_per_hour()


_REGISTRY: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Make `objective` a choice of the CLI and the API under its name; returns the registered one (registering an
    objective of the same class again, as a re-run notebook cell does, keeps the first)."""
    registered = _REGISTRY.get(objective.name)
    if registered is not None:
        if type(registered) is type(objective):
            return registered
        raise PartitionerError(f"an objective named {objective.name!r} is already registered "
                               f"({type(registered).__name__}). Fix: give yours another name.")
    _REGISTRY[objective.name] = objective
    return objective


LATENCY = register_objective(Latency())
COST = register_objective(Cost())
MAKESPAN = register_objective(Makespan())
THROUGHPUT = register_objective(Throughput())
SERVING_COST = register_objective(ServingCost())


def objective_names() -> tuple[str, ...]:
    """The registered objectives' names, in registration order."""
    return tuple(_REGISTRY)


def registered_objectives() -> tuple[Objective, ...]:
    return tuple(_REGISTRY.values())


def objective_named(name: str | Objective) -> Objective:
    """The registered objective called `name` (an `Objective` is returned as it is)."""
    if isinstance(name, Objective):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise PartitionerError(f"unknown objective {name!r}. Fix: use one of {', '.join(_REGISTRY)}.") from None
