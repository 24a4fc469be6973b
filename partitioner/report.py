"""`partitioner report`: the plan at a glance in the terminal, as rich tables.

Per target: ops, share of FLOPs, busy time, memory used of capacity and
money per request; the transfers; the plan against the baselines; the
solver's proof; and the ops only the fallback runs, ranked by the work they
force there. Everything is re-scored from the plan file alone.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from partitioner.explain import unsupported_ops
from partitioner.summary import format_bytes, format_money, format_seconds

if TYPE_CHECKING:
    from partitioner.plan import Plan


def print_report(plan: Plan, console: Console | None = None) -> None:
    """Print the plan's report tables to `console` (default: standard output)."""
    console = console or Console()
    result = plan.score()
    model = plan.model
    console.print(f"[bold]{model.name}[/bold]: {model.node_count} ops, {format_bytes(model.parameter_bytes)} of "
                  f"parameters, {model.total_flops / 1e9:.3g} GFLOP; objective {plan.objective}, cost model "
                  f"{plan.cost_model}")
    console.print(_targets_table(plan))
    console.print(f"transfers: {result.transfer_count} tensors, {format_bytes(result.transfer_bytes)}, "
                  f"{format_seconds(result.transfer_seconds)}; {len(plan.partitions)} partitions")
    console.print(_strategies_table(plan))
    report = plan.solver
    unit = format_money if plan.objective == "cost" else format_seconds
    console.print(f"solver: {report.status} ({report.origin}), objective {unit(report.objective)}, bound "
                  f"{unit(report.bound)}, gap {100 * report.gap:.2f}%, {report.wall_seconds:.2f} s")
    unsupported = _unsupported_table(plan)
    if unsupported is not None:
        console.print(unsupported)


def _targets_table(plan: Plan) -> Table:
    result = plan.score()
    ops: Counter[str] = Counter(plan.placement[node.name] for node in plan.nodes)
    flops: Counter[str] = Counter()
    for node in plan.nodes:
        flops[plan.placement[node.name]] += node.flops
    total_flops = sum(flops.values()) or 1
    table = Table(title="where the model runs")
    for column in ("target", "ops", "FLOPs", "busy", "memory used / capacity", "cost / request", "per 1M"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target in plan.problem.targets:
        money = result.busy_seconds[target.name] * target.price_per_second
        name = target.name + (" (fallback)" if target.name == plan.fallback else "")
        table.add_row(name, str(ops[target.name]), f"{100 * flops[target.name] / total_flops:.1f}%",
                      format_seconds(result.busy_seconds[target.name]),
                      f"{format_bytes(result.memory_bytes[target.name])} / {format_bytes(target.memory_bytes)}",
                      format_money(money), format_money(money * 1e6))
    return table


def _strategies_table(plan: Plan) -> Table:
    plan_score = plan.score()
    table = Table(title="the plan against the baselines")
    for column in ("strategy", "latency", "cost / request", "per 1M", "makespan", f"plan saves ({plan.objective})"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, result in {"plan": plan_score, **plan.baseline_scores()}.items():
        if name == "plan":
            saving = "-"
        elif not result.fits_memory:
            saving = "does not fit memory"
        elif result.objective(plan.objective):
            saving = f"{100 * (1 - plan_score.objective(plan.objective) / result.objective(plan.objective)):.1f}%"
        else:
            saving = "-"
        table.add_row(name, format_seconds(result.latency_seconds), format_money(result.cost_per_request),
                      format_money(result.cost_per_request * 1e6), format_seconds(result.makespan_seconds), saving)
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
