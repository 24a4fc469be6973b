"""The Ray engine measured against the plan: does a plan serve what it predicts when run one actor per device?

On this machine: time the model's ops on the CPU with one thread (what one
worker gets), plan for throughput with that measured cost model on a fleet of
CPU devices (`cpu-x86=N`, N <= cores), serve the plan on a local Ray
instance, and print measured over predicted throughput and one request's
latency. Beside it, the engine's own cost at one request: the same plan run in
process (the partitioned module) against the Ray deployment, one request at a
time. Not a test; writes Markdown and JSON.

    python benchmarks/ray_serving.py [--devices 2] [--requests 200] [--concurrency 1,2,4,8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import partitioner  # noqa: E402
from cost_models.measured import MeasuredCostModel  # noqa: E402
from cost_models.profile import load_profiles  # noqa: E402
from cost_models.profiling import profile_model  # noqa: E402
from partitioner.deploy.ray_engine import deploy_on_ray  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.frontend.capture import capture  # noqa: E402
from targets.fleet import load_fleet  # noqa: E402


class MLP(nn.Module):
    """Square layers with a GELU each: tens of milliseconds of single-thread work per request."""

    def __init__(self, width: int = 1024, layers: int = 12):
        super().__init__()
        self.layers = nn.Sequential(*(nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def in_process_seconds(plan, inputs, repeats: int) -> float:
    module = plan.module({t.name: "cpu" for t in plan.targets})
    with torch.inference_mode():
        module(*inputs)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            module(*inputs)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # each worker runs with one thread: profile what one worker gets
    torch.manual_seed(0)
    model, inputs = MLP().eval(), (torch.randn(64, 1024),)
    captured = capture(model, inputs, name="mlp")
    with tempfile.TemporaryDirectory() as folder:
        profile_model(captured, ["cpu"], Path(folder))
        cost_model = MeasuredCostModel(load_profiles(Path(folder)))
    fleet = load_fleet(f"cpu-x86={args.devices}")
    plan = partitioner.compile(model, inputs, fleet, objective="throughput", time_limit_seconds=20,
                               cost_model=cost_model, name="mlp")
    predicted = plan.score()
    alone = in_process_seconds(plan, inputs, 20)
    rows = []
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with deploy_on_ray(plan, max_in_flight=max(concurrencies)) as deployment:
        for concurrency in concurrencies:
            measured = deployment.benchmark(args.requests, concurrency)
            rows.append({"concurrency": concurrency, "requests_per_second": measured.requests_per_second,
                         "predicted_requests_per_second": measured.predicted_requests_per_second_in_flight,
                         "predicted_at_full_load": measured.predicted_requests_per_second,
                         "p50_seconds": measured.latency_percentile(50), "p99_seconds": measured.latency_percentile(99),
                         "utilisation": dict(measured.utilisation)})
            print(json.dumps(rows[-1]), flush=True)
    report = {"devices": args.devices, "partitions": [p.target for p in plan.partitions],
              "predicted_latency_seconds": predicted.latency_seconds, "in_process_seconds": alone,
              "cost_model": plan.cost_model, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "ray_serving.json", json.dumps(report, indent=1))
    write_atomically(out / "ray_serving.md", markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    one = next((r for r in report["rows"] if r["concurrency"] == 1), None)
    lines = [f"# The Ray engine against the plan ({report['devices']} CPU devices, one thread each, "
             f"{len(report['partitions'])} partitions: {' -> '.join(report['partitions'])})", "",
             f"Costs: {report['cost_model']}. The plan predicts one request alone at "
             f"{report['predicted_latency_seconds'] * 1e3:.2f} ms; the partitioned module in process takes "
             f"{report['in_process_seconds'] * 1e3:.2f} ms"
             + (f", the Ray deployment one request at a time {one['p50_seconds'] * 1e3:.2f} ms (p50): the engine "
                f"adds {(one['p50_seconds'] - report['in_process_seconds']) * 1e3:.2f} ms." if one else "."),
             "The prediction with K in flight (each sent when one returns) is the lesser of K per request latency "
             "and the plan's throughput at full load.", "",
             "| in flight | measured req/s | predicted req/s | measured / predicted | p50 | p99 | utilisation |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        ratio = row["requests_per_second"] / row["predicted_requests_per_second"]
        busy = ", ".join(f"{place} {100 * share:.0f}%" for place, share in row["utilisation"].items())
        lines.append(f"| {row['concurrency']} | {row['requests_per_second']:.1f} | "
                     f"{row['predicted_requests_per_second']:.1f} | {ratio:.2f} | {row['p50_seconds'] * 1e3:.1f} ms "
                     f"| {row['p99_seconds'] * 1e3:.1f} ms | {busy} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
