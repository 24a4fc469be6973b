"""Shared test helpers: capture small models and build placement problems from them."""

from __future__ import annotations

import pytest
import torch

from cost_models.roofline import RooflineCostModel
from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import OpGraph, annotate
from partitioner.placement.problem import PlacementProblem, build_problem
from partitioner.placement.tagging import tag
from targets.loader import load_targets


def op_graph_of(model: torch.nn.Module, example_inputs) -> OpGraph:
    """The annotated op graph of `model` called on `example_inputs`."""
    return annotate(capture(model, example_inputs).program)


def problem_of(model: torch.nn.Module, example_inputs, targets=("npu-example", "cuda-h100")) -> PlacementProblem:
    """The placement problem of `model` on built-in `targets`, with roofline costs."""
    target_set = load_targets(targets)
    graph = op_graph_of(model, example_inputs)
    return build_problem(graph, tag(graph, target_set), target_set, RooflineCostModel())


@pytest.fixture
def default_targets():
    return load_targets(["npu-example", "cuda-h100"])


@pytest.fixture(scope="session")
def pipeline_plan(tmp_path_factory):
    """A small GPT-2 too big for one device of a fleet of four: its layers placed across two devices. Planned
    once for every test that runs or reads an LLM plan (about 10 s)."""
    from partitioner.llm.planning import plan_llm
    from targets.fleet import load_fleet
    from tests.partitioner.execution.test_llm_phases import WORKLOAD, small_gpt2, small_memory_fleet
    from tests.partitioner.llm.test_llm_serving import load_workload_text

    model = small_gpt2()
    plan = plan_llm(model, load_workload_text(WORKLOAD), load_fleet(small_memory_fleet(tmp_path_factory.mktemp("f"))),
                    time_limit_seconds=10, workers=1, deterministic=True)
    assert len(plan.best.devices["decode"]) >= 2
    return model, plan
