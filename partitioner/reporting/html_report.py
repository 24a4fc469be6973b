"""`report.html`: the plan as one self-contained page (inline SVG and CSS, no scripts, no network).

Written by `partitioner compile` beside plan.json. It shows the figures of
`partitioner report`, a picture of the graph with nodes coloured by target and
cut edges in red (collapsed to partitions when the graph is large, so a 70B
model stays readable), a strip per layer with the share of its FLOPs on each
target, and bars of busy time and money per target.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import networkx as nx

from partitioner.files import write_atomically
from partitioner.placement.blocks import numbered_block
from partitioner.placement.scoring import Score
from partitioner.plan import Plan
from partitioner.reporting.explain import unsupported_ops
from partitioner.reporting.summary import (TargetUse, serving_lines, solver_line, target_uses, unknown_flops_note,
                                           versus_plan)
from partitioner.units import count, format_bytes, format_money, format_seconds

# Graphs with more nodes than this are drawn as their partitions.
MOST_NODES_DRAWN = 150
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#bab0ac")
_CUT = "#d62728"


def write_html_report(plan: Plan, path: str | Path) -> Path:
    """Write the plan's page to `path`; the file appears complete or not at all."""
    path = Path(path)
    write_atomically(path, render_html_report(plan))
    return path


def render_html_report(plan: Plan) -> str:
    colours = {target.name: PALETTE[i % len(PALETTE)] for i, target in enumerate(plan.problem.targets)}
    result = plan.score()
    uses = target_uses(plan, result)
    legend = " ".join(f'<span class="key" style="background:{c}"></span>{html.escape(t)}' for t, c in colours.items())
    sections = [
        f"<h1>{html.escape(plan.model.name)}: placement plan</h1>",
        f"<p>{plan.model.node_count} ops, {format_bytes(plan.model.parameter_bytes)} of parameters, "
        f"{plan.model.total_flops / 1e9:.3g} GFLOP; objective {plan.objective.name}; cost model {plan.cost_model}. "
        f"Solver: {html.escape(solver_line(plan.solver, plan.objective))}. "
        f"Transfers: {result.transfer_count} tensors, {format_bytes(result.transfer_bytes)}, "
        f"{format_seconds(result.transfer_seconds)}; {count(len(plan.partitions), 'partition')}.</p>",
        f"<p class='legend'>{legend} <span class='key' style='background:{_CUT}'></span>cut edge</p>",
        "<h2>Where the model runs</h2>", _targets_table(uses),
        *(["<h2>Re-planned after compiler refusals</h2>", _refusals_table(plan)] if plan.compiler_refusals else []),
        *([f"<p class='warning'>{html.escape(note)}</p>"] if (note := unknown_flops_note(plan)) else []),
        "<h2>The plan against the baselines</h2>", _strategies_table(plan, result),
        "<h2>Busy time and money per target</h2>", _bars(uses, colours),
        *(["<h2>Serving at full load</h2>", _utilisation_bars(plan, result)]
          if plan.objective.serving or plan.fleet else []),
        "<h2>The graph</h2>", _graph_picture(plan, colours),
        "<h2>Layers</h2>", _layer_strip(plan, colours),
        "<h2>Ops only the fallback runs</h2>", _unsupported_table(plan),
    ]
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(plan.model.name)} "
            f"plan</title><style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")


