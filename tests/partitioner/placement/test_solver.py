"""The CP-SAT solver: known optima worked out by hand, memory limits, hints and random DAGs."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitioner.errors import PartitionerError
from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.baselines import BASELINES, fallback_placement, priority_placement
from partitioner.placement.objectives import COST, LATENCY, Objective
from partitioner.placement.problem import PlacementProblem, TargetTerms, check_assignment
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from targets.spec import Link
from tests.partitioner.placement.problem_builders import (CUDA, DSP, GIB, NPU, brute_force_optimum, make_problem, node,
                                                          random_problems, value)

FAST = SolverOptions(time_limit_seconds=10.0, workers=1)
TENSOR_BYTES = 50_000_000


def chain(link: Link) -> PlacementProblem:
    """a -> b -> c -> d; the npu is twice as fast but cannot run b."""
    return make_problem(
        nodes=[node("a", npu=1.0, cuda=2.0), node("b", cuda=2.0), node("c", npu=1.0, cuda=2.0),
               node("d", npu=1.0, cuda=2.0)],
        values=[value("a", "b", num_bytes=TENSOR_BYTES), value("b", "c", num_bytes=TENSOR_BYTES),
                value("c", "d", num_bytes=TENSOR_BYTES)],
        links=link,
    )


def assert_proven_optimal(placement, expected_objective: float) -> None:
    assert placement.report.status == "OPTIMAL"
    assert placement.report.gap == 0.0
    assert placement.report.objective == pytest.approx(expected_objective)
    assert placement.report.bound == pytest.approx(expected_objective)


def test_expensive_transfers_keep_the_whole_chain_on_cuda():
    # Each cut costs 5 + 50 MB / 1 GB/s = 5.05 s; the npu saves at most 3 s of compute.
    placement = solve(chain(Link(5.0, 1e9)), LATENCY, FAST)

    assert placement.assignment == {"a": "cuda", "b": "cuda", "c": "cuda", "d": "cuda"}
    assert_proven_optimal(placement, 2.0 + 2.0 + 2.0 + 2.0)


def test_cheap_transfers_put_every_op_the_npu_supports_on_the_npu():
    # Each cut costs 0.05 + 50 MB / 1 GB/s = 0.1 s; a -> b and b -> c are cut, c -> d is not.
    placement = solve(chain(Link(0.05, 1e9)), LATENCY, FAST)

    assert placement.assignment == {"a": "npu", "b": "cuda", "c": "npu", "d": "npu"}
    assert_proven_optimal(placement, 1.0 + 2.0 + 1.0 + 1.0 + 0.1 + 0.1)


def test_moderate_transfers_cut_only_once():
    # Each cut costs 1.5 s: moving a back to cuda saves a cut (1.5 s) for 1 s of compute.
    placement = solve(chain(Link(1.45, 1e9)), LATENCY, FAST)

    assert placement.assignment == {"a": "cuda", "b": "cuda", "c": "npu", "d": "npu"}
    assert_proven_optimal(placement, 2.0 + 2.0 + 1.0 + 1.0 + 1.5)


def test_cost_objective_picks_the_cheaper_device_even_when_slower():
    # npu: 2 s at 0.001 per second = 0.002; cuda: 1 s at 0.01 per second = 0.01.
    problem = make_problem(nodes=[node("mm", npu=2.0, cuda=1.0)])

    assert solve(problem, LATENCY, FAST).assignment == {"mm": "cuda"}
    placement = solve(problem, COST, FAST)
    assert placement.assignment == {"mm": "npu"}
    assert_proven_optimal(placement, 2.0 * 0.001)


def test_cost_objective_pays_both_ends_of_a_transfer():
    # a on the npu: 1 s x 0.001 + b's 1 s x 0.01 + the 0.45 s move x (0.001 + 0.01) = 0.01595,
    # a on cuda: 2 s x 0.01 = 0.02. With a 0.85 s move the npu costs 0.02035 and loses, though
    # pricing the move at either end alone (0.01185 or 0.0195) would keep it there.
    cheap_move = make_problem(nodes=[node("a", npu=1.0, cuda=1.0), node("b", cuda=1.0)],
                              values=[value("a", "b", num_bytes=TENSOR_BYTES)], links=Link(0.4, 1e9))
    dear_move = make_problem(nodes=[node("a", npu=1.0, cuda=1.0), node("b", cuda=1.0)],
                             values=[value("a", "b", num_bytes=TENSOR_BYTES)], links=Link(0.80, 1e9))

    cheap = solve(cheap_move, COST, FAST)
    dear = solve(dear_move, COST, FAST)

    assert cheap.assignment == {"a": "npu", "b": "cuda"}
    assert_proven_optimal(cheap, 1.0 * 0.001 + 1.0 * 0.01 + 0.45 * (0.001 + 0.01))
    assert dear.assignment == {"a": "cuda", "b": "cuda"}
    assert_proven_optimal(dear, 2.0 * 0.01)


def test_tensor_read_by_two_consumers_on_one_device_is_paid_once():
    # Moving `a` to the npu once (1 s) lets b and c each save 1 s; paying per consumer would not.
    problem = make_problem(
        nodes=[node("a", cuda=1.0), node("b", npu=1.0, cuda=2.0), node("c", npu=1.0, cuda=2.0)],
        values=[value("a", "b", "c", num_bytes=TENSOR_BYTES)],
        links=Link(0.95, 1e9),
    )

    placement = solve(problem, LATENCY, FAST)

    assert placement.assignment == {"a": "cuda", "b": "npu", "c": "npu"}
    assert_proven_optimal(placement, 1.0 + 1.0 + 1.0 + 1.0)


def test_parameter_too_large_for_the_npu_forces_its_user_to_cuda():
    npu = TargetTerms("npu", NPU.price_per_hour, memory_bytes=1 * GIB)
    problem = make_problem(
        nodes=[node("small", parameters=["w_small"], npu=1.0, cuda=2.0),
               node("large", parameters=["w_large"], npu=1.0, cuda=2.0)],
        values=[value("small", "large", num_bytes=0)],
        targets=(npu, CUDA),
        parameter_bytes={"w_small": GIB // 2, "w_large": 2 * GIB},
    )

    placement = solve(problem, LATENCY, FAST)

    assert placement.assignment == {"small": "npu", "large": "cuda"}
    assert_proven_optimal(placement, 1.0 + 2.0)
    assert score(problem, placement.assignment).fits_memory


def test_an_op_whose_activations_do_not_fit_the_npu_runs_on_cuda():
    npu = TargetTerms("npu", NPU.price_per_hour, memory_bytes=1 * GIB)
    problem = make_problem(
        nodes=[node("small", working_bytes=GIB // 2, npu=1.0, cuda=2.0),
               node("wide", working_bytes=2 * GIB, npu=1.0, cuda=2.0)],
        values=[value("small", "wide", num_bytes=0)],
        targets=(npu, CUDA),
    )

    placement = solve(problem, LATENCY, FAST)

    assert placement.assignment == {"small": "npu", "wide": "cuda"}
    assert_proven_optimal(placement, 1.0 + 2.0)


def test_activations_too_large_for_every_target_that_runs_the_op_are_named():
    problem = make_problem(nodes=[node("attention", working_bytes=100 * GIB, cuda=1.0)])

    with pytest.raises(PartitionerError, match=r"attention reads and writes 100.0 GiB of activations.*Fix: use "
                                               r"smaller inputs"):
        solve(problem, LATENCY, FAST)


def test_parameters_that_fit_only_one_at_a_time_are_split_between_targets():
    npu = TargetTerms("npu", NPU.price_per_hour, memory_bytes=3 * GIB)
    problem = make_problem(
        nodes=[node("first", parameters=["w1"], npu=1.0, cuda=2.0),
               node("second", parameters=["w2"], npu=1.0, cuda=5.0)],
        targets=(npu, CUDA),
        parameter_bytes={"w1": 2 * GIB, "w2": 2 * GIB},
    )

    placement = solve(problem, LATENCY, FAST)

    assert placement.assignment == {"first": "cuda", "second": "npu"}
    assert_proven_optimal(placement, 2.0 + 1.0)


def test_op_only_the_fallback_runs_with_weights_larger_than_its_memory_is_infeasible():
    small_cuda = TargetTerms("cuda", CUDA.price_per_hour, memory_bytes=1 * GIB)
    problem = make_problem(
        nodes=[node("embed", parameters=["table"], cuda=1.0)],
        targets=(NPU, small_cuda),
        parameter_bytes={"table": 5 * GIB // 2},
    )

    with pytest.raises(PartitionerError, match=r"cuda must hold 2\.5 GiB .*\(e\.g\. embed\).*1\.5 GiB short"):
        solve(problem, LATENCY, FAST)


def test_weights_that_fit_nowhere_together_are_infeasible_and_the_message_names_the_targets():
    small_npu = TargetTerms("npu", NPU.price_per_hour, memory_bytes=1 * GIB)
    small_cuda = TargetTerms("cuda", CUDA.price_per_hour, memory_bytes=1 * GIB)
    problem = make_problem(
        nodes=[node("first", parameters=["w1"], npu=1.0, cuda=1.0),
               node("second", parameters=["w2"], npu=1.0, cuda=1.0)],
        targets=(small_npu, small_cuda),
        parameter_bytes={"w1": 3 * GIB // 2, "w2": 3 * GIB // 2},
    )

    message = r"no placement fits the parameters \(3\.0 GiB\).*npu 1\.0 GiB.*cuda 1\.0 GiB"
    with pytest.raises(PartitionerError, match=message):
        solve(problem, LATENCY, FAST)


def test_result_is_never_worse_than_the_best_hint_when_the_search_has_no_time():
    problem = chain(Link(0.05, 1e9))
    hints = {"fallback": fallback_placement(problem), "priority": priority_placement(problem)}

    placement = solve(problem, LATENCY, SolverOptions(time_limit_seconds=0.0, workers=1), hints=hints)

    best_hint = min(score(problem, h).latency_seconds for h in hints.values())
    assert placement.report.objective <= best_hint
    assert score(problem, placement.assignment).latency_seconds == placement.report.objective


def test_hint_that_does_not_fit_memory_is_never_returned():
    npu = TargetTerms("npu", NPU.price_per_hour, memory_bytes=1 * GIB)
    problem = make_problem(
        nodes=[node("mm", parameters=["w"], npu=1.0, cuda=2.0)],
        targets=(npu, CUDA),
        parameter_bytes={"w": 2 * GIB},
    )
    hints = {"too_big": {"mm": "npu"}, "fallback": {"mm": "cuda"}}

    placement = solve(problem, LATENCY, SolverOptions(time_limit_seconds=0.0, workers=1), hints=hints)

    assert placement.assignment == {"mm": "cuda"}
    assert placement.report.objective == 2.0


def test_every_node_sits_on_a_target_that_supports_it():
    problem = make_problem(
        nodes=[node("a", npu=1.0, dsp=1.0, cuda=9.0), node("b", dsp=1.0, cuda=9.0), node("c", cuda=1.0),
               node("d", npu=0.1, cuda=9.0)],
        values=[value("a", "b"), value("b", "c"), value("c", "d")],
        targets=(NPU, DSP, CUDA),
    )

    placement = solve(problem, LATENCY, FAST)

    for name, target in placement.assignment.items():
        assert target in problem.node(name).supported
    assert placement.assignment == {"a": "dsp", "b": "dsp", "c": "cuda", "d": "npu"}


def test_bookkeeping_node_stays_with_the_node_it_follows_even_when_apart_would_be_faster():
    # Apart: split on npu (1) + first on cuda (0) = 1. Together: npu 1 + 100, or cuda 5 + 0 = 5.
    problem = make_problem(
        nodes=[node("split", npu=1.0, cuda=5.0),
               node("first", NodeKind.BOOKKEEPING, follows="split", npu=100.0, cuda=0.0)],
        values=[value("split", "first", num_bytes=0)],
    )

    placement = solve(problem, LATENCY, FAST)

    assert placement.assignment == {"split": "cuda", "first": "cuda"}
    assert_proven_optimal(placement, 5.0)


def test_when_only_transfers_cost_anything_the_solver_still_avoids_them():
    # Views compute nothing, so the objective is made of transfers alone; keeping all on cuda moves nothing.
    problem = make_problem(
        nodes=[node("input_view", NodeKind.VIEW, npu=0.0, cuda=0.0),
               node("to_npu_or_cuda", NodeKind.VIEW, npu=0.0, cuda=0.0),
               node("to_dsp_or_cuda", NodeKind.VIEW, dsp=0.0, cuda=0.0)],
        values=[value("input_view", "to_npu_or_cuda", "to_dsp_or_cuda")],
        targets=(NPU, DSP, CUDA),
    )

    placement = solve(problem, LATENCY, FAST)

    assert placement.assignment == {"input_view": "cuda", "to_npu_or_cuda": "cuda", "to_dsp_or_cuda": "cuda"}
    assert_proven_optimal(placement, 0.0)


# --- Random DAGs -------------------------------------------------------------------------------------------

# CP-SAT sees integer costs, each rounded to about 1e-9 of the objective's scale; a few dozen such
# roundings stay far below this fraction of it.
ROUNDING = 1e-7


def objective_scale(problem: PlacementProblem, objective: Objective) -> float:
    """How large the objective's numbers are: every node at its dearest, every tensor over its dearest link."""
    def price(*targets: str) -> float:
        return objective.rate(problem, targets)

    compute = sum(max(s * price(t) for t, s in n.compute_seconds.items()) for n in problem.nodes)
    moves = sum(max(problem.transfer_seconds(v.num_bytes, s, d) * price(s, d) for s, d in problem.links)
                for v in problem.values)
    return compute + moves


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=random_problems(), objective=st.sampled_from([LATENCY, COST]), seeded=st.booleans())
def test_plan_on_a_random_dag_is_valid_and_no_worse_than_either_baseline(problem, objective, seeded):
    baselines = {name: strategy(problem) for name, strategy in BASELINES.items()}

    placement = solve(problem, objective, SolverOptions(time_limit_seconds=2.0, workers=1),
                      hints=baselines if seeded else None)

    check_assignment(problem, placement.assignment)
    result = score(problem, placement.assignment)
    assert result.fits_memory
    assert placement.report.objective == objective.value(result)
    # Seeded, the best baseline is a candidate itself; unseeded, CP-SAT's integer rounding may show.
    slack = 0.0 if seeded else ROUNDING * objective_scale(problem, objective)
    for assignment in baselines.values():
        baseline = score(problem, assignment)
        if baseline.fits_memory:
            assert objective.value(result) <= objective.value(baseline) * (1 + 1e-9) + slack
    assert 0.0 <= placement.report.bound <= placement.report.objective
    assert 0.0 <= placement.report.gap <= 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=random_problems(max_nodes=7), objective=st.sampled_from([LATENCY, COST]))
