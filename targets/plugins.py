"""Plug-ins: targets a vendor's package ships to our users without a change to this project.

A package registers a `TargetPlugin` under the entry point group
`partitioner.targets` (in its pyproject.toml:
`[project.entry-points."partitioner.targets"] acme = "acme_partitioner:plugin"`):
its spec files, and for any of its targets the hooks of targets/hooks.py. Once
the package is installed its targets load by name like built-in ones, and
`partitioner targets` says which package each came from. examples/vendor_plugin
is a complete one. A plug-in that does not load, or registers something wrong,
is broken: it provides none of its targets, and everything else still loads.
"""

from __future__ import annotations

import functools
import importlib.metadata
import tomllib
from collections.abc import Iterable, Mapping
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


BROKEN_FIX = "update or uninstall that package, or report it to its vendor"


@dataclass(frozen=True)
class BrokenPlugin:
    """An installed plug-in that provides nothing: its entry point does not load, or what it registers is wrong."""

    origin: str
    problem: str

    def describe(self) -> str:
        return f"{self.origin} (entry point group {ENTRY_POINT_GROUP!r}) is broken: {self.problem}"

    def message(self) -> str:
        """The problem and its fix, on one line."""
        return f"{self.describe()}. Fix: {BROKEN_FIX}."


@dataclass(frozen=True)
class InstalledPlugins:
    """What the installed plug-ins provide: their targets by name, and the plug-ins that provide nothing.

    A broken plug-in costs only its own targets: the others, and the hints for a misspelled name, stay.
    """

    targets: Mapping[str, RegisteredTarget]
    broken: tuple[BrokenPlugin, ...]


def installed_plugins(reserved: frozenset[str] = frozenset()) -> InstalledPlugins:
    """Every installed plug-in's targets by name, and the broken ones (read once per process); a plug-in whose
    target takes a `reserved` name (a built-in target's) is broken."""
    return _installed(_entry_points(), reserved)


def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


class _Broken(Exception):  # noqa: N818 - internal: what is wrong with one plug-in, caught in _installed
    pass


@functools.cache
def _installed(entry_points: tuple[importlib.metadata.EntryPoint, ...], reserved: frozenset[str]) -> InstalledPlugins:
    found: dict[str, RegisteredTarget] = {}
    broken = []
    for entry_point in entry_points:
        origin = _origin(entry_point)
        try:
            found.update(_targets_of(entry_point, origin, found, reserved))
        except _Broken as problem:
            broken.append(BrokenPlugin(origin, str(problem)))
    return InstalledPlugins(found, tuple(broken))


def _targets_of(entry_point: importlib.metadata.EntryPoint, origin: str, found: Mapping[str, RegisteredTarget],
                reserved: frozenset[str]) -> dict[str, RegisteredTarget]:
    """The targets one plug-in registers, checked against those of the plug-ins before it and `reserved`."""
    plugin = _plugin(entry_point)
    names: dict[str, Path] = {}
    for path in plugin.spec_files:
        path = Path(path)
        if not path.is_file():
            raise _Broken(f"its spec file {str(path)!r} does not exist")
        name = _name(path)
        if name in reserved:
            raise _Broken(f"its target {name!r} has the name of a built-in target")
        if name in found or name in names:
            raise _Broken(f"its target {name!r} has the name of one from {found[name].origin}" if name in found
                          else f"two of its spec files name {name!r}")
        names[name] = path
    unknown = sorted(set(plugin.hooks) - set(names), key=str)
    if unknown:
        raise _Broken(f"it gives hooks for {unknown[0]!r}, which none of its spec files names")
    for name, hooks in plugin.hooks.items():
        _check_hooks(name, hooks)
    return {name: RegisteredTarget(name, path, origin, plugin.hooks.get(name)) for name, path in names.items()}


def _plugin(entry_point: importlib.metadata.EntryPoint) -> TargetPlugin:
    """The TargetPlugin an entry point names (the value itself, or what calling it returns)."""
    try:
        value = entry_point.load()
        plugin = value() if callable(value) else value
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - whatever a vendor's import raises (SystemExit too) is its fault
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise _Broken(f"loading {entry_point.value!r} failed: {type(error).__name__}: {first_line}") from error
    if not isinstance(plugin, TargetPlugin):
        raise _Broken(f"{entry_point.value!r} is a {type(plugin).__name__}, not a targets.plugins.TargetPlugin")
    if isinstance(plugin.spec_files, (str, Path)) or not isinstance(plugin.spec_files, Iterable) \
            or not all(isinstance(path, (str, Path)) for path in plugin.spec_files):
        raise _Broken(f"its spec_files are {plugin.spec_files!r}, not a tuple of paths")
    if not isinstance(plugin.hooks, Mapping):
        raise _Broken(f"its hooks are a {type(plugin.hooks).__name__}, not a mapping of target name to TargetHooks")
    return plugin


def _check_hooks(name: str, hooks: object) -> None:
    if not isinstance(hooks, TargetHooks):
        raise _Broken(f"its hooks for {name!r} are a {type(hooks).__name__}, not a targets.hooks.TargetHooks")
    for hook in ("support", "cost", "compile"):
        if (function := getattr(hooks, hook)) is not None and not callable(function):
            raise _Broken(f"the {hook} hook it gives {name!r} is a {type(function).__name__}, not a function")


def _name(path: Path) -> str:
    """The target name a plug-in's spec file gives (the loader reads the rest when the target is used)."""
    try:
        name = tomllib.loads(read_text(path, SPEC)).get("name")
    except (OSError, PartitionerError, tomllib.TOMLDecodeError, RecursionError) as error:
        raise _Broken(f"its spec file {str(path)!r} cannot be read: {error}") from error
    if not isinstance(name, str):
        raise _Broken(f"its spec file {str(path)!r} has no name")
    return name


def _origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return f"plug-in {dist.name} {dist.version}" if dist is not None else f"plug-in {entry_point.name}"
