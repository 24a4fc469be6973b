"""How far each cost model's predictions are from measurements: `partitioner profile --report`.

`accuracy_report` compares, per op and for the whole model, the roofline of a
target spec, that roofline calibrated to the profile with flat efficiencies and
with size curves, and the measured model, against the times measured on the
device; `time_model` times whole runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch.utils import benchmark

from cost_models.calibration import Calibration, Residuals, calibrate, format_calibration
from cost_models.measured import MeasuredCostModel, is_timed, op_signature
from cost_models.profile import Profile
from cost_models.roofline import RooflineCostModel
from partitioner.errors import PartitionerError
from partitioner.execution.check import require_real_weights
from partitioner.execution.partitioned_module import to_device
from partitioner.frontend.capture import CapturedModel, split_inputs
from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode, annotate
from targets.spec import Target

# The cost models compared, in the report's order, with their labels (the spec's name goes into the first).
COST_MODELS = {"roofline": "roofline ({target})", "calibrated, flat": "calibrated, flat",
               "calibrated, size-aware": "calibrated, size-aware", "measured": "measured"}


@dataclass(frozen=True, slots=True)
class Accuracy:
    """Per cost model: its per-op residuals (predicted / measured, over the compute ops the profile timed) and its
    whole-model prediction, against the measured run of the whole model."""

    model_seconds: float
    predicted_model_seconds: Mapping[str, float]
    per_op: Mapping[str, Residuals]
    ops: int
    calibration: Calibration | None  # the size-aware one, None where it was refused
    calibration_refused: str | None = None


def accuracy_report(captured: CapturedModel, profile: Profile, target: Target, device: str,
                    repeats_seconds: float = 2.0) -> Accuracy:
    """How well the roofline of `target`, its calibrations to `profile`, and the measured model predict the
    model's ops and its whole run on `device` (the model needs real weights)."""
    require_real_weights(captured)
    graph = annotate(captured.program)
    roofline, measured = RooflineCostModel(), MeasuredCostModel([profile])
    calibrated, refusal = {}, None
    for name, curves in (("calibrated, flat", False), ("calibrated, size-aware", True)):
        try:
            calibrated[name] = calibrate(profile, target, size_curves=curves)
        except PartitionerError as error:  # the report still shows the spec, the measured model, any other fit
            refusal = f"{name}: {error}"
    models: dict[str, Callable[[OpNode], float]] = {"roofline": lambda node: roofline.compute_seconds(node, target)}
    for name, calibration in calibrated.items():
        models[name] = lambda node, spec=calibration.applied_to(target): roofline.compute_seconds(node, spec)
    models["measured"] = lambda node: measured.compute_seconds(node, target)
    timed = [(node, profile.ops[op_signature(node)]) for node in graph
             if node.kind is NodeKind.COMPUTE and op_signature(node) in profile.ops]
    per_op = {name: Residuals.of([predict(node) for node, _ in timed], [m.seconds for _, m in timed])
              for name, predict in models.items() if name != "measured" and timed}
    return Accuracy(
        model_seconds=time_model(captured, device, repeats_seconds),
        predicted_model_seconds={name: _predicted_total(graph, predict) for name, predict in models.items()},
        per_op=per_op,
        ops=len(timed),
        calibration=calibrated.get("calibrated, size-aware"),
        calibration_refused=refusal,
    )


def _predicted_total(graph: OpGraph, predict: Callable[[OpNode], float]) -> float:
    """The whole model's predicted time: every timed node one after another, views at their dispatch overhead."""
    return sum(predict(node) for node in graph if is_timed(node))


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
    """The accuracy report as a table: per-op predicted / measured and whole-model error per cost model, then each
    calibrated group's fit."""
    lines = [f"{'cost model':<28}{'per op: median [p10-p90]':>26}{'within 2x':>11}{'rank':>7}"
             f"{'whole model':>14}{'error':>9}"]
    for name, predicted in accuracy.predicted_model_seconds.items():
        label = COST_MODELS[name].format(target=target.name)
        residuals = accuracy.per_op.get(name)
        per_op = (f"{residuals.median:>12.2f} [{residuals.p10:.2f}-{residuals.p90:.2f}]"
                  f"{100 * residuals.within_2x:>10.0f}%{residuals.rank_correlation:>7.2f}") if residuals else (
            f"{'(its own times)':>44}")
        error = predicted / accuracy.model_seconds - 1
        lines.append(f"{label:<28}{per_op:>44}{predicted * 1e3:>11.3g} ms{100 * error:>+8.1f}%")
    lines += [
        f"{'measured run':<28}{'':>44}{accuracy.model_seconds * 1e3:>11.3g} ms",
        "",
        f"{accuracy.ops} op signatures compared. Whole-model predictions add every op one after another; the "
        "measured run includes framework overhead between ops.",
        "",
        format_calibration(accuracy.calibration) if accuracy.calibration is not None
        else "",
        f"calibration refused ({accuracy.calibration_refused})" if accuracy.calibration_refused else "",
    ]
    return "\n".join(lines)
