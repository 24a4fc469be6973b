"""Experts of mixture-of-experts layers split into shards, so the planner can place each on its own device.

A transformers MoE layer keeps its experts' weights in two 3-D parameters and
runs them as one grouped matmul each, which a placement could only put on one
device whole (Mixtral-8x7B's 90 GB of experts on one 80 GB H100). Before
capture, `experts_sharded` replaces each such experts module by `ExpertShards`:
contiguous runs of experts, each a submodule of its own (`...experts.shards.3`),
so its ops, weights and costs are a separate piece of the graph. They compute
what the layer computed, as transformers' expert parallelism does at inference
(`AllReduceEP`): every shard runs its experts on the whole batch with the routes
to other shards' experts masked (the local id one past its experts, weight 0),
and the partial outputs are summed. The masked rows still pass through each
shard's gather and elementwise ops, a cost the plan counts; its grouped matmuls
compute only the rows routed to its experts, which the frontend counts as the
shard's share of the rows (partitioner/frontend/op_graph.py, ROUTED_SHARE).
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import torch
import torch.fx.traceback

from partitioner.frontend.op_graph import ROUTED_SHARE

# The module path of a shard and of anything inside it: ExpertShards names its shards `shards.<index>`.
_SHARD_PATH = re.compile(r".*\.shards\.\d+(?=\.|$)")
# Expert weights of transformers' experts modules (`use_experts_implementation`): 3-D, experts first.
_EXPERT_PARAMETERS = ("gate_up_proj", "up_proj", "down_proj", "gate_up_proj_bias", "up_proj_bias", "down_proj_bias")


class ExpertShards(torch.nn.Module):
    """The experts of one MoE layer as shards, each a submodule placeable on its own device."""

    def __init__(self, experts: torch.nn.Module, shards: int):
        super().__init__()
        total = experts.num_experts
        sizes = [total // shards + (1 if index < total % shards else 0) for index in range(shards)]
        self.first_expert = [sum(sizes[:index]) for index in range(shards)]
        self.total_experts = total
        self.shards = torch.nn.ModuleList(_shard(experts, first, count)
                                          for first, count in zip(self.first_expert, sizes))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        output = None
        for shard, first in zip(self.shards, self.first_expert):
            count = shard.num_experts
            elsewhere = (top_k_index < first) | (top_k_index >= first + count)
            with torch.fx.traceback.annotate({ROUTED_SHARE: count / self.total_experts}):
                partial = shard(hidden_states, torch.where(elsewhere, count, top_k_index - first),
                                top_k_weights.masked_fill(elsewhere, 0.0))
            output = partial if output is None else output + partial
        return output


@contextlib.contextmanager
def experts_sharded(model: torch.nn.Module, shards: int) -> Iterator[int]:
    """While inside, every transformers experts module of `model` is replaced by up to `shards` shards of its
    experts (never more shards than experts); yields how many modules were replaced, and puts them back on exit."""
    replaced = []
    for name, module in list(model.named_modules()):
        if _is_experts(module) and shards >= 2:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            replaced.append((parent, child, module))
    try:
        for parent, child, module in replaced:
            setattr(parent, child, ExpertShards(module, min(shards, module.num_experts)))
        yield len(replaced)
    finally:
        for parent, child, module in replaced:
            setattr(parent, child, module)


def expert_shard(module_path: str) -> str | None:
    """The expert shard a node with this module path belongs to (its shard module's path), or None."""
    found = _SHARD_PATH.match(module_path)
    return found.group(0) if found else None


def experts_per_layer(model: torch.nn.Module) -> int:
    """The most experts any MoE layer of `model` has (0 for a dense model)."""
    return max((m.num_experts for m in model.modules() if _is_experts(m)), default=0)


def _is_experts(module: torch.nn.Module) -> bool:
    """A transformers experts module that can run expert-parallel: 3-D expert weights, and the flag its grouped
    forward reads to mask routes to experts it does not hold."""
    return (isinstance(getattr(module, "num_experts", None), int) and hasattr(module, "_is_expert_parallel")
            and any(isinstance(getattr(module, p, None), torch.nn.Parameter) and getattr(module, p).dim() == 3
                    for p in _EXPERT_PARAMETERS))


def _shard(experts: torch.nn.Module, first: int, count: int) -> torch.nn.Module:
    """A copy of `experts` holding experts [first, first + count): its weights are slices (views) of the
    originals, and routes marked with the id `count` are skipped (transformers' expert-parallel masking)."""
    shard = type(experts).__new__(type(experts))
    shard.__dict__.update(experts.__dict__)
    shard._parameters = {name: (torch.nn.Parameter(value[first:first + count], requires_grad=value.requires_grad)
                                if name in _EXPERT_PARAMETERS and value is not None else value)
                         for name, value in experts._parameters.items()}
    shard._buffers = dict(experts._buffers)
    shard._modules = dict(experts._modules)
    shard.num_experts = count
    shard._is_expert_parallel = True
    return shard
