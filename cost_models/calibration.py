"""Calibration: fit a target's roofline constants to a profile of its real device, and write them as a spec.

The roofline predicts launch overhead plus the longer of compute time (FLOPs
over derated peak) and memory time (bytes over derated bandwidth), where the
derating may depend on the op's size (targets/spec.py `RooflineConstants`).
From measured ops we fit:

- the launch overhead (the time of the quickest compute ops) and the view
  overhead (the median time of measured views);
- top-level efficiencies, and for each op class (matmul, convolution, ...)
  efficiencies with their size curve, by least squares on log time, so every
  op counts by its factor off, not by its size;
- for a class the target runs in several dtypes, a table per dtype.

A group gets its own efficiencies only from MIN_GROUP_OPS informative ops (ops
that take at least twice the launch overhead), and a size curve from
MIN_CURVE_OPS, else it keeps its parent's figures (the class's, then the
spec's); integer-dtype ops never inform a float class or the top level.
Every fit reports its residuals, and a calibration that predicts the
profile's total time worse than the spec it started from is refused, with the
figures. cost_models/calibrated_spec.py writes the result as a spec file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import torch

from cost_models.kernel_shapes import shape_efficiency
from cost_models.profile import OpMeasurement, Profile
from partitioner.errors import PartitionerError
from targets.op_classes import OP_CLASSES, op_class
from targets.spec import RooflineConstants, Target

# Ops must take this many launch overheads to say anything about throughput.
_INFORMATIVE_LAUNCHES = 2.0
# A group (an op class, or one dtype of it) gets its own efficiencies from this many informative ops, and a size
# curve (two more figures) from MIN_CURVE_OPS.
MIN_GROUP_OPS = 4
MIN_CURVE_OPS = 8
# An efficiency moves only with this many informative ops clearly bound by it, and at most this factor from the
# parent's: a spec can be an order of magnitude off (a 32-core spec on 2 threads), a figure 50x off is a fit
# explaining something else (a flat fit faking a size curve with the memory term).
MIN_SIDE_OPS = 2
EFFICIENCY_SPAN = 50.0
_MIN_VIEWS = 3
_LOWEST_EFFICIENCY = 1e-4
_EFFICIENCY_GRID = np.logspace(-4, 0, 97)
_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Residuals:
    """How far a cost model is from a group of measured ops: predicted / measured, per op and in total."""

    median: float
    p10: float
    p90: float
    within_2x: float  # share of ops predicted within a factor of 2
    total_error: float  # sum predicted / sum measured - 1
    rank_correlation: float  # Spearman's: does the model order ops by time as the device does

    @classmethod
    def of(cls, predicted: Sequence[float], measured: Sequence[float]) -> Residuals:
        ratios = np.asarray(predicted) / np.asarray(measured)
        return cls(float(np.median(ratios)), float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90)),
                   float(np.mean((ratios >= 0.5) & (ratios <= 2.0))), float(np.sum(predicted) / np.sum(measured) - 1),
                   _rank_correlation(predicted, measured))

    def describe(self) -> str:
        return (f"{self.median:.2f} [{self.p10:.2f}-{self.p90:.2f}], {100 * self.within_2x:.0f}% within 2x, "
                f"rank {self.rank_correlation:.2f}, total {100 * self.total_error:+.1f}%")


def _rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties ranked by position); 1 for fewer than two values or no spread."""
    if len(a) < 2:
        return 1.0
    ranks_a, ranks_b = (np.argsort(np.argsort(np.asarray(v))).astype(float) for v in (a, b))
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return 1.0
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


@dataclass(frozen=True, slots=True)
class GroupFit:
    """One group's fitted constants ("matmul", "matmul.bfloat16", or "all" for the top level) and residuals."""

    group: str
    ops: int
    informative_ops: int
    constants: RooflineConstants | None  # None: too few informative ops, the parent's figures stay
    before: Residuals
    after: Residuals


