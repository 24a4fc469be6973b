"""The serving model: a placement under a steady stream of requests, many in flight at once.

Each resource works on its share of different requests at the same time: a
device for the compute it runs per request, a link resource (a device's host
link one way, a peer link, a host's shared PCIe, the network) for the bytes it
carries per request over its bandwidth. Copies run on DMA engines while the
devices compute, so a copy occupies links, not devices. The busiest resource,
the bottleneck, sets the throughput: requests per second = 1 / its seconds per
request. At full load, a request costs the hourly price of the devices the
plan uses over that throughput (devices it leaves idle are not rented); one
request still takes its sequential latency through the pipeline. Memory is as
in the one-request model (weights plus an activation arena per device); the
activations of the several requests in flight a pipeline holds are not counted
beyond that arena.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from partitioner.placement.problem import PlacementProblem


def device_kind(place: str) -> str:
    """The target spec a fleet's place is made of: `npu-example.3` and `cuda-h100.tp8.0` -> the spec's name
    (spec names hold no dot)."""
    return place.split(".", 1)[0]


def place_kind(place: str) -> str:
    """What identical places share (their costs, in an LLM plan's `op_seconds`): the spec of a device
    (`cuda-h100.3` -> `cuda-h100`), the spec and degree of a tensor-parallel place (`cuda-h100.tp2.0` ->
    `cuda-h100.tp2`)."""
    parts = place.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


@dataclass(frozen=True, slots=True)
class ServingFigures:
    """What a placement delivers at full load: seconds per request on every resource, and what follows."""

    occupancy_seconds: Mapping[str, float]  # per device (compute) and per link resource (bytes / bandwidth)
    bottleneck: str
    used_targets: tuple[str, ...]
    price_per_hour: float  # of the devices the plan uses

    @property
    def bottleneck_seconds(self) -> float:
        return self.occupancy_seconds.get(self.bottleneck, 0.0)

    @property
    def throughput_per_second(self) -> float:
        """Requests per second at full load (infinite for a placement that does no work)."""
        return 1.0 / self.bottleneck_seconds if self.bottleneck_seconds > 0 else float("inf")

    @property
    def cost_per_request_at_load(self) -> float:
        """Money per request when the used devices serve at full load: their price per second over throughput."""
        return self.price_per_hour / 3600.0 * self.bottleneck_seconds

    def utilisation(self, resource: str) -> float:
        """The share of its time `resource` is busy at full load."""
        return self.occupancy_seconds.get(resource, 0.0) / self.bottleneck_seconds if self.bottleneck_seconds else 0.0

    def to_dict(self) -> dict:
        # JSON has no infinity: a placement that does no work has no limit on its throughput, written as null.
        throughput = self.throughput_per_second if self.bottleneck_seconds > 0 else None
        return {"occupancy_seconds": dict(self.occupancy_seconds), "bottleneck": self.bottleneck,
                "throughput_per_second": throughput, "used_targets": list(self.used_targets),
                "price_per_hour": self.price_per_hour, "cost_per_request_at_load": self.cost_per_request_at_load}


def serving_figures(problem: PlacementProblem, assignment: Mapping[str, str], compute: Mapping[str, float],
                    moves: Iterable[tuple[str, str, int]]) -> ServingFigures:
    """The serving figures of `assignment`, from each device's compute seconds per request and every copy
    (source, destination, bytes) it implies."""
    occupancy = dict(compute)
    for source, destination, num_bytes in moves:
        for resource in problem.route(source, destination):
            occupancy[resource] = occupancy.get(resource, 0.0) + num_bytes / problem.bandwidth(resource)
    used = tuple(t.name for t in problem.targets if t.name in set(assignment.values()) and compute.get(t.name, 0) > 0)
    bottleneck = max(occupancy, key=lambda name: occupancy[name]) if occupancy else problem.fallback
    price = sum(problem.target(name).price_per_hour for name in used)
    return ServingFigures(occupancy, bottleneck, used, price)


@dataclass(frozen=True, slots=True)
class SamePriceReplicas:
    """The rival a fleet plan must beat: as many copies of one device (each running the whole model, the fallback
    placement) as the plan's devices cost per hour, fractional so the price matches exactly."""

    device: str
    replicas: float
    throughput_per_second: float
    cost_per_request_at_load: float


def same_price_replicas(plan: ServingFigures, alone: ServingFigures, device: str,
                        device_price_per_hour: float) -> SamePriceReplicas:
    """Replicas of `device` costing `plan`'s price per hour, each serving as `alone` (the model all on one
    `device`) does: their throughput adds up, and their money per request is one replica's."""
    replicas = plan.price_per_hour / device_price_per_hour if device_price_per_hour > 0 else 1.0
    return SamePriceReplicas(device, replicas, replicas * alone.throughput_per_second,
                             alone.cost_per_request_at_load)
