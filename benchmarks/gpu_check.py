"""The device check: how far a GPU spec, and that spec calibrated, are from the GPU this runs on, op by op.

On a machine with a CUDA GPU it profiles four models in float32 and bfloat16 (a 2-layer Llama of 7B width at
1 x 512 tokens, BERT-base at 8 x 128, ResNet-50 and ViT-B/16 at batch 8; real random weights), each op signature
timed alone as `partitioner profile --device cuda` times it, into one profile; calibrates the spec to that
profile (`partitioner calibrate`'s fit, size curves included); and prints predicted / measured for the built-in
spec and the calibrated one: per op (median, p10-p90, share within 2x, rank correlation), the ops summed against
their measured sum, and per op class, per model and dtype and over all of them. Each model's whole run is timed
too, beside its ops' predicted sum. A few minutes on an H100 (estimated: not yet run on one); `--device cpu
--target cpu-x86` runs the same check on a CPU. Not a test; writes Markdown and JSON, and keeps the profile.

    python benchmarks/gpu_check.py [--device cuda] [--target cuda-h100] [--models llama,bert,resnet50,vit]
                                   [--dtypes float32,bfloat16] [--batch 8] [--min-run-time 0.05] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost_models.accuracy import time_model  # noqa: E402
from cost_models.calibration import Residuals, calibrate, format_calibration  # noqa: E402
from cost_models.measured import is_timed, op_signature  # noqa: E402
from cost_models.profiling import profile_model  # noqa: E402
from cost_models.roofline import RooflineCostModel  # noqa: E402
from partitioner.errors import PartitionerError  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.frontend.capture import CapturedModel, capture  # noqa: E402
from partitioner.frontend.op_graph import NodeKind, annotate  # noqa: E402
from targets.loader import load_target  # noqa: E402
from targets.op_classes import op_class  # noqa: E402
from targets.spec import Target  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_TARGET = {"cuda": "cuda-h100", "cpu": "cpu-x86"}


def llama(dtype: torch.dtype, batch: int) -> tuple[torch.nn.Module, dict]:
    """Two layers of Llama-7B's width at one sequence of 512 tokens (the prefill shapes of a 7B model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    return LlamaForCausalLM(config).to(dtype).eval(), {"input_ids": torch.randint(0, 32000, (1, 512)),
                                                       "use_cache": False}


def bert(dtype: torch.dtype, batch: int) -> tuple[torch.nn.Module, dict]:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig()).to(dtype).eval(), {"input_ids": torch.randint(0, 30522, (batch, 128))}


def resnet50(dtype: torch.dtype, batch: int) -> tuple[torch.nn.Module, dict]:
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck")
    return ResNetModel(config).to(dtype).eval(), {"pixel_values": torch.randn(batch, 3, 224, 224, dtype=dtype)}


def vit(dtype: torch.dtype, batch: int) -> tuple[torch.nn.Module, dict]:
    """ViT-B/16 at 224 x 224 (transformers' default ViT config)."""
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig()).to(dtype).eval(), {"pixel_values": torch.randn(batch, 3, 224, 224, dtype=dtype)}


MODELS: dict[str, Callable[[torch.dtype, int], tuple[torch.nn.Module, dict]]] = {
    "llama": llama, "bert": bert, "resnet50": resnet50, "vit": vit}


@dataclass(frozen=True, slots=True)
class Row:
    """One group of ops (a model in a dtype, a dtype, an op class, or all), for the spec and the calibrated spec."""

    label: str
    ops: int
    spec: Residuals
    calibrated: Residuals | None
    run_error: dict[str, float] | None = None  # per cost model: its ops' predicted sum over the measured whole run


def captured_models(names: list[str], dtypes: list[str], batch: int) -> dict[tuple[str, str], CapturedModel]:
    captured = {}
    for name in names:
        for dtype in dtypes:
            torch.manual_seed(0)
            model, inputs = MODELS[name](DTYPES[dtype], batch)
            captured[name, dtype] = capture(model, inputs, name=f"{name}-{dtype}")
    return captured


