"""Pins and forbids: the user overrules the placement for some ops.

`--pin 'model.layers.*.self_attn=cuda-h100'` puts every op of the matching
modules on that target; `--forbid 'aten.softmax.int=npu-example'` keeps the
matching ops off it. A pattern (shell-style, `*` and `?`) matches an op by its
op key or by its module path, a module's ops including those of its submodules;
a target is a target's name or, on a fleet, the spec of its devices (any of
them). Pins and forbids narrow the tagging's supported targets, so the solver
and every baseline honour them, the plan records them, and `explain` shows them
as the reason the other targets were left out.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, Sequence

from partitioner.errors import PartitionerError
from partitioner.fields import flag, text
from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode
from partitioner.placement.tagging import Tagging
from targets.spec import TargetSet


@dataclass(frozen=True, slots=True)
class Pin:
    """Ops matching `pattern` run only on `target` (or, with `forbid`, never on it)."""

    pattern: str
    target: str
    forbid: bool = False

    @classmethod
    def parse(cls, text: str, forbid: bool = False) -> Pin:
        """`PATTERN=TARGET`, as --pin and --forbid take it."""
        pattern, separator, target = text.rpartition("=")
        if not separator or not pattern.strip() or not target.strip():
            flag = "--forbid" if forbid else "--pin"
            raise PartitionerError(f"{flag} {text!r} is not PATTERN=TARGET. Fix: write e.g. "
                                   f"{flag} 'model.layers.*.self_attn=cuda-h100'.")
        return cls(pattern.strip(), target.strip(), forbid)

    def __str__(self) -> str:
        return f"{'--forbid' if self.forbid else '--pin'} '{self.pattern}={self.target}'"

    def matches(self, node: OpNode) -> bool:
        if fnmatch.fnmatchcase(node.op, self.pattern):
            return True
        parts = node.module_path.split(".") if node.module_path else []
        return any(fnmatch.fnmatchcase(".".join(parts[:end]), self.pattern) for end in range(1, len(parts) + 1))

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "target": self.target, "forbid": self.forbid}

    @classmethod
    def from_dict(cls, data: dict) -> Pin:
        return cls(text(data, "pattern"), text(data, "target"), flag(data, "forbid", False))


def apply_pins(graph: OpGraph, tagging: Tagging, targets: TargetSet, pins: Sequence[Pin]) -> Tagging:
    """`tagging` with each pin's and forbid's targets left out, and the reason recorded; a pin that contradicts
    support, names an unknown target or matches no op is one clear error."""
    if not pins:
        return tagging
    supported = {name: list(names) for name, names in tagging.supported.items()}
    refusals = {name: dict(reasons) for name, reasons in tagging.refusals.items()}
    for pin in pins:
        places = _places(pin, targets)
        matched = [node for node in graph if pin.matches(node)]
        if not any(node.kind is NodeKind.COMPUTE for node in matched):
            raise PartitionerError(f"{pin} matches no op of the model. Fix: match an op key (e.g. aten.linear.default) "
                                   f"or a module path such as {_example_path(graph)!r}; `partitioner explain PLAN "
                                   "NODE` shows a node's module.")
        for node in matched:
            keep = [t for t in supported[node.name] if (t in places) != pin.forbid]
            if not keep and node.kind is NodeKind.COMPUTE:
                raise PartitionerError(_contradiction(pin, node, places, tagging))
            if not keep:
                continue  # a view runs where its neighbours do; a pin that cannot hold it leaves it free
            for target in supported[node.name]:
                if target not in keep:
                    refusals[node.name][target] = (f"forbidden here by {pin}" if pin.forbid
                                                   else f"pinned to {pin.target} by {pin}")
            supported[node.name] = keep
    return Tagging({name: tuple(names) for name, names in supported.items()}, refusals)


def parse_pins(pins: Iterable[str | Pin] = (), forbids: Iterable[str | Pin] = ()) -> tuple[Pin, ...]:
    """Pins and forbids as values, from `PATTERN=TARGET` texts or `Pin`s."""
    return (tuple(p if isinstance(p, Pin) else Pin.parse(p) for p in pins)
            + tuple(p if isinstance(p, Pin) else Pin.parse(p, forbid=True) for p in forbids))


def _places(pin: Pin, targets: TargetSet) -> set[str]:
    topology = targets.topology
    places = {name for name in targets.names
              if name == pin.target or (topology is not None and topology.spec_of[name] == pin.target)}
    if not places:
        raise PartitionerError(f"{pin} names {pin.target!r}, which is not a target of this plan "
                               f"({', '.join(targets.names)}). Fix: name one of them.")
    return places


def _contradiction(pin: Pin, node: OpNode, places: set[str], tagging: Tagging) -> str:
    if pin.forbid:
        return (f"{pin} leaves {node.name} ({node.op}) no target: every target that runs it is forbidden. Fix: "
                "narrow the pattern, or forbid fewer targets.")
    reasons = "; ".join(f"{t}: {tagging.refusals[node.name].get(t, 'excluded by another pin or forbid')}"
                        for t in sorted(places))
    return (f"{pin} puts {node.name} ({node.op}{', in ' + node.module_path if node.module_path else ''}) on a "
            f"target that does not run it ({reasons}). Fix: narrow the pattern to ops the target supports, or pin "
            "to another target.")


def _example_path(graph: OpGraph) -> str:
    return next((node.module_path for node in graph if node.module_path), "layers.0")
