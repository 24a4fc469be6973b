"""LLM plans on groups of identical GPUs may split each layer across a group (tensor parallelism): where a TPOT
limit sits between one GPU's decode step and a pair's, the pair splitting each layer is the plan; over a link too
slow for the collectives, splitting never pays and the plan keeps each layer whole. The summary says what each
group splits, and why no layer may split where none may."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from cost_models.graph_replay import GraphReplay
from cost_models.roofline import RooflineCostModel
from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.frontend.sharding import model_sharding, replicated_weight_bytes, shard_graph
from partitioner.llm.phases import capture_decode
from partitioner.llm.planning import plan_llm
from partitioner.llm.summary import format_llm_summary
from partitioner.placement.problem import build_problem
from partitioner.placement.scoring import score
from partitioner.placement.tagging import tag
from targets.fleet import load_fleet
from targets.tensor_parallel import with_tensor_parallel_places
from tests.partitioner.llm.test_llm_serving import load_workload_text

BATCH, CONTEXT = 4, 48
BUILTIN = Path(__file__).parents[3] / "targets" / "builtin"


def wide_llama() -> LlamaForCausalLM:
    """One layer of Llama-70B's width on the meta device: its 1.7 GB of bf16 weights dominate a decode step."""
    config = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=1, num_attention_heads=64,
                         num_key_value_heads=8, vocab_size=32000, max_position_embeddings=256)
    with torch.device("meta"):
        return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def workload(tpot_ms: float | None) -> str:
    limit = f"tpot_ms = {tpot_ms}\n" if tpot_ms else ""
    return f'name = "tight"\nprompt_tokens = 32\noutput_tokens = 16\nbatch_size = {BATCH}\n{limit}'


def decode_step_seconds(model, fleet_text: str, place: str, batch: int = BATCH, context: int = CONTEXT) -> float:
    """One decode step with every op on `place` of the fleet (a device, or a tensor-parallel place), replayed as
    a captured graph, as the planner prices decode steps."""
    phase = capture_decode(model, [batch], context)
    graph = shard_graph(phase.graphs[batch], model_sharding(model))
    targets = with_tensor_parallel_places(load_fleet(fleet_text).target_set(), (2,),
                                          replicated_weight_bytes(graph, phase.state))
    problem = build_problem(graph, tag(graph, targets), targets, GraphReplay(RooflineCostModel()))
    return score(problem, {node.name: place for node in problem.nodes}).latency_seconds


def slow_gpu_fleet(folder: Path) -> str:
    """Two H100s whose only path to each other is a 1 GB/s, 1 ms link through the host."""
    spec = (BUILTIN / "cuda-h100.toml").read_text()
    spec = spec.replace('name = "cuda-h100"', 'name = "slow-gpu"').split("[links.cuda-h100]")[0]
    spec += '[support]\nops = "all"\n'
    spec = spec.replace("bandwidth_gb_per_second = 55\nlatency_microseconds = 10",
                        "bandwidth_gb_per_second = 1\nlatency_microseconds = 1000")
    (folder / "slow-gpu.toml").write_text(spec)
    fleet = folder / "slow.toml"
    fleet.write_text(f'name = "slow"\n[[hosts]]\nname = "node0"\n'
                     f'devices = [{{ target = "{folder / "slow-gpu.toml"}", count = 2 }}]\n')
    return str(fleet)


def test_a_tpot_between_one_gpus_decode_step_and_a_splitting_pairs_is_met_by_the_pair():
    model = wide_llama()
    one = decode_step_seconds(model, "cuda-h100=2", "cuda-h100.0")
    pair = decode_step_seconds(model, "cuda-h100=2", "cuda-h100.tp2.0")
    assert pair < one

    plan = plan_llm(model, load_workload_text(workload((one + pair) / 2 * 1e3)), load_fleet("cuda-h100=2"),
                    time_limit_seconds=10, workers=1, deterministic=True)

    assert plan.best.devices["decode"] == ("cuda-h100.tp2.0",)
    assert plan.best.tpot_seconds <= (one + pair) / 2
    collectives = plan.best.collectives["cuda-h100.tp2.0"]
    # A layer's attention and MLP each end with an all-reduce; so do the embedding and (a gather) the LM head.
    assert (collectives.degree, collectives.per_decode_step) == (2, 4)


