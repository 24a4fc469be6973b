"""LLM serving: the KV cache as memory, decode as a memory-bound step, and when disaggregating the phases pays.

Each expected figure is worked out by hand from the numbers on the page.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.frontend.op_graph import annotate
from partitioner.llm.joint import joint_problem, phase_assignment
from partitioner.llm.phases import cache_shape, capture_decode, capture_prefill
from targets.workload import load_workload
from partitioner.placement.objectives import THROUGHPUT
from partitioner.placement.problem import TargetTerms
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from targets.loader import load_target
from targets.spec import Link
from tests.partitioner.placement.problem_builders import make_problem, node


def small_llama(dtype=torch.float32, device="cpu", layers=2, hidden=64, heads=4, kv_heads=2):
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=256,
                         max_position_embeddings=512)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype).eval()


def test_the_kv_cache_of_a_decode_step_is_state_held_on_the_device_not_an_input_copied_in():
    model = small_llama()
    # 2 (K and V) x 2 kv heads x 16 head dim x 40 tokens x 3 sequences x 4 bytes = 30,720 bytes a layer; 2 layers.
    assert cache_shape(model).bytes_for(40, batch=3) == 61_440

    graph = annotate(capture_decode(model, 3, 40, cache_shape(model)).program)

    state = {name: size for name, size in graph.parameter_bytes.items() if name.startswith("past_key_values")}
    assert sum(size for size in state.values() if size > 8) == 61_440  # less the caches' position counters
    writes = [n for n in graph if n.op == "aten.index_copy_.default"]
    assert len(writes) == 4 and all(n.parameters for n in writes)
    # One token of K (or V) for 3 sequences: 2 heads x 16 x 3 x 4 bytes written, not the whole cache.
    assert all(n.bytes_written == 384 for n in writes)


def test_a_decode_step_is_memory_bound_and_prefill_reuses_each_weight_for_every_prompt_token():
    model = small_llama(torch.bfloat16, "meta", layers=1, hidden=4096, heads=32, kv_heads=32)
    h100 = load_target("cuda-h100")
    ridge = h100.peak_flops_per_second["bfloat16"] / h100.memory_bandwidth_bytes_per_second  # FLOPs per byte

    prefill = annotate(capture_prefill(model, 512, 1024, cache_shape(model)).program)
    decode = annotate(capture_decode(model, 1, 1024, cache_shape(model)).program)

    def intensity(graph):
        return graph.total_flops / sum(n.bytes_read + n.bytes_written for n in graph)

    # One token per sequence: each weight byte read serves about one multiply-add (2 FLOPs per 2 bytes).
    assert intensity(decode) < 0.01 * ridge
    assert intensity(prefill) > 100 * intensity(decode)  # 512 tokens reuse each weight 512 times


# Two devices: `gpu` ($10/h) computes fast, `hbm` ($2/h) reads memory fast. One prefill op (p) and one decode op
# (d, one step serving the whole batch: weight 1 here), sharing a weight w and handing over the cache kv.
GPU, HBM = TargetTerms("gpu", 10.0, 80 * 2**30), TargetTerms("hbm", 2.0, 80 * 2**30)


def phases(kv_bytes: int):
    prefill = make_problem([node("p", parameters=["w", "kv"], gpu=1.0, hbm=10.0)], targets=(GPU, HBM),
                           fallback="gpu", parameter_bytes={"w": 1000, "kv": kv_bytes}, links=Link(0.0, 1e9))
    decode = make_problem([node("d", parameters=["w", "kv"], gpu=4.0, hbm=1.0)], targets=(GPU, HBM),
                          fallback="gpu", parameter_bytes={"w": 1000, "kv": kv_bytes}, links=Link(0.0, 1e9))
    return prefill, decode


def serve(kv_bytes: int, separate: bool):
    prefill, decode = phases(kv_bytes)
    joint = joint_problem(prefill, decode, frozenset({"kv"}), 1.0, 1.0, separate)
    placement = solve(joint, THROUGHPUT, SolverOptions(time_limit_seconds=10, workers=1))
    return placement.assignment, score(joint, placement.assignment).serving


def test_disaggregation_wins_when_each_phase_has_a_device_it_suits_and_the_cache_is_cheap_to_move():
    # Co-located, both ops sit with the weight: on gpu 1 + 4 = 5 s a request ($10/h), on hbm 10 + 1 = 11 s
    # ($2/h): 13.9 and 6.1 milli-dollars. Apart, p on gpu (1 s) and d on hbm (1 s), the 1 MB cache 1 ms over
    # the link: 1 s at $12/h is 3.3 milli-dollars, and 1 request/s against 0.2.
    together, co_located = serve(kv_bytes=10**6, separate=False)
    apart, disaggregated = serve(kv_bytes=10**6, separate=True)

    assert together["prefill/p"] == together["decode/d"]
    assert co_located.throughput_per_second == pytest.approx(0.2)
    assert (apart["prefill/p"], apart["decode/d"]) == ("gpu", "hbm")
    assert disaggregated.throughput_per_second == pytest.approx(1.0)
    assert disaggregated.cost_per_request_at_load == pytest.approx(12 / 3600)
    assert disaggregated.cost_per_request_at_load < co_located.cost_per_request_at_load / 4


def test_disaggregation_loses_when_the_cache_costs_more_to_move_than_the_phases_gain():
    # A 20 GB cache takes 20 s a request over the 1 GB/s link: apart, that link is the bottleneck ($12/h for
    # 20 s: 66.7 milli-dollars), worse than gpu alone co-located (5 s at $10/h: 13.9).
    _, co_located = serve(kv_bytes=20 * 10**9, separate=False)
    apart, disaggregated = serve(kv_bytes=20 * 10**9, separate=True)

    assert disaggregated.bottleneck in ("gpu:out", "hbm:in", "gpu->hbm", "hbm->gpu")
    assert disaggregated.bottleneck_seconds == pytest.approx(20.0)
    assert co_located.bottleneck_seconds == pytest.approx(5.0)
    assert co_located.cost_per_request_at_load < disaggregated.cost_per_request_at_load
    assert phase_assignment(apart, "decode") != phase_assignment(apart, "prefill")


def test_a_workload_file_names_the_field_and_the_fix(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('prompt_tokens = [{ tokens = 256, share = 0.5 }]\noutput_tokens = 64\n')
    with pytest.raises(PartitionerError, match=r"field 'prompt_tokens': the shares sum to 0.5, not 1. Fix"):
        load_workload(path)
    with pytest.raises(PartitionerError, match="unknown workload 'chta'.*did you mean 'chat'"):
        load_workload("chta")


def test_compile_with_a_workload_plans_both_phases_per_token_and_writes_the_plan(tmp_path, capsys):
    model = tmp_path / "tiny_llm.py"
    model.write_text("from tests.partitioner.llm.test_llm_serving import small_llama\n\n"
                     "def build():\n    return small_llama(), None\n")
    workload = tmp_path / "short.toml"
    workload.write_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nmax_batch_size = 4\n')

    code = main(["compile", str(model), "--workload", str(workload), "--fleet", "npu-example=1,cuda-h100=2",
                 "--time-limit", "8", "-o", str(tmp_path / "out")])

    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads((tmp_path / "out" / "llm_plan.json").read_text())
    best = plan["best"]
    assert best["cost_per_million_output_tokens"] == min(
        t["result"]["cost_per_million_output_tokens"] for t in plan["tried"] if "result" in t and not t["refusal"])
    assert {t["batch_size"] for t in plan["tried"]} == {1, 4}
    assert {t["deployment"] for t in plan["tried"]} == {"co-located", "disaggregated"}
    assert "per 1M output tokens" in out and "TTFT" in out and "TPOT" in out and "KV cache" in out


def test_disaggregation_with_one_device_that_both_phases_need_names_that_device():
    # Only gpu runs either op, and each device may serve one phase.
    prefill = make_problem([node("p", gpu=1.0)], targets=(GPU, HBM), fallback="gpu")
    decode = make_problem([node("d", gpu=1.0)], targets=(GPU, HBM), fallback="gpu")
    joint = joint_problem(prefill, decode, frozenset(), 1.0, 1.0, True)

    with pytest.raises(PartitionerError, match=r"phases: prefill and decode both have ops only gpu runs "
                                               r"\(e.g. prefill/p, decode/d\).*Fix: add another device"):
        solve(joint, THROUGHPUT, SolverOptions(time_limit_seconds=5, workers=1))
