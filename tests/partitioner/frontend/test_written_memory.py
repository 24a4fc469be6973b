"""Memory written in place and read again as memory: its owner, the views writes go through and the writes."""

from __future__ import annotations

import torch
from torch import nn

from partitioner.frontend.written_memory import SharedMemory, memory_read_after_writes
from tests.conftest import op_graph_of
from tests.partitioner.hand_made_models import FilledBuffer, random_inputs


class NormalisedInPlace(nn.Module):
    """`weights /= total`, then `weights` read: the write's result is the value its readers get."""

    def forward(self, x):
        weights = torch.exp(x)
        total = weights.sum(-1, keepdim=True)
        weights /= total
        return weights * 2


def test_a_buffer_filled_through_views_and_read_as_the_buffer_is_one_memory_with_its_views_and_writes():
    graph = op_graph_of(FilledBuffer().eval(), random_inputs((4, 8)))

    assert memory_read_after_writes(graph) == (
        SharedMemory("new_empty", views=("slice_1", "slice_2"), writers=("copy_", "copy__1")),)


def test_a_write_read_only_through_its_result_is_plain_dataflow():
    graph = op_graph_of(NormalisedInPlace().eval(), random_inputs((4, 8)))

    assert [node.name for node in graph if node.writes is not None] == ["div_"]
    assert memory_read_after_writes(graph) == ()
