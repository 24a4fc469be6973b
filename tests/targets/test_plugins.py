"""Plug-ins: a vendor's package registers targets through the entry point group `partitioner.targets`.

These tests use the example plug-in (examples/vendor_plugin, the Acme NPU), installed as a user would install a
vendor's package (`pip install -e examples/vendor_plugin`; CI and the README's test command do), and fake entry
points for plug-ins that are broken.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import types
from pathlib import Path

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
from targets import plugins
from targets.hooks import TargetHooks
from targets.loader import available_target_names, load_target, load_targets
from targets.plugins import ENTRY_POINT_GROUP, TargetPlugin

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


# --- broken plug-ins: one clear error naming the package and the fix -------------------------------------------------

@pytest.fixture
def fake_plugins(monkeypatch, tmp_path):
    """Install fake plug-ins: a function of (name -> TargetPlugin or entry point value) that the loader then sees."""

    def install(**values):
        entry_points = []
        for name, value in values.items():
            if isinstance(value, TargetPlugin):
                module = types.ModuleType(f"fake_vendor_{name}")
                module.plugin = value
                monkeypatch.setitem(sys.modules, module.__name__, module)
                value = f"{module.__name__}:plugin"
            entry_points.append(importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP))
        monkeypatch.setattr(plugins, "_entry_points", lambda: tuple(entry_points))
        plugins._registered.cache_clear()  # fake entry points of one name may carry other hooks test to test

    return install


def spec_named(tmp_path, name: str):
    text = Path(load_target("acme-npu").spec_path).read_text()
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace('name = "acme-npu"', f'name = "{name}"'))
    return path


@pytest.mark.parametrize("value, problem", [
    ("no_such_vendor_module:plugin", "loading 'no_such_vendor_module:plugin' failed: ModuleNotFoundError"),
    ("os:sep", "'os:sep' is a str, not a targets.plugins.TargetPlugin"),
])
def test_a_plugin_that_does_not_load_is_named_with_the_fix(fake_plugins, value, problem):
    fake_plugins(broken=value)

    with pytest.raises(PartitionerError, match="plug-in broken .*is broken: ") as error:
        load_target("some-vendor-chip")
    assert problem in str(error.value) and "Fix: update or uninstall that package" in str(error.value)


def test_a_plugin_target_may_not_take_a_built_in_name(fake_plugins, tmp_path):
    fake_plugins(shadow=TargetPlugin((spec_named(tmp_path, "cuda-h100"),)))

    with pytest.raises(PartitionerError, match="registers a target named 'cuda-h100', the name of a built-in"):
        available_target_names()


def test_hooks_for_a_target_the_plugin_does_not_ship_are_an_error(fake_plugins, tmp_path):
    fake_plugins(vendor=TargetPlugin((spec_named(tmp_path, "vendor-chip"),), {"other-chip": TargetHooks()}))

    with pytest.raises(PartitionerError, match="hooks for 'other-chip', which none of its spec files names"):
        load_target("vendor-chip")


def test_a_hook_that_raises_is_reported_as_the_plugins_failure(fake_plugins, tmp_path):
    def support(node):
        raise KeyError("tile_size")

    fake_plugins(vendor=TargetPlugin((spec_named(tmp_path, "vendor-chip"),), {"vendor-chip": TargetHooks(support)}))
    graph = annotate(capture(*mlp(width=256, rows=64)).program)

    with pytest.raises(PartitionerError, match="target vendor-chip: the support hook of plug-in vendor failed: "
                                               "KeyError: 'tile_size'"):
        tag(graph, load_targets(["vendor-chip", "cpu-x86"]))


@pytest.mark.parametrize("seconds", ["1e-3", float("inf"), -1.0, float("nan")])
def test_a_cost_hook_giving_no_finite_seconds_is_the_plugins_error(fake_plugins, tmp_path, seconds):
    fake_plugins(vendor=TargetPlugin((spec_named(tmp_path, "vendor-chip"),),
                                     {"vendor-chip": TargetHooks(cost=lambda node, target: seconds)}))
    graph = annotate(capture(*mlp(width=256, rows=64)).program)
    targets = load_targets(["vendor-chip", "cpu-x86"])

    with pytest.raises(PartitionerError, match="the cost hook of plug-in vendor gave"):
        build_problem(graph, tag(graph, targets), targets, RooflineCostModel())
