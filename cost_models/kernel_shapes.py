"""How much of a device's compute an attention kernel's shape lets it use: its keys and its blocks.

A fused attention kernel (FlashAttention, which PyTorch's scaled_dot_product_attention runs on GPUs) gives each
block of the device one tile of queries of one (batch, head) and streams the keys past it. Two things of the
shape, not of its FLOPs, set how close it comes to its large-size efficiency:
- the keys a block streams: the query tile's load and the softmax's rescaling are paid once per block, so a
  block over few keys does little work for them. FlashAttention-2's published forward throughput follows
  e * keys / (keys + half) (an op class's `compute_half_efficiency_keys`; see the GPU specs for the figures);
- the blocks against the device's compute units (`compute_units`: streaming multiprocessors): the kernel runs in
  waves of one block a unit, and a last wave part full leaves units idle. Where there are fewer blocks than
  units, the kernel splits the keys among more blocks (FlashAttention's split-KV for short queries, as in a
  decode step) until the units are full or each block has one tile of keys.
A target without `compute_units` (CPUs, compiled-graph accelerators) has no waves; a class without a half size
has no keys curve.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

from partitioner.frontend.op_graph import OpNode, TensorMeta
from targets.op_classes import op_class
from targets.spec import RooflineConstants, Target

# FlashAttention-2's forward tile: 128 queries a block, 128 keys a step, for head dims up to 128.
QUERY_TILE = 128
KEY_TILE = 128


@dataclass(frozen=True, slots=True)
class AttentionShape:
    """What an attention's efficiency depends on: the (batch x heads) it runs and its queries and keys each."""

    heads: int  # batch x query heads
    queries: int
    keys: int

    @property
    def blocks(self) -> int:
        """The kernel's blocks before any split of the keys: one per tile of queries of each (batch, head)."""
        return self.heads * math.ceil(self.queries / QUERY_TILE)


def attention_shape(node: OpNode) -> AttentionShape | None:
    """The shape of an attention-class node (query [..., heads, queries, dim], key [..., keys, dim]); None for
    any other node, or where a size is symbolic or zero."""
    query, key = node.arguments.get("query"), node.arguments.get("key")
    if op_class(node.op) != "attention" or not (isinstance(query, TensorMeta) and isinstance(key, TensorMeta)):
        return None
    return _shape(query.shape, key.shape)


def signature_attention_shape(op: str, signature: str) -> AttentionShape | None:
    """The shape of an attention from its profile signature (cost_models/measured.py's `op_signature`: the op and
    its arguments, tensors as [shape, dtype]), for measurements recorded before profiles held shapes."""
    if op_class(op) != "attention":
        return None
    try:
        arguments = json.loads(signature)[1]
        return _shape(arguments["query"][0], arguments["key"][0])
    except (ValueError, LookupError, TypeError):
        return None


def _shape(query: Sequence, key: Sequence) -> AttentionShape | None:
    if len(query) < 3 or len(key) < 2:
        return None
    sizes = (*query[:-1], key[-2])
    if any(not isinstance(size, int) or size < 1 for size in sizes):
        return None
    return AttentionShape(math.prod(query[:-2]), query[-2], key[-2])


def shape_efficiency(shape: AttentionShape | None, target: Target, constants: RooflineConstants) -> float:
    """The share of its class's compute efficiency an attention of `shape` reaches on `target` (1 for none)."""
    if shape is None:
        return 1.0
    blocks, keys = shape.blocks, shape.keys
    units = target.compute_units
    if units and blocks < units:
        splits = min(units // blocks, max(1, math.ceil(keys / KEY_TILE)))
        blocks, keys = blocks * splits, keys / splits
    share = keys / (keys + constants.compute_half_keys) if constants.compute_half_keys else 1.0
    if units:
        share *= blocks / (math.ceil(blocks / units) * units)
    return share
