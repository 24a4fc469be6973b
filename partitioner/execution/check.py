"""Check a placed model: run a plan's partitioned module and compare it with the original model.

The last step after `compile`: it rebuilds the model a plan records, runs the
partitions on their devices and compares every output, leaf by leaf, with the
original model's under per-dtype tolerances. `partitioner run` is its CLI.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils import _pytree as pytree

from partitioner.errors import PartitionerError
from partitioner.execution.partitioned_module import build_partitioned_module, buffers_kept, resolve_devices
from partitioner.frontend.capture import CapturedModel, split_inputs
from partitioner.plan import Plan


@dataclass(frozen=True, slots=True)
class Tolerance:
    """An output matches when |actual - expected| <= atol + rtol * |expected|, element-wise."""

    rtol: float
    atol: float


REDUCED_PRECISION = (torch.float16, torch.bfloat16)
# How much farther from a float32 run a reduced-precision output may be than the model's own output is.
ERROR_FACTOR = 2.0

# torch.testing.assert_close's documented defaults; dtypes not listed (integers, bool) must match exactly.
_DEFAULT_TOLERANCES = {
    torch.float16: Tolerance(1e-3, 1e-5),
    torch.bfloat16: Tolerance(1.6e-2, 1e-5),
    torch.float32: Tolerance(1.3e-6, 1e-5),
    torch.float64: Tolerance(1e-7, 1e-7),
    torch.complex32: Tolerance(1e-3, 1e-5),
    torch.complex64: Tolerance(1.3e-6, 1e-5),
    torch.complex128: Tolerance(1e-7, 1e-7),
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """How far the partitioned module's outputs are from the original's, and whether that is within tolerance.

    `max_rel_error` is taken over the elements whose expected value is not zero;
    `tolerances` holds the tolerance used for each dtype compared; `mismatches`
    says, one line per output, which ones failed and how; `notes` names the
    reduced-precision outputs accepted against a float32 reference instead.
    """

    max_abs_error: float
    max_rel_error: float
    passed: bool
    tolerances: Mapping[str, Tolerance]
    mismatches: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TimedRun:
    """The outputs of one call and its wall time, device work included."""

    outputs: Any
    seconds: float


@dataclass(frozen=True, slots=True)
class PlanRun:
    """What `run_plan` did: the devices it ran on, one run's outputs and time, and the check if asked for."""

    model_name: str
    partition_targets: tuple[str, ...]
    devices: Mapping[str, str]
    partitioned: TimedRun
    original: TimedRun | None = None
    check: CheckResult | None = None


def run_plan(plan: Plan, device_map: Mapping[str, str] | None = None, *, check: bool = False,
             rtol: float | None = None, atol: float | None = None) -> PlanRun:
    """Run `plan`'s partitioned module once on its model's example inputs and, with `check`, compare it.

    Every input is validated before anything runs: the device map, the model
    (rebuilt from the plan's source and matched against its fingerprint), its
    weights. Inputs are copied for each run, so a model that writes to its
    inputs cannot change what the other run sees.
    """
    devices, emulated = _devices(plan, device_map)
    captured = plan.captured_model()
    require_real_weights(captured)
    example_inputs = _example_inputs(captured)
    original = None
    try:
        if check:
            reference = _reference_module(captured)
            with buffers_kept(reference):  # the partitioned run starts from the state the original run did
                original = run_timed(reference, example_inputs)
        module = build_partitioned_module(captured.program, plan.partitions, devices)
        partitioned = run_timed(module, example_inputs)
    except NotImplementedError as error:  # an op of the captured graph this torch has no kernel for here
        detail = (str(error).strip().splitlines() or ["not implemented"])[0]
        where = ", ".join(sorted({str(device) for device in devices.values()}))
        raise PartitionerError(
            f"{plan.model.name}'s graph holds an op torch cannot run on {where} ({detail}). Fix: run it on "
            "other devices (--device-map TARGET=DEVICE, e.g. cuda:0), or capture the model from a build whose code "
            "takes this device's path.") from None
    used = dict.fromkeys(p.target for p in plan.partitions)
    return PlanRun(
        model_name=plan.model.name,
        partition_targets=tuple(p.target for p in plan.partitions),
        devices={name: str(devices[name]) + (f" (emulating {emulated[name]})" if name in emulated else "")
                 for name in used},
        partitioned=partitioned,
        original=original,
        check=compare_outputs(original.outputs, partitioned.outputs, rtol, atol) if original else None,
    )


