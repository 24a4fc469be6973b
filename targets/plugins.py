"""Plug-ins: targets a vendor's package ships to our users without a change to this project.

A package registers a `TargetPlugin` under the entry point group
`partitioner.targets` (in its pyproject.toml:
`[project.entry-points."partitioner.targets"] acme = "acme_partitioner:plugin"`):
its spec files, and for any of its targets the hooks of targets/hooks.py. Once
the package is installed its targets load by name like built-in ones, and
`partitioner targets` says which package each came from. examples/vendor_plugin
is a complete one.
"""

from __future__ import annotations

import functools
import importlib.metadata
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from partitioner.errors import PartitionerError
from partitioner.files import SPEC, read_text
from targets.spec import TargetHooks

ENTRY_POINT_GROUP = "partitioner.targets"


@dataclass(frozen=True)
class TargetPlugin:
    """What a vendor's package registers: its target spec files, and hooks by target name."""

    spec_files: tuple[Path, ...]
    hooks: Mapping[str, TargetHooks] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredTarget:
    """A target a plug-in provides: its spec file, the package it came from and its hooks."""

    name: str
    spec_path: Path
    origin: str
    hooks: TargetHooks | None


def registered_targets() -> Mapping[str, RegisteredTarget]:
    """Every installed plug-in's targets by name (read once per process)."""
    return _registered(_entry_points())


def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


@functools.cache
def _registered(entry_points: tuple[importlib.metadata.EntryPoint, ...]) -> Mapping[str, RegisteredTarget]:
    found: dict[str, RegisteredTarget] = {}
    for entry_point in entry_points:
        origin = _origin(entry_point)
        plugin = _plugin(entry_point, origin)
        names = {}
        for path in plugin.spec_files:
            path = Path(path)
            if not path.is_file():
                raise _broken(origin, f"its spec file {str(path)!r} does not exist")
            name = _name(path, origin)
            if name in found or name in names:
                raise _broken(origin, f"its target {name!r} has the name of one from {found[name].origin}"
                              if name in found else f"two of its spec files name {name!r}")
            names[name] = path
        unknown = sorted(set(plugin.hooks) - set(names))
        if unknown:
            raise _broken(origin, f"it gives hooks for {unknown[0]!r}, which none of its spec files names")
        for name, path in names.items():
            found[name] = RegisteredTarget(name, path, origin, plugin.hooks.get(name))
    return found


def _plugin(entry_point: importlib.metadata.EntryPoint, origin: str) -> TargetPlugin:
    """The TargetPlugin an entry point names (the value itself, or what calling it returns)."""
    try:
        value = entry_point.load()
        plugin = value() if callable(value) else value
    except Exception as error:  # noqa: BLE001 - whatever a vendor's import raises becomes one clear error
        raise _broken(origin, f"loading {entry_point.value!r} failed: {type(error).__name__}: {error}") from error
    if not isinstance(plugin, TargetPlugin):
        raise _broken(origin, f"{entry_point.value!r} is a {type(plugin).__name__}, not a "
                              "targets.plugins.TargetPlugin")
    return plugin


def _name(path: Path, origin: str) -> str:
    """The target name a plug-in's spec file gives (the loader reads the rest when the target is used)."""
    try:
        name = tomllib.loads(read_text(path, SPEC)).get("name")
    except (OSError, PartitionerError, tomllib.TOMLDecodeError, RecursionError) as error:
        raise _broken(origin, f"its spec file {str(path)!r} cannot be read: {error}") from error
    if not isinstance(name, str):
        raise _broken(origin, f"its spec file {str(path)!r} has no name")
    return name


def _origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return f"plug-in {dist.name} {dist.version}" if dist is not None else f"plug-in {entry_point.name}"


def _broken(origin: str, problem: str) -> PartitionerError:
    return PartitionerError(f"{origin} (entry point group {ENTRY_POINT_GROUP!r}) is broken: {problem}. Fix: update "
                            "or uninstall that package, or report it to its vendor.")
