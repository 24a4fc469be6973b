"""Fake plug-ins for the tests: entry points the loader sees in place of the installed ones, and spec files for them.

Import `fake_plugins` into a test module to use it as a fixture (or call `install_fake_plugins` with a
monkeypatch of a wider scope).
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path

import pytest

from targets import plugins
from targets.loader import BUILTIN_DIR
from targets.plugins import ENTRY_POINT_GROUP, TargetPlugin

ACME_SPEC = Path(__file__).parents[2] / "examples" / "vendor_plugin" / "acme_partitioner" / "acme-npu.toml"


def install_fake_plugins(monkeypatch: pytest.MonkeyPatch, **values) -> None:
    """Make the plug-ins of `values` (entry point name -> TargetPlugin, or an entry point value such as
    "module:attribute") the installed ones; with none, no plug-in is installed."""
    entry_points = []
    for name, value in values.items():
        if isinstance(value, TargetPlugin):
            module = types.ModuleType(f"fake_vendor_{name}")
            module.plugin = value
            monkeypatch.setitem(sys.modules, module.__name__, module)
            value = f"{module.__name__}:plugin"
        entry_points.append(importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP))
    monkeypatch.setattr(plugins, "_entry_points", lambda: tuple(entry_points))
    plugins._installed.cache_clear()  # fake entry points of one name may carry other hooks test to test


@pytest.fixture
def fake_plugins(monkeypatch):
    """`install_fake_plugins` for one test."""
    return lambda **values: install_fake_plugins(monkeypatch, **values)


def spec_named(folder: Path, name: str, like: str = "acme-npu") -> Path:
    """A spec file in `folder` for a target `name`: a copy of the Acme NPU's spec, or of the built-in `like`."""
    source = ACME_SPEC if like == "acme-npu" else BUILTIN_DIR / f"{like}.toml"
    path = folder / f"{name}.toml"
    path.write_text(source.read_text().replace(f'name = "{like}"', f'name = "{name}"'))
    return path
