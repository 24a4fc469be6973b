"""Which ops split across a tensor-parallel group, read off the plan a transformers model declares: a layer's
attention and MLP between their column- and row-parallel matmuls, the LM head and the embedding; norms and
residual adds run whole; a model without a plan, or a part of a style not priced, runs whole."""

from __future__ import annotations

from collections import Counter

import torch
from transformers import AutoModelForCausalLM, DeepseekV3Config, LlamaConfig

from partitioner.frontend.op_graph import NodeKind, Sharding
from partitioner.frontend.sharding import (ShardingPlan, model_sharding, replicated_weight_bytes, shard_graph,
                                          splits_its_state)
from partitioner.llm.phases import capture_decode


def decode_graph(config):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    phase = capture_decode(model, [4], 64)
    return model, shard_graph(phase.graphs[4], model_sharding(model)), phase.state


def test_a_llamas_attention_and_mlp_split_between_their_column_and_row_parallel_matmuls():
    model, graph, state = decode_graph(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                   num_attention_heads=8, num_key_value_heads=4, vocab_size=100))
    by_module = {node.module_path: node.sharding for node in graph if node.kind is NodeKind.COMPUTE}

    assert model_sharding(model).degrees == (2, 4)  # 8 heads, 4 KV heads, an MLP 96 wide: 8 does not divide 4
    assert by_module["model.layers.1.self_attn.q_proj"] is Sharding.COLUMNS
    assert by_module["model.layers.1.self_attn.o_proj"] is Sharding.ROWS
    assert by_module["model.layers.1.mlp.down_proj"] is Sharding.ROWS
    assert by_module["lm_head"] is Sharding.COLUMNS_GATHERED
    assert by_module["model.embed_tokens"] is Sharding.ROWS
    attention = Counter(node.sharding for node in graph if node.op == "aten.scaled_dot_product_attention.default")
    assert attention == {Sharding.SPLIT: 2}
    # One collective per row-parallel module: its matmul (or lookup), not the casts around it.
    assert Counter(node.op for node in graph if node.sharding is Sharding.ROWS) == {
        "aten.embedding.default": 1, "aten.linear.default": 4}
    assert splits_its_state(graph, state)  # every KV cache read and write is split by heads
    assert by_module["model.layers.1.post_attention_layernorm"] is None
    # Only the norms' weights and the rotary table are held whole by every member.
    whole = {p for node in graph if node.sharding is None for p in node.parameters} - state
    assert whole == {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                     "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
                     "model.norm.weight", "model.rotary_emb.inv_freq"}
    assert replicated_weight_bytes(graph, state) == sum(graph.parameter_bytes[p] for p in whole)


def test_an_attention_with_a_projection_of_a_style_not_priced_runs_whole_matmuls_and_all():
    config = DeepseekV3Config(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                              n_group=1, topk_group=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=32,
                              qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=32, vocab_size=100)
    _, graph, state = decode_graph(config)

    attention = {node.sharding for node in graph if ".self_attn" in node.module_path}
    mlp = {node.sharding for node in graph if node.module_path.startswith("model.layers.0.mlp.down_proj")}
    assert attention == {None}  # its latent projection is "mla_kv_a_proj"
    assert mlp == {Sharding.ROWS}
    assert not splits_its_state(graph, state)  # each member would hold the whole cache: no group is offered


def test_a_model_without_a_plan_has_no_degrees_and_its_graph_is_left_as_it_is():
    plan = model_sharding(torch.nn.Linear(4, 4))

    assert plan == ShardingPlan({}, ())