def check_partitioned(original: Callable, partitioned: Callable, example_inputs: Any, *,
                      rtol: float | None = None, atol: float | None = None) -> CheckResult:
    """Run both modules on `example_inputs` (as `capture` takes them) and compare their outputs.

    Call it to confirm that a partitioned module computes what the model computes.
    """
    expected = run_timed(original, example_inputs).outputs
    return compare_outputs(expected, run_timed(partitioned, example_inputs).outputs, rtol, atol)


def run_timed(module: Callable, example_inputs: Any) -> TimedRun:
    """Call `module` once on a copy of `example_inputs` in inference mode; time it, device work included."""
    args, kwargs = pytree.tree_map_only(torch.Tensor, torch.clone, split_inputs(example_inputs))
    with torch.inference_mode():
        start = time.perf_counter()
        outputs = module(*args, **kwargs)
        _wait_for_devices(outputs)
        seconds = time.perf_counter() - start
    return TimedRun(outputs, seconds)


def compare_outputs(expected: Any, actual: Any, rtol: float | None = None, atol: float | None = None,
                    float32_reference: Sequence[Any] | None = None) -> CheckResult:
    """Compare two output structures leaf by leaf; `rtol`/`atol` override the per-dtype defaults.

    With `float32_reference` (the leaves of a float32 run of the model), a float16 or bfloat16 output
    beyond its tolerance passes when it is no farther from the float32 result than ERROR_FACTOR times
    the expected output's own distance from it: the two runs then differ by rounding, not by a mistake.
    """
    expected_leaves = pytree.tree_flatten_with_path(expected)[0]
    actual_leaves = pytree.tree_leaves(actual)
    if len(expected_leaves) != len(actual_leaves):
        problem = f"the partitioned module returned {len(actual_leaves)} outputs, the model {len(expected_leaves)}"
        return CheckResult(math.inf, math.inf, False, {}, (problem,))
    references = list(float32_reference) if float32_reference is not None else [None] * len(expected_leaves)
    max_abs, max_rel, tolerances, mismatches, notes = 0.0, 0.0, {}, [], []
    for (path, want), got, exact in zip(expected_leaves, actual_leaves, references):
        name = pytree.keystr(path) or "output"
        if not isinstance(want, torch.Tensor):
            if want != got:
                mismatches.append(f"{name}: {got!r} where the model returns {want!r}")
            continue
        tolerance = _tolerance(want.dtype, rtol, atol)
        tolerances[str(want.dtype).removeprefix("torch.")] = tolerance
        leaf_abs, leaf_rel, problem = _compare_tensor(name, want, got, tolerance)
        max_abs, max_rel = max(max_abs, leaf_abs), max(max_rel, leaf_rel)
        if problem and exact is not None and want.dtype in REDUCED_PRECISION and math.isfinite(leaf_abs):
            problem, note = _against_float32(name, want, got, exact)
            notes += [note] if note else []
        if problem:
            mismatches.append(problem)
    return CheckResult(max_abs, max_rel, not mismatches, tolerances, tuple(mismatches), tuple(notes))


def _against_float32(name: str, want: torch.Tensor, got: torch.Tensor, exact: torch.Tensor
                     ) -> tuple[str | None, str | None]:
    """(problem, note) for a reduced-precision output judged by its distance from the float32 result."""
    expected_error, actual_error = _max_abs_difference(want, exact), _max_abs_difference(got, exact)
    described = f"{name} ({_describe(want)})"
    if actual_error <= ERROR_FACTOR * expected_error:
        return None, (f"{described}: {actual_error:.3g} from the float32 result, where the model's own "
                      f"{_describe(want).split('[')[0]} is {expected_error:.3g}: rounding, not a wrong result")
    return (f"{described}: {actual_error:.3g} from the float32 result, more than {ERROR_FACTOR:g} times the model's "
            f"own {expected_error:.3g}"), None


def _max_abs_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    difference = (value.detach().cpu().double() - reference.detach().cpu().double()).abs()
    return difference.nan_to_num(nan=math.inf).max().item() if difference.numel() else 0.0


def describe_outputs(outputs: Any, limit: int = 6) -> str:
    """The outputs' names, dtypes and shapes on one line, e.g. `['logits'] float32[1, 1000]`."""
    leaves = pytree.tree_flatten_with_path(outputs)[0]
    parts = [f"{pytree.keystr(path) or 'output'} "
             f"{_describe(leaf) if isinstance(leaf, torch.Tensor) else type(leaf).__name__}"
             for path, leaf in leaves[:limit]]
    if len(leaves) > limit:
        parts.append(f"... ({len(leaves)} outputs)")
    return ", ".join(parts)


