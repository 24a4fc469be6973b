"""What `partitioner serve` prints: measured throughput, latency and utilisation beside the plan's own figures
(requests of a plan; tokens, TTFT and TPOT of an LLM plan)."""

from __future__ import annotations

from typing import Callable

from partitioner.deploy.llm_measurement import LLMServeMeasurement
from partitioner.deploy.measurement import ServeMeasurement, percentile
from partitioner.deploy.worker import emulated_places
from partitioner.llm.deployment import LLMPlan
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



def format_llm_measurement(measurement: LLMServeMeasurement, plan: LLMPlan) -> str:
    """Measured tokens per second, TTFT and TPOT beside the LLM plan's, and each device's busy share."""
    m = measurement
    emulated = emulated_places(m.devices, plan.targets)
    lines = [f"served      {m.requests} request{'s' if m.requests != 1 else ''} of {plan.model_name} "
             f"({m.output_tokens} output tokens) in {m.seconds:.2f} s on Ray: {len(m.devices)} device actor"
             f"{'s' if len(m.devices) != 1 else ''}, decode batch {m.batch_size}, {m.batches_in_flight} batch"
             f"{'es' if m.batches_in_flight != 1 else ''} in flight, {100 * m.rows_filled:.0f}% of decode rows "
             "filled", "",
             f"{'':<28}{'measured':>12}{'plan':>12}{'measured / plan':>18}"]

    def row(label: str, measured: float, predicted: float | None, shown: Callable[[float], str]) -> str:
        ratio = f"{measured / predicted:.3g}" if predicted else "-"
        return (f"{label:<28}{shown(measured):>12}{shown(predicted) if predicted is not None else '-':>12}"
                f"{ratio:>18}")

    lines.append(row("output tokens/s", m.output_tokens_per_second, m.predicted_output_tokens_per_second,
                     lambda value: f"{value:.4g}"))
    for tokens, seconds in sorted(m.alone_ttft_seconds.items()):
        lines.append(row(f"TTFT alone, {tokens} tokens", seconds, m.predicted_ttft_seconds.get(tokens),
                         format_seconds))
    lines.append(row("TPOT alone", m.alone_tpot_seconds, m.predicted_tpot_seconds, format_seconds))
    lines += ["", f"under load  TTFT p50 {format_seconds(percentile(m.ttft_seconds, 50))}, p90 "
                  f"{format_seconds(percentile(m.ttft_seconds, 90))} (from a batch's admission: its prompts are "
                  f"prefilled one after another); TPOT p50 {format_seconds(percentile(m.tpot_seconds, 50))}, p90 "
                  f"{format_seconds(percentile(m.tpot_seconds, 90))}"]
    busiest = sorted(m.utilisation, key=lambda place: -m.utilisation[place])
    lines.append("utilisation " + ", ".join(f"{place} {100 * m.utilisation[place]:.0f}%" for place in busiest)
                 + f" (the plan's bottleneck: {m.bottleneck})")
    if emulated:
        lines.append(f"emulated    {', '.join(emulated)} ran on the CPU: the plan's figures are for its own devices, "
                     "so compare with them only on those devices (or plan with a cost model measured here)")
    return "\n".join(lines)
