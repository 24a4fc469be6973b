"""What a vendor's code may add to a target where its spec's data cannot say it: the plug-in hooks.

A spec file says which ops, dtypes, ranks and argument sizes a chip takes and
how fast it is; a vendor knows more (a matmul whose inner size is not a whole
number of tiles, a cost its own simulator predicts, a compiler that turns a
partition into the chip's binary). A plug-in (targets/plugins.py) attaches
these hooks to its targets; tagging, costing, planning and export call them.
Every hook is optional; each is a plain function (`TargetHooks`, in targets/spec.py beside the target it
belongs to, says what each takes and returns).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from partitioner.errors import PartitionerError
from targets.spec import Target, TargetHooks

if TYPE_CHECKING:
    import torch

__all__ = ["CompiledPartition", "PartitionRefused", "PartitionToCompile", "TargetHooks", "call_hook",
           "plugin_fault"]


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


def call_hook(target: Target, hook: str, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, with a failure inside a vendor's hook reported as the plug-in's, not as ours."""
    try:
        return function(*args)
    except PartitionRefused:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a vendor's code raises becomes one clear error
        raise plugin_fault(target, f"the {hook} hook of {target.origin} failed: {type(error).__name__}: {error}",
                           "update or report the plug-in, or plan without this target") from error
