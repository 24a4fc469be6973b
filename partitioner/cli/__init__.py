"""The `partitioner` command line: a thin composition of the pipeline's passes.

User mistakes (a `PartitionerError`) print one line on stderr and exit with
code 2; outputs are written only once everything they depend on succeeded.
Each command imports what it runs (torch, ONNX, OR-Tools) when it runs, so
`--help` and a usage error answer at once. `parser.py` declares the commands
and their options, `commands.py` runs them, `arguments.py` checks option values.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from typing import Iterator, Sequence

from partitioner.cli.parser import command_parser
from partitioner.errors import PartitionerError


class Terminated(KeyboardInterrupt):
    """SIGTERM, ended as Ctrl-C is: what the command started is removed, and nothing half-written is left."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), _terminated_as_interrupted():
            warnings.formatwarning = _warning_line
            return args.command(args)
    except PartitionerError as error:
        print(f"partitioner: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system refused: a path that is a file, missing, unwritable, in /proc
        where = f"{error.filename}: " if error.filename else ""
        print(f"partitioner: error: {where}{error.strerror or error}. Fix: check that the path exists, is a file or "
              "folder as the command expects, and that you may write there.", file=sys.stderr)
        return 2
    except Terminated:
        print("partitioner: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("partitioner: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _terminated_as_interrupted() -> Iterator[None]:
    """Within, SIGTERM raises Terminated in the main thread, so a command ends the way Ctrl-C ends it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """A warning as one line a person reads (`partitioner: warning: ...`), not Python's file, line and source."""
    return f"partitioner: warning: {message}\n"