def test_solver_without_hints_finds_the_brute_force_optimum_on_small_dags(problem, objective):
    placement = solve(problem, objective, SolverOptions(time_limit_seconds=2.0, workers=1))

    check_assignment(problem, placement.assignment)
    assert placement.report.status == "OPTIMAL"
    assert placement.report.objective == objective.value(score(problem, placement.assignment))
    assert placement.report.objective == pytest.approx(
        brute_force_optimum(problem, objective), rel=1e-9, abs=ROUNDING * objective_scale(problem, objective))


def test_cost_under_a_latency_limit_takes_the_cheapest_plan_that_meets_the_limit():
    # Two independent ops, each 2 s at 0.001/s on the npu or 1 s at 0.01/s on cuda.
    # Unlimited: both on the npu (4 s, 0.004). Within 3 s: one moves to cuda (3 s, 0.012).
    # Within 2 s: both on cuda (2 s, 0.02).
    problem = make_problem(nodes=[node("a", npu=2.0, cuda=1.0), node("b", npu=2.0, cuda=1.0)])

    unlimited = solve(problem, COST, FAST)
    within_three = solve(problem, COST, FAST, max_latency_seconds=3.0)
    within_two = solve(problem, COST, FAST, max_latency_seconds=2.0)

    assert_proven_optimal(unlimited, 0.004)
    assert sorted(within_three.assignment.values()) == ["cuda", "npu"]
    assert_proven_optimal(within_three, 2.0 * 0.001 + 1.0 * 0.01)
    assert within_two.assignment == {"a": "cuda", "b": "cuda"}
    assert_proven_optimal(within_two, 0.02)


