"""The measured cost model: op signatures, timing ops in isolation, profiles on disk, and where it answers."""

from __future__ import annotations

import json

import pytest
import torch

from cost_models.measured import MeasuredCostModel, fit_link, measure_ops, measure_ops_in_model, op_signature
from cost_models.profile import DeviceIdentity, OpMeasurement, Profile, cached_profile, load_profile, load_profiles
from cost_models.roofline import RooflineCostModel
from partitioner.errors import PartitionerError
from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import NodeKind, annotate
from targets.loader import load_target


class TwoLinears(torch.nn.Module):
    """Two linears of the same shape (one signature) and one of another shape."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(32, 32)
        self.second = torch.nn.Linear(32, 32)
        self.wide = torch.nn.Linear(32, 64)

    def forward(self, x):
        return self.wide(torch.relu(self.second(self.first(x))))


@pytest.fixture(scope="module")
def captured():
    return capture(TwoLinears().eval(), (torch.randn(4, 32),))


def linears(graph):
    return [node for node in graph if node.op == "aten.linear.default"]


def test_ops_with_the_same_shapes_and_arguments_share_a_signature(captured):
    first, second, wide = linears(annotate(captured.program))

    assert op_signature(first) == op_signature(second)
    assert op_signature(first) != op_signature(wide)


def test_each_signature_is_timed_once_and_known_ones_are_skipped(captured):
    graph = annotate(captured.program)
    first, _, wide = linears(graph)

    measured = measure_ops(captured.program, graph, "cpu", min_run_seconds=0.001)
    again = measure_ops(captured.program, graph, "cpu", known=measured, min_run_seconds=0.001)

    compute_signatures = {op_signature(n) for n in graph if n.kind is NodeKind.COMPUTE}
    assert set(measured) == compute_signatures
    assert 0 < measured[op_signature(first)].seconds < 1
    assert measured[op_signature(wide)].flops == wide.flops
    assert again == {}


def test_timing_inside_a_model_run_measures_every_signature_as_in_model(captured):
    graph = annotate(captured.program)

    measured = measure_ops_in_model(captured.program, graph, captured.example_inputs, "cpu", runs=2)

    assert set(measured) == {op_signature(n) for n in graph if n.kind is NodeKind.COMPUTE}
    assert all(m.method == "in_model" and 0 < m.seconds < 1 for m in measured.values())


def test_a_profile_round_trips_through_its_file_and_is_named_after_its_identity(tmp_path):
    identity = DeviceIdentity("cpu", "Test CPU", "2.13.0", 2)
    profile = Profile(identity, {"sig": OpMeasurement(1e-5, 100, 200, "float32")})

    path = profile.save(tmp_path)

    assert path.name == f"{identity.key}.json"
    assert load_profile(path) == profile
    assert load_profiles(tmp_path) == [profile]


def test_a_cached_profile_of_another_machine_or_torch_version_is_never_reused(tmp_path):
    here = DeviceIdentity("cpu", "Test CPU", "2.13.0", 2)
    Profile(here, {"sig": OpMeasurement(1e-5, 100, 200, "float32")}).save(tmp_path)

    assert cached_profile(tmp_path, here).ops
    assert cached_profile(tmp_path, DeviceIdentity("cpu", "Test CPU", "2.14.0", 2)).ops == {}
    assert cached_profile(tmp_path, DeviceIdentity("cpu", "Test CPU", "2.13.0", 16)).ops == {}


def test_a_damaged_profile_is_an_error_that_names_the_file_and_the_fix(tmp_path):
    broken = tmp_path / "cpu-000000000000.json"
    broken.write_text(json.dumps({"schema_version": 1, "identity": {}, "ops": {}, "links": {}}))

    with pytest.raises(PartitionerError, match=r"cpu-000000000000.json: not a readable profile.*Fix: delete it"):
        load_profiles(tmp_path)


def test_measured_times_serve_the_cpu_target_and_never_an_emulated_npu(captured):
    graph = annotate(captured.program)
    first = linears(graph)[0]
    profile = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2),
                      {op_signature(first): OpMeasurement(0.125, first.flops, 1, "float32")})
    model = MeasuredCostModel([profile])
    cpu, npu = load_target("cpu-x86"), load_target("npu-example")

    assert model.compute_seconds(first, cpu) == 0.125
    assert model.measured(first, cpu) is not None
    assert model.compute_seconds(first, npu) == RooflineCostModel().compute_seconds(first, npu)
    assert model.measured(first, npu) is None
    wide = linears(graph)[2]
    assert model.compute_seconds(wide, cpu) == RooflineCostModel().compute_seconds(wide, cpu)


def test_two_profiles_of_one_device_type_are_refused_rather_than_one_picked():
    first = Profile(DeviceIdentity("cpu", "Laptop CPU", "2.13.0", 8))
    second = Profile(DeviceIdentity("cpu", "Server CPU", "2.13.0", 64))

    with pytest.raises(PartitionerError, match=r"2 cpu profiles \(Laptop CPU.*Server CPU.*Fix: keep one profile"):
        MeasuredCostModel([first, second])


def test_a_link_fit_recovers_latency_and_bandwidth():
    sizes = [4096 * 4**i for i in range(6)]
    seconds = [10e-6 + size / 20e9 for size in sizes]

    link = fit_link(sizes, seconds)

    assert link.latency_seconds == pytest.approx(10e-6, rel=1e-6)
    assert link.bandwidth_bytes_per_second == pytest.approx(20e9, rel=1e-6)


def test_profiling_a_device_this_machine_lacks_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(PartitionerError, match="no CUDA device. Fix:"):
        DeviceIdentity.of("cuda:0")
