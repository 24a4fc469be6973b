"""`partitioner profile`, `compile --cost-model measured:` and `calibrate`, end to end on this machine's CPU."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from partitioner.cli import main
from targets.loader import load_target
from tests.partitioner.test_cli import assert_one_line_error
from tests.partitioner.test_cli_run import META_MODEL


# Convolutions, a norm, and ten linear layers of growing width: enough matmuls large enough to calibrate from.
PROFILED_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class Profiled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.norm = nn.LayerNorm(16)
            widths = [16, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448]
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

        def forward(self, images):
            features = torch.relu(self.conv2(torch.relu(self.conv1(images))))
            tokens = self.norm(features.flatten(2).transpose(1, 2))
            for layer in self.layers:
                tokens = torch.relu(layer(tokens))
            return torch.softmax(tokens.mean(1), dim=-1)

    def build():
        torch.manual_seed(0)
        return Profiled().eval(), (torch.randn(1, 3, 16, 16),)
""")


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> tuple[Path, Path]:
    """A small model and a profile folder of it on the CPU: (model file, profile folder)."""
    folder = tmp_path_factory.mktemp("profiled")
    model_file = folder / "small.py"
    model_file.write_text(PROFILED_MODEL)
    assert main(["profile", str(model_file), "--device", "cpu", "--min-run-time", "0.001",
                 "-o", str(folder / "profiles")]) == 0
    return model_file, folder / "profiles"


def test_profile_writes_one_file_per_device_and_reuses_it_for_the_next_run(profiled, capsys):
    model_file, profiles = profiled

    assert main(["profile", str(model_file), "--min-run-time", "0.001", "-o", str(profiles)]) == 0

    (profile_file,) = profiles.glob("*.json")
    assert profile_file.name.startswith("cpu-")
    assert json.loads(profile_file.read_text())["ops"]
    assert "0 op signatures measured" in capsys.readouterr().out


def test_a_plan_compiled_with_measured_costs_records_which_costs_were_measured(profiled, tmp_path):
    model_file, profiles = profiled

    assert main(["compile", str(model_file), "--targets", "cpu-x86,cuda-h100", "--cost-model",
                 f"measured:{profiles}", "-o", str(tmp_path)]) == 0

    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["cost_model"].startswith("measured (") and "torch" in plan["cost_model"]
    measured_on = {node["op"]: node["measured_on"] for node in plan["nodes"]}
    assert measured_on["aten.conv2d.default"] == ["cpu-x86"]  # cuda-h100 is estimated: no CUDA profile


def test_measured_costs_that_match_no_target_are_a_warning_not_silence(profiled, tmp_path, capsys):
    model_file, profiles = profiled

    assert main(["compile", str(model_file), "--targets", "npu-example,cuda-h100", "--cost-model",
                 f"measured:{profiles}", "-o", str(tmp_path)]) == 0

    assert "warning: no op of this model is in" in capsys.readouterr().err


def test_calibrate_writes_a_spec_that_loads(profiled, tmp_path, capsys):
    _, profiles = profiled

    assert main(["calibrate", str(profiles), "--target", "cpu-x86", "-o", str(tmp_path / "this-cpu.toml")]) == 0

    target = load_target(tmp_path / "this-cpu.toml")
    assert target.name == "this-cpu"
    assert 0 < target.compute_efficiency <= 1 and 0 < target.memory_efficiency <= 1
    printed = capsys.readouterr().out
    assert "matmul" in printed and "whole profile: predicted total" in printed


@pytest.mark.parametrize("file, problem", [
    ("cuda-h100.toml", "the name of a built-in target. Fix: name the file after this device"),
    ("acme-npu.toml", "the name of a target of the installed plug-in partitioner-example-vendor"),
    ("my cpu.toml", "'my cpu', which is not a valid target name. Fix: name the file with lowercase letters"),
    ("this-cpu.json", "is not a .toml path"),
])
def test_calibrate_refuses_to_write_a_spec_that_would_not_load_as_itself(profiled, tmp_path, capsys, file, problem):
    _, profiles = profiled

    code = main(["calibrate", str(profiles), "--target", "cpu-x86", "-o", str(tmp_path / file)])

    assert code == 2
    assert_one_line_error(capsys, problem)
    assert list(tmp_path.iterdir()) == []


def test_profile_report_compares_each_cost_model_with_the_measured_run(profiled, capsys):
    model_file, profiles = profiled

    assert main(["profile", str(model_file), "--min-run-time", "0.001", "-o", str(profiles), "--report"]) == 0

    report = capsys.readouterr().out
    for label in ("roofline (cpu-x86)", "calibrated, flat", "calibrated, size-aware", "measured", "measured run"):
        assert label in report


def test_profiling_inside_model_runs_marks_the_times_so(profiled, tmp_path):
    model_file, _ = profiled

    assert main(["profile", str(model_file), "--in-model", "-o", str(tmp_path)]) == 0

    (profile_file,) = tmp_path.glob("*.json")
    methods = {entry["method"] for entry in json.loads(profile_file.read_text())["ops"].values()}
    assert methods == {"in_model"}


def test_an_unknown_cost_model_is_refused_with_the_fix(profiled, tmp_path, capsys):
    model_file, _ = profiled

    assert main(["compile", str(model_file), "--cost-model", "guess", "-o", str(tmp_path)]) == 2
    assert_one_line_error(capsys, "unknown cost model 'guess'", "Fix: use roofline or measured:FOLDER")


def test_a_missing_profile_folder_is_refused_with_the_fix(profiled, tmp_path, capsys):
    model_file, _ = profiled

    assert main(["compile", str(model_file), "--cost-model", f"measured:{tmp_path / 'none'}",
                 "-o", str(tmp_path)]) == 2
    assert_one_line_error(capsys, "no such profile folder", "Fix: run partitioner profile")


def test_a_device_torch_does_not_know_is_refused_with_the_fix(profiled, tmp_path, capsys):
    model_file, _ = profiled

    assert main(["profile", str(model_file), "--device", "tpu0", "-o", str(tmp_path)]) == 2
    assert_one_line_error(capsys, "device 'tpu0' is not a torch device", "Fix: use cpu or cuda[:N]")


def test_calibrating_a_target_no_profile_can_measure_is_refused_with_the_fix(profiled, tmp_path, capsys):
    _, profiles = profiled

    assert main(["calibrate", str(profiles), "--target", "npu-example", "-o", str(tmp_path / "npu.toml")]) == 2
    assert_one_line_error(capsys, "npu-example is a npu target", "Fix: calibrate a cpu or gpu target")
    assert not (tmp_path / "npu.toml").exists()


def test_a_report_on_a_model_without_weights_is_refused_before_any_timing(tmp_path, capsys):
    model_file = tmp_path / "meta.py"
    model_file.write_text(META_MODEL)

    assert main(["profile", str(model_file), "--report", "-o", str(tmp_path / "profiles")]) == 2
    assert_one_line_error(capsys, "meta device", "Fix:")
    assert not (tmp_path / "profiles").exists()
