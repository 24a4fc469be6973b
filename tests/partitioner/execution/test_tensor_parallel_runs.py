"""A tensor-parallel plan runs as it is priced: each member of the group a process (or a Ray actor) holding its
share of the modules the plan splits, joined by all-reduces and gathers over a process group, generating the
model's own tokens."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.execution import tensor_parallel
from partitioner.execution.tensor_parallel import (Members, SplitRun, check_split, generate_split, member_plan,
                                                   split_checks, split_runs)
from partitioner.llm.planning import plan_llm
from partitioner.llm.summary import format_llm_summary
from targets.fleet import load_fleet
from tests.partitioner.llm.test_llm_serving import load_workload_text
from tests.partitioner.test_cli import assert_one_line_error
from tests.partitioner.llm.test_tensor_parallel_plans import decode_step_seconds

BUILTIN = Path(__file__).parents[3] / "targets" / "builtin"
PROMPT = torch.tensor([[1, 5, 9, 14, 3, 7], [2, 4, 6, 8, 10, 12]])


def small_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def fleet_of_copies(folder: Path, name: str, count: int, fields: dict[str, str]) -> str:
    """A fleet of `count` copies of an H100 spec renamed `name` with `fields` changed, in one host, joined by a
    fast link; the path of its fleet file."""
    spec = (BUILTIN / "cuda-h100.toml").read_text().split("[links.cuda-h100]")[0]
    for field, value in {"name": f'"{name}"', **fields}.items():
        spec = re.sub(rf"^{field} = .*$", f"{field} = {value}", spec, flags=re.MULTILINE)
    (folder / f"{name}.toml").write_text(spec + f"[links.{name}]\nbandwidth_gb_per_second = 400\n"
                                         'latency_microseconds = 1\n[support]\nops = "all"\n')
    fleet = folder / "fleet.toml"
    fleet.write_text(f'name = "{count} x {name}"\n[[hosts]]\nname = "node0"\n'
                     f'devices = [{{ target = "{folder / f"{name}.toml"}", count = {count} }}]\n')
    return str(fleet)


def slow_device_fleet(folder: Path) -> str:
    """Two identical devices slow enough at compute and memory that halving a layer's work pays, joined by a fast
    link: the small Llama's decode step is then worth splitting."""
    return fleet_of_copies(folder, "slow", 2, {"memory_bandwidth_gb_per_second": "1", "float32": "0.001",
                                               "launch_overhead_microseconds": "0", "view_overhead_microseconds": "0"})


@pytest.fixture(scope="module")
def split_plan(tmp_path_factory):
    """The small Llama planned on the slow pair with a TPOT only the pair splitting each layer meets."""
    model = small_llama()
    fleet = slow_device_fleet(tmp_path_factory.mktemp("fleet"))
    workload = 'name = "tight"\nprompt_tokens = 6\noutput_tokens = 8\nbatch_size = 4\n'
    one = decode_step_seconds(model, fleet, "slow.0", batch=4, context=14)
    pair = decode_step_seconds(model, fleet, "slow.tp2.0", batch=4, context=14)
    assert pair < one
    tpot_ms = (one + pair) / 2 * 1e3
    plan = plan_llm(model, load_workload_text(workload + f"tpot_ms = {tpot_ms}\n"), load_fleet(fleet),
                    time_limit_seconds=10, workers=1, deterministic=True)
    return model, plan


def test_the_plan_records_the_modules_each_group_splits(split_plan):
    _, plan = split_plan
    assert plan.best.devices["decode"] == ("slow.tp2.0",)
    runs = split_runs(plan.best.collectives.values())
    assert [run.degree for run in runs] == [2]
    for layer in range(2):
        for module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            assert f"model.layers.{layer}.{module}" in runs[0].modules
    # The baselines on one device are cheaper per token but too slow: the summary says so beside their price.
    assert "misses the limits: TPOT" in next(line for line in format_llm_summary(plan).splitlines()
                                             if line.startswith("fallback (batch"))
    written = json.loads(json.dumps(plan.to_dict()))
    assert written["best"]["collectives"]["slow.tp2.0"]["split_modules"] == list(
        plan.best.collectives["slow.tp2.0"].split_modules)


def test_a_tensor_parallel_plan_generates_the_models_own_tokens_with_its_members_as_processes(split_plan):
    model, plan = split_plan
    checks = split_checks(plan.best, model, PROMPT, new_tokens=6)

    assert list(checks) == [2]
    assert checks[2].same_tokens
    assert checks[2].logits.passed, checks[2].logits.mismatches


def test_a_tensor_parallel_plan_generates_the_models_own_tokens_with_its_members_on_ray(split_plan):
    pytest.importorskip("ray")
    model, plan = split_plan
    checks = split_checks(plan.best, model, PROMPT, new_tokens=6, members=Members.RAY)

    assert checks[2].passed, checks[2].logits.mismatches


