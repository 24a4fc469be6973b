"""Writing output files so that a reader never sees half of one: plans, profiles, results."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from partitioner.errors import PartitionerError


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