@dataclass(frozen=True, slots=True)
class Calibration:
    """Fitted roofline constants, overall and per op class (and dtype), with the residuals of each fit."""

    launch_overhead_seconds: float
    compute_efficiency: float
    memory_efficiency: float
    compute_bound_ops: int
    memory_bound_ops: int
    op_classes: Mapping[str, RooflineConstants] = field(default_factory=dict)
    view_overhead_seconds: float | None = None  # None: no views measured, the spec's figure stays
    fits: tuple[GroupFit, ...] = ()

    def applied_to(self, target: Target) -> Target:
        calibrated = replace(target, launch_overhead_seconds=self.launch_overhead_seconds,
                             compute_efficiency=self.compute_efficiency, memory_efficiency=self.memory_efficiency,
                             op_classes=dict(self.op_classes))
        if self.view_overhead_seconds is not None:
            calibrated = replace(calibrated, view_overhead_seconds=self.view_overhead_seconds)
        return calibrated

    @property
    def whole(self) -> GroupFit:
        """The fit over every measured compute op: its residuals are the profile's before and after."""
        return next(fit for fit in self.fits if fit.group == "all")


def calibrate(profile: Profile, target: Target, size_curves: bool = True) -> Calibration:
    """The roofline constants of `target` that best explain the op times in `profile` (see the module docstring);
    without `size_curves`, each group's efficiencies are the same at every op size.

    Raises a PartitionerError when the profile is too small, or when the fitted constants would predict its ops'
    total time worse than `target` as it is.
    """
    ops = [op for op in profile.ops.values() if op.kind == "compute"]
    if len(ops) < 3:
        raise PartitionerError(f"a profile with {len(ops)} measured ops cannot calibrate {target.name}. Fix: profile "
                               "a model with more ops (e.g. examples/bert_base.py).")
    launch = _launch_overhead(ops, target)
    views = [op.seconds for op in profile.ops.values() if op.kind != "compute"]
    view_overhead = float(np.median(views)) if len(views) >= _MIN_VIEWS else None
    floats = [op for op in ops if _is_float(op.dtype)]  # none: the spec's top-level figures stay
    top = _fit(floats, target, launch, RooflineConstants(target.compute_efficiency, target.memory_efficiency,
                                                         launch), curve=False)
    top_constants = top if top is not None else RooflineConstants(target.compute_efficiency,
                                                                  target.memory_efficiency, launch)
    staged = replace(target, launch_overhead_seconds=launch, compute_efficiency=top_constants.compute_efficiency,
                     memory_efficiency=top_constants.memory_efficiency)
    # A dtype table of the spec for a class and dtype the profile measures is refitted or dropped (then the class's
    # fit applies), never left to outrank the new figures.
    measured_pairs = {f"{op_class(op.op)}.{op.dtype}" for op in ops}
    classes = {name: replace(constants, launch_overhead_seconds=launch)
               for name, constants in target.op_classes.items() if name not in measured_pairs}
    fitted_groups: dict[str, RooflineConstants | None] = {}
    for name in OP_CLASSES:
        members = [op for op in ops if op_class(op.op) == name]
        float_members = [op for op in members if _is_float(op.dtype)]
        parent = replace(staged, op_classes=classes).constants_for(name)
        fitted_groups[name] = _fit(float_members, staged, launch, parent, curve=size_curves)
        if fitted_groups[name] is not None:
            classes[name] = fitted_groups[name]
        dtypes = sorted({op.dtype for op in members})
        float_dtypes = [d for d in dtypes if _is_float(d)]
        # Integer ops get tables of their own; float dtypes only where the class runs in several of them.
        for dtype in [d for d in dtypes if not _is_float(d) or len(float_dtypes) > 1]:
            group = f"{name}.{dtype}"
            parent = replace(staged, op_classes=classes).constants_for(name, dtype)
            fitted_groups[group] = _fit([op for op in members if op.dtype == dtype], staged, launch, parent,
                                        curve=size_curves)
            if fitted_groups[group] is not None:
                classes[group] = fitted_groups[group]
        # Each dtype keeps the spec's depth curve (which the fits priced its ops through): a class's one fit
        # would otherwise give a dtype the class's curve.
        for dtype in float_dtypes:
            spec_depth = target.constants_for(name, dtype).compute_half_depth
            calibrated = replace(staged, op_classes=classes).constants_for(name, dtype)
            if calibrated.compute_half_depth != spec_depth:
                classes[f"{name}.{dtype}"] = replace(calibrated, compute_half_depth=spec_depth)
    calibration = Calibration(launch, top_constants.compute_efficiency, top_constants.memory_efficiency,
                              *_bound_counts(floats, staged, launch), classes, view_overhead)
    calibrated = calibration.applied_to(target)
    fits = [_group_fit("all", ops, target, calibrated, launch, top)]
    for group, constants in fitted_groups.items():
        members = [op for op in ops if _in_group(op, group)]
        if members:
            fits.append(_group_fit(group, members, target, calibrated, launch, constants))
    calibration = replace(calibration, fits=tuple(fits))
    whole = calibration.whole
    if abs(whole.after.total_error) > abs(whole.before.total_error) + 1e-9:
        raise PartitionerError(
            f"calibrating {target.name} to {profile.identity.describe()} would predict its {len(ops)} measured ops "
            f"worse than the spec does: total time {100 * whole.before.total_error:+.1f}% with the spec, "
            f"{100 * whole.after.total_error:+.1f}% calibrated (per op, predicted/measured "
            f"{whole.before.describe()} before, {whole.after.describe()} after). Fix: profile more of the models you "
            "will plan, so every op class has enough large ops, or keep the spec as it is.")
    return calibration


