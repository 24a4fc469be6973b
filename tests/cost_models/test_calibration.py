"""Calibration: fitted roofline constants recover the ones that made the times, and write a loadable spec."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cost_models.calibrated_spec import write_calibrated_spec
from cost_models.calibration import MIN_GROUP_OPS, calibrate
from cost_models.profile import DeviceIdentity, OpMeasurement, Profile
from partitioner.errors import PartitionerError
from targets.loader import load_target
from targets.spec import RooflineConstants


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
    for i in range(10):
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


def test_a_class_with_too_few_informative_ops_keeps_its_parents_figures_and_index_ops_never_inform_a_float_class():
    # The H100 bf16 failure: a handful of slow int64 index ops once set elementwise memory efficiency to 0.0002.
    target = load_target("cpu-x86")
    ops = {f"tiny{i}": OpMeasurement(5e-6, 10, 10, "float32", "aten.add.Tensor") for i in range(10)}
    for i in range(MIN_GROUP_OPS):
        flops = 10**9 * (i + 1)
        ops[f"mm{i}"] = OpMeasurement(5e-6 + flops / (target.peak_for("float32") * 0.3), flops, 10**5, "float32",
                                      "aten.mm.default")
    for i in range(MIN_GROUP_OPS - 1):  # slow integer index arithmetic: 512 elements taking 100 us
        ops[f"index{i}"] = OpMeasurement(1e-4 + i * 1e-5, 0, 4096, "int64", "aten.add.Tensor")
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), ops)

    fitted = calibrate(profile, target)

    calibrated = fitted.applied_to(target)
    assert "elementwise" not in fitted.op_classes and "elementwise.int64" not in fitted.op_classes
    assert calibrated.constants_for("elementwise", "float32").memory_efficiency == pytest.approx(
        calibrated.memory_efficiency)
    kept = next(fit for fit in fitted.fits if fit.group == "elementwise.int64")
    assert kept.constants is None and kept.informative_ops == MIN_GROUP_OPS - 1


def test_each_dtype_of_a_class_gets_its_own_figures_where_the_target_runs_several():
    target = load_target("cpu-x86")
    ops = {f"tiny{i}": OpMeasurement(5e-6, 10, 10, "float32", "aten.add.Tensor") for i in range(10)}
    for dtype, efficiency in (("float32", 0.4), ("bfloat16", 0.05)):
        for i in range(10):
            flops = 10**9 * (i + 1)
            ops[f"mm-{dtype}-{i}"] = OpMeasurement(5e-6 + flops / (target.peak_for(dtype) * efficiency), flops, 10**5,
                                                   dtype, "aten.mm.default")
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), ops)

    calibrated = calibrate(profile, target).applied_to(target)

    assert calibrated.constants_for("matmul", "float32").compute_efficiency == pytest.approx(0.4, rel=1e-4)
    assert calibrated.constants_for("matmul", "bfloat16").compute_efficiency == pytest.approx(0.05, rel=1e-4)


def test_efficiency_that_grows_with_size_is_fitted_as_a_curve_a_flat_efficiency_cannot_match():
    # Matmuls reach 60% of peak when large, half of that at 200 MFLOP.
    target = load_target("cpu-x86")
    peak, half = target.peak_for("float32"), 2e8
    ops = {f"tiny{i}": OpMeasurement(5e-6, 10, 10, "float32", "aten.add.Tensor") for i in range(10)}
    sizes = [int(2e6 * 3**i) for i in range(10)]
    for i, flops in enumerate(sizes):
        ops[f"mm{i}"] = OpMeasurement(5e-6 + (flops + half) / (peak * 0.6), flops, 10**4, "float32", "aten.mm.default")
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), ops)

    fitted = calibrate(profile, target)

    matmul = next(fit for fit in fitted.fits if fit.group == "matmul")
    assert matmul.constants.compute_half_flops == pytest.approx(half, rel=0.3)
    assert matmul.after.p10 > 0.9 and matmul.after.p90 < 1.1
    assert matmul.after.within_2x == 1.0


def test_a_calibration_that_predicts_the_profile_worse_than_the_spec_is_refused_with_the_figures():
    # Ops the spec already predicts exactly, plus tiny ops slower than the spec's launch overhead: refitting the
    # launch overhead to the tiny ops would make the large ops' total worse.
    target = load_target("cpu-x86")
    peak = target.peak_for("float32")
    ops = {f"tiny{i}": OpMeasurement(4e-5, 10, 10, "float32", "aten.add.Tensor") for i in range(3)}
    for i in range(MIN_GROUP_OPS - 1):  # too few to refit the matmul class
        flops = 10**10 * (i + 1)
        ops[f"mm{i}"] = OpMeasurement(target.launch_overhead_seconds + flops / (peak * target.compute_efficiency),
                                      flops, 10**5, "float32", "aten.mm.default")
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), ops)

    with pytest.raises(PartitionerError, match=r"would predict its 6 measured ops worse than the spec does: total time "
                                               r"[-+]\d+\.\d% with the spec, [-+]\d+\.\d% calibrated"):
        calibrate(profile, target)


def test_the_view_overhead_is_the_median_time_of_the_measured_views(tmp_path):
    target = load_target("cpu-x86")
    profile = profile_made_by(target, 7e-6, 0.3, 0.45)
    views = {f"view{i}": OpMeasurement(seconds, 0, 0, "float32", "aten.view.default", kind="view")
             for i, seconds in enumerate((1e-6, 1.5e-6, 9e-6))}
    profile = replace(profile, ops={**profile.ops, **views})

    fitted = calibrate(profile, target)

    assert fitted.view_overhead_seconds == pytest.approx(1.5e-6)
    assert load_target(write_calibrated_spec(target, fitted, profile, tmp_path / "views.toml")
                       ).view_overhead_seconds == pytest.approx(1.5e-6)


def test_an_efficiency_no_op_is_bound_by_keeps_the_parents_figure_however_noisy_the_other_side():
    # Compute-bound matmuls only, timed with +-30% noise: nothing informs the memory efficiency.
    target = load_target("cpu-x86")
    ops = {f"tiny{i}": OpMeasurement(5e-6, 10, 10, "float32", "aten.add.Tensor") for i in range(10)}
    for i in range(12):
        flops = 10**9 * (i + 1)
        noise = 1 + 0.3 * (-1) ** i
        ops[f"mm{i}"] = OpMeasurement(5e-6 + noise * flops / (target.peak_for("float32") * 0.3), flops, 10**5,
                                      "float32", "aten.mm.default")
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), ops)

    fitted = calibrate(profile, target)

    assert fitted.memory_efficiency == target.memory_efficiency
    assert fitted.op_classes["matmul"].memory_efficiency == target.memory_efficiency
    assert fitted.op_classes["matmul"].compute_efficiency == pytest.approx(0.3, rel=0.15)


def test_calibrating_a_calibrated_spec_again_replaces_its_dtype_tables(tmp_path):
    target = load_target("cpu-x86")
    stale = replace(target, op_classes={"matmul.bfloat16": RooflineConstants(0.01, 0.6, 5e-6)})
    ops = {f"tiny{i}": OpMeasurement(5e-6, 10, 10, "bfloat16", "aten.add.Tensor") for i in range(10)}
    for i in range(10):
        flops = 10**9 * (i + 1)
        ops[f"mm{i}"] = OpMeasurement(5e-6 + flops / (target.peak_for("bfloat16") * 0.4), flops, 10**5, "bfloat16",
                                      "aten.mm.default")
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2), ops)

    calibrated = calibrate(profile, stale).applied_to(stale)

    assert calibrated.constants_for("matmul", "bfloat16").compute_efficiency == pytest.approx(0.4, rel=1e-3)


def test_a_calibration_the_spec_loader_would_refuse_is_refused_before_anything_is_written(tmp_path):
    """Tiny ops of two seconds each: a launch overhead of 2e6 us, which no device has and the loader refuses."""
    target = load_target("cpu-x86")
    profile = profile_made_by(target, 2.0, 0.3, 0.45)

    with pytest.raises(PartitionerError, match="calibrating cpu-x86 gives a spec the loader would refuse .*field "
                                               "'launch_overhead_microseconds': 2e\\+06 microseconds is not a "
                                               "plausible figure.*Fix: profile the device again"):
        write_calibrated_spec(target, calibrate(profile, target), profile, tmp_path / "slow-cpu.toml")
    assert list(tmp_path.iterdir()) == []
