"""Planning around partition compilers: a target's compiler refuses, the model is planned again without what it
refused, and the rounds are bounded: an unchanged partition is not compiled again, the rounds share one time
limit and stop at a cap with one error, and each round shows on the progress line."""

from __future__ import annotations

import io
import json

import pytest
import torch

from partitioner import compiler
from partitioner.compiler import compile
from partitioner.errors import PartitionerError
from partitioner.frontend.op_graph import NodeKind
from partitioner.progress import Progress
from targets.hooks import CompiledPartition, PartitionRefused, TargetHooks
from targets.plugins import TargetPlugin
from tests.targets.plugin_fakes import fake_plugins, spec_named  # noqa: F401 - fake_plugins is a fixture


def chain(*layers: torch.nn.Module):
    """A chain of layers on the meta device, big enough that a free chip beats the CPU on every matmul."""
    model = torch.nn.Sequential(*layers).to(device="meta", dtype=torch.bfloat16)
    return model, (torch.randn(1024, 1024, dtype=torch.bfloat16, device="meta"),)


def linears(count: int) -> list[torch.nn.Module]:
    return [torch.nn.Linear(1024, 1024) for _ in range(count)]


class RecordingCompiler:
    """A compiler hook that refuses the ops `refuses` picks from a partition and records what it was handed."""

    def __init__(self, refuses):
        self.refuses = refuses
        self.handed: list[tuple[str, ...]] = []

    def __call__(self, partition):
        nodes = tuple(node.name for node in partition.nodes if node.kind is NodeKind.COMPUTE)
        self.handed.append(nodes)
        refused = self.refuses(partition.nodes)
        if refused:
            raise PartitionRefused("the Vendor compiler cannot take it", refused)
        return CompiledPartition()


def install(fake_plugins, tmp_path, compile_hook, support=None):
    """A free vendor chip (its cost hook prices every op at zero) with `compile_hook` as its compiler."""
    hooks = TargetHooks(support=support, cost=lambda node, target: 0.0, compile=compile_hook)
    fake_plugins(vendor=TargetPlugin((spec_named(tmp_path, "vendor-chip"),), {"vendor-chip": hooks}))


def test_planning_again_does_not_compile_a_partition_it_has_compiled_unchanged(fake_plugins, tmp_path):
    gelu = RecordingCompiler(lambda nodes: [n.name for n in nodes if n.op == "aten.gelu.default"])
    install(fake_plugins, tmp_path, gelu,
            support=lambda node: "not this one" if node.module_path == "1" else None)

    plan = compile(*chain(*linears(2), torch.nn.GELU(), *linears(1)), targets="vendor-chip,cpu-x86",
                   time_limit_seconds=5)

    assert [r.nodes for r in plan.compiler_refusals] == [("gelu",)]
    assert plan.placement["linear"] == plan.placement["linear_2"] == "vendor-chip"
    # round 1: [linear] and [gelu, linear_2]; round 2: [linear] again, unchanged, and [linear_2]
    assert sorted(gelu.handed) == [("gelu", "linear_2"), ("linear",), ("linear_2",)]


def test_each_round_of_planning_again_shows_on_the_progress_line(fake_plugins, tmp_path):
    install(fake_plugins, tmp_path, RecordingCompiler(lambda nodes: [n.name for n in nodes
                                                                     if n.op == "aten.gelu.default"]))
    stream = io.StringIO()

    compile_with_progress(chain(*linears(1), torch.nn.GELU(), *linears(1)), Progress("json", stream))

    rounds = [event for event in map(json.loads, stream.getvalue().splitlines()) if event["event"] == "count"]
    assert [(event["done"], event["total"]) for event in rounds] == [(2, compiler.MAX_PLANNING_ROUNDS)]
    assert "planning again without what compilers refused (1 refusal so far)" in rounds[0]["what"]


def compile_with_progress(model_and_inputs, progress: Progress):
    from partitioner.frontend.capture import capture
    from partitioner.placement.solver import SolverOptions

    return compiler.compile_captured(capture(*model_and_inputs), "vendor-chip,cpu-x86",
                                     solver_options=SolverOptions(time_limit_seconds=5), progress=progress)


def test_a_compiler_that_keeps_refusing_stops_at_the_cap_with_the_refusals_that_recurred(fake_plugins, tmp_path,
                                                                                      monkeypatch):
    first_op = RecordingCompiler(lambda nodes: [next(n.name for n in nodes if n.kind is NodeKind.COMPUTE)])
    install(fake_plugins, tmp_path, first_op)
    monkeypatch.setattr(compiler, "MAX_PLANNING_ROUNDS", 3)

    with pytest.raises(PartitionerError) as error:
        compile(*chain(*linears(6)), targets="vendor-chip,cpu-x86", time_limit_seconds=5)

    assert len(first_op.handed) == 3
    assert str(error.value) == (
        "the targets' compilers still refused part of the plan after 3 rounds of planning, each without what they had "
        "refused (vendor-chip's compiler 3 times: the Vendor compiler cannot take it). Fix: keep the ops they refuse "
        "off vendor-chip with --forbid PATTERN=vendor-chip, plan without vendor-chip, or report the refusals to its "
        "vendor.")


@pytest.mark.parametrize("deterministic, limits", [(False, [10, 7, 4, 1, 1]), (True, [10, 1, 1, 1, 1])])
def test_the_rounds_of_planning_share_one_time_limit_each_with_a_floor(fake_plugins, tmp_path, monkeypatch,
                                                                      deterministic, limits):
    install(fake_plugins, tmp_path,
            RecordingCompiler(lambda nodes: [next(n.name for n in nodes if n.kind is NodeKind.COMPUTE)]))
    clock, given, solve = [0.0], [], compiler.solve

    def solve_taking_three_seconds(problem, objective, options, **kwargs):
        given.append(options.time_limit_seconds)
        clock[0] += 3.0
        return solve(problem, objective, options, **kwargs)

    monkeypatch.setattr(compiler, "monotonic", lambda: clock[0])
    monkeypatch.setattr(compiler, "solve", solve_taking_three_seconds)
    monkeypatch.setattr(compiler, "MAX_PLANNING_ROUNDS", 5)

    with pytest.raises(PartitionerError, match="after 5 rounds of planning"):
        compile(*chain(*linears(8)), targets="vendor-chip,cpu-x86", time_limit_seconds=10,
                deterministic=deterministic)
    assert given == limits
