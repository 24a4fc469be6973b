"""Profiles: measured op and transfer times of one real device, kept in a file keyed by its identity.

`partitioner profile` fills them (see cost_models/measured.py); the measured
cost model reads them. A profile names the device it was measured on (model
name, torch version, thread count), so timings from different machines never
mix: each identity has its own file in a profile folder, and a folder is a
cache reused across models.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch

from partitioner.errors import PartitionerError
from cost_models.kernel_shapes import KernelShape, attention_shape, signature_kernel_shape
from partitioner.fields import entries, exactly, number, part, text, whole, within
from partitioner.files import PROFILE, read_json, write_json
from targets.spec import Link

SCHEMA_VERSION = 1
MOST_OP_SECONDS = 3600.0  # an op timed for longer than an hour is a damaged file, not a measurement


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What makes timings comparable: the device type and model, the torch version and the CPU threads."""

    device_type: str
    name: str
    torch_version: str
    threads: int

    @classmethod
    def of(cls, device: str) -> DeviceIdentity:
        """The identity of `device` ("cpu", "cuda", "cuda:1") on this machine."""
        try:
            torch_device = torch.device(device)
        except RuntimeError:
            raise PartitionerError(f"device {device!r} is not a torch device. Fix: use cpu or cuda[:N].") from None
        if torch_device.type == "cuda":
            if not torch.cuda.is_available():
                raise PartitionerError(f"device {device!r}: this machine has no CUDA device. Fix: profile CUDA on "
                                       "a machine that has one, or pass --device cpu.")
            name = torch.cuda.get_device_name(torch_device)
        elif torch_device.type == "cpu":
            name = _cpu_name()
        else:
            raise PartitionerError(f"device {device!r} cannot be profiled. Fix: use cpu or cuda[:N].")
        return cls(torch_device.type, name, torch.__version__, torch.get_num_threads())

    @property
    def key(self) -> str:
        """A short stable name for this identity, used in profile file names."""
        text = json.dumps([self.device_type, self.name, self.torch_version, self.threads])
        return f"{self.device_type}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def describe(self) -> str:
        return f"{self.name} ({self.device_type}, torch {self.torch_version}, {self.threads} threads)"


@dataclass(frozen=True, slots=True)
class OpMeasurement:
    """One op signature's median time, with the work the roofline sees in it (for calibration)."""

    seconds: float
    flops: int
    num_bytes: int
    dtype: str
    op: str = ""
    method: str = "isolated"  # or "in_model": timed inside whole runs of a model
    kind: str = "compute"  # or "view": a view or bookkeeping op, timed for the target's view overhead
    shape: KernelShape | None = None  # a tiled kernel's shape, which its efficiency depends on

    def to_dict(self) -> dict:
        recorded = {"seconds": self.seconds, "flops": self.flops, "bytes": self.num_bytes, "dtype": self.dtype,
                    "op": self.op, "method": self.method, "kind": self.kind}
        if self.shape is not None:
            recorded["kernel_shape"] = [self.shape.tiles, self.shape.depth, self.shape.filled]
        return recorded

    @classmethod
    def from_dict(cls, data: Mapping) -> OpMeasurement:
        """A measurement a profile file holds: a time above 0 and at most MOST_OP_SECONDS (no op a profile
        times takes longer; an infinite or absurd time would swamp every plan it prices), work of at least 0."""
        return cls(number(data, "seconds", above=True, maximum=MOST_OP_SECONDS), whole(data, "flops"),
                   whole(data, "bytes"), text(data, "dtype"), text(data, "op", ""),
                   text(data, "method", "isolated", choices=("isolated", "in_model")),
                   text(data, "kind", "compute", choices=("compute", "view")),
                   _kernel_shape(data))


