"""Plug-ins: a vendor's package registers targets through the entry point group `partitioner.targets`.

These tests use the example plug-in (examples/vendor_plugin, the Acme NPU), installed as a user would install a
vendor's package (`pip install -e examples/vendor_plugin`; CI and the README's test command do), and fake entry
points for plug-ins that are broken.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from cost_models.roofline import RooflineCostModel
from partitioner.cli import main
from partitioner.compiler import compile
from partitioner.errors import PartitionerError
from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import annotate
from partitioner.placement.problem import build_problem
from partitioner.placement.tagging import tag
from partitioner.plan import Plan
from partitioner.reporting.html_report import render_html_report
from targets.hooks import TargetHooks
from targets.loader import available_target_names, load_target, load_targets
from targets.plugins import TargetPlugin
from tests.targets.plugin_fakes import fake_plugins, spec_named  # noqa: F401 - fake_plugins is a fixture

pytest.importorskip("acme_partitioner", reason="the example plug-in is not installed: pip install -e "
                                               "examples/vendor_plugin")

ORIGIN = "plug-in partitioner-example-vendor 0.1.0"


class MLP(torch.nn.Module):
    """Two big matmuls around an exact GELU, which the Acme compiler refuses, then one with an inner size of
    1000, which the Acme support rule refuses."""

    def __init__(self, width: int = 2048):
        super().__init__()
        self.up = torch.nn.Linear(width, 4 * width)
        self.act = torch.nn.GELU()
        self.down = torch.nn.Linear(4 * width, width)
        self.odd = torch.nn.Linear(width, 1000)
        self.tail = torch.nn.Linear(1000, 64)

    def forward(self, x):
        return self.tail(self.odd(self.down(self.act(self.up(x)))))


def mlp(width: int = 2048, rows: int = 2048, device: str = "meta"):
    return (MLP(width).to(device=device, dtype=torch.bfloat16).eval(),
            (torch.randn(rows, width, dtype=torch.bfloat16, device=device),))


@pytest.fixture(scope="module")
def replanned() -> Plan:
    """The MLP on an Acme NPU in a CPU server: the NPU takes the matmuls, the CPU what the NPU refuses."""
    return compile(*mlp(), targets=["acme-npu", "cpu-x86"], time_limit_seconds=5)


def node_of(plan: Plan, op: str, module: str):
    return next(node for node in plan.nodes if node.op == op and node.module_path == module)


def test_an_installed_plugins_target_loads_by_name_with_where_it_came_from_and_its_hooks():
    acme = load_target("acme-npu")

    assert acme.origin == ORIGIN
    assert acme.hooks.support and acme.hooks.cost and acme.hooks.compile
    assert "acme-npu" in available_target_names()
    assert load_target("cuda-h100").origin == "built-in"


def test_partitioner_targets_says_where_each_target_came_from(capsys):
    assert main(["targets"]) == 0

    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["acme-npu"].endswith(f"{ORIGIN} (hooks: support, cost, compile)")
    assert lines["cuda-h100"].endswith("built-in")


def test_the_support_hook_refuses_what_the_spec_cannot_say_and_its_reason_names_the_plugin():
    graph = annotate(capture(*mlp(width=256, rows=64)).program)
    tagging = tag(graph, load_targets(["acme-npu", "cpu-x86"]))

    odd, tail = (node.name for node in graph if node.op == "aten.linear.default" and node.module_path in
                 ("odd", "tail"))
    assert "acme-npu" in tagging.supported[odd]  # inner size 256: whole tiles
    assert tagging.refusals[tail]["acme-npu"] == (
        "aten.linear.default: the matrix engine takes whole 16-wide tiles, and inner size 1000 is not a multiple "
        f"of 16 ({ORIGIN})")


def test_the_cost_hook_prices_a_matmul_in_whole_tiles_and_leaves_other_ops_to_the_cost_model():
    graph = annotate(capture(*mlp(width=2048, rows=256)).program)
    problem = build_problem(graph, tag(graph, load_targets(["acme-npu", "cpu-x86"])),
                            load_targets(["acme-npu", "cpu-x86"]), RooflineCostModel())
    seconds = {node.name: node.compute_seconds for node in problem.nodes}
    up = next(node for node in graph if node.module_path == "up")
    gelu = next(node for node in graph if node.op == "aten.gelu.default")

    # 256 rows, 8192 columns, inner 2048: 2 x 64 x 16 tiles of 128^3 multiply-adds at 100 TFLOP/s, plus launch
    assert seconds[up.name]["acme-npu"] == pytest.approx(10e-6 + 2 * 64 * 16 * 2 * 128**3 / 100e12)
    assert seconds[gelu.name]["acme-npu"] == RooflineCostModel().compute_seconds(gelu, load_target("acme-npu"))


def test_a_compiler_refusal_replans_without_the_refused_ops_and_the_plan_says_why(replanned):
    gelu = node_of(replanned, "aten.gelu.default", "act")

    assert [(r.target, r.nodes) for r in replanned.compiler_refusals] == [("acme-npu", (gelu.name,))]
    assert replanned.placement[gelu.name] == "cpu-x86"
    assert replanned.placement[node_of(replanned, "aten.linear.default", "up").name] == "acme-npu"
    assert gelu.refusals["acme-npu"] == ("acme-npu's compiler: the Acme compiler 1.0 cannot lower exact (erf) "
                                         "GELU; use approximate='tanh'")
    assert "re-planned  after 1 compiler refusal" in replanned.summary()
    assert "acme-npu's compiler refused 1 op of partition 000_acme-npu" in replanned.summary()


def test_the_report_page_lists_the_compiler_refusals(replanned):
    page = render_html_report(replanned)

    assert "<h2>Re-planned after compiler refusals</h2>" in page
    assert "the Acme compiler 1.0 cannot lower exact (erf) GELU" in page


def test_the_refusals_survive_the_plan_file_and_explain_shows_them(replanned, tmp_path, capsys):
    path = replanned.save(tmp_path / "plan.json")
    loaded = Plan.load(path)
    gelu = node_of(loaded, "aten.gelu.default", "act").name

    assert loaded.compiler_refusals == replanned.compiler_refusals
    assert next(t for t in loaded.targets if t.name == "acme-npu").origin == ORIGIN
    assert main(["explain", str(path), gelu]) == 0
    assert "acme-npu's compiler: the Acme compiler 1.0 cannot lower exact (erf) GELU" in capsys.readouterr().out


SMALL_MLP = """
import torch

