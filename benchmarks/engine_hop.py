"""The serving engine's time per hop: what one more partition boundary costs a request on the Ray engine here.

Serves the same tiny model (its compute is negligible) twice on a local Ray
instance, one request at a time: whole on one CPU device, then pinned across
two devices so that every layer is a partition of its own. The difference of
the median latencies over the difference of hops is the engine's time per hop,
the figure to give `partitioner compile --engine-hop` when planning for this
engine on this machine (partitioner/placement/hops.py). Not a test; prints
Markdown and writes JSON.

    python benchmarks/engine_hop.py [--layers 8] [--requests 200] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import partitioner  # noqa: E402
from partitioner.deploy.ray_engine import deploy_on_ray  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from targets.fleet import load_fleet  # noqa: E402


def median_latency(plan: partitioner.Plan, requests: int) -> float:
    """The median seconds of one request alone through `plan` served on Ray."""
    with deploy_on_ray(plan, max_in_flight=1) as deployment:
        deployment.benchmark(20, 1)  # warm up: the actors' first calls compile and allocate
        return deployment.benchmark(requests, 1).latency_percentile(50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(16, 16) for _ in range(args.layers))).eval()
    inputs = (torch.randn(1, 16),)
    fleet = load_fleet("cpu-x86=2")
    plans = {}
    for label, pins in (("whole", ["*=cpu-x86.0"]),
                        ("every layer a partition", [f"{i}=cpu-x86.{i % 2}" for i in range(args.layers)])):
        plans[label] = partitioner.compile(model, inputs, fleet, "latency", pins=pins, time_limit_seconds=5)
    hops = {label: len(plan.partitions) - 1 for label, plan in plans.items()}
    latency = {label: median_latency(plan, args.requests) for label, plan in plans.items()}
    (whole, split) = plans
    per_hop = (latency[split] - latency[whole]) / (hops[split] - hops[whole])
    report = {"layers": args.layers, "requests": args.requests, "hops": hops, "median_latency_seconds": latency,
              "engine_hop_seconds": per_hop}
    table = "\n".join([
        "| plan | hops | median latency |", "|---|---:|---:|",
        *(f"| {label} | {hops[label]} | {latency[label] * 1e3:.3g} ms |" for label in plans), "",
        f"Ray engine, this machine: {per_hop * 1e3:.3g} ms per hop (give `--engine-hop {per_hop * 1e3:.2g}ms`)."])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "engine_hop.json", json.dumps(report, indent=1) + "\n")
    write_atomically(out / "engine_hop.md", f"# The Ray engine's time per hop\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
