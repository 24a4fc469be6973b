"""How far each cost model is from this machine's CPU: per op, whole model, and a partitioned run.

For BERT-base and ResNet-50 in float32 (real random weights): profiles every
op on the CPU, once in isolation (cold caches) and once inside whole runs of
the model, then compares with the
measured whole-model run the cpu-x86 roofline, that roofline calibrated to the
profile, and the measured model; finally compiles a cpu-x86 plan with the
measured costs, runs its partitioned module, and compares the plan's
predicted latency with the run. Not a test; writes Markdown and JSON.

    python benchmarks/cost_model_accuracy.py [--models bert-base,resnet50] [--profiles DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost_models.accuracy import accuracy_report, time_model  # noqa: E402
from cost_models.measured import MeasuredCostModel  # noqa: E402
from cost_models.profiling import profile_model  # noqa: E402
from partitioner.compiler import compile_captured  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.frontend.capture import load_model_file  # noqa: E402
from targets.loader import load_target  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODELS = {"bert-base": f"{EXAMPLES / 'bert_base.py'}:build_float32",
          "resnet50": f"{EXAMPLES / 'resnet50.py'}:build_float32"}
TARGET = "cpu-x86"


def measure(name: str, profiles: Path, in_model: bool) -> dict:
    captured = load_model_file(MODELS[name])
    (run,) = profile_model(captured, ["cpu"], profiles, in_model=in_model)
    target = load_target(TARGET)
    accuracy = accuracy_report(captured, run.profile, target, "cpu")
    plan = compile_captured(captured, [TARGET], "latency", fallback=TARGET,
                            cost_model=MeasuredCostModel([run.profile]))
    partitioned_seconds = time_model(captured, "cpu", module=plan.module({TARGET: "cpu"}))
    return {
        "model": name, "timing": "in model" if in_model else "isolated",
        "device": run.profile.identity.describe(), "ops_compared": accuracy.ops,
        "measured_run_seconds": accuracy.model_seconds,
        "predicted_seconds": dict(accuracy.predicted_model_seconds),
        "op_factor_median": dict(accuracy.op_factor_median), "op_factor_p90": dict(accuracy.op_factor_p90),
        "plan_predicted_seconds": plan.score().latency_seconds, "partitioned_run_seconds": partitioned_seconds,
        "partitions": len(plan.partitions),
    }


def markdown(rows: Sequence[dict]) -> str:
    lines = [f"CPU: {rows[0]['device']}; target spec {TARGET}; float32, batch 1; medians of timed blocks.", "",
             "| model | ops timed | cost model | per-op factor off, median | p90 | whole model predicted "
             "| measured run | error |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for name, predicted in r["predicted_seconds"].items():
            per_op = ("-", "-") if name == "measured" else (f"{r['op_factor_median'][name]:.2f}x",
                                                            f"{r['op_factor_p90'][name]:.2f}x")
            error = predicted / r["measured_run_seconds"] - 1
            lines.append(f"| {r['model']} | {r['timing']} | {name} | {per_op[0]} | {per_op[1]} "
                         f"| {predicted * 1e3:.3g} ms | {r['measured_run_seconds'] * 1e3:.3g} ms | {100 * error:+.1f}% |")
        error = r["plan_predicted_seconds"] / r["partitioned_run_seconds"] - 1
        lines.append(f"| {r['model']} | {r['timing']} | measured, plan vs partitioned run "
                     f"({r['partitions']} partitions) | - | - "
                     f"| {r['plan_predicted_seconds'] * 1e3:.3g} ms | {r['partitioned_run_seconds'] * 1e3:.3g} ms "
                     f"| {100 * error:+.1f}% |")
    lines += ["", "Factor off: max(predicted / measured, measured / predicted) per op signature. Whole-model "
              "predictions add every op one after another. Isolated: each op signature timed alone with inputs "
              "cycled through 256 MiB so that caches are as cold as in a model run; in model: each op timed "
              "inside whole runs of the model (median of 5)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {', '.join(MODELS)}")
    parser.add_argument("--profiles", type=Path, help="profile folder to reuse (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    rows = []
    for in_model in (False, True):  # a folder each: in-model times replace isolated ones in a profile
        with tempfile.TemporaryDirectory() as scratch:
            profiles = (args.profiles / ("in-model" if in_model else "isolated")) if args.profiles else Path(scratch)
            rows += [measure(name.strip(), profiles, in_model) for name in args.models.split(",") if name.strip()]
    table = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "cost_model_accuracy.md", f"# Cost model accuracy\n\n{table}\n")
    write_atomically(args.out / "cost_model_accuracy.json", json.dumps({"torch": torch.__version__, "rows": rows},
                                                                      indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
