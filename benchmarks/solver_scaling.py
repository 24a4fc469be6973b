"""How solve time grows with graph size: Llama shapes of growing depth, same targets and costs.

Builds Llama graphs on the meta device at 7B width (4096 hidden) and at 70B
width (8192 hidden, GQA) with a growing number of layers, and times
`solve` for each objective with the default search. At 70B width the weights
outgrow the targets' memory from about 20 layers on, so memory binds there and
not at 7B width: the two series separate the effect of size from that of
memory. Not a test; writes Markdown and JSON and prints the Markdown.

    python benchmarks/solver_scaling.py [--layers 8,16,32,64,80] [--time-limit 30] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.solver_zoo import TARGETS, llama  # noqa: E402
from cost_models.roofline import RooflineCostModel  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.frontend.capture import capture  # noqa: E402
from partitioner.frontend.op_graph import annotate  # noqa: E402
from partitioner.placement.baselines import BASELINES  # noqa: E402
from partitioner.placement.objectives import COST, LATENCY  # noqa: E402
from partitioner.placement.problem import build_problem  # noqa: E402
from partitioner.placement.solver import SolverOptions, solve  # noqa: E402
from partitioner.placement.tagging import tag  # noqa: E402
from targets.loader import load_targets  # noqa: E402

WIDTHS = {"7b-width": (4096, 11008, 32, 32), "70b-width": (8192, 28672, 64, 8)}
OBJECTIVES = (LATENCY, COST)


def measure(width: str, layers: int, options: SolverOptions) -> list[dict]:
    hidden, intermediate, heads, kv_heads = WIDTHS[width]
    model, inputs = llama(False, hidden, layers, intermediate, heads, kv_heads)
    graph = annotate(capture(model, inputs, name=f"llama-{width}-{layers}").program)
    target_set = load_targets(TARGETS)
    problem = build_problem(graph, tag(graph, target_set), target_set, RooflineCostModel())
    hints = {name: strategy(problem) for name, strategy in BASELINES.items()}
    rows = []
    for objective in OBJECTIVES:
        report = solve(problem, objective, options, hints=hints).report
        rows.append({"width": width, "layers": layers, "ops": len(graph), "solved_nodes": report.solved_nodes,
                     "parameter_gib": sum(graph.parameter_bytes.values()) / 1024**3, "objective": objective.name,
                     "status": report.status, "gap": report.gap, "seconds": report.wall_seconds})
        print(f"  {width} x {layers}: {objective.name} {report.status}, gap {100 * report.gap:.2f}%, "
              f"{report.wall_seconds:.1f} s", file=sys.stderr, flush=True)
    return rows


def markdown(rows: Sequence[dict], time_limit: float) -> str:
    lines = [f"Targets {', '.join(TARGETS)}, roofline costs; default search, {time_limit:g} s limit, 2 CPU cores.",
             "", "| width | layers | ops | solved nodes | weights | objective | status | gap | seconds "
             "| seconds per 1k ops |", "|---|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['layers']} | {r['ops']} | {r['solved_nodes']} | "
                     f"{r['parameter_gib']:.1f} GiB | {r['objective']} | {r['status']} | {100 * r['gap']:.2f}% "
                     f"| {r['seconds']:.2f} | {1000 * r['seconds'] / r['ops']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="8,16,32,64,80", help="comma list of layer counts")
    parser.add_argument("--widths", default=",".join(WIDTHS), help=f"comma list from {', '.join(WIDTHS)}")
    parser.add_argument("--time-limit", type=float, default=30.0, help="CP-SAT seconds per solve (default: 30)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    options = SolverOptions(time_limit_seconds=args.time_limit)
    rows = []
    for width in args.widths.split(","):
        for layers in (int(n) for n in args.layers.split(",")):
            rows += measure(width, layers, options)
    table = markdown(rows, args.time_limit)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "solver_scaling.md", f"# Solver scaling benchmark\n\n{table}\n")
    write_atomically(args.out / "solver_scaling.json", json.dumps({"time_limit_seconds": args.time_limit,
                                                                   "rows": rows}, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