def _launch_overhead(ops: Sequence[OpMeasurement], target: Target) -> float:
    """The launch overhead: the lower quartile of the times of the tiniest ops, those whose work the spec puts
    below its launch overhead; the spec's own figure when fewer than 3 are that small."""
    launches = np.asarray([target.constants_for(op_class(op.op), op.dtype).launch_overhead_seconds for op in ops])
    busy = _predict(ops, target) - launches
    tiny = [op.seconds for op, work, launch in zip(ops, busy, launches) if work <= launch]
    return float(np.percentile(tiny, 25)) if len(tiny) >= 3 else target.launch_overhead_seconds


def format_calibration(calibration: Calibration) -> str:
    """Each fitted group's constants and its residuals before and after (predicted / measured per op)."""
    lines = [f"{'group':<24}{'ops':>6}  {'fitted':<58}{'before: median [p10-p90]':<60}after"]
    for fit in calibration.fits:
        if fit.group == "all":
            fitted = (f"launch {calibration.launch_overhead_seconds * 1e6:.3g} us, compute "
                      f"{calibration.compute_efficiency:.3g}, memory {calibration.memory_efficiency:.3g}")
        elif fit.constants is None:
            fitted = f"kept ({fit.informative_ops} informative ops, {MIN_GROUP_OPS} needed)"
        else:
            fitted = _describe_constants(fit.constants)
        lines.append(f"{fit.group:<24}{fit.ops:>6}  {fitted:<58}{fit.before.describe():<60}{fit.after.describe()}")
    if calibration.view_overhead_seconds is not None:
        lines.append(f"views: {calibration.view_overhead_seconds * 1e6:.3g} us each (median of the measured views)")
    whole = calibration.whole
    lines.append(f"whole profile: predicted total {100 * whole.before.total_error:+.1f}% with the spec, "
                 f"{100 * whole.after.total_error:+.1f}% calibrated")
    return "\n".join(lines)


def _describe_constants(constants: RooflineConstants) -> str:
    compute = f"compute {constants.compute_efficiency:.3g}"
    if constants.compute_half_flops:
        compute += f" (half at {constants.compute_half_flops / 1e6:.3g} MFLOP)"
    memory = f"memory {constants.memory_efficiency:.3g}"
    if constants.memory_half_bytes:
        memory += f" (half at {constants.memory_half_bytes / 2**20:.3g} MiB)"
    return f"{compute}, {memory}"


def _is_float(dtype: str) -> bool:
    return getattr(torch, dtype, torch.float32).is_floating_point


def _in_group(op: OpMeasurement, group: str) -> bool:
    name, _, dtype = group.partition(".")
    return op_class(op.op) == name and (op.dtype == dtype if dtype else _is_float(op.dtype))


def _predict(ops: Sequence[OpMeasurement], target: Target) -> np.ndarray:
    """Roofline times of `ops` on `target`, each with the constants of its class and dtype."""
    times = []
    for op in ops:
        own = target.constants_for(op_class(op.op), op.dtype)
        times.append(own.launch_overhead_seconds + max(
            own.compute_seconds(op.flops, target.peak_for(op.dtype) * shape_efficiency(op.shape, target, own)),
            own.memory_seconds(op.num_bytes, target.memory_bandwidth_bytes_per_second)))
    return np.asarray(times)


