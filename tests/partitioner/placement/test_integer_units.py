"""Any figure a problem or a limit may hold builds a valid CP-SAT model, and the optimum is still found.

CP-SAT takes 64-bit integers. Costs of 1e300 seconds (a slow device, a profile or a cost hook), links of a
thousandth of a GB/s, prices of $10,000 an hour, a rate of 1e-320 requests a second and a limit of 1e-300 s
once overflowed it, as TypeError or OverflowError from deep inside OR-Tools.
"""

from __future__ import annotations

import pytest

from partitioner.errors import PartitionerError
from partitioner.placement.baselines import BASELINES
from partitioner.placement.integer_units import MOST_UNITS, whole_units
from partitioner.placement.objectives import registered_objectives
from partitioner.placement.problem import TargetTerms
from partitioner.placement.solver import SolverOptions, solve
from targets.spec import Link
from tests.partitioner.placement.problem_builders import brute_force_optimum, make_problem, node, value

FAST = SolverOptions(time_limit_seconds=10.0, workers=1)
SLOW = TargetTerms("slow", price_per_hour=10_000.0, memory_bytes=2**40)
FAST_GPU = TargetTerms("gpu", price_per_hour=5.0, memory_bytes=2**40)


def extreme_problem():
    """A chain the slow device would take 1e300 s over, through a link of a thousandth of a GB/s; the gpu takes
    milliseconds. The fallback (gpu) holds every op."""
    return make_problem(
        [node("a", slow=1e300, gpu=1e-3), node("b", slow=1e-300, gpu=2e-3), node("c", slow=5e-4, gpu=1e-3)],
        [value("a", "b", num_bytes=10**9), value("b", "c", num_bytes=10**9)],
        targets=(SLOW, FAST_GPU), fallback="gpu", links=Link(10.0, 1e6))


@pytest.mark.parametrize("objective", [o for o in registered_objectives() if not o.needs_min_throughput],
                         ids=lambda o: o.name)
def test_a_problem_with_figures_at_every_extreme_is_solved_to_its_optimum(objective):
    problem = extreme_problem()
    hints = {name: strategy(problem) for name, strategy in BASELINES.items()}

    placement = solve(problem, objective, FAST, hints=hints)

    assert placement.report.status == "OPTIMAL"
    assert placement.report.objective == pytest.approx(brute_force_optimum(problem, objective))


def test_a_throughput_so_low_that_every_plan_serves_it_adds_nothing_and_one_too_high_is_named():
    problem = extreme_problem()
    serving_cost = next(o for o in registered_objectives() if o.needs_min_throughput)

    for rate in (1e-12, 1e-300, 1e-320):
        assert solve(problem, serving_cost, FAST, min_throughput=rate).report.status == "OPTIMAL"
    with pytest.raises(PartitionerError, match="throughput: no placement that fits in memory serves 1e\\+300"):
        solve(problem, serving_cost, FAST, min_throughput=1e300,
              hints={name: strategy(problem) for name, strategy in BASELINES.items()})


def test_a_latency_limit_of_any_size_is_a_limit_not_an_overflow():
    problem = extreme_problem()
    latency = next(o for o in registered_objectives() if o.name == "latency")
    hints = {name: strategy(problem) for name, strategy in BASELINES.items()}

    assert solve(problem, latency, FAST, hints=hints, max_latency_seconds=1e300).report.status == "OPTIMAL"
    with pytest.raises(PartitionerError, match="latency: no placement that fits in memory meets the limit"):
        solve(problem, latency, FAST, hints=hints, max_latency_seconds=1e-300)


def test_a_term_worth_more_than_a_thousand_reference_plans_is_capped_there():
    assert whole_units(2.5, 1e9) == 2_500_000_000
    assert whole_units(1e300, 1e9) == whole_units(float("inf"), 1.0) == MOST_UNITS
    assert whole_units(0.0, 1.7e308) == 0


@pytest.mark.parametrize("options, problem", [
    ({"seed": 2**31}, "seed 2147483648 is not one CP-SAT takes"),
    ({"seed": -1}, "seed -1 is not one CP-SAT takes"),
    ({"workers": 10**6}, "1000000 workers: CP-SAT takes 0"),
    ({"time_limit_seconds": float("nan")}, "time limit nan s is not a number of seconds"),
    ({"deterministic": True, "workers": 8}, "a deterministic search runs one worker"),
])
def test_solver_options_cp_sat_cannot_take_are_refused_in_one_line(options, problem):
    with pytest.raises(PartitionerError, match=problem):
        SolverOptions(**options)


def test_a_search_whose_scale_was_too_coarse_to_tell_its_plans_apart_searches_again_at_theirs():
    # Memory keeps the fallback (gpu) from holding both weights, so the only baseline that fits (priority, all
    # on the slow device) takes 1e300 s and sets the scale: the real plans, milliseconds apart, all round to 0.
    gpu = TargetTerms("gpu", price_per_hour=5.0, memory_bytes=2**30)
    problem = make_problem(
        [node("a", parameters=["wa"], slow=1e300, gpu=1e-3), node("b", parameters=["wb"], slow=2e-3, gpu=1e-3),
         node("c", slow=5e-3, gpu=1e-3), node("d", slow=5e-3, gpu=1e-3)],
        [value("a", "b", num_bytes=1000)],
        targets=(SLOW, gpu), fallback="gpu", parameter_bytes={"wa": 6 * 2**27, "wb": 6 * 2**27},
        links=Link(1e-6, 1e9))
    latency = next(o for o in registered_objectives() if o.name == "latency")
    hints = {name: strategy(problem) for name, strategy in BASELINES.items()}

    placement = solve(problem, latency, FAST, hints=hints)

    # a and the weightless c and d on the gpu, b beside a's weight on the slow device: 1 + 2 + 1 + 1 ms + 2 us.
    assert placement.report.status == "OPTIMAL"
    assert placement.report.objective == pytest.approx(brute_force_optimum(problem, latency)) == \
        pytest.approx(5.002e-3)
