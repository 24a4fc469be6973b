"""What each `partitioner` command does: load its inputs, run the passes, print or write the result.

Heavy modules (torch, ONNX Runtime, OR-Tools) are imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from partitioner.errors import PartitionerError
from partitioner.files import check_writable_folder, output_path
from partitioner.placement.objectives import objective_named
from partitioner.progress import Progress
from targets.loader import DEFAULT_TARGET_NAMES, load_target, loadable_targets

if TYPE_CHECKING:
    from cost_models.base import CostModel
    from targets.spec import Target
    from partitioner.execution.check import PlanRun
    from targets.fleet import Fleet
    import torch
    from partitioner.llm.deployment import LLMPlan
    from partitioner.frontend.model_folder import FolderInputs


def compile_command(args: argparse.Namespace) -> int:
    """Plan a model (or, with --workload, an LLM's serving) and write the plan. With --json, stdout holds the result
    object alone: whatever the model's own code prints while it is built and captured goes to stderr."""
    result_stream = sys.stdout
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        return _compile(args, result_stream)


def _compile(args: argparse.Namespace, result_stream: TextIO) -> int:
    from cost_models.measured import MeasuredCostModel
    from partitioner.compiler import compile_captured
    from partitioner.frontend.capture import load_model_file
    from partitioner.placement.pins import parse_pins
    from partitioner.placement.solver import SolverOptions
    from partitioner.reporting.html_report import write_html_report

    output = output_path(args.output)
    if output.exists() and not output.is_dir():
        raise PartitionerError(f"output {str(output)!r} is a file, not a folder. Fix: give a folder with -o.")
    check_writable_folder(output)
    progress = Progress("quiet" if args.quiet else "json" if args.json else "live")
    cost_model = _cost_model(args.cost_model)
    targets = _planning_targets(args)
    if args.workload is not None:
        return _compile_llm(args, output, progress, cost_model, targets, result_stream)
    if args.expert_shards is not None:
        raise PartitionerError("--expert-shards splits the experts of an LLM planned for a workload. Fix: add "
                               "--workload, or drop --expert-shards.")
    if args.no_tensor_parallel:
        raise PartitionerError("--no-tensor-parallel keeps the layers of an LLM planned for a workload whole. Fix: "
                               "add --workload, or drop --no-tensor-parallel.")
    pins = parse_pins(args.pin, args.forbid)
    objective = objective_named(args.objective or "latency")
    options = SolverOptions(time_limit_seconds=args.time_limit, workers=args.workers, seed=args.seed,
                            deterministic=args.deterministic,
                            on_progress=lambda best, bound: progress.solver_update(best, bound, objective.unit.name))
    with progress.step(f"capturing {args.model}"):
        captured = load_model_file(args.model, _folder_inputs(args), weights=False)  # planning needs no weights
    with progress.step("planning"):
        plan = compile_captured(captured, targets, objective, max_latency_seconds=args.max_latency,
                                min_throughput=args.min_throughput, fallback=args.fallback, solver_options=options,
                                cost_model=cost_model, pins=pins, progress=progress, **_engine_hop(args))
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
                          "makespan_seconds": result.makespan_seconds, "partitions": len(plan.partitions)}),
              file=result_stream)
        return 0
    if not args.quiet:
        print(plan.summary())
        print(f"\nwrote {path} and {output / 'report.html'}")
    return 0


def _planning_targets(args: argparse.Namespace) -> list[str] | Fleet:
    """What to plan on, from --targets or --fleet (never both): target names, or a fleet."""
    from targets.fleet import builtin_fleet_names, load_fleet

    if args.fleet is None:
        if args.targets is None:
            return list(DEFAULT_TARGET_NAMES)
        targets = _listed(args.targets)
        if not targets:
            raise PartitionerError(f"--targets {args.targets!r} names no target. Fix: name at least one, e.g. "
                                   f"--targets {','.join(DEFAULT_TARGET_NAMES)}.")
        return targets
    if args.targets is not None:
        raise PartitionerError("--fleet and --targets both say what to plan on. Fix: give one of them (a fleet "
                               "names its targets with their counts).")
    if not args.fleet.strip():
        raise PartitionerError(f"--fleet '' names no fleet. Fix: give a built-in fleet "
                               f"({', '.join(builtin_fleet_names())}), a .toml fleet file, or name=count pairs.")
    return load_fleet(args.fleet)


