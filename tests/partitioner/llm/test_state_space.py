"""A state-space LLM (Mamba, Mamba-2) is planned for a workload like any causal LM: what it keeps between decode
steps is each layer's convolution and SSM states, the same size whatever the context, held as state on the device
of its layer and handed from prefill to decode. A hybrid (Jamba, Bamba) keeps those for its state-space layers and
keys and values for its attention layers. `run --check` runs such plans as placed, handing each prompt's states
to a decode batch; serve and export hand only KV caches so far and refuse them with what to do instead."""

from __future__ import annotations

import pytest
import torch
from transformers import (BambaConfig, BambaForCausalLM, JambaConfig, JambaForCausalLM, Mamba2Config,
                          Mamba2ForCausalLM, MambaConfig, MambaForCausalLM)

from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.execution.llm_phases import check_generation, check_phases
from partitioner.llm.deployment import HYBRID_STATES, SSM_STATES
from partitioner.llm.phases import capture_decode, capture_prefill
from partitioner.llm.planning import plan_llm
from partitioner.llm.summary import format_llm_summary
from targets.fleet import load_fleet
from tests.partitioner.execution.test_tensor_parallel_runs import fleet_of_copies
from tests.partitioner.llm.test_llm_serving import load_workload_text, model_file

# Per layer and sequence, float32: convolution states of 128 channels x 4 taps (2,048 bytes) and SSM states of
# 128 channels x 8 (4,096 bytes); and one 8-byte counter of tokens seen per layer.
CONV, SSM, COUNTER = 128 * 4 * 4, 128 * 8 * 4, 8


def small_mamba() -> MambaForCausalLM:
    torch.manual_seed(0)
    config = MambaConfig(hidden_size=64, state_size=8, num_hidden_layers=2, vocab_size=128, expand=2,
                         conv_kernel=4)
    return MambaForCausalLM(config).eval()


def test_a_mambas_decode_state_is_its_convolution_and_ssm_states_whatever_the_context():
    model = small_mamba()

    short, long = capture_prefill(model, [16], 24), capture_prefill(model, [16], 400)
    decode = capture_decode(model, [4], 24)

    states = sorted(size for name, size in short.graphs[16].parameter_bytes.items() if name in short.state)
    assert states == sorted([CONV, SSM, COUNTER] * 2)
    assert short.state_bytes(16) == long.state_bytes(16) == 2 * (CONV + SSM + COUNTER)
    assert decode.state_bytes(4) == 2 * (4 * (CONV + SSM) + COUNTER)


def test_a_mamba_workload_plan_holds_the_batchs_states_and_a_prefills_where_its_layers_run():
    workload = load_workload_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nbatch_size = 4\n')

    plan = plan_llm(small_mamba(), workload, load_fleet("cpu-x86=2"), time_limit_seconds=5, workers=1,
                    deterministic=True)

    assert plan.decode_state == SSM_STATES
    assert plan.kv_cache_bytes_per_request == 2 * (CONV + SSM + COUNTER)
    assert sum(plan.best.kv_cache_bytes.values()) == 2 * (4 * (CONV + SSM) + COUNTER) + 2 * (CONV + SSM + COUNTER)
    assert "convolution and SSM states 12.0 KiB per request whatever the context" in format_llm_summary(plan)


def test_a_mamba_plan_runs_as_placed_but_serving_or_exporting_it_is_refused_with_what_to_do_instead(tmp_path, capsys):
    model = model_file(tmp_path, "tests.partitioner.llm.test_state_space:small_mamba")
    workload = tmp_path / "short.toml"
    workload.write_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nbatch_size = 4\n')
    assert main(["compile", str(model), "--workload", str(workload), "--fleet", "cpu-x86=2", "--time-limit", "5",
                 "-o", str(tmp_path / "out")]) == 0
    plan = str(tmp_path / "out" / "llm_plan.json")
    capsys.readouterr()

    assert main(["run", plan, "--check"]) == 0
    out = capsys.readouterr().out
    assert "decode step at batch 4 as placed (1 partition on cpu-x86.0): logits and states" in out
    assert "their states handed to one decode batch: the model's tokens -> OK" in out
    for command in (["serve", plan], ["export", plan, "-o", str(tmp_path / "onnx")]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert "keeps convolution and SSM states between decode steps, not only a KV cache" in error
        assert "Fix: run --check on this plan runs it as placed" in error
    assert not (tmp_path / "onnx").exists()


def small_jamba() -> JambaForCausalLM:
    """Four layers: state-space layers 0 and 2 (128 channels, 4 taps, 8 states), attention layers 1 and 3 (2 KV
    heads of 16), float32."""
    torch.manual_seed(0)
    config = JambaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1,
                         expert_layer_period=2, expert_layer_offset=1, num_experts=2, num_experts_per_tok=1,
                         mamba_d_state=8, mamba_d_conv=4, mamba_expand=2)
    return JambaForCausalLM(config).eval()


