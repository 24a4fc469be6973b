"""LLM serving: the KV cache as memory, decode as a memory-bound step, and when disaggregating the phases pays.

Each expected figure is worked out by hand from the numbers on the page.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.frontend.capture import capture
from partitioner.frontend.input_containers import register_input_containers
from partitioner.frontend.op_graph import annotate
from partitioner.llm.joint import joint_problem, phase_assignment, phase_split_placements
from partitioner.llm.buckets import mean_problem, on_one_graph
from partitioner.llm.experts import expert_shard, experts_sharded
from partitioner.llm.deployment import LLMPlan
from partitioner.llm.planning import plan_llm
from partitioner.llm.summary import format_llm_summary
from partitioner.reporting.explain_llm import explain_llm_node
from partitioner.llm.phases import (LayerCache, TransformersInputs, cache_layout, capture_decode, capture_prefill,
                                    sliding_windows_as_static, token_positions)
from targets.workload import load_workload
from partitioner.placement.baselines import BASELINES
from partitioner.placement.objectives import THROUGHPUT
from partitioner.placement.problem import TargetTerms
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from partitioner.plan import Plan
from targets.fleet import load_fleet
from targets.loader import load_target
from targets.spec import Link
from tests.partitioner.placement.problem_builders import make_problem, node, value
from tests.zoo import mixtral


def small_llama(dtype=torch.float32, device="cpu", layers=2, hidden=64, heads=4, kv_heads=2):
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=256,
                         max_position_embeddings=512)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype).eval()


def test_the_kv_cache_of_a_decode_step_is_state_held_on_the_device_not_an_input_copied_in():
    model = small_llama()
    # Each layer keeps 2 kv heads of keys and values 16 wide (hidden 64 over 4 heads), as the model writes them.
    layout = cache_layout(model)
    assert layout.measured and layout.layers == (LayerCache(heads=2, key_width=16, value_width=16),) * 2

    graph = capture_decode(model, [3], 40).graphs[3]

    state = {name: size for name, size in graph.parameter_bytes.items() if name.startswith("past_key_values")}
    # 2 (K and V) x 2 kv heads x 16 wide x 40 tokens x 3 sequences x 4 bytes = 30,720 bytes a layer; 2 layers.
    assert sum(size for size in state.values() if size > 8) == 61_440  # less the caches' position counters
    writes = [n for n in graph if n.op == "aten.index_copy_.default"]
    assert len(writes) == 4 and all(n.parameters for n in writes)
    # One token of K (or V) for 3 sequences: 2 heads x 16 x 3 x 4 bytes written, not the whole cache.
    assert all(n.bytes_written == 384 for n in writes)


def test_a_decode_step_is_memory_bound_and_prefill_reuses_each_weight_for_every_prompt_token():
    model = small_llama(torch.bfloat16, "meta", layers=1, hidden=4096, heads=32, kv_heads=32)
    h100 = load_target("cuda-h100")
    ridge = h100.peak_flops_per_second["bfloat16"] / h100.memory_bandwidth_bytes_per_second  # FLOPs per byte

    prefill = capture_prefill(model, [512], 1024).graphs[512]
    decode = capture_decode(model, [1], 1024).graphs[1]

    def intensity(graph):
        return graph.total_flops / sum(n.bytes_read + n.bytes_written for n in graph)

    # One token per sequence: each weight byte read serves about one multiply-add (2 FLOPs per 2 bytes).
    assert intensity(decode) < 0.01 * ridge
    assert intensity(prefill) > 100 * intensity(decode)  # 512 tokens reuse each weight 512 times


def test_a_decode_step_is_priced_as_a_replayed_graph_on_a_gpu_and_a_prefill_as_it_runs_eagerly():
    """Serving engines replay the decode step from a captured CUDA graph: on the H100 each kernel then adds
    1.5 us (its spec's graph_kernel_microseconds) in place of its 6 us launch, and views cost nothing."""
    model = small_llama()
    workload = load_workload_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nbatch_size = 4\n')
    plan = plan_llm(model, workload, load_fleet("cuda-h100=1"), time_limit_seconds=5, workers=1, deterministic=True)
    h100 = load_target("cuda-h100")
    decode = capture_decode(model, [4], workload.context_tokens).graphs[4]

    assert plan.graph_replay == {"cuda-h100": pytest.approx(1.5e-6)}
    q_proj = next(n for n in decode if n.module_path.endswith("layers.0.self_attn.q_proj") and n.flops)
    # 4 tokens x 64 wide by a 64 x 64 float32 weight: its 18,432 bytes take 7 ns at 75% of 3.35 TB/s; its 32,768
    # FLOPs run as one tile of 16 x 64 (a quarter of it real) on one of the 132 SMs, at 75% of 67 TFLOP/s: longer.
    assert q_proj.bytes_read + q_proj.bytes_written == 18_432
    assert q_proj.flops == 32_768
    assert plan.op_seconds["decode"][q_proj.name]["cuda-h100"] == pytest.approx(
        1.5e-6 + 32_768 / (67e12 * 0.75 * 0.25 / 132))
    views = [op.name for op in plan.phase_ops["decode"] if op.op in ("aten.view.default", "aten.transpose.int")]
    assert views and all(plan.op_seconds["decode"][name]["cuda-h100"] == 0.0 for name in views)
    prefill_views = [op.name for op in plan.phase_ops["prefill"] if op.op == "aten.view.default"]
    assert prefill_views and all(plan.op_seconds["prefill"][name]["cuda-h100"] == h100.view_overhead_seconds
                                 for name in prefill_views)
    assert "a step replayed as a captured graph on cuda-h100 (1.5 us a kernel)" in format_llm_summary(plan)
    explained = explain_llm_node(plan, f"decode/{q_proj.name}")
    assert "a step replayed as a captured graph (1.5 us a kernel, no dispatch)" in explained
    assert "replayed" not in explain_llm_node(plan, f"prefill/{q_proj.name}")


def test_one_symbolic_capture_of_decode_gives_each_batch_what_a_capture_at_that_batch_gives():
    model = small_llama()
    decode = capture_decode(model, [1, 4, 16], 40)
    # Captured once with the batch symbolic, annotated at each batch.
    for batch in (1, 4, 16):
        own = annotate(capture(model, TransformersInputs(model).decode_inputs(batch, 40)).program)
        # The symbolic graph also reads the batch size off its input (`sym_size`), which costs nothing.
        graph = [n for n in decode.graphs[batch] if n.op != "aten.sym_size.int"]
        assert [n.op for n in graph] == [n.op for n in own]
        assert [n.output_tensors for n in graph] == [n.output_tensors for n in own]
        assert sum(n.flops for n in graph) == own.total_flops
        assert sum(n.bytes_read + n.bytes_written for n in graph) == sum(n.bytes_read + n.bytes_written for n in own)
    # The cache grows with the batch: 2 x 2 heads x 16 x 40 tokens x 4 bytes x 2 layers = 20,480 bytes a sequence.
    assert [decode.state_bytes(b) // 20_480 for b in (1, 4, 16)] == [1, 4, 16]


def test_a_decode_step_captured_once_serves_every_position_of_a_sliding_window_model():
    """Gemma 2's sliding layers keep their length as a Python number, which masks read for the queries' positions;
    captured with it, a decode step would mask every later step as the first. Within a window that holds the whole
    context the capture reads the tensor counter, so one captured step gives the model's logits at any position."""
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=100, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=16, sliding_window=64)).eval()
    register_input_containers(model)
    inputs = TransformersInputs(model)
    with sliding_windows_as_static():
        step = capture(model, inputs.decode_inputs(1, 20)).program.module()
    prompt = torch.randint(0, 100, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = inputs.prefill_inputs(9, 20)
        model(input_ids=prompt, past_key_values=eager["past_key_values"], **token_positions(0, 9), use_cache=True)
        handed = inputs.decode_inputs(1, 20)["past_key_values"]  # the capture's cache, its tensors the prompt's
        for into, held in zip(handed.layers, eager["past_key_values"].layers):
            for name, value in vars(held).items():
                if isinstance(value, torch.Tensor):
                    getattr(into, name).copy_(value)
        token = torch.tensor([[7]])
        for position in (9, 10, 11):
            expected = model(input_ids=token, past_key_values=eager["past_key_values"],
                             **token_positions(position, 1), use_cache=True).logits
            got = step(input_ids=token, past_key_values=handed, **token_positions(position, 1), use_cache=True)
            torch.testing.assert_close(got.logits, expected)


def test_prompt_buckets_are_priced_at_their_shares_and_a_node_runs_only_where_every_length_runs():
    short = make_problem([node("attention", gpu=1.0, hbm=3.0), node("norm", gpu=0.5, hbm=0.5)],
                         values=[value("attention", "norm", num_bytes=100)], targets=(GPU, HBM), fallback="gpu")
    # The long prompt's attention is too big for hbm (a shape limit refuses it there).
    long = make_problem([node("attention", gpu=5.0), node("norm", gpu=2.0, hbm=2.5)],
                        values=[value("attention", "norm", num_bytes=400)], targets=(GPU, HBM), fallback="gpu")

    mean = mean_problem([(short, 0.75), (long, 0.25)])

    assert dict(mean.node("attention").compute_seconds) == {"gpu": 0.75 * 1.0 + 0.25 * 5.0}
    assert dict(mean.node("norm").compute_seconds) == {"gpu": 0.75 * 0.5 + 0.25 * 2.0, "hbm": 0.75 * 0.5 + 0.25 * 2.5}
    assert mean.values[0].num_bytes == 175


def test_sizes_that_capture_as_different_graphs_are_planned_on_the_largest_scaled_to_each_sizes_totals():
    # A sliding window: the short prompt fits the window and skips the mask op the long prompt needs.
    short = make_problem([node("attention", gpu=1.0, hbm=3.0), node("norm", gpu=0.5, hbm=0.5)],
                         values=[value("attention", "norm", num_bytes=100)], targets=(GPU, HBM), fallback="gpu")
    long = make_problem([node("mask", gpu=1.0, hbm=1.0), node("attention", gpu=4.0, hbm=12.0),
                         node("norm", gpu=1.0, hbm=1.0)],
                        values=[value("mask", "attention", num_bytes=100), value("attention", "norm", num_bytes=300)],
                        targets=(GPU, HBM), fallback="gpu")

    one = on_one_graph({16: short, 64: long})

    assert one[64] is long and [n.name for n in one[16].nodes] == ["mask", "attention", "norm"]
    # The short prompt's totals, 1.5 s on gpu and 3.5 s on hbm, spread over the long graph's 6 and 14 s.
    assert dict(one[16].node("attention").compute_seconds) == {"gpu": 4.0 * 1.5 / 6, "hbm": 12.0 * 3.5 / 14}
    assert [v.num_bytes for v in one[16].values] == [25, 75]  # 100 bytes of 400
    assert mean_problem([(one[16], 0.5), (one[64], 0.5)]).node("norm").compute_seconds["gpu"] == \
        pytest.approx(0.5 * 1.0 * 1.5 / 6 + 0.5 * 1.0)


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


def test_a_disaggregated_search_is_seeded_with_each_phase_on_devices_of_its_own():
    prefill, decode = phases(kv_bytes=10**6)
    joint = joint_problem(prefill, decode, frozenset({"kv"}), 1.0, 1.0, True)
    assert all(score(joint, strategy(joint)).phase_conflicts for strategy in BASELINES.values())

    seeds = phase_split_placements(joint)

    assert seeds == {"prefill on gpu, decode on hbm": {"prefill/p": "gpu", "decode/d": "hbm"},
                     "prefill on hbm, decode on gpu": {"prefill/p": "hbm", "decode/d": "gpu"}}
    assert not any(score(joint, seed).phase_conflicts for seed in seeds.values())


def test_a_search_without_time_for_a_plan_says_what_rules_out_each_baseline():
    prefill, _ = phases(kv_bytes=10**6)
    decode = make_problem([node("d", parameters=["w", "kv"], gpu=1.0, hbm=4.0)], targets=(GPU, HBM),
                          fallback="gpu", parameter_bytes={"w": 1000, "kv": 10**6}, links=Link(0.0, 1e9))
    joint = joint_problem(prefill, decode, frozenset({"kv"}), 1.0, 1.0, True)
    hints = {name: strategy(joint) for name, strategy in BASELINES.items()}

    # A tenth of a microsecond does not even build the search. Both phases are fastest on the gpu, so the floor's
    # shares (60% of decode there) round to a plan that gives it both, as the baselines do.
    with pytest.raises(PartitionerError, match=r"the time limit ran out while building the search for 2 ops on 2 "
                                               r"devices \(1e-07 s were left for it\), before any search ran, and no "
                                               r"baseline to fall back on qualifies \(fallback, priority, rounded "
                                               r"floor give a device to both phases\)\. Fix: raise the time limit"):
        solve(joint, THROUGHPUT, SolverOptions(time_limit_seconds=1e-7), hints=hints)


def test_a_workload_file_names_the_field_and_the_fix(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('prompt_tokens = [{ tokens = 256, share = 0.5 }]\noutput_tokens = 64\n')
    with pytest.raises(PartitionerError, match=r"field 'prompt_tokens': the shares sum to 0.5, not 1. Fix"):
        load_workload(path)
    with pytest.raises(PartitionerError, match="unknown workload 'chta'.*did you mean 'chat'"):
        load_workload("chta")


def test_compile_with_a_workload_plans_both_phases_per_token_and_writes_the_plan(tmp_path, capsys):
    model = model_file(tmp_path, "tests.partitioner.llm.test_llm_serving:small_llama")
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
    written = tmp_path / "out" / "llm_plan.json"
    page = (tmp_path / "out" / "report.html").read_text()  # beside it, the plan as a page
    assert "LLM serving plan" in page and "Decode step: where each layer" in page and "<svg" in page
    assert f"wrote {written} and {tmp_path / 'out' / 'report.html'}" in out
    assert plan["schema_version"] == 1 and plan["kind"] == "llm-serving"
    # The file is the plan: it reads back as the plan compile summarised, and report shows that summary.
    assert main(["report", str(written)]) == 0
    assert capsys.readouterr().out.strip() == out.split("\nwrote ")[0].strip()
    # explain reads a node of a phase: where it sits and what it costs on each kind of device.
    node, op, _ = next(entry for entry in plan["phase_ops"]["decode"] if entry[1].startswith("aten.linear")
                       or entry[1].startswith("aten.mm") or entry[1].startswith("aten.addmm"))
    assert main(["explain", str(written), f"decode/{node}"]) == 0
    explained = capsys.readouterr().out
    assert f"node       decode/{node}: {op}" in explained and "placed on  " in explained
    assert "placed here" in explained and "device kind" in explained
    # Read as a plan.json from Python, it says what it is and how to read it, not that it is an early plan.
    with pytest.raises(PartitionerError, match="is an LLM serving plan .* read it with LLMPlan.load"):
        Plan.load(written)


def test_an_llm_plan_reads_back_as_the_plan_it_was(tmp_path):
    workload = load_workload_text('name = "short"\nprompt_tokens = [{ tokens = 16, share = 0.5 }, '
                                  '{ tokens = 32, share = 0.5 }]\noutput_tokens = 8\n'
                                  "max_batch_size = 4\ntpot_ms = 50\n")
    plan = plan_llm(small_llama(), workload, load_fleet("npu-example=1,cuda-h100=2"), time_limit_seconds=8,
                    workers=1, deterministic=True)

    assert LLMPlan.load(plan.save(tmp_path / "llm_plan.json")) == plan


def test_an_llm_plan_from_an_earlier_version_or_a_damaged_one_gets_the_true_fix(tmp_path, capsys):
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"model": "tiny", "workload": {}, "best": {}, "tried": []}))
    assert main(["report", str(earlier)]) == 2
    assert "from an earlier version, which wrote no schema_version. Fix: compile the model again with --workload" \
        in capsys.readouterr().err

    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps({"schema_version": 1, "kind": "llm-serving", "model": "tiny", "workload": {},
                                   "best": {}, "tried": []}))
    assert main(["run", str(damaged), "--check"]) == 2
    assert "is not a valid LLM plan file: its field 'workload.name'" in capsys.readouterr().err


