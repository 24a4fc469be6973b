"""Small hand-made models that more than one test module partitions, and seeded inputs for them."""

from __future__ import annotations

import torch
from torch import nn


class Branches(nn.Module):
    """Three branches from one input, gated and merged."""

    def __init__(self):
        super().__init__()
        self.left = nn.Linear(16, 16)
        self.right = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.gate = nn.Linear(16, 16)

    def forward(self, x):
        left = torch.tanh(self.left(x))
        right = self.right(x)
        mixed = left * torch.sigmoid(self.gate(x)) + right
        return torch.cat([mixed, left - right], dim=-1)


class BranchesThenReduced(Branches):
    """`Branches`, then a softmax and a sum: reductions after the merge."""

    def forward(self, x):
        return super().forward(x).softmax(-1).sum(-1)


class FilledBuffer(nn.Module):
    """Fills a new buffer by in-place writes into two slices, the second with a value computed on another target,
    then reads the buffer: DeepSeek-V3's attention builds its keys so."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 4)

    def forward(self, x):
        first = self.first(x)
        second = torch.sin(self.second(first))
        buffer = first.new_empty(x.shape[0], 12)
        buffer[:, :8] = first
        buffer[:, 8:] = second
        return buffer * 2


class UpdatesItsState(nn.Module):
    """Updates buffers it holds, one in place and then through a view of it, one through a slice, and reads both
    after: a running sum, a cache. Every user of a buffer the model writes must share its one copy."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.register_buffer("total", torch.zeros(2, 8))
        self.register_buffer("cache", torch.zeros(4, 8))

    def forward(self, x):
        y = self.linear(x)
        self.total.add_(y)
        self.total[:, :4].mul_(2)
        self.cache[1:3].copy_(y)
        return torch.softmax(self.total, -1) + torch.layer_norm(self.cache, (8,)).sum(0)


def random_inputs(*shapes):
    """Seeded random float inputs of the given shapes, the same on every call."""
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)
