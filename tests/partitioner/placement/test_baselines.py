"""The rules of thumb the solver must beat: everything on the fallback, and priority claiming."""

from __future__ import annotations

import torch

from cost_models.roofline import RooflineCostModel
from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import NodeKind, annotate
from partitioner.placement.baselines import BASELINES, capability_placement, fallback_placement, priority_placement
from partitioner.placement.problem import TargetTerms, build_problem
from partitioner.placement.scoring import score
from partitioner.placement.tagging import tag
from targets.loader import load_targets
from tests.partitioner.placement.problem_builders import CUDA, DSP, NPU, make_problem, node, value

VIEW = NodeKind.VIEW
BOOKKEEPING = NodeKind.BOOKKEEPING


def test_fallback_puts_every_node_on_the_fallback():
    problem = make_problem(
        nodes=[node("a", npu=1.0, cuda=9.0), node("b", cuda=1.0), node("c", VIEW, npu=0.0, cuda=0.0)],
        values=[value("a", "b"), value("b", "c")],
    )

    assert fallback_placement(problem) == {"a": "cuda", "b": "cuda", "c": "cuda"}


def test_priority_puts_each_op_on_the_first_target_that_supports_it_even_when_slower():
    problem = make_problem(
        nodes=[node("conv", npu=5.0, dsp=1.0, cuda=0.1), node("fft", dsp=5.0, cuda=0.1)],
        targets=(NPU, DSP, CUDA),
    )

    assert priority_placement(problem) == {"conv": "npu", "fft": "dsp"}


def test_unsupported_op_goes_to_fallback():
    problem = make_problem(
        nodes=[node("a", npu=1.0, cuda=1.0), node("sort", cuda=1.0), node("c", npu=1.0, cuda=1.0)],
        values=[value("a", "sort"), value("sort", "c")],
    )

    assert priority_placement(problem) == {"a": "npu", "sort": "cuda", "c": "npu"}


def test_view_follows_its_producer_instead_of_claiming_a_target():
    # The view runs on the npu too, but putting it there would cut after `sort` for nothing.
    problem = make_problem(
        nodes=[node("a", npu=1.0, cuda=1.0), node("a_view", VIEW, npu=0.0, cuda=0.0),
               node("sort", cuda=1.0), node("sort_view", VIEW, npu=0.0, cuda=0.0),
               node("c", npu=1.0, cuda=1.0)],
        values=[value("a", "a_view"), value("a_view", "sort"), value("sort", "sort_view"),
                value("sort_view", "c")],
    )

    placement = priority_placement(problem)

    assert placement["a_view"] == "npu"
    assert placement["sort_view"] == "cuda"
    assert score(problem, placement).transfer_count == 2  # only the cuts the unsupported op forces


def test_view_of_a_model_input_goes_where_its_first_user_is():
    problem = make_problem(
        nodes=[node("input_view", VIEW, npu=0.0, cuda=0.0), node("sort", cuda=1.0),
               node("weight_view", VIEW, npu=0.0, cuda=0.0), node("mm", npu=1.0, cuda=1.0)],
        values=[value("input_view", "sort"), value("weight_view", "mm")],
    )

    placement = priority_placement(problem)

    assert placement["input_view"] == "cuda"
    assert placement["weight_view"] == "npu"


def test_bookkeeping_node_sits_with_the_node_it_follows():
    # `split` runs only on cuda; its getitem would be claimed by the npu if it did not follow.
    problem = make_problem(
        nodes=[node("split", cuda=1.0), node("first", BOOKKEEPING, follows="split", npu=0.0, cuda=0.0),
               node("use", npu=1.0, cuda=1.0)],
        values=[value("split", "first"), value("first", "use")],
    )

    placement = priority_placement(problem)

    assert placement["first"] == "cuda"
    assert placement["use"] == "npu"


