"""What `partitioner serve` prints: measured throughput, latency and utilisation beside the plan's own figures."""

from __future__ import annotations

from partitioner.deploy.measurement import ServeMeasurement
from partitioner.deploy.worker import emulated_places
from partitioner.plan import Plan
from partitioner.units import format_seconds


def format_measurement(measurement: ServeMeasurement, plan: Plan) -> str:
    m = measurement
    emulated = emulated_places(m.devices, plan.targets)
    lines = [f"served      {m.requests} request{'s' if m.requests != 1 else ''} of {plan.model.name}, "
             f"{m.concurrency} in flight, in "
             f"{m.seconds:.2f} s on Ray: {len(m.devices)} device worker{'s' if len(m.devices) != 1 else ''}"]
    throughput = f"throughput  {m.requests_per_second:.4g} req/s measured"
    predicted = m.predicted_requests_per_second_in_flight
    if predicted:
        throughput += (f"; the plan predicts {predicted:.4g} req/s with {m.concurrency} in flight "
                       f"(measured / predicted {m.requests_per_second / predicted:.3g}) and "
                       f"{m.predicted_requests_per_second:.4g} at full load")
    lines.append(throughput)
    latency = (f"latency     p50 {format_seconds(m.latency_percentile(50))}, p90 "
               f"{format_seconds(m.latency_percentile(90))}, p99 {format_seconds(m.latency_percentile(99))} "
               f"with {m.concurrency} in flight")
    if m.predicted_latency_seconds is not None:
        latency += f"; the plan predicts {format_seconds(m.predicted_latency_seconds)} for one request alone"
    lines.append(latency)
    busiest = sorted(m.utilisation, key=lambda place: -m.utilisation[place])
    lines.append("utilisation " + ", ".join(
        f"{place} {100 * m.utilisation[place]:.0f}%"
        + (f" (plan {100 * m.predicted_utilisation[place]:.0f}%)" if place in m.predicted_utilisation else "")
        for place in busiest))
    if emulated:
        lines.append(f"emulated    {', '.join(emulated)} ran on the CPU: the plan's figures are for its own devices, "
                     "so compare with them only on those devices (or plan with a cost model measured here)")
    return "\n".join(lines)

