"""Checking the values of CLI options: times, limits, counts and tolerances a solver or a check can use."""

from __future__ import annotations

import argparse
import math
import re

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
# Numbers as people write them on a command line: ASCII digits, a point, an exponent. (Python's own parsers also
# read "2_0" as 20 and other scripts' digits, which no one means as a count.)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_WHOLE_NUMBER = re.compile(r"[+-]?\d+", re.ASCII)
# Below this CP-SAT does not get past building its model: the plan would silently be a baseline.
MIN_TIME_LIMIT_SECONDS = 0.01


def duration(text: str) -> float:
    """Seconds from `50ms`, `800us`, `1.5s` or a bare number of seconds."""
    return _seconds(text, zero_taken=False)


def duration_or_none(text: str) -> float:
    """As `duration`, but 0 (nothing at all: an engine that adds nothing to a hop, say) is taken too."""
    return _seconds(text, zero_taken=True)


def _seconds(text: str, zero_taken: bool) -> float:
    unit = next((u for u in ("us", "ms", "s") if text.endswith(u)), "")
    number_text = text.removesuffix(unit)
    if not _NUMBER.fullmatch(number_text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time; write e.g. 50ms, 800us or 0.05")
    value = float(number_text) * _TIME_UNITS.get(unit, 1.0)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_taken):
        rule = "a time of 0 or more" if zero_taken else "a positive time"
        raise argparse.ArgumentTypeError(f"must be {rule} such as 50ms, got {text}")
    return value


def rate(text: str) -> float:
    """Requests per second from `50/s`, `3000/min`, `1.2e5/h` or a bare number (per second)."""
    number_text, _, per = text.partition("/")
    seconds = {"": 1.0, "s": 1.0, "min": 60.0, "h": 3600.0}.get(per.strip())
    value = float(number_text) if _NUMBER.fullmatch(number_text.strip()) else math.nan
    if seconds is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive rate; write e.g. 50/s, 3000/min or 50")
    return value / seconds


def positive_float(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def time_limit(text: str) -> float:
    value = positive_float(text)
    if value < MIN_TIME_LIMIT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_TIME_LIMIT_SECONDS:g} s for the solver to run, "
                                         f"got {text}")
    return value


def tolerance(text: str) -> float:
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def workers(text: str) -> int:
    return _whole_number(text, 0, "must be 0 (the default search) or a positive number of workers")


def seed(text: str) -> int:
    """A seed of 0 or more; SolverOptions refuses one CP-SAT cannot take (over 2^31 - 1)."""
    return _whole_number(text, 0, "must be 0 or more")


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "must be at least 1")


def _whole_number(text: str, least: int, rule: str) -> int:
    if not _WHOLE_NUMBER.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    value = int(text)
    if value < least:
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    return value


def number(text: str) -> float:
    if not _NUMBER.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value
