"""Writing a calibration as a target spec: a copy of the spec file it started from, with the fitted figures.

The copy keeps every figure calibration does not fit (peaks, links, support
rules) and a plug-in target's hooks (`hooks_from`), takes a new name (never a
built-in target's), and carries the fit's residuals in its header, so a reader
sees what the figures rest on.
"""

from __future__ import annotations

import re
from pathlib import Path

from cost_models.calibration import Calibration
from cost_models.profile import Profile
from partitioner.errors import PartitionerError
from partitioner.files import SPEC, read_text, write_atomically
from targets.loader import parse_target, shadowed_target
from targets.spec_reader import TARGET_NAME_PATTERN
from targets.spec import Target


def check_spec_name(path: Path) -> None:
    """Refuse, before any work, a path the calibrated spec cannot be loaded from: a spec is a .toml file, named
    after its file, with a valid target name that no built-in or plug-in target has."""
    if path.suffix != ".toml":
        raise PartitionerError(f"{path} is not a .toml path, and a calibrated spec is TOML that targets load only "
                               f"from .toml files. Fix: give e.g. -o {path.with_suffix('.toml').name}.")
    if not TARGET_NAME_PATTERN.match(path.stem):
        raise PartitionerError(f"{path} would make a spec named {path.stem!r}, which is not a valid target name. "
                               "Fix: name the file with lowercase letters, digits, '-' and '_', e.g. "
                               "cpu-x86-calibrated.toml.")
    shadowed = shadowed_target(path.stem, path)
    if shadowed is not None:
        raise PartitionerError(f"{path} would make a spec named {path.stem!r}, the name of {shadowed}. Fix: "
                               f"name the file after this device, e.g. {path.stem}-calibrated.toml.")


def write_calibrated_spec(target: Target, calibration: Calibration, profile: Profile, path: Path) -> Path:
    """A copy of `target`'s spec file named after `path`, with the fitted constants in place of its own."""
    check_spec_name(path)
    if not target.spec_path:
        raise PartitionerError(f"target {target.name} has no spec file to copy. Fix: calibrate a target loaded "
                               "from a .toml spec.")
    text = read_text(target.spec_path, SPEC)
    whole = calibration.whole
    fitted = {
        "name": f'"{path.stem}"',
        "launch_overhead_microseconds": f"{calibration.launch_overhead_seconds * 1e6:.4g}",
        "compute_efficiency": f"{calibration.compute_efficiency:.4g}",
        "memory_efficiency": f"{calibration.memory_efficiency:.4g}",
    }
    for field_name, value in fitted.items():
        text, count = re.subn(rf"(?m)^{field_name}\s*=.*$", f"{field_name} = {value}", text, count=1)
        if count != 1:
            raise PartitionerError(f"{target.spec_path}: no top-level {field_name} to replace. Fix: add it.")
    if target.hooks is not None and not re.search(r"(?m)^hooks_from\s*=", text):
        # A plug-in target's support, cost and compile hooks are code, not figures: the copy keeps them by name.
        text = re.sub(r"(?m)^(name\s*=.*)$", rf'\1\nhooks_from = "{target.name}"', text, count=1)
    if calibration.view_overhead_seconds is not None:
        view = f"view_overhead_microseconds = {calibration.view_overhead_seconds * 1e6:.4g}"
        text, count = re.subn(r"(?m)^view_overhead_microseconds\s*=.*$", view, text, count=1)
        if count == 0:
            text = re.sub(r"(?m)^(launch_overhead_microseconds\s*=.*)$", rf"\1\n{view}", text, count=1)
    text = _without_op_class_tables(text).rstrip() + "\n"
    for name, constants in sorted(calibration.op_classes.items()):
        text += (f"\n[op_classes.{name}]\ncompute_efficiency = {constants.compute_efficiency:.4g}\n"
                 f"memory_efficiency = {constants.memory_efficiency:.4g}\n"
                 f"launch_overhead_microseconds = {constants.launch_overhead_seconds * 1e6:.4g}\n"
                 f"compute_half_efficiency_mflop = {constants.compute_half_flops / 1e6:.4g}\n"
                 f"memory_half_efficiency_mib = {constants.memory_half_bytes / 2**20:.4g}\n"
                 + (f"compute_half_efficiency_depth = {constants.compute_half_depth:.4g}\n"
                    if constants.compute_half_depth else ""))
    header = (f"# Calibrated from a profile of {profile.identity.describe()}: launch overhead, compute and\n"
              f"# memory efficiency fitted to {whole.ops} measured compute ops "
              f"({calibration.compute_bound_ops} compute-bound, {calibration.memory_bound_ops} memory-bound)\n"
              f"# by `partitioner calibrate`; predicted/measured per op {whole.after.describe()}\n"
              f"# (the spec it started from: {whole.before.describe()}); every other figure is from "
              f"{Path(target.spec_path).name}.\n")
    _check_loadable(path, header + text, target)
    write_atomically(path, header + text)
    return path


def _check_loadable(path: Path, text: str, target: Target) -> None:
    """What calibrate writes must load: the spec loader's checks, run on the text before it is written."""
    try:
        parse_target(path, text)
    except PartitionerError as error:
        problem = str(error).split(". Fix:")[0]
        raise PartitionerError(f"calibrating {target.name} gives a spec the loader would refuse ({problem}): the "
                               "profile's timings are implausible for a device. Fix: profile the device again, or "
                               "keep the spec as it is.") from None


def _without_op_class_tables(text: str) -> str:
    """The spec text without its [op_classes.*] tables (a calibrated spec being calibrated again)."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.strip().startswith("["):
            skipping = line.strip().startswith("[op_classes")
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"
