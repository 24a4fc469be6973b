"""LLM serving per token: Llama 7B and 70B shapes and a Mixtral-shape MoE, chat and summarisation, on fleets.

For each (model, workload, fleet), `plan_llm` captures prefill and decode on the
meta device, solves both deployments (co-located, disaggregated) at each batch
size, and keeps the cheapest per output token within the workload's limits.
The table gives money per 1M output tokens, output tokens/s, TTFT, TPOT, the
batch and deployment chosen, against all on the H100 and `priority` (same
batch, co-located) and an all-H100 fleet of the same hourly price; planning
seconds and the gap in money per token (the plan against the least any plan can cost).
Not a test; writes Markdown and JSON.

    python benchmarks/llm_serving.py [--models llama-7b,...] [--workloads chat,...] [--fleets ...]
                                     [--time-limit 60] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partitioner.errors import PartitionerError  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.llm.planning import plan_llm  # noqa: E402
from targets.workload import load_workload  # noqa: E402
from targets.fleet import load_fleet  # noqa: E402

MODELS = ("llama-7b", "llama-70b", "mixtral-8x7b")
WORKLOADS = ("chat", "summarisation", "offline")
FLEETS = ("inf2-h100", "two-hosts", "l4-h100", "neuron-inf2-h100", "neuron-trn2-h100", "cuda-h100=8", "gaudi3-h100")
# MLPerf Inference v4.1, Llama-2-70B, closed division, offline: 8 x H100-SXM-80GB (NVIDIA's submission, FP8,
# TensorRT-LLM), tokens per second. What `--mlperf` sets a plan's prediction beside.
MLPERF_OFFLINE_8_H100_TOKENS_PER_SECOND = 24_525
MLPERF_WORKLOAD = Path(__file__).parent / "mlperf_offline.toml"


def build(name: str) -> torch.nn.Module:
    """A causal LM of the named shape on the meta device, bfloat16: planning needs no weights."""
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    if name == "llama-7b":
        model_class, config = LlamaForCausalLM, LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, vocab_size=32000, max_position_embeddings=8192)
    elif name == "llama-70b":
        model_class, config = LlamaForCausalLM, LlamaConfig(
            hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
            num_key_value_heads=8, vocab_size=32000, max_position_embeddings=8192)
    elif name == "mixtral-8x7b":
        model_class, config = MixtralForCausalLM, MixtralConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
            max_position_embeddings=8192)
    else:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    with torch.device("meta"):
        return model_class(config).to(torch.bfloat16).eval()


def run(models, workloads, fleets, time_limit: float) -> list[dict]:
    rows = []
    for model_name in models:
        model = build(model_name)
        for workload_name in workloads:
            workload = load_workload(workload_name)
            for fleet_name in fleets:
                started = time.perf_counter()
                try:
                    plan = plan_llm(model, workload, load_fleet(fleet_name), time_limit_seconds=time_limit,
                                    name=model_name)
                except PartitionerError as error:
                    rows.append({"model": model_name, "workload": workload_name, "fleet": fleet_name,
                                 "error": str(error), "seconds": time.perf_counter() - started})
                    print(f"{model_name} {workload_name} {fleet_name}: {error}", flush=True)
                    continue
                best, h100, priority = plan.best, plan.baselines["fallback"], plan.baselines["priority"]
                rows.append({"model": model_name, "workload": workload_name, "fleet": fleet_name,
                             "deployment": best.name, "batch": best.batch_size,
                             "devices": sorted(set(best.assignment.values())),
                             "collectives": {place: c.to_dict() for place, c in best.collectives.items()},
                             "per_1m_out": best.cost_per_million_output_tokens,
                             "tokens_per_second": best.output_tokens_per_second, "ttft": best.ttft_seconds,
                             "tpot": best.tpot_seconds, "off_cuda": best.off_fallback_flops,
                             "h100_per_1m_out": h100.cost_per_million_output_tokens if h100.fits_memory else None,
                             "expert_shards_on": dict(best.expert_shards_on),
                             "priority_per_1m_out": priority.cost_per_million_output_tokens
                             if priority.fits_memory else None,
                             "same_price_h100_tokens_per_second": plan.same_price_fallback_tokens_per_second()[1]
                             if h100.fits_memory else None,
                             "other_deployment": _other(plan), "gap": plan.gap,
                             "throughput_gap": best.solver.gap if best.solver else None,
                             "seconds": plan.planning_seconds})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _other(plan) -> dict | None:
    other = plan.best_of("disaggregated" if plan.best.name == "co-located" else "co-located")
    return None if other is None else {"deployment": other.name, "batch": other.batch_size,
                                       "per_1m_out": other.cost_per_million_output_tokens}


def _devices(places: list[str]) -> str:
    """`3 x cuda-h100.tp2 + 1 x inf2`: the places a plan uses, counted per kind (tensor-parallel degree kept)."""
    counts: dict[str, int] = {}
    for place in places:
        kind = place.rsplit(".", 1)[0] if ".tp" in place else place.split(".", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return " + ".join(f"{n} x {kind}" for kind, n in counts.items())


def mlperf(time_limit: float) -> str:
    """Llama-2-70B's shape served offline on 8 H100s at MLPerf's lengths: the plan's predicted tokens/s, scaled
    to all 8 GPUs (replicas of the plan where it rents fewer), beside MLPerf v4.1's measured figure."""
    plan = plan_llm(build("llama-70b"), load_workload(MLPERF_WORKLOAD), load_fleet("cuda-h100=8"),
                    time_limit_seconds=time_limit, name="llama-70b")
    best = plan.best
    gpus = sum(best.collectives[place].degree if place in best.collectives else 1
               for place in set(best.assignment.values()))
    predicted = best.output_tokens_per_second * 8 / gpus
    return (f"MLPerf offline, Llama-2-70B shape (bf16) on 8 x H100: plan {best.name} b{best.batch_size} on "
            f"{_devices(sorted(set(best.assignment.values())))} ({gpus} GPUs): "
            f"{best.output_tokens_per_second:.5g} output tokens/s, {predicted:.5g} for 8 GPUs; MLPerf v4.1 "
            f"measured {MLPERF_OFFLINE_8_H100_TOKENS_PER_SECOND:,} (FP8): predicted / measured "
            f"{predicted / MLPERF_OFFLINE_8_H100_TOKENS_PER_SECOND:.2f}; "
            f"${best.cost_per_million_output_tokens:.3g} per 1M output tokens; "
            f"planned in {plan.planning_seconds:.0f} s")


