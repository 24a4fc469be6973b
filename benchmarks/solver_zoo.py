"""The solver against every baseline on the model zoo: objective, proven bound, gap, time and cuts.

Builds each model from its transformers config on the meta device (no weights),
captures, annotates, tags and costs it once (roofline costs on npu-example,
dsp-example, cpu-x86 and cuda-h100, or another of TARGET_SETS), then for each objective scores on that
same problem: `fallback`, `priority`, torch.fx's CapabilityBasedPartitioner
delegating to the first accelerator (`capability`) and the CP-SAT solver, which
gets the `BASELINES` as hints exactly as `partitioner.compile` does. Not a
test; writes Markdown and JSON and prints the Markdown.

    python benchmarks/solver_zoo.py [--models resnet50,bert-base] [--time-limit 30] [--out benchmarks/results]
    python benchmarks/solver_zoo.py --targets trn2-h100   # a real accelerator beside an H100: solver_zoo_trn2-h100.md
    python benchmarks/solver_zoo.py --smoke   # tiny configs, 1 s limit
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import ortools
import torch

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost_models.roofline import RooflineCostModel  # noqa: E402
from partitioner.execution.split import split  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.frontend.capture import capture  # noqa: E402
from partitioner.frontend.op_graph import OpGraph, annotate  # noqa: E402
from partitioner.placement.baselines import BASELINES, capability_placement  # noqa: E402
from partitioner.placement.objectives import Objective, objective_named, registered_objectives  # noqa: E402
from partitioner.placement.problem import PlacementProblem, build_problem  # noqa: E402
from partitioner.placement.scoring import score  # noqa: E402
from partitioner.placement.solver import DEFAULT_WORKERS, SolverOptions, SolverReport, solve  # noqa: E402
from partitioner.placement.tagging import tag  # noqa: E402
from partitioner.units import DOLLARS  # noqa: E402
from targets.loader import load_targets  # noqa: E402

# Target sets by name: the example accelerators, and real accelerators beside an H100 (the fallback).
TARGET_SETS = {
    "examples": ("npu-example", "dsp-example", "cpu-x86", "cuda-h100"),
    "inf2-h100": ("inf2", "cuda-h100"),
    "trn2-h100": ("trn2", "cuda-h100"),
}
SOLVER = "cp-sat"
REDUCED_OPS_NOTE = ("reduced ops: the nodes CP-SAT places after exact graph reduction (followers merged with their "
                    "leader, views with their producer where provably lossless); makespan is solved unreduced.")
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class ZooModel:
    """A zoo entry: how to build it at full size and as a tiny smoke-test copy, and what it runs on."""

    name: str
    description: str
    build: Callable[[bool], tuple[torch.nn.Module, Any]]


@dataclass(frozen=True, slots=True)
class Row:
    """One strategy's placement of one model for one objective; bound and gap only for the solver."""

    model: str
    objective: str
    strategy: str
    ops: int
    reduced_ops: int
    value: float
    latency_seconds: float
    cost_per_request: float
    makespan_seconds: float
    bound: float | None
    gap: float | None
    seconds: float
    cuts: int
    partitions: int
    fits_memory: bool
    status: str


def _meta(build: Callable[[], tuple[torch.nn.Module, Any]]) -> tuple[torch.nn.Module, Any]:
    with torch.device("meta"):
        return build()


def resnet50(smoke: bool):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]) if smoke else ResNetConfig()
    size = 32 if smoke else 224
    return _meta(lambda: (ResNetForImageClassification(config).to(torch.float16).eval(),
                          (torch.zeros(1, 3, size, size, dtype=torch.float16),)))


def mobilenet_v2(smoke: bool):
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(depth_multiplier=0.35, image_size=32) if smoke else MobileNetV2Config()
    size = config.image_size
    return _meta(lambda: (MobileNetV2ForImageClassification(config).to(torch.float16).eval(),
                          (torch.zeros(1, 3, size, size, dtype=torch.float16),)))


def vit_b16(smoke: bool):
    from transformers import ViTConfig, ViTForImageClassification

    config = (ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=16) if smoke else ViTConfig())
    size = config.image_size
    return _meta(lambda: (ViTForImageClassification(config).to(torch.float16).eval(),
                          (torch.zeros(1, 3, size, size, dtype=torch.float16),)))


def bert_base(smoke: bool):
    from transformers import BertConfig, BertModel

    config = (BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                         vocab_size=1000) if smoke else BertConfig())
    length = 16 if smoke else 128
    return _meta(lambda: (BertModel(config).to(torch.float16).eval(),
                          {"input_ids": torch.zeros(1, length, dtype=torch.long)}))


def gpt2(smoke: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=1000) if smoke else GPT2Config()
    length = 16 if smoke else 128
    return _meta(lambda: (GPT2LMHeadModel(config).to(torch.float16).eval(),
                          {"input_ids": torch.zeros(1, length, dtype=torch.long), "use_cache": False}))


