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


class SplitFilled(nn.Module):
    """Fills a buffer through the items of its split: each item is a view of the buffer, as a slice is."""

    def forward(self, x):
        buffer = x.new_zeros(x.shape[0], 12)
        left, right = buffer.split([8, 4], dim=1)
        left.copy_(torch.sin(x))
        right.copy_(torch.cos(x[:, :4]))
        return buffer * 2


def test_a_buffer_filled_through_views_and_read_as_the_buffer_is_one_memory_with_its_views_and_writes():
    graph = op_graph_of(FilledBuffer().eval(), random_inputs((4, 8)))

    assert memory_read_after_writes(graph) == (
        SharedMemory("new_empty", views=("slice_1", "slice_2"), writers=("copy_", "copy__1")),)


def test_a_write_read_only_through_its_result_is_plain_dataflow():
    graph = op_graph_of(NormalisedInPlace().eval(), random_inputs((4, 8)))

    assert [node.name for node in graph if node.writes is not None] == ["div_"]
    assert memory_read_after_writes(graph) == ()


def test_writes_into_the_items_of_a_split_write_the_buffer_and_its_readers_wait_for_them():
    graph = op_graph_of(SplitFilled().eval(), random_inputs((4, 8)))

    assert [(node.name, node.writes) for node in graph if node.writes is not None] == [
        ("copy_", "new_zeros"), ("copy__1", "new_zeros")]
    assert set(graph["mul"].after) == {"copy_", "copy__1"}
    assert memory_read_after_writes(graph) == (
        SharedMemory("new_zeros", views=("getitem", "split_with_sizes", "getitem_1"), writers=("copy_", "copy__1")),)
