"""Which ops split across a tensor-parallel group, read off the plan a transformers model declares.

transformers models carry a tensor-parallel plan (`model.tp_plan`: `"model.layers.*.self_attn.q_proj":
"colwise"`, `"...o_proj": "rowwise"`, `"lm_head": "colwise_gather_output"`), the Megatron-style sharding torch's
`parallelize_module` takes. Between a layer part's column-parallel matmuls and its row-parallel one every tensor
is split by heads or width, so every op of that part (rotary, attention, the KV cache writes, the activation)
runs on its share; the row-parallel matmul's partial sums are all-reduced. Ops outside those parts (norms,
residual adds, the rotary table, a router) run whole on every member. `shard_graph` marks each op's
`Sharding`; `ShardingPlan.degrees` says which group sizes divide the model's heads and widths evenly.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from partitioner.frontend.op_graph import NodeKind, OpGraph, Sharding

# The styles of transformers' plans we price; a module of any other style (an MLA latent projection, experts
# split their own way) runs whole, and so does the part around it.
_STYLES = {"colwise": Sharding.COLUMNS, "rowwise": Sharding.ROWS, "colwise_gather_output": Sharding.COLUMNS_GATHERED,
           "embedding_rowwise": Sharding.ROWS,
           # A per-head norm (Qwen3's q_norm, k_norm): each member normalises its own heads with the whole weight.
           "replicated_with_grad_allreduce": Sharding.SPLIT}
_LARGEST_DEGREE = 64
_STATE_SLIVER = 0.01  # the share of the state that may be held whole by every member (counters, not caches)


@dataclass(frozen=True, slots=True)
class ShardingPlan:
    """A model's tensor-parallel plan: each module pattern's style (`*` for a layer's number), and the degrees
    (group sizes) it splits evenly at; no degrees where the model declares no plan."""

    styles: Mapping[str, str]
    degrees: tuple[int, ...]


def model_sharding(model: torch.nn.Module) -> ShardingPlan:
    """The tensor-parallel plan `model` declares (transformers' `tp_plan`), with the degrees at which its heads,
    KV heads and MLP width all divide evenly."""
    styles = dict(getattr(model, "tp_plan", None) or {})
    if not styles:
        return ShardingPlan({}, ())
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    sizes = [getattr(config, field, None) for field in ("num_attention_heads", "num_key_value_heads",
                                                        "intermediate_size")]
    known = [size for size in sizes if isinstance(size, int) and size > 0]
    common = math.gcd(*known) if known else 1  # no sizes known: no degree is known to divide them
    degrees = tuple(d for d in (2 ** k for k in range(1, 7)) if d <= _LARGEST_DEGREE and common % d == 0)
    return ShardingPlan(styles, degrees)


def shard_graph(graph: OpGraph, plan: ShardingPlan) -> OpGraph:
    """`graph` with each op's `Sharding` set from `plan` (unchanged where the plan is empty)."""
    if not plan.styles:
        return graph
    # A layer part (an attention, an MLP) is split where all its planned modules are of styles priced here: an
    # attention whose latent projection is of another style runs whole, its matmuls too.
    parts: dict[str, bool] = {}
    for path, style in plan.styles.items():
        if _in_a_part(path, style):
            part = path.rpartition(".")[0]
            parts[part] = parts.get(part, True) and style in _STYLES
    planned = [(_pattern(path), _STYLES[style]) for path, style in plan.styles.items()
               if style in _STYLES and (not _in_a_part(path, style) or parts[path.rpartition(".")[0]])]
    split_parts = [_pattern(part, inside=True) for part, priced in parts.items() if priced]
    nodes = []
    for node in graph:
        # The planned style (and the collective after it) is the module's weighted op's alone: its other ops (a
        # cast, an embedding's scale) run on what that op left, split inside a part, else whole.
        sharding = next((style for pattern, style in planned if pattern.fullmatch(node.module_path)
                         and node.kind is NodeKind.COMPUTE and node.parameters), None)
        if sharding is None and any(part.fullmatch(node.module_path) for part in split_parts):
            sharding = Sharding.SPLIT
        nodes.append(dataclasses.replace(node, sharding=sharding) if sharding else node)
    return dataclasses.replace(graph, nodes=tuple(nodes), _index={})


def unsplit_state(graph: OpGraph, state: frozenset[str]) -> frozenset[str]:
    """The state (KV cache tensors, position counters) no split op reads: each member of a tensor-parallel group
    holds it whole."""
    split = {p for node in graph if node.sharding is not None for p in node.parameters}
    return frozenset(name for name in state if name not in split)


def splits_its_state(graph: OpGraph, state: frozenset[str]) -> bool:
    """Whether the KV cache is split across a group's members: all but a sliver of the state (a position
    counter) is read by split ops. Where it is not (an attention that runs whole), each member would hold the
    whole cache, and no group is worth offering."""
    whole = sum(graph.parameter_bytes[name] for name in unsplit_state(graph, state))
    return whole <= _STATE_SLIVER * sum(graph.parameter_bytes[name] for name in state)


def replicated_weight_bytes(graph: OpGraph, state: frozenset[str]) -> int:
    """Bytes each member of a tensor-parallel group holds whole: the weights no split op reads, and the state
    none reads (position counters)."""
    split = {p for node in graph if node.sharding is not None for p in node.parameters}
    read = {p for node in graph for p in node.parameters}
    return sum(graph.parameter_bytes[p] for p in (read | state) - split)


def _in_a_part(path: str, style: str) -> bool:
    """Whether a planned module is one matmul of a split layer part (not an LM head or an embedding alone)."""
    return "." in path and style not in ("colwise_gather_output", "embedding_rowwise")


def _pattern(path: str, inside: bool = False) -> re.Pattern[str]:
    """A plan's module pattern as a regular expression (`*` a layer's number); `inside`: the module or any in it."""
    body = r"\.".join(r"\d+" if part == "*" else re.escape(part) for part in path.split("."))
    return re.compile(body + (r"(\..+)?" if inside else ""))
