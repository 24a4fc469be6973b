"""`report.html` of an LLM plan: its summary, and for each phase where each layer runs and what each device does,
as one self-contained page (inline SVG and CSS, no scripts, no network). Written by `compile --workload` beside
llm_plan.json."""

from __future__ import annotations

import html
from pathlib import Path

from partitioner.files import write_atomically
from partitioner.llm.deployment import LLMPlan
from partitioner.llm.phases import DECODE, PREFILL
from partitioner.llm.summary import format_llm_summary
from partitioner.placement.serving import place_kind
from partitioner.reporting.html_report import PALETTE, STYLE, layer_strip
from partitioner.units import format_bytes, format_seconds

PHASE_TITLES = {PREFILL: "Prefill (per request, the workload's prompt lengths by share)",
                DECODE: "Decode step"}


def write_llm_html_report(plan: LLMPlan, path: str | Path) -> Path:
    """Write the plan's page to `path`; the file appears complete or not at all."""
    path = Path(path)
    write_atomically(path, render_llm_html_report(plan))
    return path


def render_llm_html_report(plan: LLMPlan) -> str:
    best = plan.best
    places = list(dict.fromkeys(place for phase in (PREFILL, DECODE) for place in best.devices.get(phase, ())))
    colours = {place: PALETTE[index % len(PALETTE)] for index, place in enumerate(places)}
    legend = " ".join(f'<span class="key" style="background:{colour}"></span>{html.escape(place)}'
                      for place, colour in colours.items())
    sections = [f"<h1>{html.escape(plan.model_name)}: LLM serving plan</h1>",
                f"<pre>{html.escape(format_llm_summary(plan))}</pre>",
                f"<p class='legend'>{legend}</p>"]
    for phase in (PREFILL, DECODE):
        sections += [f"<h2>{PHASE_TITLES[phase]}: where each layer's compute runs</h2>",
                     layer_strip(_ops(plan, phase), colours, "compute time"),
                     _devices_table(plan, phase)]
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(plan.model_name)} "
            f"LLM plan</title><style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")


def _ops(plan: LLMPlan, phase: str) -> list[tuple[str, str, float]]:
    """Each op of the phase as (module, place, its compute seconds there), 1 ns where the plan kept no costs."""
    costs = plan.op_seconds.get(phase, {})
    ops = []
    for op in plan.phase_ops.get(phase, ()):
        place = plan.best.assignment[f"{phase}/{op.name}"]
        ops.append((op.module, place, costs.get(op.name, {}).get(place_kind(place), 0.0) or 1e-9))
    return ops


def _devices_table(plan: LLMPlan, phase: str) -> str:
    """Per device of the phase: its ops, their compute time, the KV cache and memory it holds."""
    per: dict[str, list[float]] = {}
    for _, place, seconds in _ops(plan, phase):
        per.setdefault(place, []).append(seconds)
    rows = "".join(
        f"<tr><td>{html.escape(place)}</td><td>{len(times)}</td><td>{format_seconds(sum(times))}</td>"
        f"<td>{format_bytes(plan.best.kv_cache_bytes.get(place, 0))}</td>"
        f"<td>{format_bytes(plan.best.memory_bytes.get(place, 0))}</td></tr>"
        for place, times in per.items())
    return ("<table><tr><th>device</th><th>ops</th><th>compute</th><th>KV cache (both phases)</th>"
            f"<th>memory (both phases)</th></tr>{rows}</table>")