def test_a_group_holding_other_weights_fails_the_check(monkeypatch):
    """The check compares what the members compute: a group whose weights differ from the model's is caught."""
    model, other = small_llama(seed=0), small_llama(seed=1)
    run = SplitRun(2, tuple(name for name, _ in model.named_modules() if name.endswith("_proj")))
    monkeypatch.setattr(tensor_parallel, "generate_split",
                        lambda _, *args, **options: generate_split(other, *args, **options))

    check = check_split(model, run, PROMPT, 6)

    assert not check.passed and not check.same_tokens and not check.logits.passed


def test_in_bfloat16_a_group_may_part_from_one_devices_tokens_only_where_its_logits_round_alike():
    """The members sum partial results in another order than one device does; the check judges each step's
    logits up to the first token that differs against a float32 run, as run --check judges reduced precision."""
    model = small_llama().to(torch.bfloat16)
    run = SplitRun(2, tuple(name for name, _ in model.named_modules() if name.endswith("_proj")))

    check = check_split(model, run, PROMPT, 6)

    assert check.passed, check.logits.mismatches
    assert check.steps == 6 and check.same_steps >= 1


def test_a_model_without_weights_is_refused_before_any_member_starts():
    with torch.device("meta"):
        model = small_llama()
    run = SplitRun(2, tuple(f"model.layers.0.mlp.{name}_proj" for name in ("gate", "up", "down")))
    with pytest.raises(PartitionerError, match="meta device"):
        generate_split(model, run, PROMPT, 2)


def break_in_member_one(module, args):
    """A forward hook that fails in the second member of a group alone (the model itself runs)."""
    if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
        raise RuntimeError("member one broke")


def test_a_member_that_fails_is_named_with_its_error_and_the_group_stops():
    model = small_llama()
    model.model.layers[0].mlp.register_forward_pre_hook(break_in_member_one)
    run = SplitRun(2, tuple(f"model.layers.0.mlp.{name}_proj" for name in ("gate", "up", "down")))

    with pytest.raises(PartitionerError, match="member 1 of 2 failed: RuntimeError: member one broke"):
        generate_split(model, run, PROMPT, 2, timeout_seconds=120)


def test_a_layer_part_split_halfway_is_refused_before_any_member_starts():
    model = small_llama()
    with pytest.raises(PartitionerError, match="model.layers.0.mlp"):
        member_plan(model, ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"])


def test_a_tied_lm_head_splits_with_the_embedding_it_shares_its_weight_with():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()

    plan = member_plan(model, ["model.embed_tokens", "lm_head"])

    # One weight, sharded once under the name the model lists it by; the head's forward still gathers, on the shard.
    assert plan == {"model.embed_tokens": "embedding_rowwise", "model.embed_tokens.weight": "embedding_rowwise",
                    "lm_head": "colwise_gather_output"}
    assert check_split(model, SplitRun(2, ("model.embed_tokens", "lm_head")), PROMPT, 4).passed


def test_a_plan_of_another_model_is_refused():
    with pytest.raises(PartitionerError, match="another model"):
        member_plan(small_llama(), ["decoder.blocks.0.attn.q"])


def test_run_check_on_an_llm_plan_generates_with_each_group_and_the_model(tmp_path, capsys):
    model = small_llama()
    fleet = slow_device_fleet(tmp_path)
    one = decode_step_seconds(model, fleet, "slow.0", batch=4, context=14)
    pair = decode_step_seconds(model, fleet, "slow.tp2.0", batch=4, context=14)
    (tmp_path / "workload.toml").write_text('name = "tight"\nprompt_tokens = 6\noutput_tokens = 8\nbatch_size = 4\n'
                                            f"tpot_ms = {(one + pair) / 2 * 1e3}\n")
    (tmp_path / "small_llama.py").write_text(
        "import torch\nfrom tests.partitioner.execution.test_tensor_parallel_runs import small_llama\n\n"
        "def build():\n    return small_llama(), (torch.tensor([[1, 2, 3]]),)\n")
    out = tmp_path / "out"
    assert main(["compile", str(tmp_path / "small_llama.py"), "--workload", str(tmp_path / "workload.toml"),
                 "--fleet", fleet, "--time-limit", "10", "--workers", "1", "--quiet", "-o", str(out)]) == 0
    capsys.readouterr()

    assert main(["run", str(out / "llm_plan.json"), "--check"]) == 0

    printed = capsys.readouterr().out
    assert "prefill of 6 prompt tokens as placed (1 partition on slow.tp2.0)" in printed
    assert "decode step at batch 4 as placed" in printed
    assert "generation as placed, 2 prompts of 8 tokens each prefilled alone" in printed
    assert "tensor-parallel group of 2 (" in printed and "the model's tokens" in printed
    assert "MISMATCH" not in printed

    # Another model given in its place is refused before any member starts, whatever modules it shares.
    (tmp_path / "other.py").write_text(
        "import torch\nfrom transformers import LlamaConfig, LlamaForCausalLM\n\n"
        "def build():\n    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, "
        "num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)\n"
        "    return LlamaForCausalLM(config), None\n")
    assert main(["run", str(out / "llm_plan.json"), "--check", "--model", str(tmp_path / "other.py")]) == 2
    assert_one_line_error(capsys, "and the plan is of LlamaForCausalLM", "Fix: give the model the plan was compiled")
