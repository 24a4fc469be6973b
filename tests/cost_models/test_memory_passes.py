"""Normalisation and softmax are priced as the one pass over memory PyTorch's GPU kernels make of them (a row is
read once from memory: the second look at it, for the statistics or the maximum, hits the SM's cache), and the
least an op can cost is its launch: eager dispatch on the host, or a replayed graph's per-kernel figure.
Hand-computed on the H100 spec: 3,350 GB/s at 0.75 of it, 6 us launch, 1.5 us a kernel in a replayed graph."""

from __future__ import annotations

import pytest
import torch

from cost_models.graph_replay import GraphReplay
from cost_models.roofline import RooflineCostModel
from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import NodeKind, OpNode, annotate
from targets.loader import load_target

H100 = load_target("cuda-h100")
BANDWIDTH = 3350e9 * 0.75
LAUNCH, REPLAYED_KERNEL = 6e-6, 1.5e-6


class NormAndSoftmax(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(768)

    def forward(self, hidden: torch.Tensor, scores: torch.Tensor, small: torch.Tensor) -> tuple:
        return self.norm(hidden), torch.softmax(scores, dim=-1), small + 1


@pytest.fixture(scope="module")
def nodes() -> dict[str, OpNode]:
    model = NormAndSoftmax().to(torch.bfloat16).eval()
    inputs = (torch.randn(8, 128, 768, dtype=torch.bfloat16), torch.randn(8, 12, 128, 128, dtype=torch.bfloat16),
              torch.randn(16, dtype=torch.bfloat16))
    graph = annotate(capture(model, inputs, name="norm-and-softmax").program)
    return {node.op.split(".")[1]: node for node in graph if node.kind is NodeKind.COMPUTE}


def test_a_layer_norm_reads_its_input_and_parameters_once_and_writes_its_output(nodes):
    norm = nodes["layer_norm"]
    activations = 8 * 128 * 768 * 2  # BERT-base's hidden states at 8 x 128 tokens, bfloat16: 1.5 MiB
    assert norm.bytes_read == activations + 2 * 768 * 2  # and its weight and bias
    assert norm.bytes_written == activations
    assert RooflineCostModel().compute_seconds(norm, H100) == pytest.approx(
        LAUNCH + (2 * activations + 2 * 768 * 2) / BANDWIDTH)


def test_a_softmax_over_its_rows_is_one_read_and_one_write(nodes):
    softmax = nodes["_softmax"] if "_softmax" in nodes else nodes["softmax"]
    scores = 8 * 12 * 128 * 128 * 2
    assert (softmax.bytes_read, softmax.bytes_written) == (scores, scores)
    assert RooflineCostModel().compute_seconds(softmax, H100) == pytest.approx(LAUNCH + 2 * scores / BANDWIDTH)


def test_the_least_an_op_costs_is_its_launch_eagerly_and_the_kernel_figure_in_a_replayed_graph(nodes):
    tiny = nodes["add"]  # 16 numbers: its bytes take 0.03 ns
    assert RooflineCostModel().compute_seconds(tiny, H100) == pytest.approx(LAUNCH, rel=1e-3)
    assert GraphReplay(RooflineCostModel()).compute_seconds(tiny, H100) == pytest.approx(REPLAYED_KERNEL, rel=1e-3)
