"""The plan summary printed by `partitioner compile` and `Plan.summary()`, and the figures all reports share.

Ops and FLOPs per target, predicted latency and money per request beside the
`fallback` and `priority` baselines, cut tensors, and the solver's proof.
`target_uses` and `versus_plan` also feed `partitioner report` and report.html.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Protocol

from partitioner.execution.partition_compilers import CompilerRefusal
from partitioner.execution.split import Partition
from partitioner.placement.objectives import Objective
from partitioner.placement.problem import PlacementProblem
from partitioner.placement.scoring import Score
from partitioner.placement.serving import device_kind, same_price_replicas
from partitioner.placement.solver import SolverReport
from partitioner.plan_records import ModelInfo, NodeRecord, TargetRecord
from partitioner.units import count, format_bytes, format_money, format_seconds


class ReportedPlan(Protocol):
    """What the reports read of a plan; `partitioner.plan.Plan` is one. A protocol, so that a plan can print its
    own summary (`Plan.summary()`) while this module stays below partitioner/plan.py."""

    @property
    def model(self) -> ModelInfo: ...
    @property
    def targets(self) -> tuple[TargetRecord, ...]: ...
    @property
    def objective(self) -> Objective: ...
    @property
    def cost_model(self) -> str: ...
    @property
    def problem(self) -> PlacementProblem: ...
    @property
    def nodes(self) -> tuple[NodeRecord, ...]: ...
    @property
    def placement(self) -> Mapping[str, str]: ...
    @property
    def solver(self) -> SolverReport: ...
    @property
    def partitions(self) -> tuple[Partition, ...]: ...
    @property
    def max_latency_seconds(self) -> float | None: ...
    @property
    def fallback(self) -> str: ...
    @property
    def min_throughput(self) -> float | None: ...
    @property
    def fleet(self) -> str | None: ...
    @property
    def compiler_refusals(self) -> tuple[CompilerRefusal, ...]: ...
    def score(self) -> Score: ...
    def baseline_scores(self) -> dict[str, Score]: ...


@dataclass(frozen=True, slots=True)
class TargetUse:
    """One target's share of a plan: what runs there, how long it is busy, what it holds and costs."""

    name: str
    is_fallback: bool
    ops: int
    flops_share: float
    busy_seconds: float
    memory_bytes: int
    capacity_bytes: int
    cost_per_request: float


def target_uses(plan: ReportedPlan, result: Score) -> list[TargetUse]:
    """Per target of `plan` (scored as `result`), in priority order: the figures every report shows."""
    flops: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    for node in plan.nodes:
        flops[plan.placement[node.name]] += node.flops
        ops[plan.placement[node.name]] += 1
    total_flops = sum(flops.values()) or 1
    return [TargetUse(t.name, t.name == plan.fallback, ops[t.name], flops[t.name] / total_flops,
                      result.busy_seconds[t.name], result.memory_bytes[t.name], t.memory_bytes,
                      result.busy_seconds[t.name] * t.price_per_second)
            for t in plan.problem.targets]


def unknown_flops_note(plan: ReportedPlan) -> str | None:
    """A warning naming the ops whose FLOPs nothing could count: the FLOP shares leave their work out and the
    cost model prices them by their bytes alone. None when every op's FLOPs are known."""
    unknown = Counter(node.op for node in plan.nodes if not node.flops_known)
    if not unknown:
        return None
    ops = ", ".join(f"{op} x{number}" for op, number in unknown.most_common(4))
    more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
    return (f"FLOPs unknown for {count(sum(unknown.values()), 'op')} ({ops}{more}): FLOP shares leave their work "
            "out and costs count only their bytes. Fix: give each op a formula with "
            "torch.utils.flop_counter.register_flop_formula.")


def serving_lines(plan: ReportedPlan, result: Score, alone: Score | None = None) -> list[str]:
    """The plan under the serving model: throughput at full load, the bottleneck, money per request at that load,
    one request's latency through the pipeline, utilisation of the busiest resources and the devices used; and,
    given `alone` (the fallback placement's score), the all-fallback fleet of the same hourly price."""
    serving = result.serving
    names = {t.name for t in plan.problem.targets}
    busiest = sorted(serving.occupancy_seconds, key=lambda r: -serving.occupancy_seconds[r])[:6]
    utilisation = ", ".join(f"{r} {100 * serving.utilisation(r):.0f}%" for r in busiest)
    kinds = Counter(device_kind(name) for name in serving.used_targets)
    fallback_kind = device_kind(plan.fallback)  # a fleet's other devices of the fallback's spec are no cheaper
    off_fallback = sum(n.flops for n in plan.nodes if device_kind(plan.placement[n.name]) != fallback_kind)
    total = sum(n.flops for n in plan.nodes) or 1
    requirement = f" (at least {plan.min_throughput:.4g} required)" if plan.min_throughput else ""
    return [
        f"serving    {serving.throughput_per_second:.4g} req/s at full load{requirement}; bottleneck "
        f"{serving.bottleneck} ({'compute' if serving.bottleneck in names else 'link'}); "
        f"{format_money(serving.cost_per_request_at_load * 1e6)} per 1M requests at that load; one request "
        f"{format_seconds(result.latency_seconds)} through the pipeline",
        f"           utilisation {utilisation}",
        f"           devices used {' + '.join(f'{n} x {k}' for k, n in kinds.items())} "
        f"({format_money(serving.price_per_hour)}/h); {100 * off_fallback / total:.1f}% of FLOPs off {fallback_kind}",
        *([_same_price_line(plan, result, alone)] if alone is not None else []),
    ]