def test_without_time_to_search_the_whole_model_on_one_tensor_parallel_place_is_still_a_plan():
    """Each kind of place holding the whole model is scored before any search: a rental of many devices whose
    floor is lower cannot take the time that would have found it."""
    model = wide_llama()
    one = decode_step_seconds(model, "cuda-h100=2", "cuda-h100.0")
    pair = decode_step_seconds(model, "cuda-h100=2", "cuda-h100.tp2.0")

    plan = plan_llm(model, load_workload_text(workload((one + pair) / 2 * 1e3)), load_fleet("cuda-h100=2"),
                    time_limit_seconds=0.01, workers=1, deterministic=True)

    assert plan.best.devices == {"prefill": ("cuda-h100.tp2.0",), "decode": ("cuda-h100.tp2.0",)}
    assert plan.best.solver is None and plan.best.tpot_seconds <= (one + pair) / 2


def test_over_a_link_too_slow_for_the_collectives_each_layer_stays_whole(tmp_path):
    model = wide_llama()
    fleet = slow_gpu_fleet(tmp_path)
    one = decode_step_seconds(model, fleet, "slow-gpu.0")
    assert decode_step_seconds(model, fleet, "slow-gpu.tp2.0") > one

    plan = plan_llm(model, load_workload_text(workload(None)), load_fleet(fleet), time_limit_seconds=10,
                    workers=1, deterministic=True)

    assert not any(".tp" in device for devices in plan.best.devices.values() for device in devices)
    with pytest.raises(PartitionerError, match="tpot_ms"):
        plan_llm(model, load_workload_text(workload(one * 0.9 * 1e3)), load_fleet(fleet), time_limit_seconds=10,
                 workers=1, deterministic=True)


def test_with_tensor_parallelism_turned_off_no_group_splits_a_layer_and_the_summary_says_so(tmp_path, capsys):
    model = wide_llama()

    plan = plan_llm(model, load_workload_text(workload(None)), load_fleet("cuda-h100=2"), time_limit_seconds=10,
                    workers=1, deterministic=True, tensor_parallel=False)

    assert not plan.best.collectives
    assert not any(".tp" in device for devices in plan.best.devices.values() for device in devices)
    assert "tensor     none: tensor parallelism was turned off (--no-tensor-parallel)" in format_llm_summary(plan)
    # Only an LLM planned for a workload has layers to keep whole.
    assert main(["compile", "model.py", "--no-tensor-parallel", "-o", str(tmp_path / "out")]) == 2
    assert "--no-tensor-parallel keeps the layers of an LLM planned for a workload whole. Fix: add --workload" \
        in capsys.readouterr().err


def test_the_summary_says_what_each_group_splits_and_why_none_may_where_none_may():
    model = wide_llama()
    one = decode_step_seconds(model, "cuda-h100=2", "cuda-h100.0")
    pair = decode_step_seconds(model, "cuda-h100=2", "cuda-h100.tp2.0")
    plan = plan_llm(model, load_workload_text(workload((one + pair) / 2 * 1e3)), load_fleet("cuda-h100=2"),
                    time_limit_seconds=10, workers=1, deterministic=True)
    assert "2 x cuda-h100 splitting what it holds of 1 layer, the embedding, the LM head;" in format_llm_summary(plan)
    assert plan.kept_whole is None

    config = GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    with torch.device("meta"):
        unplanned = GPT2LMHeadModel(config).eval()
    plan = plan_llm(unplanned, load_workload_text(workload(None)), load_fleet("cuda-h100=2"), time_limit_seconds=10,
                    workers=1, deterministic=True)
    assert "tensor     none: GPT2LMHeadModel declares no tensor-parallel plan" in format_llm_summary(plan)
    alone = plan_llm(unplanned, load_workload_text(workload(None)), load_fleet("cuda-h100=1"),
                     time_limit_seconds=10, workers=1, deterministic=True)
    assert alone.kept_whole is None  # no group to split across: nothing to say