def test_a_latency_limit_counts_transfers():
    # a on the npu saves money but its 0.5 s move to b on cuda makes 2.5 s: over a 2.2 s limit.
    problem = make_problem(nodes=[node("a", npu=1.0, cuda=1.0), node("b", cuda=1.0)],
                           values=[value("a", "b", num_bytes=TENSOR_BYTES)], links=Link(0.45, 1e9))

    assert solve(problem, COST, FAST).assignment == {"a": "npu", "b": "cuda"}
    assert solve(problem, COST, FAST, max_latency_seconds=2.2).assignment == {"a": "cuda", "b": "cuda"}


def test_a_latency_limit_no_plan_can_meet_names_the_limit_and_the_fastest_plan():
    problem = make_problem(nodes=[node("a", npu=2.0, cuda=1.0), node("b", cuda=1.0)])
    hints = {name: strategy(problem) for name, strategy in BASELINES.items()}

    with pytest.raises(PartitionerError, match=r"latency: .* limit of 1\.5e\+03 ms .*fastest baseline takes 2e\+03 ms"):
        solve(problem, COST, FAST, hints=hints, max_latency_seconds=1.5)


def test_a_latency_limit_must_be_positive():
    with pytest.raises(PartitionerError, match="not positive"):
        solve(make_problem(nodes=[node("a", cuda=1.0)]), COST, FAST, max_latency_seconds=0)


