"""Calibration: fit a target's roofline constants to a profile of its real device, and write them as a spec.

The roofline predicts launch overhead plus the longer of FLOPs over derated
peak and bytes over derated bandwidth. From measured ops we fit the launch
overhead (the time of the quickest ops), the compute efficiency (from ops the
roofline calls compute-bound) and the memory efficiency (from memory-bound
ones), each a median so a few odd ops do not drag it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cost_models.profile import OpMeasurement, Profile
from partitioner.errors import PartitionerError
from partitioner.files import write_atomically
from targets.spec import Target

# Ops must take this many launch overheads to say anything about throughput.
_INFORMATIVE_LAUNCHES = 2.0
_LOWEST_EFFICIENCY = 1e-4


@dataclass(frozen=True, slots=True)
class Calibration:
    """Fitted roofline constants and how many measured ops each rests on."""

    launch_overhead_seconds: float
    compute_efficiency: float
    memory_efficiency: float
    compute_bound_ops: int
    memory_bound_ops: int

    def applied_to(self, target: Target) -> Target:
        return replace(target, launch_overhead_seconds=self.launch_overhead_seconds,
                       compute_efficiency=self.compute_efficiency, memory_efficiency=self.memory_efficiency)


def calibrate(profile: Profile, target: Target) -> Calibration:
    """The roofline constants of `target` that best explain the op times in `profile`."""
    ops = list(profile.ops.values())
    if len(ops) < 3:
        raise PartitionerError(f"a profile with {len(ops)} measured ops cannot calibrate {target.name}. Fix: profile "
                               "a model with more ops (e.g. examples/bert_base.py).")
    launch = float(np.percentile([op.seconds for op in ops], 10))
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
    return Calibration(
        launch_overhead_seconds=launch,
        compute_efficiency=_median_efficiency(compute_ratios, target.compute_efficiency),
        memory_efficiency=_median_efficiency(memory_ratios, target.memory_efficiency),
        compute_bound_ops=len(compute_ratios),
        memory_bound_ops=len(memory_ratios),
    )


def _ideal_seconds(op: OpMeasurement, target: Target) -> tuple[float, float]:
    """Compute and memory time at full efficiency."""
    return op.flops / target.peak_for(op.dtype), op.num_bytes / target.memory_bandwidth_bytes_per_second


def _median_efficiency(ratios: list[float], unchanged: float) -> float:
    """The median efficiency, within the spec's range (0, 1]; the spec's own value where no op informs it."""
    if not ratios:
        return unchanged
    return float(min(1.0, max(_LOWEST_EFFICIENCY, np.median(ratios))))


def write_calibrated_spec(target: Target, calibration: Calibration, profile: Profile, path: Path) -> Path:
    """A copy of `target`'s spec file named after `path`, with the fitted constants in place of its own."""
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
    header = (f"# Calibrated from a profile of {profile.identity.describe()}: launch overhead, compute and\n"
              f"# memory efficiency fitted to {len(profile.ops)} measured ops "
              f"({calibration.compute_bound_ops} compute-bound, {calibration.memory_bound_ops} memory-bound)\n"
              f"# by `partitioner calibrate`; every other figure is from {Path(target.spec_path).name}.\n")
    write_atomically(path, header + text)
    return path
