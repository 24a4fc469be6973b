"""How far each cost model's predictions are from measurements: `partitioner profile --report`.

`accuracy_report` compares, per op and for the whole model, the roofline of a
target spec, that roofline calibrated to the profile, and the measured model,
against the times measured on the device; `time_model` times whole runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch.utils import benchmark

from cost_models.calibration import Calibration, calibrate, format_calibration
from cost_models.measured import MeasuredCostModel, op_signature
from cost_models.profile import Profile
from cost_models.roofline import RooflineCostModel
from partitioner.errors import PartitionerError
from partitioner.execution.check import require_real_weights
from partitioner.execution.partitioned_module import to_device
from partitioner.frontend.capture import CapturedModel, split_inputs
from partitioner.frontend.op_graph import NodeKind, OpGraph, annotate
from targets.spec import Target


@dataclass(frozen=True, slots=True)
class Accuracy:
    """Predicted against measured time, per op (factor off: max(p/m, m/p)) and for the whole model."""

    model_seconds: float
    predicted_model_seconds: Mapping[str, float]
    op_factor_median: Mapping[str, float]
    op_factor_p90: Mapping[str, float]
    ops: int
    calibration: Calibration | None
    calibration_refused: str | None = None


def accuracy_report(captured: CapturedModel, profile: Profile, target: Target, device: str,
                    repeats_seconds: float = 2.0) -> Accuracy:
    """How well the roofline of `target`, its calibration to `profile`, and the measured model predict the
    model's ops and its whole run on `device` (the model needs real weights)."""
    require_real_weights(captured)
    graph = annotate(captured.program)
    try:
        calibration, refusal = calibrate(profile, target), None
    except PartitionerError as error:  # the report still shows the spec and the measured model
        calibration, refusal = None, str(error)
    calibrated = calibration.applied_to(target) if calibration is not None else target
    roofline, measured = RooflineCostModel(), MeasuredCostModel([profile])
    models = {
        "roofline": lambda node: roofline.compute_seconds(node, target),
        "calibrated": lambda node: roofline.compute_seconds(node, calibrated),
        "measured": lambda node: measured.compute_seconds(node, target),
    }
    measured_ops = [(node, profile.ops[op_signature(node)]) for node in graph
                    if node.kind is NodeKind.COMPUTE and op_signature(node) in profile.ops]
    factors = {name: [_factor(predict(node), measurement.seconds) for node, measurement in measured_ops]
               for name, predict in models.items()}
    return Accuracy(
        model_seconds=time_model(captured, device, repeats_seconds),
        predicted_model_seconds={name: _predicted_total(graph, predict) for name, predict in models.items()},
        op_factor_median={name: float(np.median(values)) for name, values in factors.items()},
        op_factor_p90={name: float(np.percentile(values, 90)) for name, values in factors.items()},
        ops=len(measured_ops),
        calibration=calibration,
        calibration_refused=refusal,
    )


def _factor(predicted: float, measured: float) -> float:
    return max(predicted / measured, measured / predicted)


def _predicted_total(graph: OpGraph, predict: Callable) -> float:
    """The whole model's predicted time: every node one after another, views at their dispatch overhead."""
    return sum(predict(node) for node in graph)


def time_model(captured: CapturedModel, device: str, repeats_seconds: float = 2.0,
               module: torch.nn.Module | None = None) -> float:
    """Median seconds of one call of the captured model (or of `module`, e.g. its partitioned form) on
    `device`, after a warm-up call."""
    module = module if module is not None else captured.program.module().to(device)
    args, kwargs = split_inputs(captured.example_inputs)
    args, kwargs = torch.utils._pytree.tree_map(lambda value: to_device(value, torch.device(device)), (args, kwargs))

    def run() -> None:
        with torch.no_grad():
            module(*args, **kwargs)

    run()
    timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=repeats_seconds).median


def format_accuracy(accuracy: Accuracy, target: Target) -> str:
    """The accuracy report as a table: per-op factor off (median, p90) and whole-model error per cost model."""
    lines = [
        f"{'cost model':<26}{'per op: median':>16}{'p90':>8}{'whole model':>14}{'error':>9}",
    ]
    for name in accuracy.predicted_model_seconds:
        label = {"roofline": f"roofline ({target.name})", "calibrated": "calibrated roofline",
                 "measured": "measured"}[name]
        predicted = accuracy.predicted_model_seconds[name]
        error = predicted / accuracy.model_seconds - 1
        per_op = (f"{'(its own times)':>24}" if name == "measured" else
                  f"{accuracy.op_factor_median[name]:>15.2f}x{accuracy.op_factor_p90[name]:>7.2f}x")
        lines.append(f"{label:<26}{per_op}{predicted * 1e3:>11.3g} ms{100 * error:>+8.1f}%")
    lines += [
        f"{'measured run':<26}{'':>24}{accuracy.model_seconds * 1e3:>11.3g} ms",
        "",
        f"{accuracy.ops} ops compared. Whole-model predictions add every op one after another; the measured run "
        "includes framework overhead between ops.",
        "",
        format_calibration(accuracy.calibration) if accuracy.calibration is not None
        else f"calibration refused (the calibrated row is the spec): {accuracy.calibration_refused}",
    ]
    return "\n".join(lines)