def _kernel_shape(data: Mapping) -> KernelShape | None:
    """A measurement's kernel shape, written [tiles, depth, filled] (or, by profiles of an earlier version, an
    attention's [heads, queries, keys]); None where it has none."""
    def size(found) -> int:
        return whole({"size": found}, "size", minimum=1)

    if data.get("kernel_shape") is not None:
        def shape(found) -> KernelShape:
            tiles, depth, filled = exactly(found, 3, lambda value: value, "[tiles, depth, filled]")
            return KernelShape(size(tiles), size(depth), number({"filled": filled}, "filled", above=True,
                                                                maximum=1.0))
        return within("kernel_shape", shape, data["kernel_shape"])
    if data.get("attention") is not None:
        return within("attention", lambda found: attention_shape(*exactly(found, 3, size, "[heads, queries, keys]")),
                      data["attention"])
    return None


@dataclass(frozen=True, slots=True)
class Profile:
    """Measurements per op signature and fitted links (`host_to_device`, `device_to_host`) of one device."""

    identity: DeviceIdentity
    ops: Mapping[str, OpMeasurement] = field(default_factory=dict)
    links: Mapping[str, Link] = field(default_factory=dict)

    def with_ops(self, measured: Mapping[str, OpMeasurement]) -> Profile:
        return replace(self, ops={**self.ops, **measured})

    def with_links(self, links: Mapping[str, Link]) -> Profile:
        return replace(self, links={**self.links, **links})

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "identity": {"device_type": self.identity.device_type, "name": self.identity.name,
                         "torch_version": self.identity.torch_version, "threads": self.identity.threads},
            "ops": {signature: self.ops[signature].to_dict() for signature in sorted(self.ops)},
            "links": {name: link.to_dict() for name, link in self.links.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Profile:
        """The profile `data` holds, every field checked (a FieldError, a ValueError, names the one that is not)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a profile holds a JSON object, not a JSON {type(data).__name__}")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
        identity = part(data, "identity", lambda i: DeviceIdentity(
            text(i, "device_type", choices=("cpu", "cuda")), text(i, "name"), text(i, "torch_version"),
            whole(i, "threads", minimum=1)))
        ops = entries(data, "ops", lambda table, signature: part(table, signature, OpMeasurement.from_dict))
        # An op measured before profiles recorded shapes: its shape is in its signature.
        ops = {signature: measurement if measurement.shape is not None or measurement.kind != "compute" else
               replace(measurement, shape=signature_kernel_shape(measurement.op, signature))
               for signature, measurement in ops.items()}
        links = entries(data, "links", lambda table, name: part(table, name, Link.from_dict))
        return cls(identity, ops, links)

    def save(self, folder: Path) -> Path:
        """Write this profile into `folder` under its identity's name; the file appears complete or not at all."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.identity.key}.json"
        write_json(path, self.to_dict())
        return path


def load_profile(path: Path) -> Profile:
    """Read one profile file, within a bound (partitioner/files.py); a damaged or foreign file is a user error
    that names it, the field and the fix."""
    data = read_json(path, PROFILE)
    try:
        return Profile.from_dict(data)
    except ValueError as error:
        raise PartitionerError(f"{path}: not a readable profile ({error}). Fix: delete it and run "
                               "partitioner profile again.") from None


def load_profiles(folder: Path) -> list[Profile]:
    """Every profile in `folder` (one per device identity)."""
    if not folder.is_dir():
        raise PartitionerError(f"{folder}: no such profile folder. Fix: run partitioner profile MODEL -o {folder}.")
    profiles = [load_profile(path) for path in sorted(folder.glob("*.json"))]
    if not profiles:
        raise PartitionerError(f"{folder}: holds no profiles. Fix: run partitioner profile MODEL -o {folder}.")
    return profiles


def cached_profile(folder: Path, identity: DeviceIdentity) -> Profile:
    """The profile of `identity` in `folder`, or an empty one: a profile of another identity is never reused."""
    path = folder / f"{identity.key}.json"
    if not path.exists():
        return Profile(identity)
    profile = load_profile(path)
    if profile.identity != identity:  # a hash collision or a hand-edited file
        return Profile(identity)
    return profile


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
