"""Plug-in hooks are held to their contracts: whatever a hook raises or answers outside what TargetHooks says is
one error naming the plug-in (exit 2 from the CLI), never a traceback, a silent exit or a wrong plan."""

from __future__ import annotations

import pytest
import torch

from partitioner.cli import main
from partitioner.compiler import compile
from partitioner.errors import PartitionerError
from targets.hooks import CompiledPartition, PartitionRefused, TargetHooks
from targets.plugins import TargetPlugin
from tests.targets.plugin_fakes import fake_plugins, spec_named  # noqa: F401 - fake_plugins is a fixture

MODEL = """
import torch

def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    return model.to(torch.bfloat16).eval(), (torch.randn(16, 64, dtype=torch.bfloat16),)
"""


def install_hooks(fake_plugins, tmp_path, **hooks):
    fake_plugins(vendor=TargetPlugin((spec_named(tmp_path, "vendor-chip"),), {"vendor-chip": TargetHooks(**hooks)}))


def raising(error: BaseException):
    def hook(*args):
        raise error
    return hook


@pytest.mark.parametrize("hook", ["support", "cost", "compile"])
def test_a_hook_that_raises_anything_even_system_exit_is_one_error_blaming_the_plugin(fake_plugins, tmp_path,
                                                                                       capsys, hook):
    install_hooks(fake_plugins, tmp_path, **{hook: raising(SystemExit(5))})
    (tmp_path / "model.py").write_text(MODEL)

    assert main(["compile", str(tmp_path / "model.py"), "--targets", "vendor-chip,cpu-x86", "--pin", "0=vendor-chip",
                 "--time-limit", "1", "-o", str(tmp_path / "out")]) == 2

    err = capsys.readouterr().err
    assert err == (f"partitioner: error: target vendor-chip: the {hook} hook of plug-in vendor failed: SystemExit: 5. "
                   "Fix: update or report the plug-in, or plan without this target.\n")
    assert not (tmp_path / "out" / "plan.json").exists()


def test_ctrl_c_inside_a_hook_is_an_interrupt_not_the_plugins_fault(fake_plugins, tmp_path, capsys):
    install_hooks(fake_plugins, tmp_path, support=raising(KeyboardInterrupt()))
    (tmp_path / "model.py").write_text(MODEL)

    assert main(["compile", str(tmp_path / "model.py"), "--targets", "vendor-chip,cpu-x86", "-o",
                 str(tmp_path / "out")]) == 130


def meta_model():
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    return model.to(device="meta", dtype=torch.bfloat16), (torch.randn(16, 64, dtype=torch.bfloat16, device="meta"),)


@pytest.mark.parametrize("hooks, problem", [
    ({"support": lambda node: 42}, "the support hook of plug-in vendor gave 42 for linear (aten.linear.default); it "
                                   "must give None (supported) or a reason, a non-empty string"),
    ({"support": lambda node: ""}, "the support hook of plug-in vendor gave ''"),
    ({"support": raising(PartitionRefused("too big"))}, "the support hook of plug-in vendor raised PartitionRefused, "
                                                        "which only a compile hook may raise"),
    ({"cost": lambda node, target: "1e-3"}, "the cost hook of plug-in vendor gave '1e-3' seconds for linear"),
    ({"cost": lambda node, target: float("nan")}, "the cost hook of plug-in vendor gave nan seconds"),
    ({"cost": lambda node, target: -1.0}, "the cost hook of plug-in vendor gave -1.0 seconds"),
    ({"cost": lambda node, target: True}, "the cost hook of plug-in vendor gave True seconds"),
    ({"compile": lambda partition: 42}, "the compiler of plug-in vendor returned a int for partition 000_vendor-chip"),
    ({"compile": lambda partition: CompiledPartition({".bin": "text"})}, "returned str data for suffix '.bin'"),
    ({"compile": lambda partition: CompiledPartition({".onnx": b""})}, "returned file suffix '.onnx'"),
    ({"compile": lambda partition: CompiledPartition({"../x": b""})}, "returned file suffix '../x'"),
    ({"compile": lambda partition: CompiledPartition(note=5)}, "returned a note that is a int"),
    ({"compile": raising(PartitionRefused(42))}, "refused partition 000_vendor-chip with reason 42"),
])
def test_a_hook_answer_outside_its_contract_is_one_error_blaming_the_plugin(fake_plugins, tmp_path, hooks, problem):
    install_hooks(fake_plugins, tmp_path, **hooks)

    with pytest.raises(PartitionerError, match=r"^target vendor-chip: ") as error:
        compile(*meta_model(), targets="vendor-chip,cpu-x86", pins=["0=vendor-chip"], time_limit_seconds=1)
    assert problem in str(error.value) and "Fix: update or report the plug-in" in str(error.value)


def test_a_support_hooks_reason_and_a_cost_hooks_numpy_figure_are_taken(fake_plugins, tmp_path):
    np = pytest.importorskip("numpy")
    install_hooks(fake_plugins, tmp_path, support=lambda node: "too wide" if node.name == "linear_1" else None,
                  cost=lambda node, target: np.float32(1e-6))

    plan = compile(*meta_model(), targets="vendor-chip,cpu-x86", time_limit_seconds=1)

    assert next(n for n in plan.nodes if n.name == "linear_1").refusals["vendor-chip"] == (
        "aten.linear.default: too wide (plug-in vendor)")
    linear = next(node for node in plan.problem.nodes if node.name == "linear")
    assert linear.compute_seconds["vendor-chip"] == pytest.approx(1e-6)