def test_a_deterministic_search_stopped_early_returns_the_same_plan_every_time():
    # 60 nodes on 3 targets with a tiny work budget: stopped by the limit, not by a proof.
    problem = _wide_problem()
    options = SolverOptions(time_limit_seconds=0.05, seed=3, deterministic=True)

    first, second = (solve(problem, COST, options) for _ in range(2))

    assert first.assignment == second.assignment
    assert first.report.objective == second.report.objective
    assert first.report.bound == second.report.bound


def _wide_problem() -> PlacementProblem:
    """Ten interleaved chains of six ops whose tensors also feed the next chain: many near-equal plans."""
    nodes, values = [], []
    for chain_index in range(10):
        for step in range(6):
            name = f"c{chain_index}s{step}"
            nodes.append(node(name, npu=1.0 + 0.01 * step, dsp=1.2 - 0.01 * chain_index, cuda=0.5))
            readers = [f"c{chain_index}s{step + 1}"] if step < 5 else []
            if chain_index < 9:
                readers.append(f"c{chain_index + 1}s{step}")
            if readers:
                values.append(value(name, *readers, num_bytes=40_000_000 + 1_000_000 * step))
    return make_problem(nodes=nodes, values=values, targets=(NPU, DSP, CUDA), links=Link(0.02, 1e9))
