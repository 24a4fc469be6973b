"""`partitioner run`: runs a plan's partitioned model, checks it against the original, and refuses bad input with exit 2."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils import _pytree as pytree

from partitioner.cli import main
from partitioner.execution.partitioned_module import PartitionedModule
from partitioner.plan import Plan
from tests.partitioner.test_cli import assert_one_line_error

# A small float32 classifier: convolutions, then a norm and a softmax that only the fallback runs.
SMALL_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class SmallClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, 10)

        def forward(self, images):
            features = torch.relu(self.conv2(torch.relu(self.conv1(images))))
            tokens = self.norm(features.flatten(2).transpose(1, 2))
            return torch.softmax(self.head(tokens.mean(1)), dim=-1)

    def build():
        torch.manual_seed(0)
        return SmallClassifier().eval(), (torch.randn(2, 3, 16, 16),)
""")

# A free, fast target for convolutions: they are pinned there, the rest stays on the fallback, so the plan has
# more than one partition.
FREE_CONV_SPEC = """
name = "free-conv"
kind = "npu"
description = "A free accelerator for convolutions"
torch_device = "cpu"
onnx_execution_provider = "CPUExecutionProvider"
price_per_hour = 0.0
memory_gib = 1
memory_bandwidth_gb_per_second = 1000
launch_overhead_microseconds = 1
compute_efficiency = 1.0
memory_efficiency = 1.0

[peak_tflops]
float32 = 1000

[host_link]
bandwidth_gb_per_second = 1000
latency_microseconds = 0

[support]
ops = ["aten.conv2d.default", "aten.relu.default", "aten.linear.default"]
"""

META_MODEL = textwrap.dedent("""
    import torch

    def build():
        with torch.device("meta"):
            model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
        return model, (torch.randn(2, 8, device="meta"),)
""")