def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(256, 64))
    return model.to(torch.bfloat16).eval(), (torch.randn(16, 64, dtype=torch.bfloat16),)
"""


def test_compile_and_export_use_the_plugin_target_and_export_writes_what_its_compiler_makes(tmp_path, capsys):
    (tmp_path / "small_mlp.py").write_text(SMALL_MLP)
    assert main(["compile", f"{tmp_path / 'small_mlp.py'}:build", "--targets", "acme-npu,cpu-x86", "--pin",
                 "0=acme-npu", "-o", str(tmp_path / "out")]) == 0

    assert main(["export", str(tmp_path / "out" / "plan.json"), "-o", str(tmp_path / "onnx")]) == 0

    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    on_acme = [p for p in manifest["partitions"] if p["target"] == "acme-npu"]
    assert on_acme and all(p["compiled"] == [p["file"].replace(".onnx", ".acme.json")] for p in on_acme)
    program = json.loads((tmp_path / "onnx" / on_acme[0]["compiled"][0]).read_text())
    assert program["compiler"] == "acme 1.0" and "aten.linear.default" in [op["op"] for op in program["ops"]]
    assert "its compiler made 000_acme-npu.acme.json" in capsys.readouterr().out
    assert not any(p["target"] == "cpu-x86" and "compiled" in p for p in manifest["partitions"])


def test_a_compiler_refusing_a_pinned_op_is_one_clear_error():
    with pytest.raises(PartitionerError,
                       match=r"node gelu may run nowhere else \(a pin keeps it there\). Fix: drop or narrow the pin"):
        compile(*mlp(width=256, rows=64), targets=["acme-npu", "cpu-x86"], pins=["act=acme-npu"],
                time_limit_seconds=2)


# --- broken plug-ins: they cost only their own targets, and are named with the fix ----------------------------------

BROKEN = {
    "an import that fails": ("no_such_vendor_module:plugin",
                             "loading 'no_such_vendor_module:plugin' failed: ModuleNotFoundError"),
    "an import that exits": ("fake_vendor_exiting:plugin",
                             "loading 'fake_vendor_exiting:plugin' failed: SystemExit: 5"),
    "not a TargetPlugin": ("os:sep", "'os:sep' is a str, not a targets.plugins.TargetPlugin"),
    "a built-in's name": ("shadow", "its target 'cuda-h100' has the name of a built-in target"),
    "hooks for a target it lacks": ("stray", "it gives hooks for 'other-chip', which none of its spec files names"),
    "hooks that are not hooks": ("wrong", "its hooks for 'wrong-chip' are a dict, not a targets.hooks.TargetHooks"),
    "a hook that is no function": ("uncallable", "the cost hook it gives 'odd-chip' is a float, not a function"),
}


def broken_plugin(case: str, tmp_path, monkeypatch):
    """The entry point value of one kind of broken plug-in."""
    exiting = types.ModuleType("fake_vendor_exiting")
    exiting.__getattr__ = lambda name: sys.exit(5)  # loading the entry point's attribute exits, as a bad import may
    monkeypatch.setitem(sys.modules, "fake_vendor_exiting", exiting)
    value = BROKEN[case][0]
    return {
        "shadow": TargetPlugin((spec_named(tmp_path, "cuda-h100"),)),
        "stray": TargetPlugin((spec_named(tmp_path, "vendor-chip"),), {"other-chip": TargetHooks()}),
        "wrong": TargetPlugin((spec_named(tmp_path, "wrong-chip"),), {"wrong-chip": {"support": len}}),
        "uncallable": TargetPlugin((spec_named(tmp_path, "odd-chip"),), {"odd-chip": TargetHooks(cost=1.0)}),
    }.get(value, value)


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_plugin_is_named_with_its_error_and_the_other_targets_still_load(fake_plugins, tmp_path,
                                                                                   monkeypatch, capsys, case):
    fake_plugins(acme=TargetPlugin((spec_named(tmp_path, "acme-npu"),)),
                 broken=broken_plugin(case, tmp_path, monkeypatch))

    assert load_target("acme-npu").origin == "plug-in acme" and load_target("cuda-h100").origin == "built-in"
    assert "acme-npu" in available_target_names()
    with pytest.raises(PartitionerError) as error:
        load_target("acme-npo")
    message = str(error.value)
    assert "did you mean 'acme-npu'?" in message and "plug-in broken (entry point group 'partitioner.targets') is " \
        f"broken: {BROKEN[case][1]}" in message and "update or uninstall that package" in message
    assert "\n" not in message
    assert main(["targets"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()][-1] == "acme-npu"
    assert len(err.splitlines()) == 1 and err.startswith(
        f"partitioner: warning: plug-in broken (entry point group 'partitioner.targets') is broken: {BROKEN[case][1]}")
    assert err.endswith(". Fix: update or uninstall that package, or report it to its vendor.\n")


def test_a_plugin_target_whose_spec_does_not_load_is_named_and_the_others_are_listed(fake_plugins, tmp_path, capsys):
    bad = spec_named(tmp_path, "bad-chip")
    bad.write_text(bad.read_text().replace("price_per_hour =", "pric_per_hour ="))
    fake_plugins(acme=TargetPlugin((spec_named(tmp_path, "acme-npu"),)), bad=TargetPlugin((bad,)))

    assert main(["targets"]) == 0
    out, err = capsys.readouterr()
    assert "acme-npu" in out and "bad-chip" not in out
    assert err.startswith(f"partitioner: warning: {bad}: field 'pric_per_hour': unknown field. Fix: did you mean")


def test_a_calibrated_copy_of_a_plugin_target_keeps_its_hooks_through_planning_and_export(fake_plugins, tmp_path):
    from cost_models.calibrated_spec import write_calibrated_spec
    from cost_models.calibration import calibrate
    from partitioner.execution.partition_compilers import plan_compilers
    from partitioner.execution.split import Partition
    from partitioner.plan_records import TargetRecord
    from tests.cost_models.test_calibration import profile_made_by

    hooks = TargetHooks(support=lambda node: None, compile=lambda partition: None)
    fake_plugins(vendor=TargetPlugin((spec_named(tmp_path, "vendor-cpu", like="cpu-x86"),), {"vendor-cpu": hooks}))
    target = load_target("vendor-cpu")
    profile = profile_made_by(target, 7e-6, 0.3, 0.45)

    calibrated = load_target(write_calibrated_spec(target, calibrate(profile, target), profile,
                                                   tmp_path / "vendor-cpu-calibrated.toml"))

    assert (calibrated.name, calibrated.hooks, calibrated.origin) == ("vendor-cpu-calibrated", hooks, "plug-in vendor")
    record = TargetRecord(calibrated.name, "cpu", "", "cpu", "CPUExecutionProvider", calibrated.spec_path,
                          origin=calibrated.origin, compiles=True)
    assert plan_compilers([record], [Partition(0, calibrated.name, ("linear",), (), ("linear",))]
                          )[calibrated.name].hooks is hooks


def test_a_spec_taking_the_hooks_of_a_target_no_plugin_provides_is_one_error(fake_plugins, tmp_path):
    fake_plugins()
    path = spec_named(tmp_path, "vendor-cpu-calibrated", like="cpu-x86")
    path.write_text(path.read_text().replace('name = "vendor-cpu-calibrated"',
                                             'name = "vendor-cpu-calibrated"\nhooks_from = "vendor-cpu"'))

    with pytest.raises(PartitionerError, match="field 'hooks_from': no installed plug-in has a target named "
                                               "'vendor-cpu'.*Fix: install the plug-in that provides it"):
        load_target(path)
