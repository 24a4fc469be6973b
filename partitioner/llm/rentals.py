"""Rentals: the parts of a fleet an LLM deployment may run on, each with the least money per output token a plan
on it can cost, so that the search solves the cheapest first and stops once none left can beat its plan.

At full load a plan pays for the devices it uses, whatever else the fleet holds: money per request is their
hourly price times the bottleneck's seconds per request (partitioner/placement/serving.py). Which devices to rent
is therefore part of the choice, and the fastest plan on the whole fleet is seldom the cheapest per token (it
rents the H100 to be a little faster). Every count of each group of identical devices is a rental (the first k
of a group: identical devices are interchangeable; or k tensor-parallel places of one degree made of them),
priced at least at its price times the least bottleneck any placement on those devices alone has: first a quick
floor (the least work shared out evenly, and the work only one group runs shared among its devices), then the
linear program's (partitioner/placement/floors.py). A plan uses exactly one rental's devices, so the floors of
the rentals not searched and the bounds of those searched bound every plan: the LLM search's gap is in money per
token (partitioner/llm/planning.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

from partitioner.placement.problem import PlacementProblem


@dataclass(frozen=True, slots=True)
class Rental:
    """A (deployment, decode batch) on part of the fleet, and the least money per 1M output tokens a plan that
    uses exactly these devices costs (`exact`: the linear program's floor; else the quick one)."""

    deployment: str
    batch: int
    devices: tuple[str, ...]
    price_per_hour: float
    floor: float
    exact: bool = False


def per_million_output_tokens(price_per_hour: float, seconds_per_request: float, output_tokens: int) -> float:
    """Money per 1M output tokens of devices costing `price_per_hour` that serve one request per
    `seconds_per_request` at full load."""
    return 1e6 * price_per_hour / 3600.0 * seconds_per_request / output_tokens


def rentals(joint: PlacementProblem, deployment: str, batch: int, output_tokens: int,
            memory_needed: int) -> Iterator[Rental]:
    """Every part of the fleet `joint` (one deployment at one batch) could run on: each count of each group of
    identical devices, with room for `memory_needed` bytes (weights and KV caches) in all, two devices at least
    where the phases are kept apart, and some device for every op; each with its quick floor."""
    least_work: dict[frozenset[str], _Work | None] = {}  # per set of groups present
    for picks in itertools.product(*_choices(joint)):
        devices = tuple(place for pick in picks for place in pick)
        if len(devices) < (2 if joint.separate_phases else 1):
            continue
        terms = [joint.target(place) for place in devices]
        if sum(t.memory_bytes for t in terms) < memory_needed:
            continue
        present = frozenset(joint.group(place) for place in devices)
        if present not in least_work:
            least_work[present] = _least_work(joint, {joint.group(place): place for place in devices})
        work = least_work[present]
        if work is not None:
            count = {group: sum(1 for place in devices if joint.group(place) == group) for group in present}
            busiest = max([work.total / len(devices)]
                          + [seconds / count[group] for group, seconds in work.only.items()])
            price = sum(t.price_per_hour for t in terms)
            yield Rental(deployment, batch, devices, price, per_million_output_tokens(price, busiest, output_tokens))


def _choices(joint: PlacementProblem) -> list[list[tuple[str, ...]]]:
    """Per group of identical devices, what a rental may take of it: none, the first k of its devices, or the
    first k of the tensor-parallel places of one degree made of them (which occupy those devices)."""
    groups: dict[str, list[str]] = {}
    for name in joint.target_names:
        groups.setdefault(joint.group(name), []).append(name)
    pools: dict[str, list[list[str]]] = {}
    for group, members in groups.items():
        occupies = joint.target(members[0]).occupies
        pools.setdefault(joint.group(occupies[0]) if occupies else group, []).append(members)
    return [[(), *(tuple(members[:count]) for members in pool for count in range(1, len(members) + 1))]
            for pool in pools.values()]


@dataclass(frozen=True, slots=True)
class _Work:
    """Each op's seconds on the fastest of a set of groups, summed, and per group the seconds of the ops only it
    runs: the devices' loads add up to at least the first, and a group's devices share at least the second, so
    the busiest device carries at least the first's even share and each group's share of the second."""

    total: float
    only: dict[str, float]


def _least_work(joint: PlacementProblem, one_of_each: dict[str, str]) -> _Work | None:
    """The work of `joint` on the groups of `one_of_each` (one place of each standing for its group); None where
    some op runs on none of them."""
    total, only = 0.0, dict.fromkeys(one_of_each, 0.0)
    for node in joint.nodes:
        seconds = {group: node.compute_seconds[place] for group, place in one_of_each.items()
                   if place in node.compute_seconds}
        if not seconds:
            return None
        total += min(seconds.values())
        if len(seconds) == 1:
            group, alone = next(iter(seconds.items()))
            only[group] += alone
    return _Work(total, only)
