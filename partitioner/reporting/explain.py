"""Why a node sits where it sits, and which ops keep work on the fallback: read from a plan file alone.

`explain_node` lists a node's op, shapes, work, its cost on every target, the
targets that refused it and why, and what moving it (with the nodes that must
stay beside it) to each other target would change in the plan's objective,
its neighbours staying put. `unsupported_ops` ranks the ops no cheaper target
supports by the FLOPs they force onto the fallback: what a chip vendor should
implement next.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass

from partitioner.errors import PartitionerError
from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.scoring import score
from partitioner.plan import Plan
from partitioner.units import format_bytes, format_flops, format_money, format_seconds


@dataclass(frozen=True, slots=True)
class Move:
    """What the plan would become with the node (and its group) on `target`."""

    target: str
    objective_change: float
    objective_value: float
    bottleneck: str
    latency_seconds: float
    cost_per_request: float
    fits_memory: bool


def explain_node(plan: Plan, name: str) -> str:
    """A readable account of one node of `plan`: what it is, what it costs where, and why it is where it is."""
    records = {node.name: node for node in plan.nodes}
    if name not in records:
        close = difflib.get_close_matches(name, records, n=3)
        hint = f"did you mean {', '.join(close)}" if close else "node names are in plan.json under 'nodes'"
        raise PartitionerError(f"no node {name!r} in this plan. Fix: {hint}.")
    record, problem_node = records[name], plan.problem.node(name)
    here = plan.placement[name]
    objective = plan.objective
    lines = [
        f"node       {name}: {record.op}" + (f" in {record.module_path}" if record.module_path else ""),
        f"output     {', '.join(str(list(shape)) for shape in record.output_shapes)} ({', '.join(record.dtypes)})",
        f"work       {format_flops(record.flops) if record.flops_known else 'FLOPs unknown'}, "
        f"{format_bytes(record.bytes_read)} read, "
        f"{format_bytes(record.bytes_written)} written, {format_bytes(record.parameter_bytes)} of parameters",
        f"placed on  {here}" + (f" (with {_group_leader(plan, name)}, which it must follow)"
                                if problem_node.follows else ""),
        *([_serving_line(plan)] if objective.serving or plan.fleet else []),
        "",
        f"{'target':<16}{'compute':>12}   {'move here: ' + objective.name:<28}{'latency':>11}{'cost':>12}   note",
    ]
    moves = {move.target: move for move in _moves(plan, name)}
    for target in plan.problem.target_names:
        seconds = problem_node.compute_seconds.get(target)
        if seconds is None:
            reason = record.refusals.get(target, "not supported")
            lines.append(f"{target:<16}{'-':>12}   {'-':<28}{'':>11}{'':>12}   refused: {reason}")
            continue
        move = moves.get(target)
        source = "measured" if target in record.measured_on else "estimated"
        if target == here:
            change, latency, cost, note = "(current)", "", "", f"{source}; placed here"
        elif move is None:
            change, latency, cost, note = "-", "", "", f"{source}; its group cannot move here"
        else:
            change = _change(plan, move)
            latency, cost = format_seconds(move.latency_seconds), format_money(move.cost_per_request)
            note = source + (f"; bottleneck then {move.bottleneck}" if objective.serving else "")
            note += "" if move.fits_memory else "; does not fit in memory"
        lines.append(f"{target:<16}{format_seconds(seconds):>12}   {change:<28}{latency:>11}{cost:>12}   {note}")
    return "\n".join(lines)


def _change(plan: Plan, move: Move) -> str:
    """What the move does to the plan's figure: a signed difference for a sum of one request's costs; for a
    serving figure (a rate, a fleet's price) the value after the move and how much worse or better it is."""
    objective = plan.objective
    if not objective.serving:
        return f"{'+' if move.objective_change >= 0 else '-'}{objective.format(abs(move.objective_change))}"
    before = move.objective_value - move.objective_change
    if before <= 0 or move.objective_change == 0:
        return f"{objective.format(move.objective_value)} (same)"
    share = 100 * abs(move.objective_change) / before
    direction = "worse" if move.objective_change > 0 else "better"
    return f"{objective.format(move.objective_value)} ({share:.1f}% {direction})"


def _serving_line(plan: Plan) -> str:
    serving = plan.score().serving
    return (f"serving    the plan serves {serving.throughput_per_second:.4g} req/s at full load, bottleneck "
            f"{serving.bottleneck} ({100 * serving.utilisation(serving.bottleneck):.0f}% busy)")


def _group_leader(plan: Plan, name: str) -> str:
    node = plan.problem.node(name)
    while node.follows is not None:
        node = plan.problem.node(node.follows)
    return node.name


def _moves(plan: Plan, name: str) -> list[Move]:
    """The plan re-scored with `name`'s group (it, what it follows, what follows it) on each other target."""
    leader = _group_leader(plan, name)
    group = [n.name for n in plan.problem.nodes if _group_leader(plan, n.name) == leader]
    shared = set.intersection(*(set(plan.problem.node(member).supported) for member in group))
    current = plan.objective.value(plan.score())
    moves = []
    for target in plan.problem.target_names:
        if target not in shared or target == plan.placement[name]:
            continue
        # In the plan's order, as the current figure is: the move alone makes the difference.
        moved = score(plan.problem, {**plan.placement, **dict.fromkeys(group, target)}, plan.order or None)
        value = plan.objective.value(moved)
        moves.append(Move(target, value - current, value, moved.serving.bottleneck, moved.latency_seconds,
                          moved.cost_per_request, moved.fits_memory))
    return moves


@dataclass(frozen=True, slots=True)
class UnsupportedOp:
    """An op key that only the fallback runs, with how often and how much work it sends there."""

    op: str
    count: int
    flops: int
    example_reason: str


def unsupported_ops(plan: Plan) -> list[UnsupportedOp]:
    """Ops no target but the fallback supports, most fallback FLOPs first."""
    count: dict[str, int] = defaultdict(int)
    flops: dict[str, int] = defaultdict(int)
    reason: dict[str, str] = {}
    for record in plan.nodes:
        node = plan.problem.node(record.name)
        if node.kind is NodeKind.COMPUTE and node.supported == (plan.fallback,) and record.refusals:
            count[record.op] += 1
            flops[record.op] += record.flops
            reason.setdefault(record.op, next(iter(record.refusals.values())).removeprefix(f"{record.op}: "))
    return sorted((UnsupportedOp(op, count[op], flops[op], reason[op]) for op in count),
                  key=lambda item: (-item.flops, -item.count, item.op))
