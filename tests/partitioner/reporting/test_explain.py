"""`partitioner explain` and `partitioner report`: a node's costs, refusals and moves; the plan's tables."""

from __future__ import annotations

import pytest

from partitioner.cli import main
from partitioner.placement.scoring import score
from partitioner.plan import Plan
from partitioner.reporting.explain import explain_node, unsupported_ops
from tests.partitioner.test_cli import assert_one_line_error
from tests.partitioner.test_cli_run import compile_small_model


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory):
    """The small classifier's plan: convolutions on a free accelerator, norm and softmax on cuda-h100."""
    return compile_small_model(tmp_path_factory.mktemp("explained"))[1]


def node_named(plan: Plan, op: str) -> str:
    return next(node.name for node in plan.nodes if node.op == op)


def test_explain_shows_the_cost_on_every_target_and_the_change_a_move_would_make(plan_path):
    plan = Plan.load(plan_path)
    relu = node_named(plan, "aten.relu.default")  # free to move: the convolutions are pinned
    other = next(target for target in plan.problem.target_names if target != plan.placement[relu])

    text = explain_node(plan, relu)

    assert f"node       {relu}: aten.relu.default" in text
    assert f"placed on  {plan.placement[relu]}" in text
    moved = score(plan.problem, {**plan.placement, relu: other})
    change = moved.cost_per_request - plan.score().cost_per_request
    other_line = next(line for line in text.splitlines() if line.startswith(other))
    assert f"{'+' if change >= 0 else '-'}${abs(change):.3g}" in other_line
    assert "estimated" in other_line


def test_explain_gives_each_refusal_reason(plan_path):
    plan = Plan.load(plan_path)

    text = explain_node(plan, node_named(plan, "aten.softmax.int"))

    assert "refused: aten.softmax.int: op not in support list" in text


def test_unsupported_ops_rank_what_only_the_fallback_runs_by_the_work_it_forces_there(plan_path):
    plan = Plan.load(plan_path)

    ops = unsupported_ops(plan)

    assert {item.op for item in ops} >= {"aten.layer_norm.default", "aten.softmax.int"}
    assert [item.flops for item in ops] == sorted((item.flops for item in ops), reverse=True)
    assert all(item.example_reason == "op not in support list" for item in ops if item.op == "aten.softmax.int")


def test_explain_of_an_unknown_node_suggests_close_names(plan_path, capsys):
    assert main(["explain", str(plan_path), "conv2d_9"]) == 2
    assert_one_line_error(capsys, "no node 'conv2d_9' in this plan", "Fix: did you mean")


def test_report_prints_the_targets_the_baselines_the_solver_and_the_fallback_only_ops(plan_path, capsys):
    assert main(["report", str(plan_path)]) == 0

    out = capsys.readouterr().out
    for heading in ("where the model runs", "the plan against the baselines", "solver: OPTIMAL",
                    "ops only the fallback (cuda-h100) runs"):
        assert heading in out
    assert "aten.softmax.int" in out
