"""The plan summary printed by `partitioner compile` and `Plan.summary()`.

Ops and FLOPs per target, predicted latency and money per request beside the
`fallback` and `priority` baselines, cut tensors, and the solver's proof.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from partitioner.plan import Plan
    from partitioner.problem import Score


def format_summary(plan: Plan) -> str:
    result = plan.score()
    flops_by_target: Counter[str] = Counter()
    ops_by_target: Counter[str] = Counter()
    for node in plan.nodes:
        flops_by_target[plan.placement[node.name]] += node.flops
        ops_by_target[plan.placement[node.name]] += 1
    total_flops = sum(flops_by_target.values()) or 1
    model = plan.model
    lines = [
        f"model      {model.name}: {model.node_count} ops, {format_bytes(model.parameter_bytes)} of parameters, "
        f"{model.total_flops / 1e9:.3g} GFLOP",
        f"targets    {', '.join(t.name + (' (fallback)' if t.name == plan.fallback else '') for t in plan.targets)}"
        f"; objective {plan.objective}"
        f"{f' within {format_seconds(plan.max_latency_seconds)}' if plan.max_latency_seconds else ''}"
        f"; cost model {plan.cost_model}",
        "",
        f"{'target':<16}{'ops':>7}{'FLOPs':>9}{'busy':>12}{'memory':>24}",
    ]
    for target in plan.problem.targets:
        memory = f"{format_bytes(result.memory_bytes[target.name])} / {format_bytes(target.memory_bytes)}"
        lines.append(
            f"{target.name:<16}{ops_by_target[target.name]:>7}"
            f"{100 * flops_by_target[target.name] / total_flops:>8.1f}%"
            f"{format_seconds(result.busy_seconds[target.name]):>12}{memory:>24}"
        )
    lines += [
        "",
        f"partitions  {len(plan.partitions)} (run in order: "
        f"{' -> '.join(p.target for p in plan.partitions[:6])}{' -> ...' if len(plan.partitions) > 6 else ''})",
        f"cut tensors {result.transfer_count} ({format_bytes(result.transfer_bytes)}, "
        f"{format_seconds(result.transfer_seconds)})",
        "",
        f"{'strategy':<12}{'latency':>12}{'cost/request':>16}{'per 1M req':>12}"
        + (f"{'makespan':>12}" if plan.objective == "makespan" else "") + "   vs plan",
        _strategy_line("plan", result, None, plan.objective),
    ]
    for name, baseline in plan.baseline_scores().items():
        lines.append(_strategy_line(name, baseline, result, plan.objective, plan.max_latency_seconds))
    report = plan.solver
    unit = format_money if plan.objective == "cost" else format_seconds
    lines += [
        "",
        f"solver     {report.status} ({report.origin}); objective {unit(report.objective)}, "
        f"bound {unit(report.bound)}, gap {100 * report.gap:.2f}%, {report.wall_seconds:.2f} s",
    ]
    return "\n".join(lines)


def _strategy_line(name: str, strategy: Score, plan: Score | None, objective: str,
                   max_latency_seconds: float | None = None) -> str:
    line = (f"{name:<12}{format_seconds(strategy.latency_seconds):>12}{format_money(strategy.cost_per_request):>16}"
            f"{format_money(strategy.cost_per_request * 1e6):>12}")
    if objective == "makespan":
        line += f"{format_seconds(strategy.makespan_seconds):>12}"
    if not strategy.fits_memory:
        over = ", ".join(f"{name} by {format_bytes(extra)}" for name, extra in strategy.over_capacity_bytes.items())
        return line + f"   infeasible: exceeds memory on {over}"
    if max_latency_seconds is not None and strategy.latency_seconds > max_latency_seconds:
        return line + f"   infeasible: over the {format_seconds(max_latency_seconds)} latency limit"
    if plan is not None:
        saving = 1 - plan.objective(objective) / strategy.objective(objective) if strategy.objective(objective) else 0
        line += f"   plan saves {100 * saving:.1f}% {objective}"
    return line


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def format_money(dollars: float) -> str:
    return f"${dollars:.3g}"


def format_bytes(num_bytes: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if num_bytes >= size:
            return f"{num_bytes / size:.1f} {unit}"
    return f"{num_bytes} B"
