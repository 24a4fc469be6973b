"""Costs as the whole numbers CP-SAT takes: scaled to the reference plan, and capped so every sum fits 64 bits.

CP-SAT's coefficients, bounds and sums are 64-bit integers. The solver scales
seconds, dollars and bytes so that the reference plan (the best baseline, or a
rough upper estimate) is worth OBJECTIVE_UNITS, which keeps rounding far below
any difference worth reporting. A term worth more than MOST_UNITS (a thousand
reference plans) is capped there: a plan that uses it cannot be the optimum
either way, every placement is worth at most as much capped as uncapped (so a
bound on the capped model holds for the real one), and a million capped terms
still sum below 2^63. So any figure a spec, a profile or a limit may hold (1e300
seconds, a rate of 1e-320 requests a second) builds a valid model.
"""

from __future__ import annotations

import math
import sys

OBJECTIVE_UNITS = 10**9
MOST_UNITS = 1000 * OBJECTIVE_UNITS


def objective_scale(reference: float) -> float:
    """Integer units per unit of the objective, so that `reference` is worth OBJECTIVE_UNITS (1 where it is 0)."""
    if reference <= 0:
        return 1.0
    scale = OBJECTIVE_UNITS / reference
    return scale if math.isfinite(scale) else sys.float_info.max  # a reference below any real figure


def whole_units(value: float, scale: float, most: int = MOST_UNITS) -> int:
    """`value` at `scale`, rounded, and at most `most` (also where it overflows to infinity)."""
    units = value * scale
    return round(units) if units < most else most


def floor_units(value: float, scale: float, most: int = MOST_UNITS) -> int:
    """`value` at `scale`, rounded down, and at most `most`: for terms of a limit, which must never round up."""
    units = value * scale
    return math.floor(units) if units < most else most
