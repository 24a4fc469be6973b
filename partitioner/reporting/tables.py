"""`partitioner report`: the plan at a glance in the terminal, as rich tables.

Per target: ops, share of FLOPs, busy time, memory used of capacity and
money per request; the transfers; the plan against the baselines; the
solver's proof; and the ops only the fallback runs, ranked by the work they
force there. Everything is re-scored from the plan file alone.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from partitioner.placement.scoring import Score
from partitioner.plan import Plan
from partitioner.reporting.explain import unsupported_ops
from partitioner.reporting.summary import serving_lines, solver_line, target_uses, unknown_flops_note, versus_plan
from partitioner.units import count, format_bytes, format_money, format_seconds


def print_report(plan: Plan, console: Console | None = None) -> None:
    """Print the plan's report tables to `console` (default: standard output)."""
    # Piped, rich would wrap at 80 columns and split cells; a file or a pager gets whole rows.
    console = console or (Console() if sys.stdout.isatty() else Console(width=200))
    result = plan.score()
    model = plan.model
    console.print(f"[bold]{model.name}[/bold]: {model.node_count} ops, {format_bytes(model.parameter_bytes)} of "
                  f"parameters, {model.total_flops / 1e9:.3g} GFLOP; objective {plan.objective.name}, cost model "
                  f"{plan.cost_model}")
    console.print(_targets_table(plan, result))
    if (note := unknown_flops_note(plan)) is not None:
        console.print(f"[yellow]warning:[/yellow] {note}")
    console.print(f"transfers: {result.transfer_count} tensors, {format_bytes(result.transfer_bytes)}, "
                  f"{format_seconds(result.transfer_seconds)}; {count(len(plan.partitions), 'partition')}")
    console.print(_strategies_table(plan, result))
    if plan.objective.serving or plan.fleet:
        for line in serving_lines(plan, result, plan.baseline_scores().get("fallback")):
            console.print(line.strip())
    console.print(f"solver: {solver_line(plan.solver, plan.objective)}")
    unsupported = _unsupported_table(plan)
    if unsupported is not None:
        console.print(unsupported)


def _targets_table(plan: Plan, result: Score) -> Table:
    table = Table(title="where the model runs")
    for column in ("target", "ops", "FLOPs", "busy", "memory used / capacity", "cost / request", "per 1M"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for use in target_uses(plan, result):
        table.add_row(use.name + (" (fallback)" if use.is_fallback else ""), str(use.ops),
                      f"{100 * use.flops_share:.1f}%", format_seconds(use.busy_seconds),
                      f"{format_bytes(use.memory_bytes)} / {format_bytes(use.capacity_bytes)}",
                      format_money(use.cost_per_request), format_money(use.cost_per_request * 1e6))
    return table


def _strategies_table(plan: Plan, result: Score) -> Table:
    table = Table(title="the plan against the baselines")
    for column in ("strategy", "latency", "cost / request", "per 1M", "makespan", "vs plan"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, strategy in {"plan": result, **plan.baseline_scores()}.items():
        table.add_row(name, format_seconds(strategy.latency_seconds), format_money(strategy.cost_per_request),
                      format_money(strategy.cost_per_request * 1e6), format_seconds(strategy.makespan_seconds),
                      "-" if name == "plan" else versus_plan(plan, strategy, result))
    return table


def _unsupported_table(plan: Plan, most: int = 10) -> Table | None:
    ops = unsupported_ops(plan)
    if not ops:
        return None
    total = plan.model.total_flops or 1
    table = Table(title=f"ops only the fallback ({plan.fallback}) runs, by the work they force there")
    for column in ("op", "count", "share of FLOPs", "first refusal"):
        table.add_column(column, justify="right" if column in ("count", "share of FLOPs") else "left")
    for item in ops[:most]:
        table.add_row(item.op, str(item.count), f"{100 * item.flops / total:.1f}%", item.example_reason)
    if len(ops) > most:
        table.caption = f"and {len(ops) - most} more op kinds"
    return table
