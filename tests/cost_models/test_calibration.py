"""Calibration: fitted roofline constants recover the ones that made the times, and write a loadable spec."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cost_models.calibration import calibrate, write_calibrated_spec
from cost_models.profile import DeviceIdentity, OpMeasurement, Profile
from partitioner.errors import PartitionerError
from targets.loader import load_target


def profile_made_by(target, launch_seconds: float, compute_efficiency: float, memory_efficiency: float) -> Profile:
    """Op times that a roofline with these constants predicts exactly, for small, compute- and memory-bound ops."""
    true = replace(target, launch_overhead_seconds=launch_seconds, compute_efficiency=compute_efficiency,
                   memory_efficiency=memory_efficiency)
    peak, bandwidth = true.peak_for("float32"), true.memory_bandwidth_bytes_per_second
    ops = {}
    for i in range(10):  # tiny ops: the launch overhead alone
        ops[f"tiny{i}"] = OpMeasurement(launch_seconds, 10, 10, "float32")
    for i in range(10):  # matmul-like: many FLOPs per byte
        flops, num_bytes = 10**9 * (i + 1), 10**5
        ops[f"matmul{i}"] = OpMeasurement(launch_seconds + flops / (peak * compute_efficiency), flops, num_bytes,
                                          "float32")
    for i in range(10):  # elementwise: a FLOP per eight bytes
        num_bytes = 10**8 * (i + 1)
        ops[f"add{i}"] = OpMeasurement(launch_seconds + num_bytes / (bandwidth * memory_efficiency), num_bytes // 8,
                                       num_bytes, "float32")
    return Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), ops)


def test_calibration_recovers_the_constants_that_made_the_times():
    target = load_target("cpu-x86")

    fitted = calibrate(profile_made_by(target, 7e-6, 0.3, 0.45), target)

    assert fitted.launch_overhead_seconds == pytest.approx(7e-6)
    assert fitted.compute_efficiency == pytest.approx(0.3, rel=1e-6)
    assert fitted.memory_efficiency == pytest.approx(0.45, rel=1e-6)
    assert (fitted.compute_bound_ops, fitted.memory_bound_ops) == (10, 10)


def test_the_calibrated_spec_loads_with_the_fitted_constants_under_its_own_name(tmp_path):
    target = load_target("cpu-x86")
    profile = profile_made_by(target, 7e-6, 0.3, 0.45)

    path = write_calibrated_spec(target, calibrate(profile, target), profile, tmp_path / "my-cpu.toml")

    calibrated = load_target(path)
    assert calibrated.name == "my-cpu"
    assert calibrated.compute_efficiency == pytest.approx(0.3, rel=1e-3)
    assert calibrated.memory_efficiency == pytest.approx(0.45, rel=1e-3)
    assert calibrated.launch_overhead_seconds == pytest.approx(7e-6, rel=1e-3)
    assert calibrated.peak_flops_per_second == target.peak_flops_per_second
    assert path.read_text().startswith("# Calibrated from a profile of Test CPU")


def test_a_profile_too_small_to_calibrate_is_refused():
    target = load_target("cpu-x86")
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), {"one": OpMeasurement(1e-5, 1, 1, "float32")})

    with pytest.raises(PartitionerError, match="cannot calibrate cpu-x86. Fix: profile a model with more ops"):
        calibrate(profile, target)


def test_each_op_class_gets_its_own_efficiency_when_enough_ops_inform_it(tmp_path):
    # Matmuls reach 30% of peak, convolutions 20%: one overall figure would misjudge both.
    target = load_target("cpu-x86")
    peak = target.peak_for("float32")
    ops = {f"tiny{i}": OpMeasurement(5e-6, 10, 10, "float32", "aten.add.Tensor") for i in range(10)}
    for i in range(5):
        flops = 10**9 * (i + 1)
        ops[f"mm{i}"] = OpMeasurement(5e-6 + flops / (peak * 0.3), flops, 10**5, "float32", "aten.mm.default")
        ops[f"conv{i}"] = OpMeasurement(5e-6 + flops / (peak * 0.2), flops, 10**5, "float32", "aten.conv2d.default")
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), ops)

    fitted = calibrate(profile, target)
    path = write_calibrated_spec(target, fitted, profile, tmp_path / "per-class.toml")

    assert fitted.op_classes["matmul"].compute_efficiency == pytest.approx(0.3, rel=1e-6)
    assert fitted.op_classes["convolution"].compute_efficiency == pytest.approx(0.2, rel=1e-6)
    calibrated = load_target(path)
    assert calibrated.constants_for("matmul").compute_efficiency == pytest.approx(0.3, rel=1e-3)
    assert calibrated.constants_for("convolution").compute_efficiency == pytest.approx(0.2, rel=1e-3)
    again = write_calibrated_spec(calibrated, fitted, profile, tmp_path / "again.toml")
    assert again.read_text().count("[op_classes.matmul]") == 1
