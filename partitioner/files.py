"""Reading and writing the files commands name: inputs read within a bound, outputs never seen half written.

Every file a user names (a plan, a manifest, a profile, a spec, a fleet, a workload) is read through
`read_text` or `read_json`, which refuse what is not a regular file or is larger than any file of its kind
(so `partitioner report /dev/zero` is one error, not a machine out of memory); every output is written through
`write_atomically` or `write_json`.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from partitioner.errors import PartitionerError

_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class FileKind:
    """A kind of file a command reads: what to call it, the most bytes one may hold, and how to get a right one.

    The bounds are far above any real file of the kind and far below what would exhaust a machine's memory.
    """

    noun: str
    most_bytes: int
    fix: str
    missing_fix: str = "check the path"


PLAN = FileKind("plan file", 256 * _MIB, "give the plan.json that partitioner compile wrote")
MANIFEST = FileKind("partitioner manifest", 16 * _MIB,
                    "give the manifest.json (or its folder) that partitioner export wrote",
                    "run partitioner export first, or check the path")
PROFILE = FileKind("profile", 256 * _MIB, "delete it and run partitioner profile again")
SPEC = FileKind("target spec", 4 * _MIB, "give a .toml target spec")
FLEET = FileKind("fleet file", 4 * _MIB, "give a .toml fleet file")
WORKLOAD = FileKind("workload file", 1 * _MIB, "give a .toml workload file")


def read_text(path: str | Path, kind: FileKind) -> str:
    """The text of `path`, a regular UTF-8 file of at most `kind.most_bytes`; anything else is a PartitionerError
    naming the path, what it is and the fix."""
    path = Path(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise PartitionerError(f"{kind.noun} {str(path)!r} does not exist. Fix: {kind.missing_fix}.") from None
    if stat.S_ISDIR(status.st_mode):
        raise PartitionerError(f"{path} is not a {kind.noun}: it is a folder. Fix: {kind.fix}.")
    if not stat.S_ISREG(status.st_mode):  # a device, a pipe or a socket: reading could block or never end
        raise PartitionerError(f"{path} is not a {kind.noun}: it is a device, pipe or socket, not a regular file. "
                               f"Fix: {kind.fix}.")
    with open(path, "rb") as file:
        data = file.read(kind.most_bytes + 1)  # a file may grow, and /proc files claim to be empty
    if max(status.st_size, len(data)) > kind.most_bytes:
        raise PartitionerError(f"{path} is not a {kind.noun}: it holds more than any does (over "
                               f"{kind.most_bytes / _MIB:.0f} MiB). Fix: {kind.fix}.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PartitionerError(f"{path} is not a {kind.noun}: it is not a text file (not UTF-8). "
                               f"Fix: {kind.fix}.") from None


def read_json(path: str | Path, kind: FileKind) -> Any:
    """The JSON value in `path`, read as `read_text` reads; NaN and Infinity (which JSON does not have, though
    Python writes them) and nesting deeper than Python can follow are PartitionerErrors too."""
    text = read_text(path, kind)
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_whole_number,
                          object_pairs_hook=_object_of_distinct_keys)
    except _NotJson as error:
        raise PartitionerError(f"{path} is not a {kind.noun}: it holds {error}. Fix: {kind.fix}.") from None
    except RecursionError:
        raise PartitionerError(f"{path} is not a {kind.noun}: its JSON nests deeper than Python reads. Fix: "
                               f"{kind.fix}.") from None
    except ValueError as error:  # JSONDecodeError
        raise PartitionerError(f"{path} is not a {kind.noun}: it is not JSON ({error}). Fix: {kind.fix}.") from None


def _whole_number(text: str) -> int:
    """A JSON integer, refused past what any figure of ours holds (Python would refuse past 4,300 digits with
    advice about its own settings)."""
    if len(text.lstrip("-")) > 30:
        raise _NotJson(f"a whole number of {len(text.lstrip('-'))} digits, far past any figure a file of ours holds")
    return int(text)


def _object_of_distinct_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (Python would keep the last of two silently)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _NotJson(f"the key {key!r} twice in one object")
        found[key] = value
    return found


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name}, a figure that is not finite, which JSON has no number for")


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON through a temporary file. A non-finite figure is a bug where it was made: JSON has no
    NaN or Infinity, and no reader should have to guess what one meant."""
    try:
        text = json.dumps(data, indent=1, allow_nan=False)
    except ValueError:
        raise AssertionError(f"{path}: {_non_finite(data)} is not finite, and JSON cannot hold it") from None
    write_atomically(path, text)


def _non_finite(data: Any, where: str = "") -> str | None:
    """The path of the first non-finite float in `data` (e.g. `problem.links[0].bandwidth_bytes_per_second`)."""
    if isinstance(data, float) and not math.isfinite(data):
        return f"{where or 'the value'} ({data})"
    children = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in children:
        found = _non_finite(value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes files private; ours are ordinary files
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def output_path(text: str, option: str = "-o", example: str = "out") -> Path:
    """The path an output option names; an empty one is an error (Path('') is the current folder, where nobody
    meant to write)."""
    if not text.strip():
        raise PartitionerError(f"{option} {text!r} names no path. Fix: give one, e.g. {option} {example}.")
    return Path(text)


def check_writable_folder(path: Path, option: str = "-o") -> None:
    """Refuse, before any long work, an output folder that cannot be made: under a file, or where the nearest
    existing folder is not writable (the PartitionerError names the path and the fix)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise PartitionerError(f"{path} cannot be a folder: {existing} is a file. Fix: give another folder with "
                               f"{option}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PartitionerError(f"{path} cannot be written: {existing} is not writable for you. Fix: give a folder "
                               f"you may write to with {option}.")


def check_schema_version(version: Any, current: int, what: str, again: str) -> None:
    """Refuse a file of another schema version than `current`: a newer one asks for an upgrade, an older one (or a
    version that is no number) for `again`, the command that writes the file anew. `what` names the file."""
    if version != current or isinstance(version, bool):  # True == 1 in Python, not in a file
        newer = isinstance(version, int) and not isinstance(version, bool) and version > current
        fix = "upgrade partitioner" if newer else again
        raise PartitionerError(f"{what} schema version {version!r} is not {current}. Fix: {fix}.")