def test_disaggregation_with_one_device_that_both_phases_need_names_that_device():
    # Only gpu runs either op, and each device may serve one phase.
    prefill = make_problem([node("p", gpu=1.0)], targets=(GPU, HBM), fallback="gpu")
    decode = make_problem([node("d", gpu=1.0)], targets=(GPU, HBM), fallback="gpu")
    joint = joint_problem(prefill, decode, frozenset(), 1.0, 1.0, True)

    with pytest.raises(PartitionerError, match=r"phases: prefill and decode both have ops only gpu runs "
                                               r"\(e.g. prefill/p, decode/d\).*Fix: add another device"):
        solve(joint, THROUGHPUT, SolverOptions(time_limit_seconds=5, workers=1))


class OwnCausalLM(torch.nn.Module):
    """A causal LM of one's own: its past keys and values are inputs it writes in place (a static cache of
    batch x context x hidden per layer), and it says how it is called in each phase."""

    def __init__(self, vocab: int = 64, hidden: int = 32, layers: int = 2):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(hidden, 3 * hidden) for _ in range(layers))
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens, keys, values, positions):
        x = self.embed(tokens)
        for layer, qkv in enumerate(self.qkv):
            q, k, v = qkv(x).chunk(3, dim=-1)
            keys[layer].index_copy_(1, positions, k)
            values[layer].index_copy_(1, positions, v)
            x = x + torch.nn.functional.scaled_dot_product_attention(q, keys[layer], values[layer])
        return self.head(x)

    def prefill_inputs(self, prompt_tokens, context_tokens):
        return (torch.zeros(1, prompt_tokens, dtype=torch.long), *self._cache(1, context_tokens),
                torch.arange(prompt_tokens))

    def decode_inputs(self, batch, context_tokens):
        return (torch.zeros(batch, 1, dtype=torch.long), *self._cache(batch, context_tokens),
                torch.tensor([context_tokens - 1]))

    def _cache(self, batch, context):
        return [[torch.zeros(batch, context, self.hidden) for _ in range(self.layers)] for _ in range(2)]


