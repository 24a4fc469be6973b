"""explain on an LLM plan: an op of a phase, where it sits and where the rest of its module sits, and its compute
time on each kind of device of the fleet, read from the plan file alone."""

from __future__ import annotations

import dataclasses

import pytest

from partitioner.errors import PartitionerError
from partitioner.llm.deployment import GroupCollectives, LLMPlan
from partitioner.reporting.explain_llm import explain_llm_node


@pytest.fixture(scope="module")
def plan(pipeline_plan, tmp_path_factory) -> LLMPlan:
    return LLMPlan.load(pipeline_plan[1].save(tmp_path_factory.mktemp("plan") / "llm_plan.json"))


def a_linear(plan: LLMPlan, phase: str):
    return next(op for op in plan.phase_ops[phase] if op.op.startswith(("aten.linear", "aten.addmm", "aten.mm")))


def test_an_op_of_a_phase_shows_its_place_its_module_and_its_cost_on_each_kind_of_device(plan):
    op = a_linear(plan, "decode")
    here = plan.best.assignment[f"decode/{op.name}"]

    text = explain_llm_node(plan, f"decode/{op.name}")

    assert f"node       decode/{op.name}: {op.op} in {op.module}" in text
    assert f"placed on  {here}, in one decode step of batch {plan.best.batch_size}" in text
    layer = op.module.rsplit(".", 2)[0]  # transformer.h.N of transformer.h.N.attn.c_attn
    assert f"layer      {layer}: " in text
    seconds = plan.op_seconds["decode"][op.name]["tiny"]
    assert seconds > 0
    assert any(line.startswith("tiny ") and "placed here" in line for line in text.splitlines())


def test_a_name_both_phases_have_asks_for_its_phase_and_a_wrong_name_gets_close_ones(plan):
    shared = next(op.name for op in plan.phase_ops["decode"]
                  if op.name in {other.name for other in plan.phase_ops["prefill"]})

    with pytest.raises(PartitionerError, match=f"both phases have a node '{shared}'.*prefill/{shared} or "
                                               f"decode/{shared}"):
        explain_llm_node(plan, shared)
    with pytest.raises(PartitionerError, match="no node 'decode/linearr' .*did you mean decode/linear"):
        explain_llm_node(plan, "decode/linearr")


def test_an_op_in_a_tensor_parallel_group_says_whether_the_group_splits_it(plan):
    op = a_linear(plan, "decode")
    group = GroupCollectives(2, 4, 1e-4, 4, 1e-4, (op.module,))
    assignment = {**plan.best.assignment, f"decode/{op.name}": "tiny.tp2.0"}
    grouped = dataclasses.replace(plan, best=dataclasses.replace(plan.best, assignment=assignment,
                                                                 collectives={"tiny.tp2.0": group}))

    assert "2 devices in tensor parallel: this op's module is split among them" in explain_llm_node(
        grouped, f"decode/{op.name}")


def test_a_plan_without_per_op_costs_says_how_to_get_them(plan):
    op = a_linear(plan, "prefill")

    text = explain_llm_node(dataclasses.replace(plan, op_seconds={}), f"prefill/{op.name}")

    assert "the plan keeps no per-op costs" in text and "compile the model again with --workload" in text
