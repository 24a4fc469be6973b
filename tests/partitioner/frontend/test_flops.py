"""FLOPs: counted where torch can, by a formula where it cannot see into an op, and otherwise marked unknown."""

from __future__ import annotations

import torch

import partitioner

from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import annotate
from partitioner.reporting.summary import unknown_flops_note
from tests.zoo import mixtral


@torch.library.custom_op("partitioner_tests::opaque_matmul", mutates_args=())
def opaque_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x @ weight


@opaque_matmul.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[1])


class Opaque(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 32))

    def forward(self, x):
        return torch.relu(opaque_matmul(x, self.weight)) @ self.weight.T


def graph_of(model, inputs):
    return annotate(capture(model, inputs).program)


def test_a_custom_op_torch_cannot_count_has_unknown_flops_not_zero():
    graph = graph_of(Opaque(), (torch.randn(4, 16),))

    opaque = next(node for node in graph if node.op == "partitioner_tests.opaque_matmul.default")
    assert not opaque.flops_known and opaque.flops == 0
    assert all(node.flops_known for node in graph if node is not opaque)
    assert graph.total_flops == 2 * 4 * 32 * 16  # the matmul torch counts


def test_plan_summary_names_the_ops_whose_flops_are_unknown():
    plan = partitioner.compile(Opaque(), (torch.randn(4, 16),), targets=["cpu-x86", "cuda-h100"])

    note = unknown_flops_note(plan)

    assert note is not None and "partitioner_tests.opaque_matmul.default x1" in note
    assert note in plan.summary()
    assert unknown_flops_note(type(plan).from_dict(plan.to_dict())) == note  # the plan file keeps the mark


def test_transformers_grouped_mm_of_the_experts_is_counted_by_its_formula():
    model, inputs = mixtral()
    graph = graph_of(model, inputs)

    grouped = [node for node in graph if node.op == "transformers.grouped_mm_fallback.default"]
    assert grouped and all(node.flops_known for node in graph)
    for node in grouped:
        (tokens, width), (_, _, out) = node.input_tensors[0].shape, node.input_tensors[1].shape
        assert node.flops == 2 * tokens * width * out