def test_a_model_of_ones_own_with_explicit_past_keys_and_values_plans_like_a_transformers_one():
    workload = load_workload_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nmax_batch_size = 4\n')

    plan = plan_llm(OwnCausalLM(), workload, load_fleet("npu-example=1,cuda-h100=1"), time_limit_seconds=4)

    # Keys and values: 2 x 2 layers x 24 tokens of context (16 + 8) x 32 wide x 4 bytes = 12,288 bytes a request.
    assert plan.kv_cache_bytes_per_request == 12_288
    assert plan.layers is None and plan.expert_shards == 0
    assert {t.batch_size for t in plan.tried} == {1, 4}
    # The decode batch's caches sit where its attention runs: 4 requests' worth at batch 4, one prefill's beside.
    best = plan.best
    assert sum(best.kv_cache_bytes.values()) == 12_288 * (best.batch_size + 1)


def test_experts_split_into_shards_compute_what_the_layer_computed_and_each_carries_its_share():
    torch.manual_seed(0)
    model, inputs = mixtral()  # 4 experts a layer, top 2
    expected = model(**inputs).logits
    whole = annotate(capture(model, inputs).program)

    with experts_sharded(model, 2) as replaced:
        torch.testing.assert_close(model(**inputs).logits, expected)
        sharded = annotate(capture(model, inputs).program)

    assert replaced == 2 and type(model.model.layers[0].mlp.experts).__name__ == "MixtralExperts"  # put back
    grouped = [n for n in sharded if n.op.endswith("grouped_mm_fallback.default")]
    # Each shard's two grouped matmuls hold 2 of 4 experts and compute, on average, the rows routed to them.
    assert len(grouped) == 2 * 2 * 2 and all(expert_shard(n.module_path) for n in grouped)
    assert sum(n.flops for n in grouped) == sum(n.flops for n in whole if n.op.endswith("grouped_mm_fallback.default"))
    assert sum(n.parameter_bytes for n in grouped) == sum(
        n.parameter_bytes for n in whole if n.op.endswith("grouped_mm_fallback.default"))


