"""Tagging: which targets can run each node, and why the others cannot.

Runs after `annotate` and before costing. Each target's support rules (data from
its spec) are checked against the node's op key, the dtypes it computes in
(per op where the spec lists them), ranks, shapes and arguments; every refusal
keeps a human-readable reason so a user (or a chip vendor) can see what blocked
a placement. The fallback target supports everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode, TensorMeta
from targets.hooks import support_refusal
from targets.spec import OpLimit, SupportRules, Target, TargetSet


@dataclass(frozen=True, slots=True)
class Tagging:
    """Per node, the targets that support it (in priority order) and each refusal's reason."""

    supported: Mapping[str, tuple[str, ...]]
    refusals: Mapping[str, Mapping[str, str]]


def tag(graph: OpGraph, targets: TargetSet) -> Tagging:
    """Check every node against every target's support rules."""
    supported: dict[str, tuple[str, ...]] = {}
    refusals: dict[str, dict[str, str]] = {}
    for node in graph:
        reasons = {
            target.name: reason
            for target in targets
            if target.name != targets.fallback and (reason := target_refusal(node, target)) is not None
        }
        supported[node.name] = tuple(name for name in targets.names if name not in reasons)
        refusals[node.name] = reasons
    return Tagging(supported, refusals)


def target_refusal(node: OpNode, target: Target) -> str | None:
    """Why `target` refuses `node`: its spec's rules, then its plug-in's support hook (targets/hooks.py)."""
    reason = refusal_reason(node, target.support)
    if reason is None and node.kind is NodeKind.COMPUTE and target.hooks and target.hooks.support:
        refusal = support_refusal(target, node)
        if refusal:
            reason = f"{node.op}: {refusal} ({target.origin})"
    return reason


def refusal_reason(node: OpNode, rules: SupportRules) -> str | None:
    """Why `rules` refuse `node`, or None if they accept it.

    View and bookkeeping nodes move no data and compute nothing, so every
    target accepts them; they must never be the reason for a cut. Layout
    copies need no op of the target's list, only its dtypes and shapes.
    """
    if node.kind is not NodeKind.COMPUTE:
        return None
    # A layout copy (clone, contiguous) is data movement any device does: only its dtypes, rank and shapes count.
    if rules.ops is not None and node.op not in rules.ops and not node.copies_only:
        return f"{node.op}: op not in support list"
    tensors = node.input_tensors + node.output_tensors
    allowed = rules.dtypes_for(node.op)
    if allowed is not None:
        unsupported = sorted(compute_dtypes(tensors) - allowed)
        if unsupported:
            return f"{node.op}: dtype {', '.join(unsupported)} not supported (supports {', '.join(sorted(allowed))})"
    if rules.max_rank is not None:
        rank = max((len(t.shape) for t in tensors), default=0)
        if rank > rules.max_rank:
            return f"{node.op}: rank {rank} > max {rules.max_rank}"
    if rules.static_shapes_only and not all(t.is_static for t in tensors):
        return f"{node.op}: dynamic shape, target takes static shapes only"
    for limit in rules.limits:
        if limit.op == node.op and limit.argument in node.arguments:
            reason = _limit_violation(limit, node.arguments[limit.argument])
            if reason is not None:
                return f"{node.op}: {reason}"
    return None


def compute_dtypes(tensors: Iterable[TensorMeta]) -> set[str]:
    """The dtypes an op computes in: those of its floating-point tensors.

    Beside floating-point data, integer and bool tensors are indices and masks (an attention mask, a gather's
    indices) that steer the work without being computed in; an op with no floating-point tensor (an int8
    matmul, an integer add) computes in its integer dtypes.
    """
    dtypes = {tensor.dtype for tensor in tensors}
    floating = {dtype for dtype in dtypes if getattr(torch, dtype).is_floating_point}
    return floating or dtypes


def _limit_violation(limit: OpLimit, value: Any) -> str | None:
    for item in _limited_values(limit, value):
        label = f"{limit.argument}={item}"
        if limit.allowed and item not in limit.allowed:
            return f"{label} not in allowed {list(limit.allowed)}"
        if not isinstance(item, (int, float)):
            continue
        if limit.max is not None and item > limit.max:
            return f"{label} > max {_number(limit.max)}"
        if limit.min is not None and item < limit.min:
            return f"{label} < min {_number(limit.min)}"
    return None


def _limited_values(limit: OpLimit, value: Any) -> Iterable[Any]:
    if isinstance(value, TensorMeta):
        dims = limit.dims or range(len(value.shape))
        return [value.shape[d] for d in dims if -len(value.shape) <= d < len(value.shape)]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [] if value is None else [value]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
