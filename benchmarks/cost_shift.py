"""How a change to the cost model or a spec moves its predictions: per op class, per model and dtype.

Captures the device check's four models (benchmarks/gpu_check.py: a 2-layer Llama of 7B width at 1 x 512 tokens,
BERT-base at 8 x 128, ResNet-50 and ViT-B/16 at batch 8) in float32 and bfloat16 on the CPU, prices every op
with the roofline on a target, and writes the predictions. Given the predictions of another version (`--before`,
a file this script wrote there), it prints per model, dtype and op class the median of new / old and the sum of
each's time: what the change did, to set beside what the device check measured. No GPU needed.

    python benchmarks/cost_shift.py [--target cuda-h100] --out after.json [--before before.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_check import MODELS, captured_models  # noqa: E402
from cost_models.roofline import RooflineCostModel  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.frontend.op_graph import NodeKind, annotate  # noqa: E402
from targets.loader import load_target  # noqa: E402
from targets.op_classes import op_class  # noqa: E402

Predictions = dict[str, dict[str, tuple[str, float]]]  # "model dtype" -> node -> (op class, seconds)


def predictions(target_name: str, names: list[str], dtypes: list[str], batch: int) -> Predictions:
    """Every compute op's roofline time on `target_name`, per model and dtype."""
    target, model = load_target(target_name), RooflineCostModel()
    found: Predictions = {}
    for (name, dtype), captured in captured_models(names, dtypes, batch).items():
        graph = annotate(captured.program)
        found[f"{name} {dtype}"] = {node.name: (op_class(node.op), model.compute_seconds(node, target))
                                    for node in graph if node.kind is NodeKind.COMPUTE}
    return found


def shift_table(before: Predictions, after: Predictions) -> str:
    """Markdown: per model, dtype and op class, the ops both priced, the median of after / before and the sums."""
    lines = ["| model | op class | ops | median after / before | before (sum) | after (sum) |",
             "|---|---|---:|---:|---:|---:|"]
    for group in sorted(set(before) & set(after)):
        by_class: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for node, (kind, seconds) in after[group].items():
            if node in before[group]:
                by_class[kind].append((before[group][node][1], seconds))
                by_class["all"].append((before[group][node][1], seconds))
        for kind in sorted(by_class, key=lambda k: (k == "all", k)):
            pairs = by_class[kind]
            ratios = [new / old for old, new in pairs if old > 0]
            median = f"{statistics.median(ratios):.2f}" if ratios else "-"
            lines.append(f"| {group} | {kind} | {len(pairs)} | {median} | "
                         f"{sum(old for old, _ in pairs) * 1e3:.3g} ms | {sum(new for _, new in pairs) * 1e3:.3g} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cuda-h100")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True, help="where to write this version's predictions")
    parser.add_argument("--before", type=Path, help="another version's predictions, to print the shift from")
    args = parser.parse_args()
    found = predictions(args.target, args.models.split(","), args.dtypes.split(","), args.batch)
    write_atomically(args.out, json.dumps({"target": args.target, "predictions": found}, indent=1))
    if args.before:
        recorded = json.loads(args.before.read_text())
        if recorded.get("target") != args.target:
            raise SystemExit(f"{args.before} priced the ops on {recorded.get('target')}, not {args.target}: give "
                             f"--target {recorded.get('target')}, or predictions made for {args.target}")
        before = recorded["predictions"]
        print(shift_table({g: {n: tuple(v) for n, v in ops.items()} for g, ops in before.items()}, found))


if __name__ == "__main__":
    main()