def require_real_weights(captured: CapturedModel) -> None:
    """Refuse a model whose weights or example inputs live on the meta device: it can be planned, not run."""
    tensors = [*captured.program.state_dict.values(), *captured.program.constants.values(),
               *pytree.tree_leaves(captured.example_inputs)]
    if not any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
        return
    if captured.source is not None and captured.source.kind == "folder":
        raise PartitionerError(
            f"the model folder {captured.source.path} holds no weights (model.safetensors or its index): it can "
            "be planned but not run. Fix: save the model's weights into it (model.save_pretrained(folder)).")
    raise PartitionerError(
        f"the model {captured.name} has its weights on the meta device: it can be planned but not run. "
        "Fix: build it with real weights (e.g. without `with torch.device('meta')` in build()) "
        "and pass that file with --model."
    )


def _compare_tensor(name: str, want: torch.Tensor, got: Any, tolerance: Tolerance) -> tuple[float, float, str | None]:
    """The largest absolute and relative error of one output, and a line describing it if it fails."""
    described = f"{name} ({_describe(want)})"
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
        found = _describe(got) if isinstance(got, torch.Tensor) else type(got).__name__
        return math.inf, math.inf, f"{described}: the partitioned module returned {found}"
    want, got = want.detach().cpu(), got.detach().cpu()
    wide = torch.complex128 if want.is_complex() else torch.float64
    want_wide, got_wide = want.to(wide), got.to(wide)
    same = (want_wide == got_wide) | (want_wide.isnan() & got_wide.isnan())
    error = torch.where(same, 0.0, (got_wide - want_wide).abs().nan_to_num(nan=math.inf))
    differs = ~same & (want_wide != 0)
    relative = (error[differs] / want_wide[differs].abs()).nan_to_num(nan=math.inf)  # a NaN or inf expected
    leaf_abs = error.max().item() if error.numel() else 0.0
    leaf_rel = relative.max().item() if relative.numel() else 0.0
    close = torch.isclose(got_wide, want_wide, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
    failing = int(close.numel() - close.sum())
    if failing == 0:
        return leaf_abs, leaf_rel, None
    return leaf_abs, leaf_rel, (f"{described}: {failing} of {close.numel()} elements differ beyond rtol "
                                f"{tolerance.rtol:g}, atol {tolerance.atol:g} (max abs error {leaf_abs:.3g})")


def _tolerance(dtype: torch.dtype, rtol: float | None, atol: float | None) -> Tolerance:
    default = _DEFAULT_TOLERANCES.get(dtype, Tolerance(0.0, 0.0))
    return Tolerance(default.rtol if rtol is None else rtol, default.atol if atol is None else atol)


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"


def _devices(plan: Plan, device_map: Mapping[str, str] | None) -> tuple[dict[str, torch.device], dict[str, str]]:
    """Each target's torch device, and for targets that do not run on their own hardware (TargetRecord.emulated_on)
    the spec they stand in for."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the emulated targets are reported in the result instead
        devices = resolve_devices({t.name: t.torch_device for t in plan.targets}, device_map)
    emulated = {t.name: t.spec_name for t in plan.targets
                if t.name not in (device_map or {}) and t.emulated_on(str(devices[t.name]))}
    return devices, emulated


def _example_inputs(captured: CapturedModel) -> Any:
    if captured.example_inputs is not None:
        return captured.example_inputs
    if captured.program.example_inputs is not None:  # a saved ExportedProgram keeps the inputs it was exported on
        return captured.program.example_inputs
    raise PartitionerError(
        f"the model {captured.name} comes without example inputs to run it on. "
        "Fix: pass a Python file whose build() returns (model, example_inputs) with --model."
    )


def _reference_module(captured: CapturedModel) -> Callable:
    # A .pt2 file holds no original module: the unpartitioned exported program stands in for it.
    return captured.model if captured.model is not None else captured.program.module()


def _wait_for_devices(outputs: Any) -> None:
    for device_type in {t.device.type for t in pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor)}:
        backend = getattr(torch, device_type, None)
        if device_type != "cpu" and hasattr(backend, "synchronize"):
            backend.synchronize()
