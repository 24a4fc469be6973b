"""What a plan file records beside the placement: the model's identity, each target as run, each node's facts.

Plain values with `to_dict` / `from_dict`, read by the plan (partitioner/plan.py) and by every report, so
that reports depend on these records rather than on the plan itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Mapping

from partitioner.fields import FieldError, entries, flag, listed, part, sizes, text, texts, whole
from partitioner.frontend.capture import ModelSource
from targets.spec_reader import TARGET_KINDS, device_problem, execution_providers

if TYPE_CHECKING:
    from targets.spec import TargetSet


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Which model a plan is for; `fingerprint` changes when its graph or input shapes change."""

    name: str
    source: ModelSource | None
    fingerprint: str
    node_count: int
    parameter_bytes: int
    total_flops: int

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source.to_dict() if self.source else None,
                "fingerprint": self.fingerprint, "node_count": self.node_count,
                "parameter_bytes": self.parameter_bytes, "total_flops": self.total_flops}

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelInfo:
        source = part(data, "source", ModelSource.from_dict) if data.get("source") is not None else None
        return cls(text(data, "name"), source, text(data, "fingerprint"), whole(data, "node_count"),
                   whole(data, "parameter_bytes"), whole(data, "total_flops"))


@dataclass(frozen=True, slots=True)
class TargetRecord:
    """A target as the plan's consumers need it: how to run it, and which spec described it."""

    name: str
    kind: str
    description: str
    torch_device: str
    onnx_execution_provider: str
    spec_path: str
    spec: str = ""  # the target spec this device is one of (`npu-example` for `npu-example.2`); "" means `name`
    host: str = ""  # the fleet host the device sits in; "" for a plan without a fleet (one host)
    origin: str = "built-in"  # where its spec came from: "built-in", "file" or "plug-in <package> <version>"
    compiles: bool = False  # its plug-in's compiler builds its partitions at export (targets/hooks.py)

    @property
    def spec_name(self) -> str:
        return self.spec or self.name

    def emulated_on(self, device: str) -> bool:
        """Whether running this target's work on torch `device` only stands in for its hardware: another type of
        device than its spec names (the CPU, where that device is absent), or the CPU for a target that is not a
        CPU (a chip with no torch device here, Trainium or an NPU, names `cpu` in its spec only so that it runs)."""
        kind = device.split(":")[0]
        return kind != self.torch_device.split(":")[0] or (kind == "cpu" and self.kind != "cpu")

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "torch_device": self.torch_device, "onnx_execution_provider": self.onnx_execution_provider,
                "spec_path": self.spec_path, **({"spec": self.spec} if self.spec else {}),
                **({"host": self.host} if self.host else {}),
                **({"origin": self.origin} if self.origin != "built-in" else {}),
                **({"compiles": True} if self.compiles else {})}

    @classmethod
    def from_dict(cls, data: Mapping) -> TargetRecord:
        device = text(data, "torch_device")
        problem = device_problem(device)
        if problem is not None:
            raise FieldError("torch_device", problem)
        return cls(text(data, "name"), text(data, "kind", choices=TARGET_KINDS), text(data, "description"), device,
                   text(data, "onnx_execution_provider", choices=execution_providers()), text(data, "spec_path"),
                   text(data, "spec", ""), text(data, "host", ""), text(data, "origin", "built-in"),
                   flag(data, "compiles", False))


def target_records(targets: TargetSet, names: Collection[str] | None = None) -> tuple[TargetRecord, ...]:
    """Each target as the plan records it; a fleet's device also says which spec it is and on which host."""
    topology = targets.topology
    return tuple(TargetRecord(t.name, t.kind, t.description, t.torch_device, t.onnx_execution_provider, t.spec_path,
                              spec=topology.spec_of[t.name] if topology else "",
                              host=topology.host_of[t.name] if topology else "", origin=t.origin,
                              compiles=bool(t.hooks and t.hooks.compile))
                 for t in targets if names is None or t.name in names)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a person needs to see why a node sits where it sits."""

    name: str
    op: str
    module_path: str
    output_shapes: tuple[tuple[int | None, ...], ...]
    dtypes: tuple[str, ...]
    flops: int
    bytes_read: int
    bytes_written: int
    parameter_bytes: int
    refusals: Mapping[str, str]
    measured_on: tuple[str, ...] = ()  # targets whose cost for this node was measured, not estimated
    flops_known: bool = True  # false: no count or formula knows its FLOPs, `flops` is 0 and costs miss its work

    def to_dict(self) -> dict:
        record = {"name": self.name, "op": self.op, "module_path": self.module_path,
                  "output_shapes": [list(s) for s in self.output_shapes], "dtypes": list(self.dtypes),
                  "flops": self.flops, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                  "parameter_bytes": self.parameter_bytes, "refusals": dict(self.refusals),
                  "measured_on": list(self.measured_on)}
        return record if self.flops_known else {**record, "flops_known": False}

    @classmethod
    def from_dict(cls, data: Mapping) -> NodeRecord:
        shapes = listed(data, "output_shapes", lambda shape: sizes(shape, unknown=True))
        return cls(text(data, "name"), text(data, "op"), text(data, "module_path"), shapes, texts(data, "dtypes"),
                   whole(data, "flops"), whole(data, "bytes_read"), whole(data, "bytes_written"),
                   whole(data, "parameter_bytes"), entries(data, "refusals", text), texts(data, "measured_on", ()),
                   flag(data, "flops_known", True))