def compile_small_model(folder: Path) -> tuple[Path, Path]:
    """Write SMALL_MODEL into `folder` and compile it with the CLI into several partitions: (model file, plan)."""
    model_file = folder / "small.py"
    model_file.write_text(SMALL_MODEL)
    spec = folder / "free-conv.toml"
    spec.write_text(FREE_CONV_SPEC)
    # Convolutions this small do not pay for a hop to another device and back: the pins split the plan.
    assert main(["compile", str(model_file), "--targets", f"{spec},cuda-h100", "--objective", "cost",
                 "--pin", "conv*=free-conv", "-o", str(folder / "out")]) == 0
    return model_file, folder / "out" / "plan.json"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A model file and its plan (several partitions), compiled once for the tests that only read them."""
    return compile_small_model(tmp_path_factory.mktemp("compiled"))


@pytest.fixture
def plan_copy(compiled, tmp_path):
    """A private copy of the compiled model file and plan, for tests that change one of them."""
    model_file, plan_path = compiled
    copied_model = tmp_path / "small.py"
    shutil.copy(model_file, copied_model)
    data = json.loads(plan_path.read_text())
    data["model"]["source"]["path"] = str(copied_model)
    copied_plan = tmp_path / "plan.json"
    copied_plan.write_text(json.dumps(data))
    return copied_model, copied_plan


def perturbed_forward(original_forward):
    def forward(self, *args, **kwargs):
        return pytree.tree_map_only(torch.Tensor, lambda t: t + 1e-3, original_forward(self, *args, **kwargs))
    return forward


# --- a plan that runs -------------------------------------------------------------------------------------------------


def test_check_passes_and_reports_partitions_devices_and_errors(compiled, capsys):
    _, plan_path = compiled
    assert len(Plan.load(plan_path).partitions) > 1

    code = main(["run", str(plan_path), "--check"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{plan_path}: small, {len(Plan.load(plan_path).partitions)} partitions (free-conv -> cuda-h100" in out
    assert "free-conv: cpu (emulating free-conv)" in out and "cuda-h100: cpu (emulating cuda-h100)" in out
    assert "output float32[2, 10]" in out
    assert "max abs error 0\n" in out and "max rel error 0\n" in out
    assert "float32 rtol 1.3e-06 atol 1e-05" in out
    assert out.rstrip().endswith("PASS")


def test_run_without_check_prints_outputs_and_time_but_no_verdict(compiled, capsys):
    _, plan_path = compiled

    code = main(["run", str(plan_path)])

    out = capsys.readouterr().out
    assert code == 0
    assert "output float32[2, 10]" in out and "ms partitioned" in out
    assert "original" not in out and "PASS" not in out and "error" not in out


def test_device_map_to_present_devices_is_used(compiled, capsys):
    _, plan_path = compiled

    code = main(["run", str(plan_path), "--check", "--device-map", "free-conv=cpu, cuda-h100=cpu"])

    out = capsys.readouterr().out
    assert code == 0
    assert "cuda-h100: cpu," not in out and "emulating" not in out
    assert "PASS" in out


def test_model_given_again_replaces_a_moved_source(plan_copy, tmp_path, capsys):
    model_file, plan_path = plan_copy
    moved = tmp_path / "moved" / "renamed.py"
    moved.parent.mkdir()
    model_file.rename(moved)

    assert main(["run", str(plan_path), "--check"]) == 2
    assert_one_line_error(capsys, "does not exist")
    assert main(["run", str(plan_path), "--check", "--model", f"{moved}:build"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASS")


# --- a partitioned module that computes something else: exit 1 ---------------------------------------------------


def test_outputs_beyond_tolerance_fail_the_check_with_exit_1(compiled, capsys, monkeypatch):
    _, plan_path = compiled
    monkeypatch.setattr(PartitionedModule, "forward", perturbed_forward(PartitionedModule.forward))

    code = main(["run", str(plan_path), "--check"])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.rstrip().endswith("FAIL")
    assert "max abs error 0.001" in captured.out
    assert "mismatch    output (float32[2, 10]): 20 of 20 elements differ beyond rtol 1.3e-06" in captured.out
    assert captured.err == ""


# --- bad input: exit 2, one line, nothing run ----------------------------------------------------------------------


def test_model_file_changed_after_compile_no_longer_matches(plan_copy, capsys):
    model_file, plan_path = plan_copy
    model_file.write_text(SMALL_MODEL.replace("tokens.mean(1)", "torch.tanh(tokens).mean(1)"))

    code = main(["run", str(plan_path), "--check"])

    assert code == 2
    assert_one_line_error(capsys, "the model small no longer matches this plan", "Fix: compile again")


def test_device_map_naming_an_absent_device_names_it(compiled, capsys, monkeypatch):
    _, plan_path = compiled
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # absent here even on a machine with GPUs
    ran = []
    monkeypatch.setattr(PartitionedModule, "forward", lambda self, *args, **kwargs: ran.append(self))

    code = main(["run", str(plan_path), "--check", "--device-map", "cuda-h100=cuda:3"])

    assert code == 2
    assert_one_line_error(capsys, "'cuda:3' for cuda-h100 is not present", "Fix:")
    assert ran == []


@pytest.mark.parametrize("device_map, named", [("cuda-h100", "'cuda-h100'"), ("tpu-v9=cpu", "'tpu-v9'"),
                                               ("cuda-h100=quantum", "'quantum'"),
                                               ("cuda-h100=meta", "'meta' is torch's meta device, which holds no "
                                                                  "data and runs nothing"),
                                               ("cuda-h100=cpu,cuda-h100=cuda:0", "maps cuda-h100 twice")])
def test_malformed_device_map_is_refused(compiled, capsys, device_map, named):
    _, plan_path = compiled

    assert main(["run", str(plan_path), "--device-map", device_map]) == 2
    assert_one_line_error(capsys, named, "Fix:")


def test_plan_from_a_newer_schema_says_to_upgrade(plan_copy, capsys):
    _, plan_path = plan_copy
    data = json.loads(plan_path.read_text())
    data["schema_version"] += 1
    plan_path.write_text(json.dumps(data))

    code = main(["run", str(plan_path), "--check"])

    assert code == 2
    assert_one_line_error(capsys, f"plan schema version {data['schema_version']}", "Fix: upgrade partitioner")


@pytest.mark.parametrize("check", [["--check"], []])
def test_model_with_meta_weights_can_be_planned_but_not_run(tmp_path, capsys, check):
    model_file = tmp_path / "meta_model.py"
    model_file.write_text(META_MODEL)
    assert main(["compile", str(model_file), "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()

    code = main(["run", str(tmp_path / "out" / "plan.json"), *check])

    assert code == 2
    assert_one_line_error(capsys, "weights on the meta device", "Fix: build it with real weights", "--model")


def test_an_engine_that_adds_nothing_to_a_hop_leaves_each_device_its_stage_launch(tmp_path, capsys):
    model_file, _ = compile_small_model(tmp_path)
    out = tmp_path / "no-engine"

    assert main(["compile", str(model_file), "--targets", f"{tmp_path / 'free-conv.toml'},cuda-h100",
                 "--objective", "cost", "--engine-hop", "0", "-o", str(out)]) == 0

    hops = json.loads((out / "plan.json").read_text())["problem"]["hop_seconds"]
    assert hops["cuda-h100"] == pytest.approx(20e-6)  # the H100's stage launch alone, no engine on top
    with pytest.raises(SystemExit) as refused:
        main(["compile", str(model_file), "--engine-hop=-1ms", "-o", str(out)])
    assert refused.value.code == 2 and "must be a time of 0 or more" in capsys.readouterr().err
