"""What serving a plan measured: throughput, latency and utilisation, beside the figures the plan predicted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True, slots=True)
class ServeMeasurement:
    """What serving `requests` requests with `concurrency` in flight measured, beside the plan's prediction.

    `utilisation` is each device's busy share of the measured wall time;
    `predicted_*` are the plan's own figures (its cost model, its devices), so
    they are comparable only where the plan was made for the devices it runs on.
    """

    requests: int
    concurrency: int
    seconds: float
    latencies: tuple[float, ...]
    utilisation: Mapping[str, float]
    devices: Mapping[str, str]  # place -> the torch device its worker ran on ("cpu" where it was emulated)
    predicted_requests_per_second: float | None
    predicted_latency_seconds: float | None
    predicted_utilisation: Mapping[str, float]  # place -> its occupancy over the bottleneck's, at full load

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def predicted_requests_per_second_in_flight(self) -> float | None:
        """What the plan predicts with `concurrency` requests in flight, each sent when one returns: at most
        `concurrency` per request latency, and never more than its bottleneck device allows."""
        if self.predicted_requests_per_second is None or not self.predicted_latency_seconds:
            return None
        return min(self.concurrency / self.predicted_latency_seconds, self.predicted_requests_per_second)

    def latency_percentile(self, percent: float) -> float:
        return percentile(self.latencies, percent)


def percentile(values: Sequence[float], percent: float) -> float:
    """The value `percent` of the way through `values` sorted (nearest rank); 0 for none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(percent / 100 * (len(ordered) - 1))))] if ordered else 0.0
