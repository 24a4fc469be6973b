"""Serving on fleets: throughput at full load, money per request, bottleneck and FLOPs off CUDA, per model and fleet.

For ResNet-50, BERT-base, GPT-2 and Llama 7B and 70B shapes (meta weights,
roofline costs) on the built-in fleets, solves the `throughput` objective and
scores, on the same serving model, every baseline (all on the fallback,
`priority`, the contiguous `pipeline`) and an all-H100 fleet of about the same
hourly price. Not a test; writes Markdown and JSON.

    python benchmarks/serving.py [--models resnet50,...] [--fleets inf2-h100,...] [--time-limit 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

if __package__ in (None, ""):  # run as a script: make the repository's packages and the zoo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from solver_zoo import ZOO  # noqa: E402

from partitioner.compiler import compile_captured  # noqa: E402
from partitioner.errors import PartitionerError  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.frontend.capture import capture  # noqa: E402
from partitioner.placement.objectives import THROUGHPUT  # noqa: E402
from partitioner.placement.solver import SolverOptions  # noqa: E402
from targets.fleet import load_fleet  # noqa: E402
from targets.loader import load_target  # noqa: E402

MODELS = ("resnet50", "bert-base", "gpt2", "llama-7b", "llama-70b")
FLEETS = ("inf2-h100", "two-hosts", "l4-h100", "neuron-inf2-h100", "neuron-trn2-h100")


def all_h100_of_the_same_price(fleet_price_per_hour: float) -> str:
    """The all-H100 fleet (one host) whose price is nearest the fleet's, at least one H100."""
    h100 = load_target("cuda-h100").price_per_hour
    return f"cuda-h100={max(1, round(fleet_price_per_hour / h100))}"


def measure(model_name: str, fleet_name: str, options: SolverOptions) -> dict:
    model, inputs = ZOO[model_name].build(False)
    captured = capture(model, inputs, name=model_name)
    fleet = load_fleet(fleet_name)
    started = time.perf_counter()
    try:
        plan = compile_captured(captured, fleet, THROUGHPUT, solver_options=options)
    except PartitionerError as error:
        return {"model": model_name, "fleet": fleet.describe(), "error": str(error)}
    seconds = time.perf_counter() - started
    strategies = {"plan": plan.score(), **plan.baseline_scores()}
    price = sum(t.price_per_hour for t in plan.problem.targets)
    reference_fleet = all_h100_of_the_same_price(price)
    try:
        reference = compile_captured(captured, load_fleet(reference_fleet), THROUGHPUT, solver_options=options).score()
        strategies[f"all-H100 ({reference_fleet.split('=')[1]} x)"] = reference
    except PartitionerError:
        pass
    off = sum(n.flops for n in plan.nodes if not plan.placement[n.name].startswith("cuda"))
    return {
        "model": model_name, "fleet": fleet.describe(), "fleet_price_per_hour": price,
        "solve_seconds": seconds, "status": plan.solver.status, "gap": plan.solver.gap,
        "flops_off_cuda": off / max(1, sum(n.flops for n in plan.nodes)),
        "strategies": {name: {"throughput_per_second": s.serving.throughput_per_second,
                              "cost_per_million_at_load": s.serving.cost_per_request_at_load * 1e6,
                              "bottleneck": s.serving.bottleneck, "fits_memory": s.fits_memory,
                              "latency_seconds": s.latency_seconds}
                       for name, s in strategies.items()},
    }


def markdown(rows: Sequence[dict], settings: dict) -> str:
    lines = [f"Throughput objective, roofline costs; CP-SAT {settings['time_limit']} s limit, default workers; "
             f"torch {torch.__version__}. Money per 1M requests at full load counts the devices each plan uses.", "",
             "| model | fleet | strategy | req/s | $ per 1M req | bottleneck | fits | one request | FLOPs off CUDA "
             "| solve s | gap |", "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['fleet']} | - | - | - | {r['error'][:80]} | - | - | - | - | - |")
            continue
        solver_cells = (f"{100 * r['flops_off_cuda']:.1f}%", f"{r['solve_seconds']:.1f}", f"{100 * r['gap']:.2f}%")
        for name, s in r["strategies"].items():
            off, seconds, gap = solver_cells if name == "plan" else ("", "", "")
            lines.append(
                f"| {r['model']} | {r['fleet']} | {name} | {s['throughput_per_second']:.4g} "
                f"| {s['cost_per_million_at_load']:.4g} | {s['bottleneck']} | {'yes' if s['fits_memory'] else 'no'} "
                f"| {s['latency_seconds'] * 1e3:.3g} ms | {off} | {seconds} | {gap} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--fleets", default=",".join(FLEETS))
    parser.add_argument("--time-limit", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--merge", action="store_true",
                        help="keep the results file's rows of other models and fleets, replacing those run again")
    args = parser.parse_args(argv)
    options = SolverOptions(time_limit_seconds=args.time_limit)
    rows = []
    for model in (m.strip() for m in args.models.split(",") if m.strip()):
        for fleet in (f.strip() for f in args.fleets.split(",") if f.strip()):
            print(f"{model} on {fleet}", file=sys.stderr, flush=True)
            rows.append(measure(model, fleet, options))
    if args.merge and (args.out / "serving.json").is_file():
        ran = {(row["model"], row["fleet"]) for row in rows}
        kept = json.loads((args.out / "serving.json").read_text())["rows"]
        rows = [row for row in kept if (row["model"], row["fleet"]) not in ran] + rows
    table = markdown(rows, {"time_limit": args.time_limit})
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "serving.md", f"# Serving on fleets\n\n{table}\n")
    write_atomically(args.out / "serving.json", json.dumps({"rows": rows}, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