def test_a_hybrid_keeps_its_state_space_layers_states_and_its_attention_layers_keys_and_values():
    model = small_jamba()

    short, long = capture_prefill(model, [16], 24), capture_prefill(model, [16], 400)
    decode = capture_decode(model, [4], 24)

    # A state-space layer: 2,048 + 4,096 bytes and a counter. An attention layer: keys and values of 2 heads x 16
    # for each of the context's tokens (24: 3,072 bytes each) and a counter.
    keys = 2 * 24 * 16 * 4
    states = sorted(size for name, size in short.graphs[16].parameter_bytes.items() if name in short.state)
    assert states == sorted([CONV, SSM, COUNTER] * 2 + [keys, keys, COUNTER] * 2)
    assert short.state_bytes(16) == 2 * (CONV + SSM + COUNTER) + 2 * (2 * keys + COUNTER)
    assert long.state_bytes(16) == 2 * (CONV + SSM + COUNTER) + 2 * (2 * keys * 400 // 24 + COUNTER)
    assert decode.state_bytes(4) == 2 * (4 * (CONV + SSM) + COUNTER) + 2 * (4 * 2 * keys + COUNTER)


def test_a_hybrid_workload_plan_says_its_state_grows_with_the_context():
    workload = load_workload_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nbatch_size = 4\n')

    plan = plan_llm(small_jamba(), workload, load_fleet("cpu-x86=2"), time_limit_seconds=5, workers=1,
                    deterministic=True)

    keys = 2 * 24 * 16 * 4
    assert plan.decode_state == HYBRID_STATES
    assert plan.kv_cache_bytes_per_request == 2 * (CONV + SSM + COUNTER) + 2 * (2 * keys + COUNTER)  # 24.0 KiB
    assert "convolution and SSM states and a KV cache 24.0 KiB per request at 24 tokens of context" in \
        format_llm_summary(plan)


def test_mamba2_and_bamba_keep_their_heads_states():
    """Mamba-2's mixer (and Bamba's, a hybrid of it) convolves its inner channels with the B and C projections'
    (128 + 2 x 8 = 144 channels, 4 taps) and keeps an SSM state per head (4 heads of 32 x 8 states)."""
    torch.manual_seed(0)
    mamba2 = Mamba2ForCausalLM(Mamba2Config(hidden_size=64, num_hidden_layers=2, vocab_size=128, num_heads=4,
                                            head_dim=32, state_size=8, n_groups=1, expand=2)).eval()
    bamba = BambaForCausalLM(BambaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1, 3],
                                         mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=8,
                                         mamba_d_conv=4, mamba_expand=2)).eval()
    conv, ssm = 144 * 4 * 4, 4 * 32 * 8 * 4

    assert capture_prefill(mamba2, [16], 24).state_bytes(16) == 2 * (conv + ssm + COUNTER)
    assert capture_prefill(bamba, [16], 24).state_bytes(16) == 2 * (conv + ssm + COUNTER) + \
        2 * (2 * 2 * 24 * 16 * 4 + COUNTER)


def test_a_hybrid_split_across_devices_runs_as_placed_and_generates_the_models_own_tokens(tmp_path):
    """Jamba on devices too small for it: its layers (and the states and keys each keeps) on two or more devices;
    each prompt prefilled alone, its states and keys handed to one decode batch, decode steps as placed."""
    model = small_jamba()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    fleet = fleet_of_copies(tmp_path, "tiny", 4, {"memory_gib": f"{0.7 * weights / 2**30:.6f}"})
    workload = load_workload_text('name = "short"\nprompt_tokens = 6\noutput_tokens = 4\nbatch_size = 2\n')
    plan = plan_llm(model, workload, load_fleet(fleet), time_limit_seconds=4, workers=1, deterministic=True)

    for check in check_phases(plan, model):
        assert len(check.places) >= 2 and check.check.passed, check.check.mismatches
    prompts = torch.tensor([[5, 17, 3, 99, 42, 8], [1, 2, 3, 4, 5, 6]])
    generation = check_generation(plan, model, prompts, 8)
    assert (generation.same_steps, generation.passed) == (8, True)


def test_a_hybrids_layer_keeping_only_a_convolution_state_or_nothing_is_planned_as_it_is():
    """LFM2's convolution layers keep a short convolution state (64 channels x 3 taps) and no SSM state."""
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(0)
    lfm2 = Lfm2ForCausalLM(Lfm2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      layer_types=["conv", "full_attention", "conv", "full_attention"])).eval()

    assert capture_prefill(lfm2, [8], 16).state_bytes(8) == 2 * (64 * 3 * 4 + COUNTER) + \
        2 * (2 * 2 * 16 * 16 * 4 + COUNTER)


def test_a_model_keeping_keys_and_states_in_one_cache_layer_is_refused_in_one_line():
    from transformers import FalconH1Config, FalconH1ForCausalLM

    falcon = FalconH1ForCausalLM(FalconH1Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
        mamba_d_conv=4, mamba_n_groups=1)).eval()
    workload = load_workload_text('name = "short"\nprompt_tokens = 8\noutput_tokens = 4\nbatch_size = 2\n')

    with pytest.raises(PartitionerError, match=r"FalconH1ForCausalLM keeps keys and values beside state-space states "
                                               r"in one cache layer .*Fix: plan one pass of it without --workload"):
        plan_llm(falcon, workload, load_fleet("cpu-x86=1"), time_limit_seconds=5)
