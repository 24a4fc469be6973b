"""Calibration: fit a target's roofline constants to a profile of its real device, and write them as a spec.

The roofline predicts launch overhead plus the longer of FLOPs over derated
peak and bytes over derated bandwidth. From measured ops we fit the launch
overhead (the time of the quickest ops), the compute efficiency (from ops the
roofline calls compute-bound) and the memory efficiency (from memory-bound
ones), each a median so a few odd ops do not drag it, overall and for each op
class (matmul, convolution, ...) that enough measured ops inform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from cost_models.profile import OpMeasurement, Profile
from partitioner.errors import PartitionerError
from partitioner.files import write_atomically
from targets.loader import builtin_target_names
from targets.op_classes import OP_CLASSES, op_class
from targets.spec import RooflineConstants, Target

# Ops must take this many launch overheads to say anything about throughput.
_INFORMATIVE_LAUNCHES = 2.0
# An op class gets its own efficiencies from this many informative ops.
MIN_CLASS_OPS = 3
_LOWEST_EFFICIENCY = 1e-4


@dataclass(frozen=True, slots=True)
class Calibration:
    """Fitted roofline constants, overall and per op class, and how many measured ops each rests on."""

    launch_overhead_seconds: float
    compute_efficiency: float
    memory_efficiency: float
    compute_bound_ops: int
    memory_bound_ops: int
    op_classes: Mapping[str, RooflineConstants] = field(default_factory=dict)

    def applied_to(self, target: Target) -> Target:
        return replace(target, launch_overhead_seconds=self.launch_overhead_seconds,
                       compute_efficiency=self.compute_efficiency, memory_efficiency=self.memory_efficiency,
                       op_classes=dict(self.op_classes))


def calibrate(profile: Profile, target: Target) -> Calibration:
    """The roofline constants of `target` that best explain the op times in `profile`: one launch overhead
    (the quickest ops' time), and compute and memory efficiencies overall and for each op class with at
    least MIN_CLASS_OPS informative ops."""
    ops = list(profile.ops.values())
    if len(ops) < 3:
        raise PartitionerError(f"a profile with {len(ops)} measured ops cannot calibrate {target.name}. Fix: profile "
                               "a model with more ops (e.g. examples/bert_base.py).")
    launch = float(np.percentile([op.seconds for op in ops], 10))
    overall = _efficiencies(ops, target, launch)
    classes = {}
    for name in OP_CLASSES:
        fitted = _efficiencies([op for op in ops if op_class(op.op) == name], target, launch, overall)
        if len(fitted.compute_ratios) + len(fitted.memory_ratios) >= MIN_CLASS_OPS:
            classes[name] = RooflineConstants(fitted.compute, fitted.memory, launch)
    return Calibration(launch, overall.compute, overall.memory, len(overall.compute_ratios),
                       len(overall.memory_ratios), classes)


@dataclass(frozen=True, slots=True)
class _Efficiencies:
    compute: float
    memory: float
    compute_ratios: list[float]
    memory_ratios: list[float]


def _efficiencies(ops: list[OpMeasurement], target: Target, launch: float,
                  otherwise: _Efficiencies | None = None) -> _Efficiencies:
    """Median efficiencies of compute-bound and memory-bound ops (as the spec's roofline classes them), each
    falling back to `otherwise` (or the spec) where no op informs it."""
    compute_ratios, memory_ratios = [], []
    for op in ops:
        busy = op.seconds - launch
        if op.seconds < _INFORMATIVE_LAUNCHES * launch or busy <= 0:
            continue
        compute, memory = _ideal_seconds(op, target)
        if compute / target.compute_efficiency >= memory / target.memory_efficiency:
            compute_ratios.append(compute / busy)
        else:
            memory_ratios.append(memory / busy)
    return _Efficiencies(
        _median_efficiency(compute_ratios, otherwise.compute if otherwise else target.compute_efficiency),
        _median_efficiency(memory_ratios, otherwise.memory if otherwise else target.memory_efficiency),
        compute_ratios, memory_ratios)


def _ideal_seconds(op: OpMeasurement, target: Target) -> tuple[float, float]:
    """Compute and memory time at full efficiency."""
    return op.flops / target.peak_for(op.dtype), op.num_bytes / target.memory_bandwidth_bytes_per_second


def _median_efficiency(ratios: list[float], unchanged: float) -> float:
    """The median efficiency, within the spec's range (0, 1]; `unchanged` where no op informs it."""
    if not ratios:
        return unchanged
    return float(min(1.0, max(_LOWEST_EFFICIENCY, np.median(ratios))))


def write_calibrated_spec(target: Target, calibration: Calibration, profile: Profile, path: Path) -> Path:
    """A copy of `target`'s spec file named after `path`, with the fitted constants in place of its own."""
    if path.stem in builtin_target_names():
        raise PartitionerError(f"{path} would make a spec named {path.stem!r}, the name of a built-in target. Fix: "
                               f"name the file after this device, e.g. {path.stem}-calibrated.toml.")
    if not target.spec_path:
        raise PartitionerError(f"target {target.name} has no spec file to copy. Fix: calibrate a target loaded "
                               "from a .toml spec.")
    text = Path(target.spec_path).read_text()
    fitted = {
        "name": f'"{path.stem}"',
        "launch_overhead_microseconds": f"{calibration.launch_overhead_seconds * 1e6:.4g}",
        "compute_efficiency": f"{calibration.compute_efficiency:.4g}",
        "memory_efficiency": f"{calibration.memory_efficiency:.4g}",
    }
    for field_name, value in fitted.items():
        text, count = re.subn(rf"(?m)^{field_name}\s*=.*$", f"{field_name} = {value}", text, count=1)
        if count != 1:
            raise PartitionerError(f"{target.spec_path}: no top-level {field_name} to replace. Fix: add it.")
    text = _without_op_class_tables(text).rstrip() + "\n"
    for name, constants in calibration.op_classes.items():
        text += (f"\n[op_classes.{name}]\ncompute_efficiency = {constants.compute_efficiency:.4g}\n"
                 f"memory_efficiency = {constants.memory_efficiency:.4g}\n"
                 f"launch_overhead_microseconds = {constants.launch_overhead_seconds * 1e6:.4g}\n")
    header = (f"# Calibrated from a profile of {profile.identity.describe()}: launch overhead, compute and\n"
              f"# memory efficiency fitted to {len(profile.ops)} measured ops "
              f"({calibration.compute_bound_ops} compute-bound, {calibration.memory_bound_ops} memory-bound)\n"
              f"# by `partitioner calibrate`; every other figure is from {Path(target.spec_path).name}.\n")
    write_atomically(path, header + text)
    return path


def _without_op_class_tables(text: str) -> str:
    """The spec text without its [op_classes.*] tables (a calibrated spec being calibrated again)."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.strip().startswith("["):
            skipping = line.strip().startswith("[op_classes")
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"
