"""Load targets: find a target's spec (built-in, an installed plug-in's, a file), read it, and make target sets.

A vendor adds a device by writing one spec file; its reading and checking
(targets/spec_reader.py) report a mistake with the file, the field and the fix
at load time, never as a wrong plan later. Built-in specs live in `builtin/`.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from partitioner.errors import PartitionerError
from targets.plugins import BROKEN_FIX, BrokenPlugin, RegisteredTarget, installed_plugins
from targets.spec import Target, TargetHooks, TargetSet
from targets.spec_reader import SpecReader, parse_toml, read_toml

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_TARGET_NAMES = ("npu-example", "cuda-h100")

def builtin_target_names() -> list[str]:
    """Names of the target specs shipped with the package."""
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.toml"))


def available_target_names() -> list[str]:
    """Names of the built-in targets, then those of installed plug-ins (targets/plugins.py)."""
    return builtin_target_names() + sorted(plugin_targets())


def plugin_targets() -> dict[str, RegisteredTarget]:
    """Installed plug-ins' targets by name (a plug-in naming a target as a built-in one provides none)."""
    return dict(installed_plugins(frozenset(builtin_target_names())).targets)


def broken_plugins() -> tuple[BrokenPlugin, ...]:
    """Installed plug-ins that provide no target: their entry point does not load, or what they register is
    wrong. Only their own targets are missing; everything else loads."""
    return installed_plugins(frozenset(builtin_target_names())).broken


def loadable_targets() -> tuple[tuple[Target, ...], tuple[str, ...]]:
    """Every target that loads by name (built-in, then plug-ins'), and one error line per plug-in or plug-in
    target that does not: one vendor's broken package must not hide every other target from a listing."""
    targets, problems = [], [plugin.message() for plugin in broken_plugins()]
    builtin = set(builtin_target_names())
    for name in available_target_names():
        try:
            targets.append(load_target(name))
        except PartitionerError as error:
            if name in builtin:
                raise  # a built-in spec that does not load is our bug, not a vendor's
            problems.append(str(error))
    return tuple(targets), tuple(problems)


def load_target(name_or_path: str | Path) -> Target:
    """Load one target: a built-in name (`cuda-h100`), a plug-in's target name, or a path to a `.toml` spec."""
    path, origin, hooks = _locate(str(name_or_path))
    return _read_target(path, read_toml(path), origin, hooks)


def parse_target(path: Path, text: str) -> Target:
    """The target a spec's text describes, checked as `load_target` checks a file (for a spec about to be written
    at `path`: what is written must load)."""
    return _read_target(path, parse_toml(path, text), "file", None)


def _read_target(path: Path, data: dict[str, Any], origin: str, hooks: TargetHooks | None) -> Target:
    """The target a spec's parsed data describes, each field checked; a spec file's name may not shadow another
    target's, and it takes the hooks of the plug-in target its `hooks_from` names."""
    from_file = origin == "file"
    if "hooks_from" in data:
        origin, hooks = _hooks_from(path, data.pop("hooks_from"), origin)
    target = SpecReader(path, data).target()
    if from_file:
        check_own_name(target.name, path)
    return target if origin == "built-in" else replace(target, origin=origin, hooks=hooks)


def check_own_name(name: str, path: Path) -> None:
    """Refuse a spec file whose target would shadow a built-in target or an installed plug-in's: the name would
    mean two devices, and which one a plan used would depend on how it was named."""
    shadowed = shadowed_target(name, path)
    if shadowed is not None:
        raise PartitionerError(f"{path}: field 'name': {name!r} is the name of {shadowed}, which this spec would "
                               f"shadow. Fix: give it a name of its own, e.g. \"{name}-mine\".")


def shadowed_target(name: str, path: Path) -> str | None:
    """Which target a spec file at `path` named `name` would shadow ("a built-in target", "a target of the
    installed plug-in ..."), or None."""
    builtin = BUILTIN_DIR / f"{name}.toml"
    try:
        registered = plugin_targets().get(name)
    except PartitionerError:  # a broken plug-in's targets cannot be used, so there are none to shadow
        registered = None
    owner = builtin if builtin.is_file() else registered.spec_path if registered else None
    if owner is None or Path(path).resolve() == Path(owner).resolve():
        return None
    return "a built-in target" if owner == builtin else f"a target of the installed {registered.origin}"


def load_targets(names_or_paths: Iterable[str | Path], fallback: str | None = None) -> TargetSet:
    """Load a target set in priority order and choose its fallback.

    The fallback is `fallback` if given, else the first CUDA target that
    supports every op, else the first target that supports every op.
    """
    targets = tuple(load_target(item) for item in names_or_paths)
    if not targets:
        raise PartitionerError("no targets given. Fix: name at least one, e.g. --targets npu-example,cuda-h100.")
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PartitionerError(f"target {duplicates[0]!r} is listed twice. Fix: list each target once.")
    check_link_peers(targets)
    return TargetSet(targets, choose_fallback(targets, fallback))