def _compile_llm(args: argparse.Namespace, output: Path, progress: Progress, cost_model: CostModel,
                 targets: list[str] | Fleet, result_stream: TextIO) -> int:
    """compile --workload: both phases of an LLM, planned per token (partitioner/llm/planning.py)."""
    from partitioner.frontend.capture import build_model_file
    from partitioner.llm.planning import plan_llm
    from partitioner.llm.summary import format_llm_summary
    from partitioner.reporting.llm_html_report import write_llm_html_report
    from targets.fleet import Fleet, load_fleet
    from targets.workload import load_workload

    workload = load_workload(args.workload)
    if args.model.endswith(".pt2"):
        raise PartitionerError("--workload captures prefill and decode itself, so it needs the model, not one "
                               "exported pass. Fix: give file.py (with build()) or file.py:function.")
    fleet = targets if isinstance(targets, Fleet) else load_fleet(",".join(f"{name}=1" for name in targets))
    if args.pin or args.forbid:
        raise PartitionerError("--pin and --forbid do not apply with --workload yet: LLM planning does not take "
                               "pins. Fix: drop them, or plan one phase's model without --workload.")
    for flag, value in (("--objective", args.objective), ("--max-latency", args.max_latency),
                        ("--min-throughput", args.min_throughput)):
        if value:
            raise PartitionerError(f"{flag} does not apply with --workload, which minimises money per output token "
                                   "within the workload's limits. Fix: drop it and set ttft_ms, tpot_ms or "
                                   "requests_per_second in the workload file.")
    if _folder_inputs(args) is not None:
        raise PartitionerError("--batch, --tokens and --image-size size one pass of a model folder; with --workload "
                               "the workload sizes prefill and decode. Fix: drop them.")
    with progress.step(f"building {args.model}"):
        model, _, source = build_model_file(args.model, weights=False)  # planning needs no weights
    with progress.step(f"planning {workload.name} (prefill, decode at several batch sizes, two deployments)"):
        plan = plan_llm(model, workload, fleet, time_limit_seconds=args.time_limit, cost_model=cost_model,
                        source=source, name=Path(source.path).stem, fallback=args.fallback,
                        expert_shards=args.expert_shards, workers=args.workers, seed=args.seed,
                        deterministic=args.deterministic, tensor_parallel=not args.no_tensor_parallel,
                        **_engine_hop(args))
    path = plan.save(output / "llm_plan.json")
    page = write_llm_html_report(plan, output / "report.html")
    if args.json:
        print(json.dumps({"plan": str(path), "report": str(page),
                          **{k: v for k, v in plan.best.to_dict().items() if k != "placement"}}), file=result_stream)
    elif not args.quiet:
        print(format_llm_summary(plan))
        print(f"\nwrote {path} and {page}")
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


