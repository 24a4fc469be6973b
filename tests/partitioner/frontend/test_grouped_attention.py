"""Grouped-query attention as serving kernels run it: the repeat of each KV head for its query heads copies
nothing, and the attention reads each KV head once."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from partitioner.frontend.grouped_attention import fuse_grouped_attention
from partitioner.frontend.op_graph import NodeKind
from partitioner.llm.phases import capture_decode

BATCH, CONTEXT, HEAD = 4, 64, 16


def decode_graph(kv_heads: int):
    config = LlamaConfig(hidden_size=8 * HEAD, intermediate_size=96, num_hidden_layers=1, num_attention_heads=8,
                         num_key_value_heads=kv_heads, vocab_size=100)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return capture_decode(model, [BATCH], CONTEXT).graphs[BATCH]


def test_the_repeat_of_two_kv_heads_for_eight_query_heads_is_a_view_and_the_attention_reads_two():
    graph = decode_graph(kv_heads=2)
    fused = fuse_grouped_attention(graph)

    attention = next(node for node in fused if node.op == "aten.scaled_dot_product_attention.default")
    query, keys, values, mask = attention.input_tensors
    cache = BATCH * 2 * CONTEXT * HEAD * 4  # float32 keys (or values) of 2 heads
    assert keys.num_bytes == values.num_bytes == 4 * cache  # repeated to 8 heads in the graph
    assert attention.bytes_read == query.num_bytes + 2 * cache + mask.num_bytes
    repeats = [fused[name] for name in attention.inputs[1:3]]
    assert [node.kind for node in repeats] == [NodeKind.VIEW] * 2
    assert [graph[node.name].kind for node in repeats] == [NodeKind.COMPUTE] * 2  # eager transformers copies


def test_attention_with_a_kv_head_per_query_head_is_left_as_it_is():
    graph = decode_graph(kv_heads=8)

    assert fuse_grouped_attention(graph) is graph