def check_link_peers(targets: Iterable[Target]) -> None:
    """Refuse a spec whose `links` name a target that is neither built-in, a plug-in's nor among `targets`: a
    misspelt peer would silently leave the link out."""
    targets = tuple(targets)
    known = {t.name for t in targets} | set(builtin_target_names())
    for target in targets:
        unknown = next((peer for peer in target.links if peer not in known and peer not in plugin_targets()),
                       None)
        if unknown is not None:
            close = difflib.get_close_matches(unknown, sorted(known), n=1)
            raise PartitionerError(
                f"{target.spec_path}: field 'links.{unknown}': no target is named {unknown!r}, built-in or in the "
                f"target set. Fix: {f'did you mean {close[0]!r}? ' if close else ''}correct the name or remove the "
                "link.")


def as_target_set(targets: Iterable[str | Path] | str | TargetSet | None,
                  fallback: str | None = None) -> TargetSet:
    """`targets` as a TargetSet: given as one, loaded from names or paths (one string may list several, as
    --targets does: "npu-example,cuda-h100"), or the default set when None."""
    if isinstance(targets, TargetSet):
        return targets
    if isinstance(targets, str):
        targets = [item.strip() for item in targets.split(",")]
    elif isinstance(targets, Path):
        targets = [targets]
    return load_targets(targets or DEFAULT_TARGET_NAMES, fallback)


def choose_fallback(targets: tuple[Target, ...], requested: str | None) -> str:
    """The fallback of `targets`: `requested` if given (it must run every op), else the first CUDA target that
    runs every op, else the first target that does."""
    universal = [t for t in targets if t.support.supports_all_ops]
    if requested is not None:
        match = [t for t in targets if t.name == requested]
        if not match:
            raise PartitionerError(
                f"fallback {requested!r} is not in the target set {[t.name for t in targets]}. "
                "Fix: add it to the targets (--targets or --fleet) or name one of those."
            )
        if match[0] not in universal:
            raise PartitionerError(
                f"fallback {requested!r} does not support every op (its spec restricts ops, dtypes, rank, shapes or "
                "arguments). Fix: choose a target whose spec has support.ops = \"all\" and no other limits."
            )
        return requested
    if not universal:
        raise PartitionerError(
            f"no target in {[t.name for t in targets]} supports every op, so unsupported ops would have "
            "nowhere to run. Fix: add a fallback such as cuda-h100 to the targets (--targets or --fleet)."
        )
    cuda = [t for t in universal if t.torch_device.startswith("cuda")]
    return (cuda or universal)[0].name


def _locate(name_or_path: str) -> tuple[Path, str, TargetHooks | None]:
    """The spec file of a target name or path, where it came from, and its plug-in hooks."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.exists():  # what exists but is no file (a folder, /dev/zero) read_toml refuses, saying so
            raise PartitionerError(f"target spec file {name_or_path!r} does not exist. Fix: check the path.")
        return path, "file", None
    path = BUILTIN_DIR / f"{name_or_path}.toml"
    if path.is_file():
        return path, "built-in", None
    registered = plugin_targets().get(name_or_path)
    if registered is not None:
        return registered.spec_path, registered.origin, registered.hooks
    known = available_target_names()
    close = difflib.get_close_matches(name_or_path, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    broken = "".join(f"; {plugin.describe()}, so its targets are missing" for plugin in broken_plugins())
    fix = f"; or, if it is a broken plug-in's, {BROKEN_FIX}" if broken else ""
    raise PartitionerError(
        f"unknown target {name_or_path!r}: {hint}the targets here are {', '.join(known)} (built-in, then those of "
        f"installed plug-ins){broken}. Fix: correct the name, or give the path of a .toml spec file{fix}."
    )


def _hooks_from(path: Path, name: Any, origin: str) -> tuple[str, TargetHooks | None]:
    """The origin and hooks a spec file takes from the plug-in target it names in `hooks_from` (a calibrated copy
    of a plug-in's spec keeps the vendor's support, cost and compile hooks this way)."""
    if origin != "file":
        raise PartitionerError(f"{path}: field 'hooks_from': only a spec file given by its path takes a plug-in's "
                               "hooks. Fix: remove the field, or report it to the vendor of the spec.")
    registered = plugin_targets().get(name) if isinstance(name, str) else None
    if registered is None:
        raise PartitionerError(f"{path}: field 'hooks_from': no installed plug-in has a target named {name!r}, whose "
                               "hooks this spec takes. Fix: install the plug-in that provides it (partitioner "
                               "targets lists what is installed), or remove the field to plan without its hooks.")
    return registered.origin, registered.hooks


