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


def random_inputs(*shapes):
    """Seeded random float inputs of the given shapes, the same on every call."""
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)
