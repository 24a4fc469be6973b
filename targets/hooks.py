"""What a vendor's code may add to a target where its spec's data cannot say it: the plug-in hooks.

A spec file says which ops, dtypes, ranks and argument sizes a chip takes and
how fast it is; a vendor knows more (a matmul whose inner size is not a whole
number of tiles, a cost its own simulator predicts, a compiler that turns a
partition into the chip's binary). A plug-in (targets/plugins.py) attaches
these hooks to its targets; tagging, costing, planning and export call them.
Every hook is optional; each is a plain function (`TargetHooks`, in targets/spec.py beside the target it
belongs to, says what each takes and returns). The callers go through `support_refusal`, `hook_seconds` and
`compile_with_hook`, which hold each answer to that contract: whatever a hook raises or answers wrong is one
error naming the plug-in, never a traceback, an exit or a wrong plan.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from partitioner.errors import PartitionerError
from targets.spec import Target, TargetHooks

if TYPE_CHECKING:
    import torch

    from partitioner.frontend.op_graph import OpNode

__all__ = ["CompiledPartition", "PartitionRefused", "PartitionToCompile", "TargetHooks", "compile_with_hook",
           "hook_seconds", "plugin_fault", "support_refusal"]


class PartitionRefused(Exception):  # noqa: N818 - a vendor's compiler raises it: the name says what happened
    """A partition compiler cannot build this partition.

    `nodes` names the op nodes it refused (the partition's node names); none
    means the whole partition. The planner then plans again with those nodes
    refused on this target, and records `reason` in the plan.
    """

    def __init__(self, reason: str, nodes: Sequence[str] = ()):
        super().__init__(reason)
        self.reason = reason
        self.nodes = tuple(nodes)


@dataclass(frozen=True)
class PartitionToCompile:
    """One partition handed to a target's compiler: its target, its name in the plan (e.g. "002_acme-npu"),
    the torch.fx GraphModule that runs it (placeholders carry shapes in `meta["val"]`), and its op nodes."""

    target: Target
    name: str
    module: torch.fx.GraphModule
    nodes: tuple[Any, ...]  # partitioner.frontend.op_graph.OpNode: each op's key, shapes, dtypes and arguments
    example_inputs: tuple[Any, ...] | None = None  # real tensors at export time; None while planning


@dataclass(frozen=True)
class CompiledPartition:
    """What a partition compiler made: file name suffix -> bytes (e.g. {".neff": ...}), written beside the
    partition's ONNX file by `partitioner export`, and a line for the user."""

    files: Mapping[str, bytes] = field(default_factory=dict)
    note: str = ""


def plugin_fault(target: Target, problem: str, fix: str = "update or report the plug-in") -> PartitionerError:
    """The error for what a target's plug-in got wrong (`problem` names the package): the target, then the fix."""
    return PartitionerError(f"target {target.name}: {problem}. Fix: {fix}.")


def support_refusal(target: Target, node: OpNode) -> str | None:
    """Why `target`'s support hook refuses `node` (a reason), or None where it takes it."""
    reason = _call(target, "support", target.hooks.support, node)
    if reason is not None and not (isinstance(reason, str) and reason.strip()):
        raise plugin_fault(target, f"the support hook of {target.origin} gave {_shown(reason)} for {node.name} "
                                   f"({node.op}); it must give None (supported) or a reason, a non-empty string")
    return reason


def hook_seconds(target: Target, node: OpNode) -> float | None:
    """The seconds `target`'s cost hook gives `node`, or None where it leaves the figure to the cost model."""
    seconds = _call(target, "cost", target.hooks.cost, node, target)
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not 0 <= seconds < math.inf:
        raise plugin_fault(target, f"the cost hook of {target.origin} gave {_shown(seconds)} seconds for {node.name} "
                                   f"({node.op})")
    return float(seconds)


def compile_with_hook(target: Target, request: PartitionToCompile) -> CompiledPartition:
    """What `target`'s compiler hook makes of `request`; PartitionRefused passes through (checked) as it refuses."""
    try:
        compiled = _call(target, "compile", target.hooks.compile, request)
    except PartitionRefused as refusal:
        if not isinstance(refusal.reason, str) or not all(isinstance(node, str) for node in refusal.nodes):
            raise plugin_fault(target, f"the compiler of {target.origin} refused partition {request.name} with "
                                       f"reason {_shown(refusal.reason)} and nodes {_shown(refusal.nodes)}; it must "
                                       "give a string and node names") from None
        raise
    problem = _compiled_problem(compiled)
    if problem is not None:
        raise plugin_fault(target, f"the compiler of {target.origin} returned {problem} for partition {request.name}; "
                                   "it must return a targets.hooks.CompiledPartition (files: a new suffix such as "
                                   "'.bin', not ONNX's, to bytes; note: a string) or raise PartitionRefused")
    return compiled


def _compiled_problem(compiled: Any) -> str | None:
    """What breaks a compile hook's answer, or None."""
    if not isinstance(compiled, CompiledPartition):
        return f"a {type(compiled).__name__}"
    if not isinstance(compiled.files, Mapping):
        return f"files that are a {type(compiled.files).__name__}"
    for suffix, data in compiled.files.items():
        if (not isinstance(suffix, str) or not suffix or any(c in suffix for c in "/\\\0")
                or suffix.endswith((".onnx", ".onnx.data"))):
            return f"file suffix {_shown(suffix)}"
        if not isinstance(data, bytes):
            return f"{type(data).__name__} data for suffix {suffix!r}"
    if not isinstance(compiled.note, str):
        return f"a note that is a {type(compiled.note).__name__}"
    return None


def _call(target: Target, hook: str, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, with anything a vendor's hook raises (SystemExit too) reported as the plug-in's fault,
    not as ours; only Ctrl-C passes, and PartitionRefused from a compiler, which may refuse."""
    try:
        return function(*args)
    except KeyboardInterrupt:
        raise
    except PartitionRefused:
        if hook == "compile":
            raise
        raise plugin_fault(target, f"the {hook} hook of {target.origin} raised PartitionRefused, which only a "
                                   "compile hook may raise (a support hook refuses by returning a reason)") from None
    except BaseException as error:  # noqa: BLE001 - whatever a vendor's code raises becomes one clear error
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise plugin_fault(target, f"the {hook} hook of {target.origin} failed: {type(error).__name__}: "
                                   f"{first_line}", "update or report the plug-in, or plan without this target"
                           ) from error


def _shown(value: Any) -> str:
    """A hook's answer as a message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
