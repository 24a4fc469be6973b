"""Grouped-query attention priced as the kernels that run it: each key-value head read once, not copied per query
head.

transformers' eager attention repeats each KV head for the query heads that share it (`repeat_kv`: an expand,
then a reshape that copies) before `scaled_dot_product_attention`. Attention kernels (FlashAttention, cuDNN,
vLLM's and TensorRT-LLM's) read the grouped heads in place, so a Llama-70B decode step (8 KV heads for 64 query
heads) would otherwise be charged an eightfold copy of its whole KV cache and an attention reading it eight times
over. This pass, run on the graphs an LLM is planned on (partitioner/llm/planning.py), makes such a reshape a view
and charges the attention for the un-repeated keys and values. What runs is unchanged: `run --check` and the Ray
engine execute transformers' eager graph, copies and all.
"""

from __future__ import annotations

import dataclasses

from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode

_ATTENTION = "aten.scaled_dot_product_attention.default"
_REPEAT = ("aten.reshape.default", "aten.expand.default")


def fuse_grouped_attention(graph: OpGraph) -> OpGraph:
    """`graph` with each KV-head repeat feeding an attention made a view, and the attention's unread bytes grown
    by what the repeat added (unchanged where there is none)."""
    users = graph.users()
    changed: dict[str, OpNode] = {}
    for attention in graph:
        if attention.op != _ATTENTION:
            continue
        saved = 0
        for name in attention.inputs[1:3]:  # keys, values
            repeated = _repeat_of(graph, name, users)
            if repeated is not None:
                reshape, grouped_bytes = repeated
                changed[reshape.name] = dataclasses.replace(reshape, kind=NodeKind.VIEW)
                saved += reshape.output_bytes - grouped_bytes
        if saved:
            changed[attention.name] = dataclasses.replace(attention, unread_bytes=attention.unread_bytes + saved)
    if not changed:
        return graph
    return dataclasses.replace(graph, nodes=tuple(changed.get(node.name, node) for node in graph), _index={})


def _repeat_of(graph: OpGraph, name: str, users: dict[str, list[str]]) -> tuple[OpNode, int] | None:
    """The reshape that copies an expanded tensor into `name` (read by attentions alone) and the bytes of the
    tensor before the expand; None where `name` is no such repeat."""
    reshape = graph[name] if name in users else None
    if reshape is None or reshape.op != _REPEAT[0] or reshape.kind is not NodeKind.COMPUTE or not reshape.inputs:
        return None
    expand = graph[reshape.inputs[0]]
    if expand.op != _REPEAT[1] or not expand.input_tensors or users[name] == []:
        return None
    if any(graph[user].op != _ATTENTION for user in users[name]):
        return None
    grouped = expand.input_tensors[0].num_bytes
    return (reshape, grouped) if grouped < reshape.output_bytes else None
