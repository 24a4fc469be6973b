"""Progress of long steps (capture, solving, profiling) on standard error: a live line, JSON lines, or nothing.

A `Progress` is handed to the steps that take long. On a terminal, one line
is rewritten in place with the elapsed time and, while solving, the best
objective and bound so far (nothing is written when standard error is not a
terminal, so logs and pipes stay clean); `--json` writes one JSON object per
event for programs; `--quiet` writes nothing.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


UPDATE_SECONDS = 1.0


class Progress:
    """Reports steps and solver improvements; `mode` is "live", "json" or "quiet"."""

    def __init__(self, mode: str = "live", stream: TextIO | None = None):
        self.mode = mode
        self.stream = stream or sys.stderr
        self.step_name = ""
        self.step_started = time.perf_counter()
        self.last_update = 0.0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Announce `name`, and its elapsed time when it ends."""
        self.step_name, self.step_started = name, time.perf_counter()
        self._emit({"event": "start", "step": name}, f"{name} ...")
        yield
        elapsed = time.perf_counter() - self.step_started
        self._emit({"event": "done", "step": name, "seconds": round(elapsed, 3)}, f"{name}: done in {elapsed:.1f} s",
                   final=True)

    def solver_update(self, best: float | None, bound: float | None, unit: str) -> None:
        """The solver's best plan and proven bound so far (in the objective's unit), as they improve; at most
        one line per UPDATE_SECONDS, so a long search does not flood a log."""
        now = time.perf_counter()
        if now - self.last_update < UPDATE_SECONDS and best != bound:
            return
        self.last_update = now
        elapsed = now - self.step_started
        gap = (best - bound) / best if best and bound is not None else None
        self._emit({"event": "solver", "seconds": round(elapsed, 3), "objective": best, "bound": bound,
                    "gap": gap, "unit": unit},
                   f"{self.step_name}: {elapsed:.1f} s, best {_value(best, unit)}, bound {_value(bound, unit)}"
                   + (f", gap {100 * gap:.2f}%" if gap is not None else ""))

    def note(self, text: str) -> None:
        """What the current step is doing now (e.g. how large a search it builds)."""
        elapsed = time.perf_counter() - self.step_started
        self._emit({"event": "note", "step": self.step_name, "text": text, "seconds": round(elapsed, 3)},
                   f"{self.step_name}: {text}, {elapsed:.1f} s")

    def counted(self, done: int, total: int, what: str) -> None:
        """`done` of `total` items of the current step (e.g. op signatures timed)."""
        elapsed = time.perf_counter() - self.step_started
        self._emit({"event": "count", "step": self.step_name, "done": done, "total": total, "what": what,
                    "seconds": round(elapsed, 3)}, f"{self.step_name}: {done}/{total} {what}, {elapsed:.1f} s")

    def _emit(self, event: dict, line: str, final: bool = False) -> None:
        if self.mode == "json":
            print(json.dumps(event), file=self.stream, flush=True)
        elif self.mode == "live" and self.stream.isatty():
            print(f"\r\033[K{line}", end="\n" if final else "", file=self.stream, flush=True)


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"${value:.4g}" if unit == "dollars" else f"{value * 1e3:.4g} ms"
