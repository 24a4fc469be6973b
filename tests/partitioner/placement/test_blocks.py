"""Repeated blocks: which numbered submodules count as copies, and that tying them never limits the plan."""

from __future__ import annotations

import pytest
import torch

from partitioner.placement.blocks import repeated_blocks
from partitioner.placement.objectives import LATENCY
from partitioner.placement.problem import PlacementProblem, TargetTerms
from partitioner.placement.solver import SolverOptions, solve
from targets.spec import Link
from tests.conftest import op_graph_of
from tests.partitioner.placement.problem_builders import CUDA, GIB, NPU, make_problem, node, value


class Block(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(self.linear(x)) + x


class Stack(torch.nn.Module):
    """Three identical 8-wide blocks, then a 4-wide one that is not a copy of them."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(8), Block(8), Block(8)])
        self.narrow = torch.nn.ModuleList([Block(4)])
        self.project = torch.nn.Linear(8, 4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        x = self.project(x)
        return self.narrow[0](x)


def test_identical_numbered_submodules_form_one_family_in_module_order():
    graph = op_graph_of(Stack(), (torch.randn(2, 8),))

    families = repeated_blocks(graph)

    assert len(families) == 1
    (family,) = families
    assert len(family) == 3
    assert len({len(block) for block in family}) == 1
    path_of = {n.name: n.module_path for n in graph}
    assert [path_of[block[0]].split(".")[1] for block in family] == ["0", "1", "2"]
    assert {path_of[name] for name in family[1]} >= {"layers.1.linear"}


def sixteen_blocks(npu_gib: int) -> PlacementProblem:
    """A chain of 16 one-op blocks, 1 GiB of weights each, 1 s on the npu or 2 s on cuda, free transfers."""
    names = [f"mm{i}" for i in range(16)]
    return make_problem(
        nodes=[node(n, parameters=[f"w{i}"], npu=1.0, cuda=2.0) for i, n in enumerate(names)],
        values=[value(a, b, num_bytes=1) for a, b in zip(names, names[1:])],
        targets=(TargetTerms(NPU.name, NPU.price_per_hour, npu_gib * GIB), CUDA),
        parameter_bytes={f"w{i}": GIB for i in range(16)},
        links=Link(0.0, 1e12),
        blocks=(tuple((n,) for n in names),),
    )


def test_tied_blocks_only_start_the_search_and_never_limit_the_plan():
    # Blocks are tied in pairs first, so the tied search fits only 6 of the 7 blocks the npu has room for;
    # the untied search that follows must still find 7 x 1 s + 9 x 2 s.
    placement = solve(sixteen_blocks(npu_gib=7), LATENCY, SolverOptions(time_limit_seconds=10.0))

    assert list(placement.assignment.values()).count("npu") == 7
    assert placement.report.status == "OPTIMAL"
    assert placement.report.objective == pytest.approx(25.0)
