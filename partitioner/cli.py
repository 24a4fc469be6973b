"""The `partitioner` command line: a thin composition of the pipeline's passes.

User mistakes (a `PartitionerError`) print one line on stderr and exit with
code 2; outputs are written only once everything they depend on succeeded.
Each command imports what it runs (torch, ONNX, OR-Tools) when it runs, so
`--help` and a usage error answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from partitioner.errors import PartitionerError
from partitioner.files import check_writable_folder
from partitioner.placement.objectives import objective_named, registered_objectives
from partitioner.progress import Progress
from targets.loader import DEFAULT_TARGET_NAMES, builtin_target_names, load_target

if TYPE_CHECKING:
    from cost_models.base import CostModel
    from partitioner.execution.check import PlanRun


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.formatwarning = _warning_line
            return args.command(args)
    except PartitionerError as error:
        print(f"partitioner: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system refused: a path that is a file, missing, unwritable, in /proc
        where = f"{error.filename}: " if error.filename else ""
        print(f"partitioner: error: {where}{error.strerror or error}. Fix: check that the path exists, is a file or "
              "folder as the command expects, and that you may write there.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("partitioner: interrupted", file=sys.stderr)
        return 130


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """A warning as one line a person reads (`partitioner: warning: ...`), not Python's file, line and source."""
    return f"partitioner: warning: {message}\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partitioner",
        description="Place the ops of a PyTorch model on heterogeneous accelerators, optimally.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    compile_parser = commands.add_parser("compile", help="solve a placement for a model and write plan.json")
    compile_parser.add_argument("model", help="file.py (with build()), file.py:function, or an ExportedProgram .pt2")
    compile_parser.add_argument(
        "--targets", default=",".join(DEFAULT_TARGET_NAMES),
        help="comma-separated built-in target names or .toml spec paths, in priority order "
             f"(default: {','.join(DEFAULT_TARGET_NAMES)})")
    compile_parser.add_argument("--fallback", help="the target that runs unsupported ops (default: the first CUDA "
                                                   "target that supports every op)")
    compile_parser.add_argument("--objective", choices=[o.name for o in registered_objectives()], default="latency",
                                help="what to minimise: " + ", ".join(f"{o.name} ({o.description})"
                                                                     for o in registered_objectives())
                                     + " (default: latency)")
    compile_parser.add_argument("--max-latency", type=_duration, metavar="TIME",
                                help="latency limit per request, e.g. 50ms, 2.5ms, 800us or 0.05 (seconds); "
                                     "with --objective cost, the cheapest plan within it")
    compile_parser.add_argument("--time-limit", type=_time_limit, default=30.0, metavar="SECONDS",
                                help="solver time limit (default: 30)")
    compile_parser.add_argument("--workers", type=_workers, default=0,
                                help="solver search workers (default: one, then 8 unless optimality is proven)")
    compile_parser.add_argument("--seed", type=int, default=0, help="solver random seed (default: 0)")
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
    compile_parser.set_defaults(command=_compile)

    profile_parser = commands.add_parser("profile", help="time a model's ops on real devices into a profile folder")
    profile_parser.add_argument("model", help="file.py (with build() and real weights), file.py:function, or .pt2")
    profile_parser.add_argument("--device", action="append", default=[], metavar="DEVICE",
                                help="a torch device to profile, e.g. cpu or cuda:0; repeat for several "
                                     "(default: cpu)")
    profile_parser.add_argument("-o", "--output", default="profiles", help="profile folder, reused across models "
                                                                          "(default: profiles)")
    profile_parser.add_argument("--min-run-time", type=_positive_float, default=0.05, metavar="SECONDS",
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
    profile_parser.set_defaults(command=_profile)

    calibrate_parser = commands.add_parser("calibrate", help="fit a target spec's roofline constants to a profile")
    calibrate_parser.add_argument("profiles", help="profile folder written by profile")
    calibrate_parser.add_argument("--target", required=True, help="built-in target name or .toml spec to calibrate")
    calibrate_parser.add_argument("-o", "--output", required=True, help="the calibrated spec to write (.toml)")
    calibrate_parser.set_defaults(command=_calibrate)

    run_parser = commands.add_parser("run", help="run a plan's partitioned model once; with --check, compare it "
                                                 "with the original model")
    run_parser.add_argument("plan", help="plan.json written by compile")
    run_parser.add_argument("--check", action="store_true",
                            help="compare every output with the original model's; exit 1 if one differs")
    run_parser.add_argument("--model", help="the model again (file.py, file.py:function or .pt2), if the plan's "
                                            "recorded source moved")
    run_parser.add_argument("--device-map", default="", metavar="TARGET=DEVICE,...",
                            help="the torch device that runs each target, e.g. npu-example=cpu,cuda-h100=cuda:0 "
                                 "(default: each spec's device, or the CPU where it is absent)")
    run_parser.add_argument("--rtol", type=_tolerance,
                            help="relative tolerance (default: torch.testing's for the dtype)")
    run_parser.add_argument("--atol", type=_tolerance,
                            help="absolute tolerance (default: torch.testing's for the dtype)")
    run_parser.set_defaults(command=_run)

    export_parser = commands.add_parser("export", help="write one ONNX file per partition and a manifest")
    export_parser.add_argument("plan", help="plan.json written by compile")
    export_parser.add_argument("-o", "--output", required=True, help="output folder (new, empty or an earlier export)")
    export_parser.add_argument("--whole", action="store_true", help="also export the unpartitioned model")
    export_parser.add_argument("--model", help="the model again, if the plan's recorded source moved")
    export_parser.set_defaults(command=_export)

    onnx_parser = commands.add_parser("run-onnx", help="run exported partitions chained in ONNX Runtime")
    onnx_parser.add_argument("manifest", help="manifest.json written by export (or its folder)")
    onnx_parser.add_argument("--check", action="store_true",
                             help="compare every output with the original model's; exit 1 if one differs")
    onnx_parser.add_argument("--model", help="the model again, if the plan's recorded source moved")
    onnx_parser.add_argument("--rtol", type=_tolerance,
                             help="relative tolerance (default: torch.testing's for the dtype, or judged against "
                                  "float32 for float16 and bfloat16)")
    onnx_parser.add_argument("--atol", type=_tolerance,
                             help="absolute tolerance (default: torch.testing's for the dtype)")
    onnx_parser.set_defaults(command=_run_onnx)

    report_parser = commands.add_parser("report", help="print a plan's report: targets, baselines, solver, and the "
                                                       "ops only the fallback runs")
    report_parser.add_argument("plan", help="plan.json written by compile")
    report_parser.set_defaults(command=_report)

    explain_parser = commands.add_parser("explain", help="why a node sits where it does: its costs on every "
                                                         "target, refusals, and what moving it would change")
    explain_parser.add_argument("plan", help="plan.json written by compile")
    explain_parser.add_argument("node", help="the node's name, as in plan.json")
    explain_parser.set_defaults(command=_explain)

    targets_parser = commands.add_parser("targets", help="list the built-in targets")
    targets_parser.set_defaults(command=_list_targets)
    return parser


def _compile(args: argparse.Namespace) -> int:
    from cost_models.measured import MeasuredCostModel
    from partitioner.compiler import compile_captured
    from partitioner.frontend.capture import load_model_file
    from partitioner.placement.solver import SolverOptions
    from partitioner.reporting.html_report import write_html_report

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise PartitionerError(f"output {str(output)!r} is a file, not a folder. Fix: give a folder with -o.")
    check_writable_folder(output)
    progress = Progress("quiet" if args.quiet else "json" if args.json else "live")
    cost_model = _cost_model(args.cost_model)
    with progress.step(f"capturing {args.model}"):
        captured = load_model_file(args.model)
    targets = [item.strip() for item in args.targets.split(",") if item.strip()]
    if not targets:
        raise PartitionerError(f"--targets {args.targets!r} names no target. Fix: name at least one, e.g. "
                               f"--targets {','.join(DEFAULT_TARGET_NAMES)}.")
    objective = objective_named(args.objective)
    options = SolverOptions(time_limit_seconds=args.time_limit, workers=args.workers, seed=args.seed,
                            deterministic=args.deterministic,
                            on_progress=lambda best, bound: progress.solver_update(best, bound, objective.unit.name))
    with progress.step("planning"):
        plan = compile_captured(captured, targets, objective, max_latency_seconds=args.max_latency,
                                fallback=args.fallback, solver_options=options, cost_model=cost_model)
    if isinstance(cost_model, MeasuredCostModel) and not any(node.measured_on for node in plan.nodes):
        print(f"partitioner: warning: no op of this model is in {args.cost_model.removeprefix('measured:')} for any "
              "of the targets, so every cost is the roofline's. Fix: profile this model on the devices of your "
              "cpu or gpu targets.", file=sys.stderr)
    path = plan.save(output / "plan.json")
    write_html_report(plan, output / "report.html")
    if args.json:
        result, report = plan.score(), plan.solver
        print(json.dumps({"plan": str(path), "objective": plan.objective.name, "value": report.objective,
                          "bound": report.bound, "gap": report.gap, "status": report.status,
                          "latency_seconds": result.latency_seconds, "cost_per_request": result.cost_per_request,
                          "makespan_seconds": result.makespan_seconds, "partitions": len(plan.partitions)}))
        return 0
    if not args.quiet:
        print(plan.summary())
        print(f"\nwrote {path} and {output / 'report.html'}")
    return 0


def _cost_model(spec: str) -> CostModel:
    from cost_models.measured import MeasuredCostModel
    from cost_models.profile import load_profiles
    from cost_models.roofline import RooflineCostModel

    if spec == "roofline":
        return RooflineCostModel()
    if spec.startswith("measured:") and spec.removeprefix("measured:"):
        return MeasuredCostModel(load_profiles(Path(spec.removeprefix("measured:"))))
    raise PartitionerError(f"unknown cost model {spec!r}. Fix: use roofline or measured:FOLDER (a folder written by "
                           "partitioner profile).")


def _profile(args: argparse.Namespace) -> int:
    from cost_models.accuracy import accuracy_report, format_accuracy
    from cost_models.profiling import profile_model
    from partitioner.execution.check import require_real_weights
    from partitioner.frontend.capture import load_model_file

    devices = args.device or ["cpu"]
    if len(args.target) > len(devices):
        raise PartitionerError(f"{len(args.target)} --target for {len(devices)} --device. Fix: give at most one "
                               "target per device, in the same order.")
    check_writable_folder(Path(args.output))
    progress = Progress("quiet" if args.quiet else "json" if args.json else "live")
    with progress.step(f"capturing {args.model}"):
        captured = load_model_file(args.model)
    if args.report:
        require_real_weights(captured)  # before minutes of timing, not after (profile_model checks --in-model)
    with progress.step(f"profiling on {', '.join(devices)}"):
        runs = profile_model(captured, devices, Path(args.output), args.min_run_time, in_model=args.in_model,
                             on_progress=lambda device, done, total: progress.counted(done, total,
                                                                                      f"op signatures on {device}"))
    for index, (device, run) in enumerate(zip(devices, runs)):
        print(f"{device}: {run.profile.identity.describe()}: {run.measured} op signatures measured, {run.reused} "
              f"from the cache, {run.left_to_roofline} left to the roofline -> {run.path}")
        if args.report:
            default = "cuda-h100" if run.profile.identity.device_type == "cuda" else "cpu-x86"
            target = load_target(args.target[index] if index < len(args.target) else default)
            print(format_accuracy(accuracy_report(captured, run.profile, target, device), target))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from cost_models.calibration import calibrate, write_calibrated_spec
    from cost_models.measured import profiled_device_type
    from cost_models.profile import load_profiles

    check_writable_folder(Path(args.output).parent)
    target = load_target(args.target)
    device_type = profiled_device_type(target)
    if device_type is None:
        raise PartitionerError(f"{target.name} is a {target.kind} target; profiles measure CPUs (kind cpu) and CUDA "
                               "GPUs (kind gpu) only. Fix: calibrate a cpu or gpu target, or measure this device "
                               "with its vendor's tools and edit its spec's figures.")
    profile = next((p for p in load_profiles(Path(args.profiles)) if p.identity.device_type == device_type), None)
    if profile is None:
        raise PartitionerError(f"{args.profiles} holds no profile of a {device_type} device for {target.name}. Fix: "
                               f"run partitioner profile MODEL --device {device_type} -o {args.profiles}.")
    calibration = calibrate(profile, target)
    path = write_calibrated_spec(target, calibration, profile, Path(args.output))
    print(f"{target.name} on {profile.identity.describe()}: launch overhead "
          f"{calibration.launch_overhead_seconds * 1e6:.3g} us, compute efficiency {calibration.compute_efficiency:.3g}"
          f", memory efficiency {calibration.memory_efficiency:.3g} -> {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from partitioner.plan import Plan
    from partitioner.reporting.tables import print_report

    print_report(Plan.load(args.plan))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from partitioner.plan import Plan
    from partitioner.reporting.explain import explain_node

    print(explain_node(Plan.load(args.plan), args.node))
    return 0


def _run(args: argparse.Namespace) -> int:
    from partitioner.execution.check import run_plan
    from partitioner.plan import Plan

    plan = Plan.load(args.plan)
    if args.model:
        plan = plan.with_source(args.model)
    with Progress("live").step("running the partitioned model" + (" and the original" if args.check else "")):
        result = run_plan(plan, _device_map(args.device_map), check=args.check, rtol=args.rtol, atol=args.atol)
    _print_run(args.plan, result)
    return 0 if result.check is None or result.check.passed else 1


def _export(args: argparse.Namespace) -> int:
    from partitioner.onnx.export import MANIFEST_NAME, export_plan
    from partitioner.plan import Plan

    check_writable_folder(Path(args.output).parent)
    plan = Plan.load(args.plan)
    if args.model:
        plan = plan.with_source(args.model)
    whole = " with the whole model" if args.whole else ""
    with Progress("live").step(f"exporting {plan.model.name} to ONNX{whole}"):
        manifest = export_plan(plan, args.output, whole=args.whole, plan_path=args.plan)
    for partition in manifest.partitions:
        print(f"{partition.file:<28}{partition.execution_provider:<26}{len(partition.inputs)} in, "
              f"{len(partition.outputs)} out")
    if manifest.whole_model_file:
        print(f"{manifest.whole_model_file:<28}the unpartitioned model")
    print(f"\nwrote {Path(args.output) / MANIFEST_NAME} (opset {manifest.opset}, every file passed the full checker)")
    return 0


def _run_onnx(args: argparse.Namespace) -> int:
    from partitioner.onnx.chained_runner import ChainedOnnxModel, check_manifest

    if not args.check:
        manifest = ChainedOnnxModel(args.manifest).manifest
        print(f"{manifest.model_name}: {len(manifest.partitions)} files load; use --check to run and compare them")
        return 0
    with Progress("live").step("running the ONNX files and the original model"):
        result = check_manifest(args.manifest, args.model, rtol=args.rtol, atol=args.atol)
    print(f"max abs error {result.max_abs_error:.3g}")
    print(f"max rel error {result.max_rel_error:.3g}")
    for note in result.notes:
        print(f"accepted    {note}")
    for mismatch in result.mismatches:
        print(f"mismatch    {mismatch}")
    print("PASS" if result.passed else "FAIL")
    return 0 if result.passed else 1


def _print_run(plan_path: str, result: PlanRun) -> None:
    from partitioner.execution.check import describe_outputs

    targets = result.partition_targets
    order = " -> ".join(targets[:6]) + (" -> ..." if len(targets) > 6 else "")
    print(f"plan        {plan_path}: {result.model_name}, {len(targets)} partition{'s' if len(targets) != 1 else ''} ({order})")
    print(f"devices     {', '.join(f'{name}: {device}' for name, device in result.devices.items())}")
    print(f"outputs     {describe_outputs(result.partitioned.outputs)}")
    wall = f"{result.partitioned.seconds * 1e3:.1f} ms partitioned"
    if result.original is not None:
        wall += f", {result.original.seconds * 1e3:.1f} ms original"
    print(f"wall time   {wall} (one run, not a benchmark)")
    check = result.check
    if check is None:
        return
    tolerances = ", ".join(f"{dtype} rtol {t.rtol:g} atol {t.atol:g}" for dtype, t in check.tolerances.items())
    print(f"max abs error {check.max_abs_error:.3g}")
    print(f"max rel error {check.max_rel_error:.3g}")
    print(f"tolerance   {tolerances or 'exact'}")
    for mismatch in check.mismatches:
        print(f"mismatch    {mismatch}")
    print("PASS" if check.passed else "FAIL")


def _device_map(text: str) -> dict[str, str]:
    device_map = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        target, equals, device = (part.strip() for part in item.partition("="))
        if not (equals and target and device):
            raise PartitionerError(f"--device-map item {item!r} is not TARGET=DEVICE. "
                                   "Fix: write e.g. npu-example=cpu,cuda-h100=cuda:0.")
        device_map[target] = device
    return device_map


def _list_targets(args: argparse.Namespace) -> int:
    for name in builtin_target_names():
        target = load_target(name)
        support = "all ops" if target.support.supports_all_ops else f"{len(target.support.ops or ())} ops"
        print(f"{name:<14}{target.kind:<6}{target.price_per_hour:>7.2f} $/h  {target.memory_bytes / 1024**3:>5.0f} GiB"
              f"  {support:<9}  {target.description}")
    return 0


_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
# Below this CP-SAT does not get past building its model: the plan would silently be a baseline.
MIN_TIME_LIMIT_SECONDS = 0.01


def _duration(text: str) -> float:
    """Seconds from `50ms`, `800us`, `1.5s` or a bare number of seconds."""
    unit = next((u for u in ("us", "ms", "s") if text.endswith(u)), "")
    try:
        value = float(text.removesuffix(unit)) * _TIME_UNITS.get(unit, 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time; write e.g. 50ms, 800us or 0.05") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive time such as 50ms, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _time_limit(text: str) -> float:
    value = _positive_float(text)
    if value < MIN_TIME_LIMIT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_TIME_LIMIT_SECONDS:g} s for the solver to run, "
                                         f"got {text}")
    return value


def _tolerance(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (the default search) or a positive number of workers, got {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