def markdown(rows: list[dict], time_limit: float) -> str:
    lines = [f"# LLM serving per token ({time_limit:g} s of solving per plan, roofline costs, meta weights)", "",
             "| model | workload | fleet | plan | $/1M out | tokens/s | TTFT | TPOT | FLOPs off CUDA (prefill/decode)"
             " | all-H100 $/1M | priority $/1M | other deployment | same-price H100s tokens/s | gap | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['workload']} | {row['fleet']} | {row['error']} "
                         + "| " * 11 + f"{row['seconds']:.0f} |")
            continue
        other = row["other_deployment"]
        lines.append(
            f"| {row['model']} | {row['workload']} | {row['fleet']} | {row['deployment']} b{row['batch']}"
            + (f" on {_devices(row['devices'])}" if row.get("devices") else "")
            + (" (expert shards: " + ", ".join(f"{d} {n}" for d, n in row["expert_shards_on"].items()) + ")"
               if row["expert_shards_on"] else "") + " "
            f"| ${row['per_1m_out']:.3g} | {row['tokens_per_second']:.4g} | {row['ttft'] * 1e3:.3g} ms "
            f"| {row['tpot'] * 1e3:.3g} ms | {100 * row['off_cuda']['prefill']:.0f}% / "
            f"{100 * row['off_cuda']['decode']:.0f}% | "
            + (f"${row['h100_per_1m_out']:.3g}" if row['h100_per_1m_out'] is not None else "does not fit") + " "
            + (f"| ${row['priority_per_1m_out']:.3g} | " if row["priority_per_1m_out"] is not None
               else "| does not fit | ")
            + (f"{other['deployment']} b{other['batch']} ${other['per_1m_out']:.3g}" if other else "none qualified")
            + " | " + (f"{row['same_price_h100_tokens_per_second']:.4g}"
                       if row["same_price_h100_tokens_per_second"] is not None else "-") + " | "
            + (f"{100 * row['gap']:.1f}%" if row["gap"] is not None else "-") + f" | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--fleets", default=",".join(FLEETS))
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the results file's rows of other models, workloads and fleets")
    parser.add_argument("--mlperf", action="store_true",
                        help="only plan Llama-2-70B offline on 8 H100s at MLPerf's lengths and compare")
    args = parser.parse_args()
    if args.mlperf:
        print(mlperf(args.time_limit))
        return
    rows = run(args.models.split(","), args.workloads.split(","), args.fleets.split(","), args.time_limit)
    out = Path(args.out)
    if args.merge and (out / "llm_serving.json").is_file():
        ran = {(row["model"], row["workload"], row["fleet"]) for row in rows}
        kept = json.loads((out / "llm_serving.json").read_text())
        rows = [row for row in kept if (row["model"], row["workload"], row["fleet"]) not in ran] + rows
        order = {name: index for names in (MODELS, WORKLOADS, FLEETS) for index, name in enumerate(names)}
        rows.sort(key=lambda row: (order.get(row["model"], 99), order.get(row["workload"], 99),
                                   order.get(row["fleet"], 99)))
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "llm_serving.json", json.dumps(rows, indent=1))
    write_atomically(out / "llm_serving.md", markdown(rows, args.time_limit))
    print(markdown(rows, args.time_limit))


if __name__ == "__main__":
    main()
