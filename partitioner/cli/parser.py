"""The commands of the `partitioner` CLI, their options and help: what `partitioner --help` shows."""

from __future__ import annotations

import argparse

from partitioner.cli import commands
from partitioner.cli.arguments import (duration, duration_or_none, positive_float, positive_int, rate, seed,
                                       time_limit, tolerance, workers)
from partitioner.placement.objectives import registered_objectives
from targets.loader import DEFAULT_TARGET_NAMES


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partitioner",
        description="Place the ops of a PyTorch model on heterogeneous accelerators, optimally.",
    )
    subcommands = parser.add_subparsers(required=True, metavar="COMMAND")

    compile_parser = subcommands.add_parser("compile", help="solve a placement for a model and write plan.json")
    compile_parser.add_argument("model", help="file.py (with build()), file.py:function, an ExportedProgram .pt2, "
                                              "or a Hugging Face model folder (config.json, weights optional)")
    compile_parser.add_argument("--batch", type=positive_int, metavar="N",
                                help="a model folder's example inputs: N at a time (default 1)")
    compile_parser.add_argument("--tokens", type=positive_int, metavar="N",
                                help="a model folder's example inputs: sequences of N tokens (audio: samples; "
                                     "default 128)")
    compile_parser.add_argument("--image-size", type=positive_int, metavar="PIXELS",
                                help="a model folder's example inputs: images PIXELS a side (default: its config's)")
    compile_parser.add_argument(
        "--targets",
        help="comma-separated built-in target names or .toml spec paths, in priority order "
             f"(default: {','.join(DEFAULT_TARGET_NAMES)})")
    compile_parser.add_argument("--fleet", metavar="FLEET",
                                help="plan on a fleet instead of --targets: a built-in fleet name, a .toml fleet "
                                     "file, or name=count pairs in one host, e.g. npu-example=8,cuda-h100=1")
    compile_parser.add_argument("--workload", metavar="WORKLOAD",
                                help="plan an LLM's prefill and decode for a workload (chat, summarisation or a "
                                     ".toml file): the least money per output token on --fleet, co-located or "
                                     "disaggregated, within its TTFT and TPOT limits; writes llm_plan.json")
    compile_parser.add_argument("--expert-shards", type=positive_int, metavar="N",
                                help="with --workload: split each mixture-of-experts layer's experts into N shards, "
                                     "each placed on its own device (default: 2 on a fleet of several devices; "
                                     "each shard adds ops to every step)")
    compile_parser.add_argument("--no-tensor-parallel", action="store_true",
                                help="with --workload: keep every layer whole on one device (no group of identical "
                                     "devices splits one), as the plans serve and export run need")
    compile_parser.add_argument("--min-throughput", type=rate, metavar="RATE",
                                help="requests per second to serve at full load, e.g. 50/s; with --objective "
                                     "serving-cost, the cheapest devices of the fleet that serve it")
    compile_parser.add_argument("--pin", action="append", default=[], metavar="PATTERN=TARGET",
                                help="run the ops matching PATTERN (an op key or module path, * and ? allowed, e.g. "
                                     "'layers.*.self_attn=cuda-h100') only on TARGET; repeatable")
    compile_parser.add_argument("--forbid", action="append", default=[], metavar="PATTERN=TARGET",
                                help="never run the ops matching PATTERN on TARGET; repeatable")
    compile_parser.add_argument("--fallback", help="the target that runs unsupported ops (default: the first CUDA "
                                                   "target that supports every op)")
    compile_parser.add_argument("--objective", choices=[o.name for o in registered_objectives()], default=None,
                                help="what to minimise: " + ", ".join(f"{o.name} ({o.description})"
                                                                     for o in registered_objectives())
                                     + " (default: latency)")
    compile_parser.add_argument("--max-latency", type=duration, metavar="TIME",
                                help="latency limit per request, e.g. 50ms, 2.5ms, 800us or 0.05 (seconds); "
                                     "with --objective cost, the cheapest plan within it")
    compile_parser.add_argument("--engine-hop", type=duration_or_none, default=None, metavar="TIME",
                                help="what the serving engine adds to every hop between partitions, e.g. 0.5ms for "
                                     "Ray on a small machine (benchmarks/engine_hop.py measures it; default: 10us, "
                                     "an in-process pipeline; 0: nothing); each device's own stage launch comes "
                                     "from its spec")
    compile_parser.add_argument("--time-limit", type=time_limit, default=30.0, metavar="SECONDS",
                                help="solver time limit (default: 30)")
    compile_parser.add_argument("--workers", type=workers, default=0,
                                help="solver search workers (default: one, then 8 unless optimality is proven)")
    compile_parser.add_argument("--seed", type=seed, default=0, help="solver random seed, 0 to 2147483647 (default: 0)")
    compile_parser.add_argument("--deterministic", action="store_true",
                                help="one solver worker and a time limit counted in work, not wall time: "
                                     "the same plan on every run and machine")
    compile_parser.add_argument("--cost-model", default="roofline", metavar="roofline|measured:FOLDER",
                                help="roofline estimates from the specs (default), or measured:profiles/ for times "
                                     "measured by `partitioner profile` (the roofline covers the rest)")
    compile_parser.add_argument("-o", "--output", default="out", help="output folder for plan.json (default: out)")
    shown = compile_parser.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress, no summary)")
    shown.add_argument("--json", action="store_true", help="progress as JSON lines on stderr, and the result as "
                                                          "one JSON object on stdout instead of the summary")
    compile_parser.set_defaults(command=commands.compile_command)

    profile_parser = subcommands.add_parser("profile", help="time a model's ops on real devices into a profile folder")
    profile_parser.add_argument("model", help="file.py (with build() and real weights), file.py:function, .pt2, or "
                                              "a model folder with weights")
    profile_parser.add_argument("--device", action="append", default=[], metavar="DEVICE",
                                help="a torch device to profile, e.g. cpu or cuda:0; repeat for several "
                                     "(default: cpu)")
    profile_parser.add_argument("-o", "--output", default="profiles", help="profile folder, reused across models "
                                                                          "(default: profiles)")
    profile_parser.add_argument("--min-run-time", type=positive_float, default=0.05, metavar="SECONDS",
                                help="least time spent timing each op (default: 0.05)")
    profile_parser.add_argument("--in-model", action="store_true",
                                help="time each op inside whole runs of the model (real caches and layouts) "
                                     "instead of in isolation")
    profile_parser.add_argument("--report", action="store_true",
                                help="also print predicted against measured time, per op and for the whole model")
    shown = profile_parser.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    shown.add_argument("--json", action="store_true", help="progress as JSON lines on stderr")
    profile_parser.add_argument("--target", action="append", default=[], metavar="NAME",
                                help="the spec whose roofline the report judges, per device in order "
                                     "(default: cpu-x86 for cpu, cuda-h100 for cuda)")
    profile_parser.set_defaults(command=commands.profile_command)

    calibrate_parser = subcommands.add_parser("calibrate", help="fit a target spec's roofline constants to a profile")
    calibrate_parser.add_argument("profiles", help="profile folder written by profile")
    calibrate_parser.add_argument("--target", required=True, help="built-in target name or .toml spec to calibrate")
    calibrate_parser.add_argument("-o", "--output", required=True, help="the calibrated spec to write (.toml)")
    calibrate_parser.set_defaults(command=commands.calibrate_command)

    run_parser = subcommands.add_parser("run", help="run a plan's partitioned model once; with --check, compare it "
                                                 "with the original model")
    run_parser.add_argument("plan", help="plan.json written by compile")
    run_parser.add_argument("--check", action="store_true",
                            help="compare every output with the original model's; exit 1 if one differs")
    run_parser.add_argument("--model", help="the model again (file.py, file.py:function or .pt2), if the plan's "
                                            "recorded source moved")
    run_parser.add_argument("--device-map", default="", metavar="TARGET=DEVICE,...",
                            help="the torch device that runs each target, e.g. npu-example=cpu,cuda-h100=cuda:0 "
                                 "(default: each spec's device, or the CPU where it is absent)")
    run_parser.add_argument("--rtol", type=tolerance,
                            help="relative tolerance (default: torch.testing's for the dtype)")
    run_parser.add_argument("--atol", type=tolerance,
                            help="absolute tolerance (default: torch.testing's for the dtype)")
    run_parser.set_defaults(command=commands.run_command)

    serve_parser = subcommands.add_parser("serve", help="run a plan on a Ray cluster, one actor per device, with "
                                                     "requests in flight, and measure it against the plan")
    serve_parser.add_argument("plan", help="plan.json (or llm_plan.json) written by compile")
    serve_parser.add_argument("--engine", choices=("ray",), default="ray", help="what runs the plan (default: ray)")
    serve_parser.add_argument("--address", help="join this Ray cluster (auto, or host:port of its head); default: "
                                                "start a local one where every device absent here runs on the CPU")
    serve_parser.add_argument("--requests", type=positive_int, default=100,
                              help="requests to send (default: 100); of an LLM plan, drawn from its workload's "
                                   "prompt and output lengths")
    serve_parser.add_argument("--concurrency", type=positive_int,
                              help="requests in flight at once (default: 8); at most what Ray's object store holds "
                                   "of the plan's channels, a number serve gives when it refuses more. Of an LLM "
                                   "plan: decode batches in flight (default: one per device decode runs on)")
    serve_parser.add_argument("--prompts", metavar="FILE.jsonl",
                              help="an LLM plan's requests, one a line: {\"input_ids\": [...], \"max_new_tokens\": N}")
    serve_parser.add_argument("--seed", type=int, default=0, help="the seed an LLM plan's requests are drawn with")
    serve_parser.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                              help="the longest one request may take before the deployment is ended (default: 60, "
                                   "at most 86400: a day)")
    serve_parser.add_argument("--model", help="the model again, if the plan's recorded source moved")
    serve_parser.set_defaults(command=commands.serve_command)

    export_parser = subcommands.add_parser("export", help="write one ONNX file per partition and a manifest")
    export_parser.add_argument("plan", help="plan.json written by compile")
    export_parser.add_argument("-o", "--output", required=True, help="output folder (new, empty or an earlier export)")
    export_parser.add_argument("--whole", action="store_true", help="also export the unpartitioned model")
    export_parser.add_argument("--model", help="the model again, if the plan's recorded source moved")
    export_parser.set_defaults(command=commands.export_command)

    onnx_parser = subcommands.add_parser("run-onnx", help="run exported partitions chained in ONNX Runtime")
    onnx_parser.add_argument("manifest", help="manifest.json written by export (or its folder)")
    onnx_parser.add_argument("--check", action="store_true",
                             help="compare every output with the original model's; exit 1 if one differs")
    onnx_parser.add_argument("--model", help="the model again, if the plan's recorded source moved")
    onnx_parser.add_argument("--rtol", type=tolerance,
                             help="relative tolerance (default: torch.testing's for the dtype, or judged against "
                                  "float32 for float16 and bfloat16)")
    onnx_parser.add_argument("--atol", type=tolerance,
                             help="absolute tolerance (default: torch.testing's for the dtype)")
    onnx_parser.set_defaults(command=commands.run_onnx_command)

    report_parser = subcommands.add_parser("report", help="print a plan's report: targets, baselines, solver, and the "
                                                       "ops only the fallback runs")
    report_parser.add_argument("plan", help="plan.json written by compile")
    report_parser.set_defaults(command=commands.report_command)

    explain_parser = subcommands.add_parser("explain", help="why a node sits where it does: its costs on every "
                                                         "target, refusals, and what moving it would change")
    explain_parser.add_argument("plan", help="plan.json written by compile")
    explain_parser.add_argument("node", help="the node's name, as in plan.json")
    explain_parser.set_defaults(command=commands.explain_command)

    targets_parser = subcommands.add_parser("targets", help="list the built-in targets; `targets coverage MODEL` "
                                                         "shows how much of a model each target runs")
    targets_parser.set_defaults(command=commands.targets_command)
    targets_actions = targets_parser.add_subparsers(metavar="ACTION")
    coverage_parser = targets_actions.add_parser(
        "coverage", help="per target, the model's ops it supports (by count and by FLOPs) and the top refusals")
    coverage_parser.add_argument("model", help="file.py (with build()), file.py:function, an ExportedProgram .pt2, "
                                               "or a Hugging Face model folder")
    coverage_parser.add_argument(
        "--targets", default=None,
        help="comma-separated built-in target names or .toml spec paths (default: every built-in target)")
    coverage_parser.add_argument("--top", type=positive_int, default=5, help="refusal reasons per target (default: 5)")
    coverage_parser.set_defaults(command=commands.coverage_command)
    return parser