def test_bookkeeping_node_on_a_view_of_a_model_input_sits_with_that_view():
    # e.g. `sym_size` of a reshaped input: the view waits for its first user (`sort`, cuda only),
    # and the bookkeeping node must wait with it rather than claim the npu on its own.
    problem = make_problem(
        nodes=[node("input_view", VIEW, npu=0.0, cuda=0.0), node("sort", cuda=1.0),
               node("size", BOOKKEEPING, follows="input_view", npu=0.0, cuda=0.0),
               node("use_size", npu=1.0, cuda=1.0)],
        values=[value("input_view", "sort", "size"), value("size", "use_size")],
    )

    placement = priority_placement(problem)

    assert placement["input_view"] == placement["size"] == "cuda"
    assert placement["use_size"] == "npu"


def test_chunks_of_a_model_input_go_where_the_first_chunk_is_used():
    problem = make_problem(
        nodes=[node("chunk", VIEW, npu=0.0, cuda=0.0),
               node("chunk_0", BOOKKEEPING, follows="chunk", npu=0.0, cuda=0.0),
               node("chunk_1", BOOKKEEPING, follows="chunk", npu=0.0, cuda=0.0),
               node("mm", npu=1.0, cuda=1.0), node("sort", cuda=1.0)],
        values=[value("chunk", "chunk_0", "chunk_1"), value("chunk_0", "mm"), value("chunk_1", "sort")],
    )

    placement = priority_placement(problem)

    assert placement == {"chunk": "npu", "chunk_0": "npu", "chunk_1": "npu", "mm": "npu", "sort": "cuda"}


def test_priority_stops_claiming_a_target_when_its_memory_is_full():
    npu = TargetTerms("npu", price_per_hour=NPU.price_per_hour, memory_bytes=100)
    problem = make_problem(
        nodes=[node("first", parameters=["w1"], npu=1.0, cuda=1.0),
               node("second", parameters=["w2"], npu=1.0, cuda=1.0),
               node("third", parameters=["w3"], npu=1.0, cuda=1.0),
               node("reuse", parameters=["w1"], npu=1.0, cuda=1.0),
               node("weightless", npu=1.0, cuda=1.0)],
        targets=(npu, CUDA),
        parameter_bytes={"w1": 50, "w2": 50, "w3": 50},
    )

    placement = priority_placement(problem)

    assert placement == {"first": "npu", "second": "npu", "third": "cuda", "reuse": "npu", "weightless": "npu"}
    assert score(problem, placement).memory_bytes["npu"] == 100


def test_memory_full_on_the_first_choice_moves_the_op_to_the_next_target_with_room():
    npu = TargetTerms("npu", price_per_hour=NPU.price_per_hour, memory_bytes=10)
    problem = make_problem(
        nodes=[node("mm", parameters=["w"], npu=1.0, dsp=1.0, cuda=1.0)],
        targets=(npu, DSP, CUDA),
        parameter_bytes={"w": 50},
    )

    assert priority_placement(problem) == {"mm": "dsp"}


def test_baselines_are_registered_by_name():
    assert BASELINES == {"fallback": fallback_placement, "priority": priority_placement}


class _TwoBlocksAroundSoftmax(torch.nn.Module):
    """linear-relu-linear, softmax (not on the npu), linear-relu-linear, softmax, one lone linear."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(5))

    def forward(self, x):
        x = self.layers[1](torch.relu(self.layers[0](x))).softmax(-1)
        x = self.layers[3](torch.relu(self.layers[2](x))).softmax(-1)
        return self.layers[4](x)


def test_capability_puts_the_fx_partitioners_multi_op_partitions_on_the_first_accelerator():
    captured = capture(_TwoBlocksAroundSoftmax().to(torch.float16), (torch.randn(2, 8, dtype=torch.float16),))
    graph = annotate(captured.program)
    targets = load_targets(["npu-example", "cuda-h100"])
    tagging = tag(graph, targets)
    problem = build_problem(graph, tagging, targets, RooflineCostModel())

    placement = capability_placement(problem, captured.program.graph_module, tagging)

    ops = [(node.op.removeprefix("aten.").removesuffix(".default"), placement[node.name]) for node in graph]
    assert ops == [("linear", "npu-example"), ("relu", "npu-example"), ("linear", "npu-example"),
                   ("softmax.int", "cuda-h100"),
                   ("linear", "npu-example"), ("relu", "npu-example"), ("linear", "npu-example"),
                   ("softmax.int", "cuda-h100"),
                   ("linear", "cuda-h100")]  # torch.fx drops single-op partitions