def check(captured: dict[tuple[str, str], CapturedModel], device: str, target: Target, folder: Path,
          min_run_seconds: float = 0.05, whole_runs: bool = True) -> tuple[list[Row], str]:
    """Profile every model on `device` into one profile, calibrate `target` to it, and compare both specs with
    the measurements: rows per model and dtype, per dtype, over all, and per op class; and the calibration's
    description (or why it was refused)."""
    profile = None
    for model in captured.values():
        (run,) = profile_model(model, [device], folder, min_run_seconds=min_run_seconds)
        profile = run.profile
    try:
        calibration = calibrate(profile, target, size_curves=True)
        calibrated, described = calibration.applied_to(target), format_calibration(calibration)
    except PartitionerError as error:
        calibrated, described = None, f"calibration refused: {error}"
    roofline = RooflineCostModel()
    pairs: dict[tuple[str, str], list[tuple[str, float, float | None, float]]] = {}
    rows = []
    for (name, dtype), model in captured.items():
        graph = annotate(model.program)
        timed = [(node, profile.ops[op_signature(node)].seconds) for node in graph
                 if node.kind is NodeKind.COMPUTE and op_signature(node) in profile.ops]
        pairs[name, dtype] = [(op_class(node.op), roofline.compute_seconds(node, target),
                               roofline.compute_seconds(node, calibrated) if calibrated else None, seconds)
                              for node, seconds in timed]
        run_error = None
        if whole_runs:
            measured_run = time_model(model, device, repeats_seconds=1.0)
            run_error = {label: sum(roofline.compute_seconds(node, spec) for node in graph if is_timed(node))
                         / measured_run - 1 for label, spec in (("spec", target), ("calibrated", calibrated)) if spec}
        rows.append(_row(f"{name} {dtype}", pairs[name, dtype], run_error))
    for dtype in dict.fromkeys(dtype for _, dtype in captured):
        rows.append(_row(f"all {dtype}", [p for (_, d), group in pairs.items() if d == dtype for p in group]))
    everything = [p for group in pairs.values() for p in group]
    rows.append(_row("all", everything))
    for op_kind in sorted({kind for kind, *_ in everything}):
        for dtype in dict.fromkeys(dtype for _, dtype in captured):
            rows.append(_row(f"class {op_kind} {dtype}",
                             [p for (_, d), group in pairs.items() if d == dtype for p in group if p[0] == op_kind]))
    return [row for row in rows if row is not None], described


def _row(label: str, pairs: list[tuple[str, float, float | None, float]],
         run_error: dict[str, float] | None = None) -> Row | None:
    """The row of a group of (class, spec's, calibrated's, measured) times; None for a group with none."""
    if not pairs:
        return None
    measured = [m for *_, m in pairs]
    calibrated = None if any(c is None for _, _, c, _ in pairs) else Residuals.of([c for _, _, c, _ in pairs],
                                                                                 measured)
    return Row(label, len(pairs), Residuals.of([s for _, s, _, _ in pairs], measured), calibrated, run_error)


def markdown(rows: list[Row], described: str, device: str, target: str, seconds: float) -> str:
    def cells(residuals: Residuals | None) -> str:
        if residuals is None:
            return "- | - | - | -"
        return (f"{residuals.median:.2f} [{residuals.p10:.2f}-{residuals.p90:.2f}] | "
                f"{100 * residuals.within_2x:.0f}% | {residuals.rank_correlation:.2f} | "
                f"{100 * residuals.total_error:+.0f}%")

    lines = [f"# Device check: `{target}` against {device} ({seconds:.0f} s)", "",
             "Predicted / measured per op of each model (an op signature timed alone, counted once per node "
             "that has it); `sum` is the ops' predicted sum against "
             "their measured sum; `whole run` is that predicted sum (views included) against the model's measured "
             "run. Goals (issue 30): per-op median within 0.8-1.25, 75% within 2x, rank correlation above 0.6, "
             "sum within 25%.", "",
             "| ops | n | spec median [p10-p90] | within 2x | rank | sum | calibrated median [p10-p90] | within 2x"
             " | rank | sum | whole run (spec / calibrated) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        run = (" / ".join(f"{100 * error:+.0f}%" for error in row.run_error.values()) if row.run_error else "")
        lines.append(f"| {row.label} | {row.ops} | {cells(row.spec)} | {cells(row.calibrated)} | {run} |")
    return "\n".join(lines + ["", "```", described.strip(), "```", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--target", help="the spec to check (default: cuda-h100 on cuda, cpu-x86 on cpu)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--batch", type=int, default=8, help="BERT's, ResNet-50's and ViT's batch")
    parser.add_argument("--min-run-time", type=float, default=0.05, help="least seconds timing each op")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    unknown = [name for name in args.models.split(",") if name not in MODELS] + [
        dtype for dtype in args.dtypes.split(",") if dtype not in DTYPES]
    if unknown:
        raise SystemExit(f"unknown {', '.join(unknown)}; models: {', '.join(MODELS)}; dtypes: {', '.join(DTYPES)}")
    device_type = torch.device(args.device).type
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a machine with a GPU, or check a CPU with "
                         "--device cpu --target cpu-x86")
    target = load_target(args.target or DEFAULT_TARGET.get(device_type, "cuda-h100"))
    started = time.perf_counter()
    captured = captured_models(args.models.split(","), args.dtypes.split(","), args.batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu_check_{target.name}"
    with tempfile.TemporaryDirectory() as folder:
        rows, described = check(captured, args.device, target, Path(folder), args.min_run_time)
        # The measurements themselves, for `partitioner calibrate` and `--cost-model measured:` later.
        shutil.copytree(folder, out / f"{stem}_profile", dirs_exist_ok=True)
    seconds = time.perf_counter() - started
    device = torch.cuda.get_device_name(args.device) if device_type == "cuda" else "the CPU"
    text = markdown(rows, described, device, target.name, seconds) + (
        f"\nThe profile is in `{stem}_profile/`: `partitioner calibrate {out / f'{stem}_profile'} --target "
        f"{target.name} -o {target.name}-calibrated.toml` writes the calibrated spec.\n")
    write_atomically(out / f"{stem}.md", text)
    write_atomically(out / f"{stem}.json", json.dumps({"device": device, "target": target.name,
                                                         "seconds": seconds, "calibration": described,
                                                         "rows": [asdict(row) for row in rows]}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