STYLE = """
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
.warning { color: #8a4b00; background: #fff4e0; padding: 6px 10px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.key { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }
svg { border: 1px solid #eee; max-width: 100%; height: auto; }
svg text { font: 10px system-ui, sans-serif; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _targets_table(uses: Sequence[TargetUse]) -> str:
    rows = [[use.name + (" (fallback)" if use.is_fallback else ""), str(use.ops), f"{100 * use.flops_share:.1f}%",
             format_seconds(use.busy_seconds), f"{format_bytes(use.memory_bytes)} / {format_bytes(use.capacity_bytes)}",
             format_money(use.cost_per_request), format_money(use.cost_per_request * 1e6)] for use in uses]
    return _table(["target", "ops", "FLOPs", "busy", "memory used / capacity", "cost / request", "per 1M"], rows)


def _strategies_table(plan: Plan, result: Score) -> str:
    rows = [[name, format_seconds(strategy.latency_seconds), format_money(strategy.cost_per_request),
             format_seconds(strategy.makespan_seconds), "-" if name == "plan" else versus_plan(plan, strategy, result)]
            for name, strategy in {"plan": result, **plan.baseline_scores()}.items()]
    return _table(["strategy", "latency", "cost / request", "makespan", "vs plan"], rows)


def _refusals_table(plan: Plan) -> str:
    """What targets' compilers refused while planning: the plan that stands was solved without it."""
    return _table(["target", "partition", "ops refused", "reason"],
                  [[r.target, r.partition, ", ".join(r.nodes), r.reason] for r in plan.compiler_refusals])


def _unsupported_table(plan: Plan) -> str:
    ops = unsupported_ops(plan)
    if not ops:
        return "<p>Every op runs on some target other than the fallback.</p>"
    total = plan.model.total_flops or 1
    return _table(["op", "count", "share of FLOPs", "first refusal"],
                  [[o.op, str(o.count), f"{100 * o.flops / total:.1f}%", o.example_reason] for o in ops])


def _bars(uses: Sequence[TargetUse], colours: Mapping[str, str]) -> str:
    charts = []
    for title, value_of, label in (("busy time", lambda use: use.busy_seconds, format_seconds),
                                   ("cost per request", lambda use: use.cost_per_request, format_money)):
        largest = max(value_of(use) for use in uses) or 1.0
        bars = []
        for row, use in enumerate(uses):
            width = 300 * value_of(use) / largest
            bars.append(f'<text x="0" y="{row * 22 + 15}">{html.escape(use.name)}</text>'
                        f'<rect x="130" y="{row * 22 + 4}" width="{width:.1f}" height="16" fill="{colours[use.name]}"/>'
                        f'<text x="{136 + width:.1f}" y="{row * 22 + 15}">{label(value_of(use))}</text>')
        charts.append(f'<svg class="bars" width="520" height="{len(uses) * 22 + 8}" '
                      f'viewBox="0 0 520 {len(uses) * 22 + 8}" role="img" '
                      f'aria-label="{title} per target"><title>{title}</title>{"".join(bars)}</svg>')
    return "".join(charts)


def _utilisation_bars(plan: Plan, result) -> str:
    """Per device and link resource, its share of time busy at full load; the bottleneck in bold and red."""
    serving = result.serving
    resources = sorted(serving.occupancy_seconds, key=lambda r: -serving.occupancy_seconds[r])[:24]
    bars = []
    for row, resource in enumerate(resources):
        share = serving.utilisation(resource)
        is_bottleneck = resource == serving.bottleneck
        colour = "#c0392b" if is_bottleneck else "#5b8def"
        weight = ' font-weight="bold"' if is_bottleneck else ""
        bars.append(f'<text x="0" y="{row * 22 + 15}"{weight}>{html.escape(resource)}</text>'
                    f'<rect x="200" y="{row * 22 + 4}" width="{300 * share:.1f}" height="16" fill="{colour}"/>'
                    f'<text x="{206 + 300 * share:.1f}" y="{row * 22 + 15}"{weight}>{100 * share:.0f}%'
                    f'{" (bottleneck)" if is_bottleneck else ""}</text>')
    height = len(resources) * 22 + 8
    lines = "".join(f"<p>{html.escape(line.strip())}</p>" for line in
                    serving_lines(plan, result, plan.baseline_scores().get("fallback")))
    return (f'{lines}<svg class="bars" width="640" height="{height}" viewBox="0 0 640 {height}" role="img" '
            f'aria-label="utilisation at full load"><title>utilisation at full load</title>{"".join(bars)}</svg>')


