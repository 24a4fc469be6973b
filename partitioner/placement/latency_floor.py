"""The least latency any placement that fits in memory can have: a bound known before any search.

A request's sequential latency is at least the compute of its ops where they
run, and every weight must sit on a device with room for it. Relaxing each op
to run in fractions on the devices that support it, and each weight to be
counted once (with its first user), gives a linear program whose optimum no
placement beats: where the weights do not fit the fastest device, the rest of
them must be read by slower ones. An LLM's decode step is such a case, and the
bound tells before any search that a TPOT limit cannot be met
(partitioner/llm/planning.py). Solved with OR-Tools' GLOP.
"""

from __future__ import annotations

from ortools.linear_solver import pywraplp

from partitioner.placement.problem import PlacementProblem


def latency_floor_seconds(problem: PlacementProblem) -> float:
    """A lower bound on the sequential latency (compute alone) of every placement of `problem` that fits memory."""
    solver = pywraplp.Solver.CreateSolver("GLOP")
    objective = solver.Objective()
    room = {t.name: solver.Constraint(-solver.infinity(), t.memory_bytes / _GIB) for t in problem.targets}
    seen: set[str] = set()
    for node in problem.nodes:
        new_weights = sum(problem.parameter_bytes[p] for p in node.parameters if p not in seen) / _GIB
        seen.update(node.parameters)
        whole = solver.Constraint(1.0, 1.0)  # the node runs, in shares, on the targets that support it
        for target, seconds in node.compute_seconds.items():
            share = solver.NumVar(0.0, 1.0, "")
            whole.SetCoefficient(share, 1.0)
            objective.SetCoefficient(share, seconds)
            if new_weights:
                room[target].SetCoefficient(share, new_weights)
    objective.SetMinimization()
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return 0.0  # the weights fit nowhere even in shares: the search says so with its own message
    return objective.Value() * (1 - 1e-6)  # GLOP's optimum is exact to its tolerances: stay below it


_GIB = 2.0**30
