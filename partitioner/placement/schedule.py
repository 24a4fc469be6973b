"""Schedules for the makespan: every device runs at once, one op at a time, and transfers delay consumers.

`makespan_seconds` scores a placement by scheduling its ops in a given order,
each as early as its inputs and its device allow; `Schedule` adds the same
rules to a CP-SAT model (through `PlacementModel.add_schedule`, for the
`Makespan` objective of objectives.py) as intervals (one `NoOverlap` machine per target) and
precedences whose delay is the transfer time when producer and consumer sit on
different devices. Transfers are modelled as delays only: links are assumed
to move data without occupying either device (DMA), and without contention.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping, Sequence

from ortools.sat.python import cp_model

from partitioner.placement.integer_units import whole_units
from partitioner.placement.problem import PlacementProblem


def makespan_seconds(problem: PlacementProblem, assignment: Mapping[str, str],
                     order: Sequence[str] | None = None) -> float:
    """When the last op ends if each op, in `order` (topological; default the problem's), starts as soon as
    its inputs have arrived and its device has finished the ops before it; free ops occupy no device."""
    inputs = _inputs_by_consumer(problem)
    end: dict[str, float] = {}
    device_free: dict[str, float] = defaultdict(float)
    for name in order or [node.name for node in problem.nodes]:
        target = assignment[name]
        ready = 0.0
        for producer, num_bytes in inputs[name]:
            source = assignment[producer]
            delay = problem.transfer_seconds(num_bytes, source, target) if source != target else 0.0
            ready = max(ready, end[producer] + delay)
        duration = problem.node(name).compute_seconds[target]
        if duration == 0:  # a free op (a view) occupies no device, so it waits for none
            end[name] = ready
            continue
        end[name] = device_free[target] = max(ready, device_free[target]) + duration
    return max(end.values(), default=0.0)


def _inputs_by_consumer(problem: PlacementProblem) -> dict[str, list[tuple[str, int]]]:
    """For each node, (producer, bytes) of each tensor it reads."""
    inputs: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for value in problem.values:
        for consumer in dict.fromkeys(value.consumers):
            if consumer != value.producer:
                inputs[consumer].append((value.producer, value.num_bytes))
    return inputs


def makespan_lower_bound(problem: PlacementProblem) -> float:
    """No schedule beats the longest dependency chain at each op's fastest, nor all the work at its fastest
    spread evenly over every target: a bound the solver can report from the start."""
    fastest = {node.name: min(node.compute_seconds.values()) for node in problem.nodes}
    finish: dict[str, float] = {}
    inputs = _inputs_by_consumer(problem)
    for node in problem.nodes:
        finish[node.name] = fastest[node.name] + max((finish[p] for p, _ in inputs[node.name]), default=0.0)
    spread = sum(fastest.values()) / len(problem.targets)
    return max(max(finish.values(), default=0.0), spread)


class Schedule:
    """Start times in a CP-SAT model, tied to its placement booleans; `makespan` is what to minimise."""

    def __init__(self, model: cp_model.CpModel, problem: PlacementProblem,
                 on: Mapping[tuple[str, str], cp_model.IntVar], units_per_second: float,
                 check_time: Callable[[], None] = lambda: None):
        def units(seconds: float) -> int:
            return whole_units(seconds, units_per_second)

        moves = problem.distinct_moves()
        horizon = units(sum(max(n.compute_seconds.values()) for n in problem.nodes)) + sum(
            units(max((problem.transfer_seconds(v.num_bytes, s, d) for s, d in moves), default=0.0))
            * len(v.consumers) for v in problem.values) + 1
        self.start = {n.name: model.new_int_var(0, horizon, f"start[{n.name}]") for n in problem.nodes}
        end = {}
        machines: dict[str, list[cp_model.IntervalVar]] = defaultdict(list)
        for node in problem.nodes:
            duration = {t: units(seconds) for t, seconds in node.compute_seconds.items()}
            end[node.name] = self.start[node.name] + sum(d * on[node.name, t] for t, d in duration.items())
            for target, length in duration.items():
                if length > 0:
                    machines[target].append(model.new_optional_fixed_size_interval_var(
                        self.start[node.name], length, on[node.name, target], f"runs[{node.name},{target}]"))
        for intervals in machines.values():
            model.add_no_overlap(intervals)
        for consumer, reads in _inputs_by_consumer(problem).items():
            check_time()  # a consumer on many devices adds a constraint per pair of them
            for producer, num_bytes in reads:
                model.add(self.start[consumer] >= end[producer])
                for source in problem.node(producer).supported:
                    for destination in problem.node(consumer).supported:
                        delay = units(problem.transfer_seconds(num_bytes, source, destination)) \
                            if source != destination else 0
                        if delay > 0:
                            model.add(self.start[consumer] >= end[producer] + delay).only_enforce_if(
                                [on[producer, source], on[consumer, destination]])
        self.makespan = model.new_int_var(min(units(makespan_lower_bound(problem)), horizon), horizon, "makespan")
        for finish in end.values():
            model.add(self.makespan >= finish)

    def order(self, solver: cp_model.CpSolver, problem: PlacementProblem) -> tuple[str, ...]:
        """Node names by start time (ties in the problem's topological order): a valid order to run them."""
        position = {node.name: index for index, node in enumerate(problem.nodes)}
        return tuple(sorted(position, key=lambda name: (solver.value(self.start[name]), position[name])))