def profile_command(args: argparse.Namespace) -> int:
    from cost_models.accuracy import accuracy_report, format_accuracy
    from cost_models.profiling import profile_model
    from partitioner.execution.check import require_real_weights
    from partitioner.frontend.capture import load_model_file

    devices = args.device or ["cpu"]
    if len(args.target) > len(devices):
        raise PartitionerError(f"{len(args.target)} --target for {len(devices)} --device. Fix: give at most one "
                               "target per device, in the same order.")
    output = output_path(args.output)
    check_writable_folder(output)
    progress = Progress("quiet" if args.quiet else "json" if args.json else "live")
    with progress.step(f"capturing {args.model}"):
        captured = load_model_file(args.model)
    if args.report:
        require_real_weights(captured)  # before minutes of timing, not after (profile_model checks --in-model)
    with progress.step(f"profiling on {', '.join(devices)}"):
        runs = profile_model(captured, devices, output, args.min_run_time, in_model=args.in_model,
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


def calibrate_command(args: argparse.Namespace) -> int:
    from cost_models.calibrated_spec import check_spec_name, write_calibrated_spec
    from cost_models.calibration import calibrate, format_calibration
    from cost_models.measured import profiled_device_type
    from cost_models.profile import load_profiles

    output = output_path(args.output, example=f"{Path(args.target).stem}-calibrated.toml")
    check_writable_folder(output.parent)
    check_spec_name(output)
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
    path = write_calibrated_spec(target, calibration, profile, output)
    print(f"{target.name} on {profile.identity.describe()}, predicted / measured per op:")
    print(format_calibration(calibration))
    print(f"wrote {path}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from partitioner.files import PLAN, read_json
    from partitioner.llm.deployment import checked_llm_plan
    from partitioner.llm.summary import format_llm_summary
    from partitioner.plan import Plan, is_llm_plan
    from partitioner.reporting.tables import print_report

    data = read_json(args.plan, PLAN)
    if is_llm_plan(data):
        print(format_llm_summary(checked_llm_plan(data, args.plan)))
        return 0
    print_report(Plan.load(args.plan))
    return 0


def explain_command(args: argparse.Namespace) -> int:
    from partitioner.files import PLAN, read_json
    from partitioner.llm.deployment import checked_llm_plan
    from partitioner.plan import Plan, is_llm_plan
    from partitioner.reporting.explain import explain_node
    from partitioner.reporting.explain_llm import explain_llm_node

    data = read_json(args.plan, PLAN)
    if is_llm_plan(data):
        print(explain_llm_node(checked_llm_plan(data, args.plan), args.node))
        return 0
    print(explain_node(Plan.load(args.plan), args.node))
    return 0


def run_command(args: argparse.Namespace) -> int:
    from partitioner.execution.check import run_plan
    from partitioner.files import PLAN, read_json
    from partitioner.plan import Plan, is_llm_plan

    data = read_json(args.plan, PLAN)
    if is_llm_plan(data):
        return _check_llm_plan(args, data)
    plan = Plan.load(args.plan)
    if args.model:
        plan = plan.with_source(args.model)
    with Progress("live").step("running the partitioned model" + (" and the original" if args.check else "")):
        result = run_plan(plan, _device_map(args.device_map), check=args.check, rtol=args.rtol, atol=args.atol)
    _print_run(args.plan, result)
    return 0 if result.check is None or result.check.passed else 1


def _check_llm_plan(args: argparse.Namespace, data: dict) -> int:
    """run --check on an LLM plan: prefill and a decode step run as placed beside the model, then greedy
    generation through them beside `generate`; then each tensor-parallel group of its deployment, its members as processes here, generates beside the model's own
    greedy `generate`."""
    from partitioner.execution.llm_phases import check_generation, check_phases
    from partitioner.execution.tensor_parallel import NEW_TOKENS, check_split, example_prompts, split_runs
    from partitioner.llm.deployment import KV_CACHE, checked_llm_plan

    if not args.check:
        raise PartitionerError("an LLM plan runs as a check against the model (its phases as placed, its "
                               "tensor-parallel groups). Fix: add --check.")
    plan = checked_llm_plan(data, args.plan)
    held = "KV cache" if plan.decode_state is KV_CACHE else "states"
    if args.device_map:
        raise PartitionerError("--device-map does not apply to an LLM plan's check: each member of a group runs on "
                               "the device the model is built on. Fix: drop --device-map.")
    runs = split_runs(plan.best.collectives.values())
    model = _llm_plan_model(plan, args.plan, args.model)
    failed = 0
    with Progress("live").step("running prefill and a decode step as placed, and the model"):
        phases = check_phases(plan, model)
    for phase in phases:
        size = f"of {phase.size} prompt tokens" if phase.phase == "prefill" else f"step at batch {phase.size}"
        verdict = "OK" if phase.check.passed else "MISMATCH"
        partitions = f"{phase.partitions} partition{'s' if phase.partitions != 1 else ''}"
        print(f"{phase.phase} {size} as placed ({partitions} on {', '.join(phase.places)}): "
              f"logits and {held} at most {phase.check.max_abs_error:.3g} from the model's -> {verdict}")
        for line in (*phase.check.mismatches, *phase.check.notes):
            print(f"  {line}")
        failed += not phase.check.passed
    prompts = example_prompts(model)
    with Progress("live").step("generating through the placed phases, and with the model"):
        generation = check_generation(plan, model, prompts, NEW_TOKENS)
    if generation is None:
        print(f"generation as placed: not run ({plan.model_name} says how to call it, not how to hand a prefilled "
              "cache to a decode batch)")
    else:
        agreed = "the model's tokens" if generation.same_steps == generation.new_tokens else (
            f"the model's tokens for {generation.same_steps} of {generation.new_tokens} steps, then others"
            + (" (reduced precision: judged by the phases' logits above)" if generation.reduced_precision else ""))
        print(f"generation as placed, {generation.prompts} prompts of {prompts.shape[1]} tokens each prefilled "
              f"alone, their {'KV caches' if held == 'KV cache' else held} handed to one decode batch: {agreed} -> "
              f"{'OK' if generation.passed else 'MISMATCH'}")
        failed += not generation.passed
    for run in runs:
        with Progress("live").step(f"generating with {run.degree} members splitting {len(run.modules)} modules, "
                                   "and with the model"):
            check = check_split(model, run, prompts, rtol=args.rtol, atol=args.atol)
        tokens = "the model's tokens" if check.same_tokens else (
            f"the model's tokens for {check.same_steps} of {check.steps} steps, then others")
        verdict = "OK" if check.passed else "MISMATCH"
        print(f"tensor-parallel group of {run.degree} ({len(run.modules)} modules split), {prompts.shape[0]} prompts "
              f"of {prompts.shape[1]} tokens: {tokens}; logits at most {check.logits.max_abs_error:.3g} from the "
              f"model's -> {verdict} ({check.seconds:.1f} s)")
        for line in (*check.logits.mismatches, *check.logits.notes):
            print(f"  {line}")
        failed += not check.passed
    return 1 if failed else 0


def _llm_plan_model(plan: LLMPlan, plan_path: str, model_spec: str | None) -> torch.nn.Module:
    """The model an LLM plan was compiled for (LLMPlan.built_model), or one error naming the plan file."""
    if model_spec is None and plan.source is None:
        raise PartitionerError(f"{plan_path} does not say where its model came from (written before plans recorded "
                               "it). Fix: give the model with --model file.py[:function].")
    return plan.built_model(model_spec)


# Requests of a --prompts file whose generated tokens serve prints.
MOST_COMPLETIONS_SHOWN = 5
# Requests in flight a plan's deployment serves by default (an LLM plan's: its decode batches, one per device).
DEFAULT_CONCURRENCY = 8


def serve_command(args: argparse.Namespace) -> int:
    from partitioner.deploy.ray_engine import deploy_on_ray
    from partitioner.deploy.ray_instance import require_ray
    from partitioner.deploy.summary import format_measurement
    from partitioner.files import PLAN, read_json
    from partitioner.llm.deployment import checked_llm_plan
    from partitioner.plan import Plan, is_llm_plan

    require_ray()
    data = read_json(args.plan, PLAN)
    if is_llm_plan(data):
        return _serve_llm_plan(args, checked_llm_plan(data, args.plan))
    plan = Plan.load(args.plan)
    if args.model:
        plan = plan.with_source(args.model)
    if args.prompts:
        raise PartitionerError("--prompts gives an LLM plan its requests; this plan serves copies of its model's "
                               "example inputs. Fix: drop --prompts.")
    in_flight = min(args.concurrency or DEFAULT_CONCURRENCY, args.requests)  # more in flight than requests sent holds nothing more
    progress = Progress("live")
    with progress.step(f"starting one Ray actor per device of {plan.model.name}"):
        deployment = deploy_on_ray(plan, address=args.address, max_in_flight=in_flight,
                                   request_timeout_seconds=args.timeout)
    with deployment:
        with progress.step(f"serving {args.requests} requests, {in_flight} in flight"):
            measurement = deployment.benchmark(args.requests, in_flight)
    print(format_measurement(measurement, plan))
    return 0


def _serve_llm_plan(args: argparse.Namespace, plan: LLMPlan) -> int:
    """serve on an LLM plan: one actor per device generating tokens for requests drawn from the workload (or read
    from --prompts), measured beside the plan's tokens per second, TTFT and TPOT."""
    from partitioner.deploy.llm_engine import deploy_llm_on_ray
    from partitioner.deploy.llm_requests import jsonl_requests, workload_requests
    from partitioner.deploy.summary import format_llm_measurement
    from partitioner.llm.phases import vocabulary_size

    model = _llm_plan_model(plan, args.plan, args.model)
    vocabulary = vocabulary_size(model)
    requests = (jsonl_requests(args.prompts, vocabulary, plan.workload.output.longest) if args.prompts
                else workload_requests(plan.workload, args.requests, vocabulary, seed=args.seed))
    progress = Progress("live")
    with progress.step(f"capturing both phases of {plan.model_name} and starting one Ray actor per device"):
        deployment = deploy_llm_on_ray(plan, model, address=args.address, batches_in_flight=args.concurrency,
                                       timeout_seconds=args.timeout)
    with deployment:
        with progress.step(f"serving {len(requests)} requests, {deployment.batches_in_flight} decode batches of "
                           f"{deployment.batch_size} in flight"):
            measurement = deployment.benchmark(requests)
    print(format_llm_measurement(measurement, plan))
    if args.prompts:  # the user's own prompts: show what they got
        shown = min(len(requests), MOST_COMPLETIONS_SHOWN)
        print(f"\ntokens      the first {shown} of {len(requests)} requests' generated ids (greedy):")
        for number, (request, tokens) in enumerate(zip(requests[:shown], measurement.outputs), start=1):
            print(f"  {number}: {request.prompt_tokens} prompt tokens -> {' '.join(map(str, tokens))}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from partitioner.files import PLAN, read_json
    from partitioner.llm.deployment import checked_llm_plan
    from partitioner.onnx.export import MANIFEST_NAME, export_plan
    from partitioner.plan import Plan, is_llm_plan

    output = output_path(args.output)
    check_writable_folder(output.parent)
    data = read_json(args.plan, PLAN)
    if is_llm_plan(data):
        return _export_llm_plan(args, checked_llm_plan(data, args.plan), output)
    plan = Plan.load(args.plan)
    if args.model:
        plan = plan.with_source(args.model)
    whole = " with the whole model" if args.whole else ""
    with Progress("live").step(f"exporting {plan.model.name} to ONNX{whole}"):
        manifest = export_plan(plan, output, whole=args.whole, plan_path=args.plan)
    for partition in manifest.partitions:
        compiled = f"; its compiler made {', '.join(partition.compiled)}" if partition.compiled else ""
        compiled += f" ({partition.note})" if partition.note else ""
        print(f"{partition.file:<28}{partition.execution_provider:<26}{len(partition.inputs)} in, "
              f"{len(partition.outputs)} out{compiled}")
    if manifest.whole_model_file:
        print(f"{manifest.whole_model_file:<28}the unpartitioned model")
    print(f"\nwrote {output / MANIFEST_NAME} (opset {manifest.opset}, every file passed the full checker)")
    return 0


def _export_llm_plan(args: argparse.Namespace, plan: LLMPlan, output: Path) -> int:
    """export on an LLM plan: each phase at each size it serves, one ONNX file per partition, a folder each."""
    from partitioner.onnx.llm_export import LLM_MANIFEST_NAME, export_llm_plan

    model = _llm_plan_model(plan, args.plan, args.model)
    with Progress("live").step(f"capturing and exporting each phase of {plan.model_name} to ONNX"):
        phases = export_llm_plan(plan, model, output, whole=args.whole, plan_path=args.plan)
    for exported in phases:
        for partition in exported.manifest.partitions:
            print(f"{exported.folder + '/' + partition.file:<36}{partition.execution_provider:<26}"
                  f"{len(partition.inputs)} in, {len(partition.outputs)} out")
    print(f"\nwrote {output / LLM_MANIFEST_NAME} ({len(phases)} phases, each with its manifest.json; every file "
          "passed the full checker)")
    return 0


def run_onnx_command(args: argparse.Namespace) -> int:
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


def _listed(text: str) -> list[str]:
    """The items of a comma-separated option, stripped, empty ones dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _device_map(text: str) -> dict[str, str]:
    """--device-map's TARGET=DEVICE pairs; a device no model runs on (not a torch device, or meta) is refused."""
    from targets.spec_reader import device_problem

    device_map = {}
    for item in _listed(text):
        target, equals, device = (part.strip() for part in item.partition("="))
        if not (equals and target and device):
            raise PartitionerError(f"--device-map item {item!r} is not TARGET=DEVICE. "
                                   "Fix: write e.g. npu-example=cpu,cuda-h100=cuda:0.")
        problem = device_problem(device)
        if problem is not None:
            raise PartitionerError(f"--device-map {item!r}: {problem}. Fix: map {target} to a device that runs "
                                   "models, e.g. cpu or cuda:0.")
        if target in device_map:
            raise PartitionerError(f"--device-map maps {target} twice. Fix: map each target once.")
        device_map[target] = device
    return device_map


def coverage_command(args: argparse.Namespace) -> int:
    from partitioner.frontend.capture import load_model_file
    from partitioner.frontend.op_graph import annotate
    from partitioner.reporting.coverage import coverage, format_coverage

    names = _listed(args.targets) if args.targets is not None else None
    if names == []:
        raise PartitionerError(f"--targets {args.targets!r} names no target. Fix: name at least one, e.g. "
                               f"--targets {','.join(DEFAULT_TARGET_NAMES)}, or leave --targets out for every one.")
    targets = [load_target(name) for name in names] if names is not None else _every_target()
    with Progress("live").step("capturing the model"):
        captured = load_model_file(args.model, weights=False)
    print(format_coverage(captured.name, coverage(annotate(captured.program), targets), args.top))
    return 0


def targets_command(args: argparse.Namespace) -> int:
    """Every target that loads by name: the built-in ones, then installed plug-ins' (with the package); a plug-in
    that does not load is named with its error, and the others are listed all the same."""
    for target in _every_target():
        support = "all ops" if target.support.supports_all_ops else f"{len(target.support.ops or ())} ops"
        hooks = [hook for hook in ("support", "cost", "compile") if target.hooks and getattr(target.hooks, hook)]
        origin = target.origin + (f" (hooks: {', '.join(hooks)})" if hooks else "")
        print(f"{target.name:<15}{target.kind:<6}{target.price_per_hour:>7.2f} $/h  "
              f"{target.memory_bytes / 1024**3:>5.0f} GiB  {support:<9}  {target.description}; {origin}")
    return 0


def _every_target() -> tuple[Target, ...]:
    """Every target that loads by name; each plug-in (or plug-in target) that does not is a warning, not a failure
    of the whole listing."""
    targets, problems = loadable_targets()
    for problem in problems:
        print(f"partitioner: warning: {problem}", file=sys.stderr)
    return targets


def _folder_inputs(args: argparse.Namespace) -> FolderInputs | None:
    """The sizes of a model folder's example inputs that compile was given (None: none given)."""
    from partitioner.frontend.model_folder import FolderInputs

    given = {"batch": args.batch, "tokens": args.tokens, "image_size": args.image_size}
    if all(value is None for value in given.values()):
        return None
    defaults = FolderInputs()
    return FolderInputs(args.batch or defaults.batch, args.tokens or defaults.tokens, args.image_size)


def _engine_hop(args: argparse.Namespace) -> dict[str, float]:
    """The engine's time per hop the command was given (--engine-hop), as planning's keyword; none: the default."""
    return {} if args.engine_hop is None else {"engine_hop_seconds": args.engine_hop}