def _graph_picture(plan: Plan, colours: Mapping[str, str]) -> str:
    """Nodes (or partitions, for large graphs) in columns by dependency depth; cut edges in red."""
    if len(plan.nodes) <= MOST_NODES_DRAWN:
        graph = nx.DiGraph()
        graph.add_nodes_from((n.name, {"target": plan.placement[n.name], "label": n.name}) for n in plan.nodes)
        for value in plan.problem.values:
            for consumer in value.consumers:
                graph.add_edge(value.producer, consumer)
        caption = f"{len(plan.nodes)} ops"
    else:
        graph = nx.DiGraph()
        owner = {node: p.index for p in plan.partitions for node in p.nodes}
        graph.add_nodes_from((p.index, {"target": p.target, "label": f"{p.name} ({len(p.nodes)} ops)"})
                             for p in plan.partitions)
        for p in plan.partitions:
            for source in p.inputs:
                if source in owner and owner[source] != p.index:
                    graph.add_edge(owner[source], p.index)
        caption = f"{len(plan.nodes)} ops drawn as {len(plan.partitions)} partitions"
    return _layered_svg(graph, colours) + f"<p>{caption}; hover a box for its name.</p>"


def _layered_svg(graph: nx.DiGraph, colours: Mapping[str, str]) -> str:
    columns = list(nx.topological_generations(graph)) if nx.is_directed_acyclic_graph(graph) else [list(graph)]
    position = {}
    for x, column in enumerate(columns):
        for y, node in enumerate(column):
            position[node] = (20 + x * 34, 20 + y * 22)
    width = 40 + len(columns) * 34
    height = 40 + max((len(c) for c in columns), default=1) * 22
    edges = []
    for source, destination in graph.edges:
        (x1, y1), (x2, y2) = position[source], position[destination]
        cut = graph.nodes[source]["target"] != graph.nodes[destination]["target"]
        style = f'stroke="{_CUT}" stroke-width="2" stroke-dasharray="4 2"' if cut else 'stroke="#bbb" stroke-width="1"'
        edges.append(f'<line x1="{x1 + 12}" y1="{y1 + 7}" x2="{x2}" y2="{y2 + 7}" {style}/>')
    boxes = [f'<rect x="{x}" y="{y}" width="12" height="14" fill="{colours[graph.nodes[n]["target"]]}">'
             f'<title>{html.escape(str(graph.nodes[n]["label"]))} on {html.escape(graph.nodes[n]["target"])}'
             f'</title></rect>' for n, (x, y) in position.items()]
    return (f'<svg class="graph" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="graph by target">'
            f'{"".join(edges)}{"".join(boxes)}</svg>')


def _layer_strip(plan: Plan, colours: Mapping[str, str]) -> str:
    """Per numbered block (layer), the share of its FLOPs (ops, when it has none) on each target."""
    return layer_strip(((node.module_path, plan.placement[node.name], node.flops or 1e-9) for node in plan.nodes),
                       colours, "FLOPs")


def layer_strip(ops: Iterable[tuple[str, str, float]], colours: Mapping[str, str], measure: str) -> str:
    """Per numbered block (layer) of `ops` (module, place, amount), the share of its `measure` on each place."""
    layers: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for module, place, amount in ops:
        block = numbered_block(module)
        if block is not None:
            layers[block][place] += amount
    if not layers:
        return "<p>The model has no numbered layers.</p>"
    rows = []
    for row, (layer, shares) in enumerate(layers.items()):
        total, x = sum(shares.values()), 160.0
        segments = []
        for target, value in shares.items():
            width = 400 * value / total
            segments.append(f'<rect x="{x:.1f}" y="{row * 16 + 2}" width="{width:.1f}" height="13" '
                            f'fill="{colours[target]}"><title>{html.escape(layer)}: {100 * value / total:.0f}% '
                            f'of {measure} on {html.escape(target)}</title></rect>')
            x += width
        rows.append(f'<text x="0" y="{row * 16 + 12}">{html.escape(layer)}</text>{"".join(segments)}')
    return (f'<svg class="layers" width="580" height="{len(layers) * 16 + 6}" '
            f'viewBox="0 0 580 {len(layers) * 16 + 6}" role="img" '
            f'aria-label="targets per layer">{"".join(rows)}</svg>')