def test_experts_too_big_for_any_one_device_are_split_across_devices(tmp_path):
    # One Mixtral layer whose 4 experts' gate and up projections take 4 x 512 x 64 x 4 = 524,288 bytes: no
    # 0.45 MiB (471,859-byte) device holds them; in two shards of 262,144 bytes (and 131,072 of down projection
    # each) two devices do, a third holding the rest of the model (about 180 KB).
    spec = tmp_path / "small-gpu.toml"
    spec.write_text(SMALL_GPU_SPEC)
    fleet = load_fleet(f"{spec}=3")
    workload = load_workload_text('name = "short"\nprompt_tokens = 8\noutput_tokens = 4\nbatch_size = 1\n')
    config = MixtralConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=256)
    model = MixtralForCausalLM(config).eval()

    with pytest.raises(PartitionerError, match="no deployment of short can be planned on this fleet .* exceed"):
        plan_llm(model, workload, fleet, time_limit_seconds=4, expert_shards=1)
    plan = plan_llm(model, workload, fleet, time_limit_seconds=4)

    assert plan.expert_shards == 2
    assert len(plan.best.expert_shards_on) >= 2


SMALL_GPU_SPEC = """
name = "small-gpu"
kind = "gpu"
torch_device = "cpu"
onnx_execution_provider = "CPUExecutionProvider"
price_per_hour = 1.0
memory_gib = 0.00043945
memory_bandwidth_gb_per_second = 100
launch_overhead_microseconds = 5
compute_efficiency = 0.5
memory_efficiency = 0.7

[peak_tflops]
float32 = 10

[host_link]
bandwidth_gb_per_second = 10
latency_microseconds = 10

[support]
ops = "all"
"""


