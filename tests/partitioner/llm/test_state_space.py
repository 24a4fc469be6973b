"""A state-space LLM (Mamba) is planned for a workload like any causal LM: what it keeps between decode steps is
each layer's convolution and SSM states, the same size whatever the context, held as state on the device of its
layer and handed from prefill to decode. What runs plans hands only KV caches so far: run, serve and export
refuse its plan with what to do instead."""

from __future__ import annotations

import torch
from transformers import MambaConfig, MambaForCausalLM

from partitioner.cli import main
from partitioner.llm.deployment import SSM_STATES
from partitioner.llm.phases import capture_decode, capture_prefill
from partitioner.llm.planning import plan_llm
from partitioner.llm.summary import format_llm_summary
from targets.fleet import load_fleet
from tests.partitioner.llm.test_llm_serving import load_workload_text

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


def test_running_serving_or_exporting_a_mamba_plan_is_refused_with_what_to_do_instead(tmp_path, capsys):
    model = tmp_path / "mamba.py"
    model.write_text("from tests.partitioner.llm.test_state_space import small_mamba\n\n"
                     "def build():\n    return small_mamba(), None\n")
    workload = tmp_path / "short.toml"
    workload.write_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nbatch_size = 4\n')
    assert main(["compile", str(model), "--workload", str(workload), "--fleet", "cpu-x86=2", "--time-limit", "5",
                 "-o", str(tmp_path / "out")]) == 0
    plan = str(tmp_path / "out" / "llm_plan.json")
    capsys.readouterr()

    for command in (["run", plan, "--check"], ["serve", plan], ["export", plan, "-o", str(tmp_path / "onnx")]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert "keeps convolution and SSM states between decode steps, not a KV cache" in error
        assert "Fix: read them with report and explain" in error
    assert not (tmp_path / "onnx").exists()
