"""Coverage: per target, how much of a model it runs, by op count and by FLOPs, and what keeps the rest off it."""

from __future__ import annotations

import textwrap

import torch

from partitioner.cli import main
from partitioner.reporting.coverage import coverage
from targets.loader import load_target
from tests.conftest import op_graph_of

HALF = torch.float16


class LinearThenSoftmax(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.softmax(self.linear(x), dim=-1)


def test_coverage_counts_ops_and_flops_and_ranks_refusals_by_the_flops_they_keep_off():
    graph = op_graph_of(LinearThenSoftmax().to(HALF), (torch.randn(2, 8, dtype=HALF),))
    npu, h100 = coverage(graph, [load_target("npu-example"), load_target("cuda-h100")])

    linear_flops = 2 * 2 * 8 * 4  # batch 2, 8 in, 4 out: one multiply and one add per weight per row
    softmax = next(node for node in graph if node.op == "aten.softmax.int")
    assert (npu.supported_ops, npu.total_ops) == (1, 2)
    assert npu.supported_flops == linear_flops
    assert npu.total_flops == linear_flops + softmax.flops
    assert [(r.reason, r.ops, r.flops) for r in npu.refusals] == [
        ("aten.softmax.int: op not in support list", 1, softmax.flops)]
    assert (h100.op_share, h100.flop_share, h100.refusals) == (1.0, 1.0, ())


def test_the_coverage_command_prints_each_target_and_its_refusals(tmp_path, capsys):
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent("""
        import torch

        def build():
            model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Softmax(dim=-1)).half()
            return model, (torch.randn(2, 8, dtype=torch.float16),)
    """))

    assert main(["targets", "coverage", str(model), "--targets", "npu-example,cuda-h100"]) == 0

    out = capsys.readouterr().out
    assert "model      model: 2 compute ops" in out
    assert "npu-example" in out and "1/2 50%" in out
    assert "aten.softmax.int: op not in support list (1," in out
    assert "cuda-h100" in out and "runs every op" in out
