"""How far each cost model is from this machine's CPU: per op, whole model, and a partitioned run.

For BERT-base and ResNet-50 in float32 and bfloat16 (real random weights):
profiles every op on the CPU, once in isolation (cold caches) and once inside
whole runs of the model, then compares with the measured whole-model run the
cpu-x86 roofline, that roofline calibrated to the profile (flat efficiencies,
and with size curves), and the measured model; finally compiles a cpu-x86 plan
with the measured costs, runs its partitioned module, and compares the plan's
predicted latency with the run. Not a test; writes Markdown and JSON.

    python benchmarks/cost_model_accuracy.py [--models bert-base,resnet50] [--dtypes float32,bfloat16]
        [--profiles DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
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
MODELS = {"bert-base": EXAMPLES / "bert_base.py", "resnet50": EXAMPLES / "resnet50.py"}
DTYPES = ("float32", "bfloat16")
TARGET = "cpu-x86"


def measure(name: str, dtype: str, profiles: Path, in_model: bool) -> dict:
    captured = load_model_file(f"{MODELS[name]}:build_{dtype}")
    (run,) = profile_model(captured, ["cpu"], profiles, in_model=in_model)
    target = load_target(TARGET)
    accuracy = accuracy_report(captured, run.profile, target, "cpu")
    plan = compile_captured(captured, [TARGET], "latency", fallback=TARGET,
                            cost_model=MeasuredCostModel([run.profile]))
    partitioned_seconds = time_model(captured, "cpu", module=plan.module({TARGET: "cpu"}))
    return {
        "model": name, "dtype": dtype, "timing": "in model" if in_model else "isolated",
        "device": run.profile.identity.describe(), "ops_compared": accuracy.ops,
        "measured_run_seconds": accuracy.model_seconds,
        "predicted_seconds": dict(accuracy.predicted_model_seconds),
        "per_op": {name: asdict(residuals) for name, residuals in accuracy.per_op.items()},
        "calibration_refused": accuracy.calibration_refused,
        "plan_predicted_seconds": plan.score().latency_seconds, "partitioned_run_seconds": partitioned_seconds,
        "partitions": len(plan.partitions),
    }


def markdown(rows: Sequence[dict]) -> str:
    lines = [f"CPU: {rows[0]['device']}; target spec {TARGET}; batch 1; medians of timed blocks.", "",
             "| model | dtype | ops timed | cost model | per op: median | p10 | p90 | within 2x | rank corr. "
             "| whole model predicted | measured run | error |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lead = f"| {r['model']} | {r['dtype']} | {r['timing']}"
        for name, predicted in r["predicted_seconds"].items():
            fit = r["per_op"].get(name)
            per_op = (f"{fit['median']:.2f} | {fit['p10']:.2f} | {fit['p90']:.2f} | {100 * fit['within_2x']:.0f}% "
                      f"| {fit['rank_correlation']:.2f}") if fit else "- | - | - | - | -"
            error = predicted / r["measured_run_seconds"] - 1
            lines.append(f"{lead} | {name} | {per_op} | {predicted * 1e3:.3g} ms "
                         f"| {r['measured_run_seconds'] * 1e3:.3g} ms | {100 * error:+.1f}% |")
        error = r["plan_predicted_seconds"] / r["partitioned_run_seconds"] - 1
        lines.append(f"{lead} | measured, plan vs partitioned run ({r['partitions']} partitions) | - | - | - | - | - "
                     f"| {r['plan_predicted_seconds'] * 1e3:.3g} ms | {r['partitioned_run_seconds'] * 1e3:.3g} ms "
                     f"| {100 * error:+.1f}% |")
    refused = [r for r in rows if r["calibration_refused"]]
    lines += ["", "Per op: predicted / measured over the op signatures the profile timed (1.00 is exact); within 2x: "
              "the share of ops predicted within a factor of 2; rank corr.: Spearman's, between predicted and "
              "measured op times. Whole-model predictions add every op one after another. Calibrated: the cpu-x86 "
              "spec fitted to this profile (`partitioner calibrate`), with one efficiency per op class and dtype "
              "(flat) or with each class's efficiency a curve of op size (size-aware). Isolated: each op "
              "signature timed alone with inputs cycled through 256 MiB so that caches are as cold as in a model "
              "run; in model: each op timed inside whole runs of the model (median of 5). The profile folder is shared "
              "across rows, as a user's cache is: each row calibrates from every model and dtype profiled before it."]
    lines += [f"Calibration refused for {r['model']} {r['dtype']} ({r['timing']}): {r['calibration_refused']}"
              for r in refused]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {', '.join(MODELS)}")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma list from {', '.join(DTYPES)}")
    parser.add_argument("--profiles", type=Path, help="profile folder to reuse (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    rows = []
    for in_model in (False, True):  # a folder each: in-model times replace isolated ones in a profile
        with tempfile.TemporaryDirectory() as scratch:
            profiles = (args.profiles / ("in-model" if in_model else "isolated")) if args.profiles else Path(scratch)
            rows += [measure(name.strip(), dtype.strip(), profiles, in_model)
                     for dtype in args.dtypes.split(",") if dtype.strip()
                     for name in args.models.split(",") if name.strip()]
    table = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "cost_model_accuracy.md", f"# Cost model accuracy\n\n{table}\n")
    write_atomically(args.out / "cost_model_accuracy.json", json.dumps({"torch": torch.__version__, "rows": rows},
                                                                      indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
