"""Units of the figures a plan reports (seconds, dollars, bytes) and how each is printed.

Shared by the objectives (each has a unit), the summary, the tables, report.html and `explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def format_money(dollars: float) -> str:
    return f"${dollars:.3g}"


def format_bytes(num_bytes: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if num_bytes >= size:
            return f"{num_bytes / size:.1f} {unit}"
    return f"{num_bytes} B"


def format_flops(flops: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if flops >= size:
            return f"{flops / size:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def count(number: int, noun: str) -> str:
    """`1 partition`, `3 partitions`: a number with its noun, singular or plural."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class Unit:
    """What an objective's figure is measured in: its name (as progress events report it) and how it prints."""

    name: str
    format: Callable[[float], str]


def format_throughput(seconds_per_request: float) -> str:
    """A bottleneck's seconds per request as the requests per second it allows."""
    return f"{1 / seconds_per_request:.4g} req/s" if seconds_per_request > 0 else "unbounded"


def format_hourly(dollars_per_hour: float) -> str:
    return f"${dollars_per_hour:.4g}/h"


SECONDS = Unit("seconds", format_seconds)
SECONDS_PER_REQUEST = Unit("seconds per request at the bottleneck", format_throughput)
DOLLARS_PER_HOUR = Unit("dollars per hour", format_hourly)
DOLLARS = Unit("dollars", format_money)