def model_file(folder, builder: str):
    """A model file in `folder` whose build() returns `builder()` (a "module:function" the tests define)."""
    module, function = builder.split(":")
    path = folder / f"{function}.py"
    path.write_text(f"from {module} import {function}\n\ndef build():\n    return {function}(), None\n")
    return path


def load_workload_text(text: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "workload.toml"
        path.write_text(text)
        return load_workload(path)


def test_limits_no_placement_can_meet_are_refused_before_any_search_with_the_least_reachable():
    workload = load_workload_text('name = "instant"\nprompt_tokens = 16\noutput_tokens = 8\ntpot_ms = 0.001\n')

    # Only the limit the workload sets, and breaks, is named.
    with pytest.raises(PartitionerError, match=r"no plan can meet instant's limits on this fleet: with every weight "
                                               r"where it is fastest and fits, a decode step at least [0-9.]+ ms .*"
                                               r"Fix: relax tpot_ms in the workload"):
        plan_llm(small_llama(), workload, load_fleet("npu-example=1,cuda-h100=1"), time_limit_seconds=4)


def test_compile_with_a_workload_takes_the_solver_options_and_refuses_targets_beside_a_fleet(tmp_path, capsys,
                                                                                             monkeypatch):
    model = model_file(tmp_path, "tests.partitioner.llm.test_llm_serving:small_llama")
    workload = tmp_path / "short.toml"
    workload.write_text('name = "short"\nprompt_tokens = 16\noutput_tokens = 8\nbatch_size = 1\n')
    given = {}

    def planned(*args, **kwargs):
        given.update(kwargs)
        raise PartitionerError("stop here")

    monkeypatch.setattr("partitioner.llm.planning.plan_llm", planned)
    common = ["compile", str(model), "--workload", str(workload), "-o", str(tmp_path / "out")]

    assert main([*common, "--fleet", "cuda-h100=1", "--targets", "npu-example,cuda-h100"]) == 2
    assert "--fleet and --targets both say what to plan on" in capsys.readouterr().err
    assert main([*common, "--fleet", "cuda-h100=1", "--workers", "3", "--seed", "7", "--deterministic"]) == 2
    assert (given["workers"], given["seed"], given["deterministic"]) == (3, 7, True)


def test_prompt_buckets_of_one_length_are_one_bucket_and_too_many_lengths_are_refused(tmp_path):
    twice = load_workload_text('prompt_tokens = [{ tokens = 16, share = 0.25 }, { tokens = 16, share = 0.25 },'
                               ' { tokens = 32, share = 0.5 }]\noutput_tokens = 8\n')
    assert twice.prompt.buckets == ((16, 0.5), (32, 0.5))

    many = ", ".join(f"{{ tokens = {n}, share = 0.025 }}" for n in range(1, 41))
    with pytest.raises(PartitionerError, match=r"field 'prompt_tokens': 40 prompt lengths, and each is a prefill "
                                               r"graph to cost. Fix: merge them into at most 32 buckets"):
        load_workload_text(f"prompt_tokens = [{many}]\noutput_tokens = 8\n")