def _group_fit(group: str, ops: Sequence[OpMeasurement], spec: Target, calibrated: Target, launch: float,
               constants: RooflineConstants | None) -> GroupFit:
    """A group's fit with its residuals under the spec as it was and under the calibrated spec."""
    measured = [op.seconds for op in ops]
    informative = sum(op.seconds >= _INFORMATIVE_LAUNCHES * launch for op in ops)
    return GroupFit(group, len(ops), informative, constants, Residuals.of(_predict(ops, spec), measured),
                    Residuals.of(_predict(ops, calibrated), measured))


def _fit(ops: Sequence[OpMeasurement], target: Target, launch: float, parent: RooflineConstants,
         curve: bool) -> RooflineConstants | None:
    """The constants that minimise the squared log error of the roofline over `ops`, starting from `parent`;
    None when fewer than MIN_GROUP_OPS of them are informative.

    Both sides (compute and memory) are fitted together only where that explains the times clearly better (10%
    less loss) than fitting one side with the other at the parent's figure, and a side keeps its figure only
    where at least MIN_SIDE_OPS informative ops are clearly bound by it (by twice the other side's time): a side
    no op informs does not drift to explain the other side's noise. With `curve` and MIN_CURVE_OPS informative
    ops, half-efficiency sizes are fitted too (zero, a flat curve, is one of the choices)."""
    informative = np.asarray([op.seconds >= _INFORMATIVE_LAUNCHES * launch for op in ops], dtype=bool)
    if informative.sum() < MIN_GROUP_OPS:
        return None
    curve = curve and informative.sum() >= MIN_CURVE_OPS
    flops = np.asarray([float(op.flops) for op in ops])
    num_bytes = np.asarray([float(op.num_bytes) for op in ops])
    # What each op's shape lets it use of the peak (an attention's keys and blocks) is the spec's, not fitted.
    peaks = np.asarray([target.peak_for(op.dtype) * shape_efficiency(
        op.shape, target, target.constants_for(op_class(op.op), op.dtype)) for op in ops])
    log_measured = np.log([op.seconds for op in ops])
    bandwidth = target.memory_bandwidth_bytes_per_second
    parent_compute = (parent.compute_efficiency, parent.compute_half_flops if curve else 0.0)
    parent_memory = (parent.memory_efficiency, parent.memory_half_bytes if curve else 0.0)

    def loss(c_eff, c_half, m_eff, m_half) -> np.ndarray:
        compute_time = np.where(flops > 0, (flops + c_half) / (peaks * c_eff), 0.0)
        memory_time = np.where(num_bytes > 0, (num_bytes + m_half) / (bandwidth * m_eff), 0.0)
        return np.sum((np.log(launch + np.maximum(compute_time, memory_time)) - log_measured) ** 2, axis=-1)

    compute_range, memory_range = _span(parent.compute_efficiency), _span(parent.memory_efficiency)

    def fitted(compute, memory, fit_compute: bool, fit_memory: bool):
        for _ in range(_ROUNDS):
            if fit_compute:
                compute = _best_pair(lambda e, h: loss(e, h, memory[0], memory[1]), compute, flops, curve,
                                     compute_range)
            if fit_memory:
                memory = _best_pair(lambda e, h: loss(compute[0], compute[1], e, h), memory, num_bytes, curve,
                                    memory_range)
        return compute, memory

    def bound_by(compute, memory) -> tuple[int, int]:
        compute_time = (flops + compute[1]) / (peaks * compute[0]) * (flops > 0)
        memory_time = (num_bytes + memory[1]) / (bandwidth * memory[0]) * (num_bytes > 0)
        return (int(np.sum(informative & (compute_time >= 2 * memory_time))),
                int(np.sum(informative & (memory_time >= 2 * compute_time))))

    def total_loss(pair) -> float:
        (compute, memory) = pair
        return float(loss(compute[0], compute[1], memory[0], memory[1]))

    singles = [(fitted(parent_compute, parent_memory, True, False), (True, False)),
               (fitted(parent_compute, parent_memory, False, True), (False, True))]
    singles = [(pair, sides) for pair, sides in singles
               if all(count >= MIN_SIDE_OPS for count, side in zip(bound_by(*pair), sides) if side)]
    both = fitted(parent_compute, parent_memory, True, True)
    candidates = sorted(singles, key=lambda item: total_loss(item[0]))
    if min(bound_by(*both)) >= MIN_SIDE_OPS and (not candidates or
                                                  total_loss(both) < 0.9 * total_loss(candidates[0][0])):
        candidates.insert(0, (both, (True, True)))
    if not candidates:
        return None
    (compute, memory), _ = candidates[0]
    return RooflineConstants(compute[0], memory[0], launch, compute[1], memory[1], parent.compute_half_depth)


