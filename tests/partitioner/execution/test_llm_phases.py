"""An LLM plan's phases run as placed: the model captured with its weights at the plan's sizes, each op put where
the plan put its counterpart, split into partitions, and run beside the model's own program (logits and the KV
cache it writes compared)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils import _pytree as pytree
from transformers import GPT2Config, GPT2LMHeadModel, MixtralConfig, MixtralForCausalLM

from partitioner.errors import PartitionerError
from partitioner.execution.llm_phases import check_generation, check_phases
from partitioner.execution.partitioned_module import PartitionedModule
from partitioner.llm.deployment import LLMPlan
from partitioner.llm.planning import plan_llm
from targets.fleet import load_fleet
from tests.partitioner.execution.test_tensor_parallel_runs import fleet_of_copies
from tests.partitioner.llm.test_llm_serving import load_workload_text

WORKLOAD = 'name = "short"\nprompt_tokens = 6\noutput_tokens = 4\nbatch_size = 2\n'


def small_memory_fleet(folder: Path) -> str:
    """Four identical devices of 400 KiB each: a small model must be split across at least two."""
    return fleet_of_copies(folder, "tiny", 4, {"memory_gib": "0.0004"})


def small_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=128, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)).eval()


def test_each_phase_runs_split_as_placed_and_computes_what_the_model_does(pipeline_plan, tmp_path):
    model, plan = pipeline_plan
    plan = LLMPlan.load(plan.save(tmp_path / "llm_plan.json"))  # as a later command reads it

    checks = check_phases(plan, model)

    assert [(c.phase, c.size) for c in checks] == [("prefill", 6), ("decode", 2)]
    for check in checks:
        assert check.partitions >= 2 and len(check.places) >= 2
        assert check.check.passed, check.check.mismatches


def test_a_partitioned_phase_that_computes_otherwise_fails_the_check(pipeline_plan, monkeypatch):
    model, plan = pipeline_plan
    original = PartitionedModule.forward

    def perturbed(self, *args, **kwargs):
        return pytree.tree_map_only(torch.Tensor, lambda t: t + 1e-3 if t.is_floating_point() else t,
                                    original(self, *args, **kwargs))

    monkeypatch.setattr(PartitionedModule, "forward", perturbed)

    assert not any(check.check.passed for check in check_phases(plan, model))


def test_a_mixture_of_experts_runs_with_its_experts_in_the_plans_shards(tmp_path):
    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             num_local_experts=4, num_experts_per_tok=2)).eval()
    plan = plan_llm(model, load_workload_text(WORKLOAD), load_fleet("cuda-h100=2"), time_limit_seconds=10,
                    workers=1, deterministic=True, expert_shards=2)

    checks = check_phases(plan, model)

    assert plan.expert_shards == 2 and all(check.check.passed for check in checks)
    assert check_generation(plan, model, torch.tensor([[5, 17, 3, 99, 42, 8], [1, 2, 3, 4, 5, 6]]), 6).passed


def test_a_model_without_weights_is_refused(pipeline_plan):
    _, plan = pipeline_plan
    with torch.device("meta"):
        weightless = small_gpt2()
    with pytest.raises(PartitionerError, match="meta device"):
        check_phases(plan, weightless)


def test_generation_through_the_placed_phases_gives_the_models_own_tokens(pipeline_plan):
    """Each prompt prefilled alone as placed, its KV cache (and the cache's position counter) handed to one decode
    batch, decode steps as placed: the tokens `generate` gives."""
    model, plan = pipeline_plan
    prompts = torch.tensor([[5, 17, 3, 99, 42, 8], [1, 2, 3, 4, 5, 6]])

    check = check_generation(plan, model, prompts, 8)

    assert (check.same_steps, check.new_tokens, check.passed) == (8, 8, True)