def _same_price_line(plan: ReportedPlan, result: Score, alone: Score) -> str:
    device = device_kind(plan.fallback)
    price = plan.problem.target(plan.fallback).price_per_hour
    rival = same_price_replicas(result.serving, alone.serving, device, price)
    ratio = result.serving.throughput_per_second / rival.throughput_per_second
    others = any(device_kind(name) != device for name in result.serving.used_targets)
    verdict = ("" if ratio >= 1 else ": the cheaper devices do not pay here" if others
               else f": whole-model replicas serve more than this split over {device} devices")
    return (f"           all-{device} fleet of the same price ({rival.replicas:.3g} x {device}) serves "
            f"{rival.throughput_per_second:.4g} req/s at {format_money(rival.cost_per_request_at_load * 1e6)} per 1M "
            f"requests; the plan serves {ratio:.2f}x the requests{verdict}")


def versus_plan(plan: ReportedPlan, strategy: Score, result: Score) -> str:
    """How the plan (scored as `result`) compares with another strategy: its saving in the plan's objective,
    or why that strategy is no rival (it does not fit in memory, or misses the latency limit)."""
    if not strategy.fits_memory:
        over = ", ".join(f"{name} by {format_bytes(extra)}" for name, extra in strategy.over_capacity_bytes.items())
        return f"infeasible: exceeds memory on {over}"
    limit = plan.max_latency_seconds
    if limit is not None and strategy.latency_seconds > limit:
        return f"infeasible: over the {format_seconds(limit)} latency limit"
    return plan.objective.versus(plan.objective.value(result), plan.objective.value(strategy))


def format_summary(plan: ReportedPlan) -> str:
    result = plan.score()
    model = plan.model
    lines = [
        f"model      {model.name}: {model.node_count} ops, {format_bytes(model.parameter_bytes)} of parameters, "
        f"{model.total_flops / 1e9:.3g} GFLOP",
        f"targets    {', '.join(t.name + (' (fallback)' if t.name == plan.fallback else '') for t in plan.targets)}"
        f"; objective {plan.objective.name}"
        f"{f' within {format_seconds(plan.max_latency_seconds)}' if plan.max_latency_seconds else ''}"
        f" ({'serving model: many requests in flight' if plan.objective.serving else 'one request alone'})"
        f"; cost model {plan.cost_model}",
        *([f"fleet      {plan.fleet}"] if plan.fleet else []),
        "",
        f"{'target':<16}{'ops':>7}{'FLOPs':>9}{'busy':>12}{'memory':>24}",
    ]
    for use in target_uses(plan, result):
        memory = f"{format_bytes(use.memory_bytes)} / {format_bytes(use.capacity_bytes)}"
        lines.append(f"{use.name:<16}{use.ops:>7}{100 * use.flops_share:>8.1f}%"
                     f"{format_seconds(use.busy_seconds):>12}{memory:>24}")
    if (note := unknown_flops_note(plan)) is not None:
        lines.append(f"warning    {note}")
    lines += [
        "",
        f"partitions  {len(plan.partitions)} (run in order: "
        f"{' -> '.join(p.target for p in plan.partitions[:6])}{' -> ...' if len(plan.partitions) > 6 else ''})",
        f"cut tensors {result.transfer_count} ({format_bytes(result.transfer_bytes)}, "
        f"{format_seconds(result.transfer_seconds)})",
        *([f"hops        {result.hop_count:g} per request ({format_seconds(result.hop_seconds)} of stage launches "
           "and engine hand-offs)"] if plan.problem.hop_seconds else []),
        *replanned_lines(plan),
        "",
    ]
    baselines = plan.baseline_scores()
    objective = plan.objective
    # The objective's column is as wide as its widest figure, plus two spaces, and never under 14.
    width = max([14] + [2 + len(objective.format(objective.value(s))) for s in (result, *baselines.values())])
    lines += [f"{'strategy':<12}{'latency':>12}{'cost/request':>16}{'per 1M req':>12}"
              + (f"{objective.table_column:>{width}}" if objective.table_column else "") + "   vs plan",
              _strategy_line("plan", result, objective, width)]
    for name, baseline in baselines.items():
        lines.append(f"{_strategy_line(name, baseline, objective, width)}   {versus_plan(plan, baseline, result)}")
    if plan.objective.serving or plan.fleet:
        lines += ["", *serving_lines(plan, result, baselines.get("fallback")),
                  "           (busy, latency and cost/request above price one request alone, its copies keeping "
                  "devices busy)"]
    lines += ["", f"solver     {solver_line(plan.solver, plan.objective, '; ')}"]
    return "\n".join(lines)


def replanned_lines(plan: ReportedPlan) -> list[str]:
    """What targets' compilers refused while planning, and that the plan was made again without it."""
    refusals = plan.compiler_refusals
    if not refusals:
        return []
    count = f"{len(refusals)} compiler refusal{'s' if len(refusals) != 1 else ''}"
    return [f"re-planned  after {count} (the refused ops run elsewhere):",
            *(f"            {refusal.describe()}" for refusal in refusals)]


def solver_line(report: SolverReport, objective: Objective, separator: str = ", ") -> str:
    """How the solver did, in the objective's unit: status, origin, objective, bound, gap and time."""
    return (f"{report.status} ({report.origin}){separator}objective {objective.format(report.objective)}, "
            f"bound {objective.format(report.bound)}, gap {100 * report.gap:.2f}%, {report.wall_seconds:.2f} s"
            + (f"{separator}{report.method}" if report.method else ""))


def _strategy_line(name: str, strategy: Score, objective: Objective, width: int) -> str:
    line = (f"{name:<12}{format_seconds(strategy.latency_seconds):>12}{format_money(strategy.cost_per_request):>16}"
            f"{format_money(strategy.cost_per_request * 1e6):>12}")
    if objective.table_column:
        line += f"{objective.format(objective.value(strategy)):>{width}}"
    return line