def _span(efficiency: float) -> tuple[float, float]:
    """The range a fitted efficiency may take, from its parent's."""
    return max(_LOWEST_EFFICIENCY, efficiency / EFFICIENCY_SPAN), min(1.0, efficiency * EFFICIENCY_SPAN)


def _best_pair(loss, current: tuple[float, float], sizes: np.ndarray, curve: bool,
               bounds: tuple[float, float] = (_LOWEST_EFFICIENCY, 1.0)) -> tuple[float, float]:
    """The (efficiency, half size) that minimises `loss`: for each half size on a grid (zero, a flat curve,
    first), the best efficiency on a grid refined by golden-section search. Ties go to the smaller half size and
    the efficiency nearest `current`, so a figure no op informs stays as it was."""
    positive = sizes[sizes > 0]
    halves = [0.0]
    if curve and positive.size:
        halves += list(np.logspace(np.log10(positive.min()) - 1, np.log10(positive.max()) + 1, 25))
    grid = np.unique(np.clip(np.append(_EFFICIENCY_GRID, current[0]), *bounds))[:, None]

    def at(efficiency: float, half: float) -> float:
        return float(loss(np.array([[efficiency]]), np.array([[half]]))[0])

    def best_efficiency(half: float, start: float) -> float:
        return _refined(lambda e: at(e, half), start, bounds)

    best, best_loss = (current[0], current[1]), at(*current)
    for half in halves:
        scores = loss(grid, np.full_like(grid, half)) + 1e-12 * np.abs(np.log(grid[:, 0] / current[0]))
        efficiency = best_efficiency(half, float(grid[int(np.argmin(scores)), 0]))
        if at(efficiency, half) < best_loss * (1 - 1e-9) - 1e-15:
            best, best_loss = (efficiency, float(half)), at(efficiency, half)
    if best[1] > 0:  # refine the half size between its grid neighbours, the efficiency refined at each
        step = float(halves[2] / halves[1]) if len(halves) > 2 else 2.0
        log_half = _golden(lambda h: at(best_efficiency(float(np.exp(h)), best[0]), float(np.exp(h))),
                           np.log(best[1] / step), np.log(best[1] * step), iterations=30)
        half = float(np.exp(log_half))
        efficiency = best_efficiency(half, best[0])
        if at(efficiency, half) < best_loss:
            best = (efficiency, half)
    return best


def _golden(loss_at, low: float, high: float, iterations: int = 50) -> float:
    """The minimum of a one-dimensional `loss_at` on [low, high], by golden-section search."""
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(iterations):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if loss_at(left) <= loss_at(right):
            high = right
        else:
            low = left
    return (low + high) / 2


def _refined(loss_at, efficiency: float, bounds: tuple[float, float]) -> float:
    """`efficiency` refined between its grid neighbours, within `bounds`, by golden-section search on its log."""
    low, high = np.log(max(efficiency / 1.2, bounds[0])), np.log(min(efficiency * 1.2, bounds[1]))
    refined = float(np.exp(_golden(lambda log_e: loss_at(float(np.exp(log_e))), low, high)))
    return refined if loss_at(refined) <= loss_at(efficiency) else efficiency


def _bound_counts(ops: Sequence[OpMeasurement], target: Target, launch: float) -> tuple[int, int]:
    """How many informative ops the fitted top-level roofline calls compute-bound and memory-bound."""
    compute = memory = 0
    for op in ops:
        if op.seconds < _INFORMATIVE_LAUNCHES * launch:
            continue
        if op.flops / (target.peak_for(op.dtype) * target.compute_efficiency) >= op.num_bytes / (
                target.memory_bandwidth_bytes_per_second * target.memory_efficiency):
            compute += 1
        else:
            memory += 1
    return compute, memory