def llama(smoke: bool, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    if smoke:
        hidden, layers, intermediate, heads, kv_heads = 64, 2, 172, 4, max(1, 4 * kv_heads // heads)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         vocab_size=256 if smoke else 32000, max_position_embeddings=4096)
    length = 16 if smoke else 512
    return _meta(lambda: (LlamaForCausalLM(config).to(torch.bfloat16).eval(),
                          {"input_ids": torch.zeros(1, length, dtype=torch.long), "use_cache": False}))


ZOO = {model.name: model for model in (
    ZooModel("resnet50", "ResNet-50, fp16, 1x3x224x224", resnet50),
    ZooModel("mobilenet-v2", "MobileNetV2 1.0, fp16, 1x3x224x224", mobilenet_v2),
    ZooModel("vit-b16", "ViT-B/16, fp16, 1x3x224x224", vit_b16),
    ZooModel("bert-base", "BERT-base, fp16, seq 128", bert_base),
    ZooModel("gpt2", "GPT-2 (124M) LM head, fp16, seq 128", gpt2),
    ZooModel("llama-7b", "Llama 7B shape (4096 x 32 layers), bf16, seq 512",
             lambda smoke: llama(smoke, 4096, 32, 11008, 32, 32)),
    ZooModel("llama-70b", "Llama 70B shape (8192 x 80 layers, 8 KV heads), bf16, seq 512",
             lambda smoke: llama(smoke, 8192, 80, 28672, 64, 8)),
)}


def benchmark_model(entry: ZooModel, smoke: bool, options: SolverOptions,
                    targets: Sequence[str] = TARGET_SETS["examples"]) -> tuple[dict, list[Row]]:
    """Every strategy on one model, one problem shared by all, for each objective."""
    started = time.perf_counter()
    model, example_inputs = entry.build(smoke)
    captured = capture(model, example_inputs, name=entry.name)
    graph = annotate(captured.program)
    target_set = load_targets(targets)
    tagging = tag(graph, target_set)
    problem = build_problem(graph, tagging, target_set, RooflineCostModel())
    prepared_seconds = time.perf_counter() - started

    placements: dict[str, tuple[dict[str, str], float]] = {}
    strategies = {**BASELINES,
                  "capability": lambda p: capability_placement(p, captured.program.graph_module, tagging)}
    for name, strategy in strategies.items():
        begun = time.perf_counter()
        assignment = strategy(problem)
        placements[name] = (assignment, time.perf_counter() - begun)
    hints = {name: placements[name][0] for name in BASELINES}  # what partitioner.compile seeds the solver with

    rows = []
    for objective in (o for o in registered_objectives() if not o.serving):  # serving: benchmarks/serving.py
        for name, (assignment, seconds) in placements.items():
            rows.append(_row(entry.name, objective, name, problem, graph, assignment, seconds))
        placement = solve(problem, objective, options, hints=hints)
        hints = {**hints, f"{objective.name} plan": dict(placement.assignment)}  # every plan seeds the next searches
        report = placement.report
        status = report.status if report.origin == SOLVER else f"{report.status} ({report.origin})"
        rows.append(_row(entry.name, objective, SOLVER, problem, graph, placement.assignment, report.wall_seconds,
                         report, status, placement.order))
        print(f"  {entry.name} {objective.name}: {status}, gap {100 * report.gap:.2f}%, {report.wall_seconds:.1f} s",
              file=sys.stderr, flush=True)
    info = {"model": entry.name, "description": entry.description, "ops": len(graph),
            "parameter_bytes": sum(graph.parameter_bytes.values()), "flops": graph.total_flops,
            "prepare_seconds": prepared_seconds, "fallback": problem.fallback}
    return info, rows


def _row(model: str, objective: Objective, strategy: str, problem: PlacementProblem, graph: OpGraph,
         assignment: dict[str, str], seconds: float, report: SolverReport | None = None, status: str = "-",
         order: Sequence[str] = ()) -> Row:
    result = score(problem, assignment, order or None)
    return Row(model=model, objective=objective.name, strategy=strategy, ops=len(problem.nodes),
               reduced_ops=report.solved_nodes if report else len(problem.nodes), value=objective.value(result),
               latency_seconds=result.latency_seconds, cost_per_request=result.cost_per_request,
               makespan_seconds=result.makespan_seconds, bound=report.bound if report else None,
               gap=report.gap if report else None, seconds=seconds, cuts=result.transfer_count,
               partitions=len(split(graph, assignment)),
               fits_memory=result.fits_memory, status=status)


def markdown(rows: Sequence[Row], settings: dict) -> str:
    """The results table: latency in ms, cost in dollars per million requests."""
    lines = [
        f"Targets {', '.join(settings['targets'])} (fallback {settings['fallback']}), roofline costs; CP-SAT "
        f"{settings['time_limit_seconds']:g} s limit, {settings['workers']}, seed {settings['seed']}, "
        f"{settings['cpu_count']} CPU cores; ortools {settings['ortools']}, torch {settings['torch']}.",
        "",
        "| model | ops | reduced ops¹ | objective | strategy | value | vs cp-sat | bound | gap | seconds | cuts "
        "| partitions | fits memory | status |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    solver_value = {(r.model, r.objective): r.value for r in rows if r.strategy == SOLVER}
    for r in rows:
        unit = _unit(objective_named(r.objective))
        reference = solver_value.get((r.model, r.objective))
        if r.strategy == SOLVER or not reference:
            versus = "-"
        elif not r.fits_memory:
            versus = "over memory"
        else:
            versus = f"{100 * (r.value / reference - 1):+.2f}%"
        lines.append(
            f"| {r.model} | {r.ops} | {r.reduced_ops} | {r.objective} | {r.strategy} | {unit(r.value)} | {versus} "
            f"| {unit(r.bound) if r.bound is not None else '-'} | {_percent(r.gap)} | {r.seconds:.3g} | {r.cuts} "
            f"| {r.partitions} | {'yes' if r.fits_memory else 'no'} | {r.status} |"
        )
    lines += [
        "",
        "Latency and makespan in ms per request; cost in dollars per million requests. 'vs cp-sat': how much worse the "
        "baseline is than the solver's plan ('over memory': the baseline does not fit, so it is no rival). "
        "'seconds': time to compute the placement (the solver's includes building its model). 'cuts': tensor "
        "transfers between devices. 'status' names the baseline the solver returned when it found nothing "
        "better in time. The solver is seeded with the `fallback` and `priority` plans, as "
        "`partitioner.compile` does, and with the solver's plans for the objectives before it; makespan's search "
        "is seeded with the latency and cost plans. `capability` is not a hint.",
        f"¹ {REDUCED_OPS_NOTE}",
    ]
    return "\n".join(lines)


def _unit(objective: Objective) -> Callable[[float], str]:
    if objective.unit is DOLLARS:
        return lambda dollars: f"${dollars * 1e6:.5g}/1M"
    return lambda seconds: f"{seconds * 1e3:.5g} ms"


def _percent(gap: float | None) -> str:
    return "-" if gap is None else f"{100 * gap:.2f}%"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO), help=f"comma list from {', '.join(ZOO)} (default: all)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="CP-SAT seconds per model and objective (default: 30, or 1 with --smoke)")
    parser.add_argument("--workers", type=int, default=0,
                        help=f"CP-SAT workers (default: 1, then {DEFAULT_WORKERS} unless optimality is proven)")
    parser.add_argument("--seed", type=int, default=0, help="CP-SAT random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="folder for solver_zoo.md and solver_zoo.json (default: benchmarks/results)")
    parser.add_argument("--targets", default="examples", choices=sorted(TARGET_SETS),
                        help="the target set (default: examples); other sets write solver_zoo_<set>.md and .json")
    parser.add_argument("--smoke", action="store_true", help="tiny 2-layer configs and a 1 s limit, for the test")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in ZOO]
    if unknown or not names:
        parser.error(f"unknown model {', '.join(unknown) or '(none given)'}; choose from {', '.join(ZOO)}")
    time_limit = args.time_limit if args.time_limit is not None else (1.0 if args.smoke else 30.0)
    options = SolverOptions(time_limit_seconds=time_limit, workers=args.workers, seed=args.seed)

    models, rows = [], []
    for name in names:
        print(f"{name}: building, capturing and costing", file=sys.stderr, flush=True)
        info, model_rows = benchmark_model(ZOO[name], args.smoke, options, TARGET_SETS[args.targets])
        models.append(info)
        rows += model_rows
    settings = {
        "targets": list(TARGET_SETS[args.targets]), "fallback": models[0]["fallback"], "cost_model": "roofline",
        "time_limit_seconds": time_limit, "seed": args.seed,
        "workers": f"{args.workers} workers" if args.workers else f"1 worker then {DEFAULT_WORKERS} workers",
        "smoke": args.smoke, "solver_hints": sorted(BASELINES), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "ortools": ortools.__version__, "python": platform.python_version(),
        "reduced_ops_note": REDUCED_OPS_NOTE,
    }
    table = markdown(rows, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "solver_zoo" if args.targets == "examples" else f"solver_zoo_{args.targets}"
    write_atomically(args.out / f"{stem}.md", f"# Solver zoo benchmark ({args.targets})\n\n{table}\n")
    results = {"schema_version": SCHEMA_VERSION, "settings": settings, "models": models,
               "rows": [asdict(row) for row in rows]}
    write_atomically(args.out / f"{stem}.json", json.dumps(results, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
