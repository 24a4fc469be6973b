"""Capturing an LLM's phases for a workload: in this process, on a weightless twin, with the cache the model writes.

Models with real weights plan as their meta twins do, leave the user's model as it was, and never fork; the KV
cache is sized as each layer writes it (an MLA latent too); a workload longer than the model takes is refused.
"""

from __future__ import annotations

import os
import types

import pytest
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

from partitioner.errors import PartitionerError
from partitioner.frontend.meta_twin import meta_twin
from partitioner.llm import phases
from partitioner.llm.phases import LayerCache, cache_layout, capture_decode
from partitioner.llm.planning import plan_llm
from targets.fleet import load_fleet
from tests.partitioner.llm.test_llm_serving import OwnCausalLM, load_workload_text

SHORT = 'name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nbatch_size = 2\n'


def small_llama(max_positions: int = 512) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=max_positions)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def small_deepseek_v3() -> DeepseekV3ForCausalLM:
    """MLA attention (a 32-wide latent and a 16-wide rotary key, cached as one head each) and routed experts."""
    config = DeepseekV3Config(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                              n_group=1, topk_group=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=32,
                              qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=32, vocab_size=256,
                              max_position_embeddings=256)
    return DeepseekV3ForCausalLM(config).eval()


def test_a_model_with_real_weights_is_planned_in_this_process_as_its_meta_twin_and_left_as_it_was(monkeypatch):
    def no_fork():
        raise AssertionError("planning forked a process after torch ran (its thread pool deadlocks in the child)")

    monkeypatch.setattr(os, "fork", no_fork)
    model = small_llama()
    weights = {name: (tensor.data_ptr(), tensor.clone()) for name, tensor in model.state_dict().items()}
    with torch.device("meta"):
        weightless = small_llama()
    workload = load_workload_text(SHORT)
    fleet = load_fleet("npu-example=1,cuda-h100=1")

    plan = plan_llm(model, workload, fleet, time_limit_seconds=2, workers=1, deterministic=True)
    twin_plan = plan_llm(weightless, workload, fleet, time_limit_seconds=2, workers=1, deterministic=True)

    assert plan.kv_cache_bytes_per_request == twin_plan.kv_cache_bytes_per_request > 0
    assert plan.best.cost_per_million_output_tokens == twin_plan.best.cost_per_million_output_tokens
    assert all(not tensor.is_meta for tensor in model.state_dict().values())
    for name, (pointer, values) in weights.items():
        assert model.state_dict()[name].data_ptr() == pointer and torch.equal(model.state_dict()[name], values)


def test_the_meta_twin_shares_no_memory_with_the_model_and_keeps_its_ties():
    model = small_llama()
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as many LLMs are

    twin = meta_twin(model)

    assert all(tensor.is_meta for tensor in twin.state_dict().values())
    assert twin.lm_head.weight is twin.model.embed_tokens.weight
    assert [(n, t.shape, t.dtype) for n, t in twin.state_dict().items()] == \
        [(n, t.shape, t.dtype) for n, t in model.state_dict().items()]
    assert not any(tensor.is_meta for tensor in model.state_dict().values())


def test_an_mla_cache_holds_what_each_layer_writes_not_what_the_config_calls_head_dim():
    model = meta_twin(small_deepseek_v3())

    layout = cache_layout(model)
    decode = capture_decode(model, [2], 40)

    # DeepSeek-V3 caches its compressed latent (kv_lora_rank 32) and its rotary key (16), one head each.
    assert layout.measured and layout.layers == (LayerCache(heads=1, key_width=32, value_width=16),) * 2
    # 2 layers x (32 + 16) wide x 40 tokens x 2 sequences x 4 bytes, and two 8-byte position counters.
    assert decode.state_bytes(2) == 2 * 48 * 40 * 2 * 4 + 16


def test_a_capture_with_a_cache_read_off_the_config_says_the_cache_may_be_ours_to_blame(monkeypatch):
    monkeypatch.setattr(phases, "_measured_layout", lambda model, dtype: None)  # as where the model cannot run here

    with pytest.raises(PartitionerError, match=r"could not capture .*, with a KV cache sized from the model's config "
                                               r".* the fault is partitioner's, not the model's\. Fix: report it"):
        capture_decode(meta_twin(small_deepseek_v3()), [2], 40)


def test_a_workload_longer_than_the_model_takes_is_refused_before_anything_is_captured():
    workload = load_workload_text('name = "long"\nprompt_tokens = 500\noutput_tokens = 100\n')

    with pytest.raises(PartitionerError, match=r"long needs a context of 600 tokens \(its longest prompt, 500, plus "
                                               r"its longest output, 100\), and LlamaForCausalLM takes at most 512 "
                                               r"\(max_position_embeddings in its config\)\. Fix: give the workload "
                                               r"shorter prompt_tokens or output_tokens"):
        plan_llm(small_llama(max_positions=512), workload, load_fleet("cuda-h100=1"), time_limit_seconds=2)


class CpuCacheLM(OwnCausalLM):
    """A model of one's own whose caches are made on the CPU by name, whatever its weights' device."""

    def _cache(self, batch, context):
        return [[torch.zeros(batch, context, self.hidden, device="cpu") for _ in range(self.layers)]
                for _ in range(2)]


def test_a_models_own_inputs_made_off_its_weights_device_are_refused_with_the_device_named():
    workload = load_workload_text(SHORT)

    with pytest.raises(PartitionerError, match=r"CpuCacheLM.prefill_inputs made tensors on cpu, and the model's "
                                               r"weights are on meta .*Fix: make the inputs without naming a device"):
        plan_llm(CpuCacheLM(), workload, load_fleet("cuda-h100=1"), time_limit_seconds=2)


def test_a_transformers_model_that_keeps_neither_keys_nor_state_space_states_is_told_what_workload_takes():
    class RecurrentLM(torch.nn.Module):  # layers and a vocabulary, but no attention heads nor SSM states
        config = types.SimpleNamespace(num_hidden_layers=2, vocab_size=16)

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(16, 8)

    model = RecurrentLM()

    with pytest.raises(PartitionerError, match=r"RecurrentLM's config has no num_attention_heads: what it keeps "
                                               r"between decode steps is not an attention KV cache, nor a cache of "
                                               r"state-space layers .*Fix: plan one pass of it without --workload"):
        plan_llm(model, load_workload_text(SHORT), load_fleet("cuda-h100=1"), time_limit_seconds=2)
