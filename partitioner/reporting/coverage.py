"""How much of a model each target can run: the question a user asks before buying a chip.

Per target, the model's compute ops it supports by count and by FLOPs, and the
refusals that keep the rest off it, ranked by the FLOPs they keep off. Views and
bookkeeping nodes are left out: every target accepts them (see tagging.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from partitioner.frontend.op_graph import NodeKind, OpGraph
from partitioner.placement.tagging import target_refusal
from targets.spec import Target


@dataclass(frozen=True, slots=True)
class Refusal:
    """One reason a target gives, with how many compute ops it refuses and their FLOPs."""

    reason: str
    ops: int
    flops: int


@dataclass(frozen=True, slots=True)
class TargetCoverage:
    """What share of a model's compute ops, by count and by FLOPs, one target supports, and why not the rest."""

    target: str
    supported_ops: int
    total_ops: int
    supported_flops: int
    total_flops: int
    refusals: tuple[Refusal, ...]  # the most FLOPs first

    @property
    def op_share(self) -> float:
        return self.supported_ops / self.total_ops if self.total_ops else 1.0

    @property
    def flop_share(self) -> float:
        return self.supported_flops / self.total_flops if self.total_flops else 1.0


def coverage(graph: OpGraph, targets: Sequence[Target]) -> tuple[TargetCoverage, ...]:
    """Each target's coverage of `graph` by its own support rules, in the order given."""
    compute = [node for node in graph if node.kind is NodeKind.COMPUTE]
    total_flops = sum(node.flops for node in compute)
    result = []
    for target in targets:
        refused: dict[str, list[int]] = {}
        for node in compute:
            reason = target_refusal(node, target)
            if reason is not None:
                counts = refused.setdefault(reason, [0, 0])
                counts[0] += 1
                counts[1] += node.flops
        refusals = sorted((Refusal(reason, ops, flops) for reason, (ops, flops) in refused.items()),
                          key=lambda refusal: (-refusal.flops, -refusal.ops, refusal.reason))
        refused_ops = sum(refusal.ops for refusal in refusals)
        refused_flops = sum(refusal.flops for refusal in refusals)
        result.append(TargetCoverage(target.name, len(compute) - refused_ops, len(compute),
                                     total_flops - refused_flops, total_flops, tuple(refusals)))
    return tuple(result)


def format_coverage(model_name: str, coverages: tuple[TargetCoverage, ...], top: int = 5) -> str:
    """The coverage as text: a line per target, then its top refusal reasons."""
    total = coverages[0].total_ops if coverages else 0
    lines = [f"model      {model_name}: {total} compute ops (views and bookkeeping, which every target takes, "
             "left out)", "", f"{'target':<20}{'ops':>16}{'FLOPs':>10}   top refusals (ops, share of FLOPs)"]
    for item in coverages:
        ops = f"{item.supported_ops}/{item.total_ops} {100 * item.op_share:.0f}%"
        lines.append(f"{item.target:<20}{ops:>16}{100 * item.flop_share:>9.1f}%"
                     + ("   runs every op" if not item.refusals else ""))
        for refusal in item.refusals[:top]:
            share = refusal.flops / item.total_flops if item.total_flops else 0.0
            lines.append(f"{'':<49}{refusal.reason} ({refusal.ops}, {100 * share:.1f}%)")
        if len(item.refusals) > top:
            lines.append(f"{'':<49}... and {len(item.refusals) - top} other reasons")
    return "\n".join(lines)
