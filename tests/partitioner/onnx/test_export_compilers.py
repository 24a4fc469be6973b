"""Export and plug-in compilers: a plug-in is needed only where its compiler has a partition to build, it is
handed each partition as planning handed it (named for its place), what it says of its work is shown, and a
plug-in version other than the plan's is one warning."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import warnings
from types import SimpleNamespace

import pytest
import torch

from partitioner.cli import main
from partitioner.compiler import compile
from partitioner.errors import PartitionerError
from partitioner.onnx.export import export_plan
from targets.hooks import CompiledPartition, TargetHooks
from targets.plugins import TargetPlugin
from tests.targets.plugin_fakes import fake_plugins, install_fake_plugins, spec_named  # noqa: F401 - a fixture

MODEL = """
import torch

def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    return model.to(torch.bfloat16).eval(), (torch.randn(16, 64, dtype=torch.bfloat16),)
"""


class NamingCompiler:
    """A compiler hook that records the name of the target it is handed, while planning and at export."""

    def __init__(self):
        self.planning: set[str] = set()
        self.export: set[str] = set()

    def __call__(self, partition):
        (self.planning if partition.example_inputs is None else self.export).add(partition.target.name)
        return CompiledPartition({".vendor.bin": b"\x00"}, f"{len(partition.nodes)} ops in one program\n(vendor 1.0)")


def vendor_plugin(folder, **hooks) -> TargetPlugin:
    return TargetPlugin((spec_named(folder, "vendor-chip"),), {"vendor-chip": TargetHooks(**hooks)})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A fleet plan with a partition on each of two vendor chips, made with plug-in version 0.9 and exported with
    the one installed now (a fake whose origin has no version), from the command line."""
    folder = tmp_path_factory.mktemp("fleet")
    naming = NamingCompiler()
    with pytest.MonkeyPatch.context() as monkeypatch:
        install_fake_plugins(monkeypatch, vendor=vendor_plugin(folder, compile=naming))
        (folder / "model.py").write_text(MODEL)
        assert main(["compile", str(folder / "model.py"), "--fleet", "vendor-chip=2,cpu-x86=1", "--pin",
                     "0=vendor-chip.0", "--pin", "1=cpu-x86", "--pin", "2=vendor-chip.1", "-o", str(folder)]) == 0
        plan = json.loads((folder / "plan.json").read_text())
        for record in plan["targets"]:
            record.update({"origin": "plug-in vendor 0.9"} if record.get("origin") == "plug-in vendor" else {})
        (folder / "plan.json").write_text(json.dumps(plan))
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()) as out:
            warnings.simplefilter("always")
            assert main(["export", str(folder / "plan.json"), "-o", str(folder / "onnx")]) == 0
    manifest = json.loads((folder / "onnx" / "manifest.json").read_text())
    return SimpleNamespace(naming=naming, out=out.getvalue(), warnings=[str(w.message) for w in caught],
                           manifest=manifest)


def test_export_hands_each_compiler_its_partition_named_for_its_place_as_planning_did(exported):
    assert exported.naming.export == exported.naming.planning == {"vendor-chip.0", "vendor-chip.1"}


def test_export_shows_and_records_what_the_compiler_says_of_its_partition(exported):
    compiled = [p for p in exported.manifest["partitions"] if "compiled" in p]
    assert [p["target"] for p in compiled] == ["vendor-chip.0", "vendor-chip.1"]
    assert all(p["note"].endswith("ops in one program (vendor 1.0)") for p in compiled)
    assert "; its compiler made 000_vendor-chip.0.vendor.bin (1 ops in one program (vendor 1.0))" in exported.out


def test_a_plugin_version_other_than_the_plans_is_one_warning(exported):
    vendor = [message for message in exported.warnings if "plug-in vendor" in message]
    assert vendor == ["the plan was made with plug-in vendor 0.9 and plug-in vendor is installed here, so a compiler "
                      "other than the one planning asked builds the partitions on vendor-chip.0, vendor-chip.1. Fix: "
                      "compile the plan again with this version, or install the one it was made with."]


def real_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    return model.to(torch.bfloat16).eval(), (torch.randn(16, 64, dtype=torch.bfloat16),)


def test_a_plan_with_nothing_to_compile_exports_without_the_plugin(fake_plugins, tmp_path):
    fake_plugins(vendor=vendor_plugin(tmp_path, compile=NamingCompiler()))
    plan = compile(*real_model(), targets="vendor-chip,cpu-x86", forbids=["*=vendor-chip"], time_limit_seconds=1)
    fake_plugins()  # the plug-in is not installed where the plan is exported

    manifest = export_plan(plan, tmp_path / "onnx")

    assert [p.target for p in manifest.partitions] == ["cpu-x86"]


@pytest.mark.parametrize("origin, install", [
    ("plug-in vendor", "Fix: install the package of plug-in vendor, and export again."),
    ("plug-in acme-vendor 1.2", "Fix: pip install 'acme-vendor==1.2', the version the plan was made with, and export "
                                "again."),
])
def test_a_plan_whose_compiler_is_not_installed_is_one_error_naming_the_package(fake_plugins, tmp_path, origin,
                                                                                 install):
    fake_plugins(vendor=vendor_plugin(tmp_path, compile=NamingCompiler()))
    plan = compile(*real_model(), targets="vendor-chip,cpu-x86", pins=["0=vendor-chip"], time_limit_seconds=1)
    plan = dataclasses.replace(plan, targets=tuple(dataclasses.replace(t, origin=origin) if t.name == "vendor-chip"
                                                   else t for t in plan.targets))
    fake_plugins()

    with pytest.raises(PartitionerError) as error:
        export_plan(plan, tmp_path / "onnx")

    assert str(error.value).startswith(f"the plan's partitions on vendor-chip are built at export by the compiler of "
                                       f"{origin}, which is not here (no installed plug-in provides vendor-chip). ")
    assert str(error.value).endswith(install) and not (tmp_path / "onnx").exists()
