"""What a target device is: the validated, typed form of a target spec file.

Specs are data (TOML files, see `loader.py`); these frozen values are what the
rest of the pipeline reads: tagging reads `SupportRules`, cost models read the
throughput, bandwidth and link figures, the solver reads price and memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from partitioner.fields import number


@dataclass(frozen=True, slots=True)
class Link:
    """A data path between two devices: a fixed latency plus bytes over bandwidth."""

    latency_seconds: float
    bandwidth_bytes_per_second: float

    def seconds(self, num_bytes: int) -> float:
        """Time to move `num_bytes` over this link; nothing to move costs nothing."""
        if num_bytes <= 0:
            return 0.0
        return self.latency_seconds + num_bytes / self.bandwidth_bytes_per_second

    def then(self, other: Link) -> Link:
        """The store-and-forward path over this link and then `other` (e.g. via host memory)."""
        return Link(
            latency_seconds=self.latency_seconds + other.latency_seconds,
            bandwidth_bytes_per_second=1.0
            / (1.0 / self.bandwidth_bytes_per_second + 1.0 / other.bandwidth_bytes_per_second),
        )

    def to_dict(self) -> dict:
        return {
            "latency_seconds": self.latency_seconds,
            "bandwidth_bytes_per_second": self.bandwidth_bytes_per_second,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Link:
        """A link a plan or profile file holds: a finite latency of at least 0 and a bandwidth above 0 (a zero
        bandwidth would make every copy over it take forever, or divide by zero)."""
        return cls(number(data, "latency_seconds"), number(data, "bandwidth_bytes_per_second", above=True))


@dataclass(frozen=True, slots=True)
class OpLimit:
    """A bound on one argument of one op, e.g. conv2d `groups` at most 1.

    For a tensor argument the bound applies to its sizes along `dims` (all dims
    when empty); for a list argument, to every element; for a scalar, to itself.
    """

    op: str
    argument: str
    max: float | None = None
    min: float | None = None
    allowed: tuple = ()
    dims: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SupportRules:
    """Which nodes a target can run. `ops=None` means every op (a fallback device)."""

    ops: frozenset[str] | None
    dtypes: frozenset[str] | None = None  # the dtypes an op may compute in, unless `op_dtypes` names the op
    max_rank: int | None = None
    static_shapes_only: bool = False
    limits: tuple[OpLimit, ...] = ()
    op_dtypes: Mapping[str, frozenset[str]] = field(default_factory=dict)  # op key -> its own compute dtypes

    @property
    def supports_all_ops(self) -> bool:
        return (self.ops is None and self.dtypes is None and self.max_rank is None
                and not self.static_shapes_only and not self.limits and not self.op_dtypes)

    def dtypes_for(self, op: str) -> frozenset[str] | None:
        """The dtypes `op` may compute in here (vendor lists give them per op), or None for any."""
        return self.op_dtypes.get(op, self.dtypes)


@dataclass(frozen=True, slots=True)
class RooflineConstants:
    """The fractions of peak compute and bandwidth an op class reaches, and its launch overhead.

    Small ops reach less of the peak than large ones (tiles and waves left part empty, caches and pipelines not
    yet full). The efficiencies are what a large op reaches; an op of `compute_half_flops` FLOPs reaches half of
    `compute_efficiency`, along e(f) = e * f / (f + half), and likewise for bytes. Zero: the same at every size.
    """

    compute_efficiency: float
    memory_efficiency: float
    launch_overhead_seconds: float
    compute_half_flops: float = 0.0
    memory_half_bytes: float = 0.0
    # Tiled kernels (matmul, convolution, attention): the depth a tile's loop runs (a matmul's K, an attention's
    # keys) at which it reaches half of `compute_efficiency` (cost_models/kernel_shapes.py); zero: no curve.
    compute_half_depth: float = 0.0

    def compute_seconds(self, flops: float, peak_flops_per_second: float) -> float:
        """Time to do `flops` at this class's size-dependent efficiency: (f + half) / (peak * e)."""
        return (flops + self.compute_half_flops) / (peak_flops_per_second * self.compute_efficiency) if flops else 0.0

    def memory_seconds(self, num_bytes: float, bandwidth_bytes_per_second: float) -> float:
        """Time to move `num_bytes` at this class's size-dependent efficiency."""
        if not num_bytes:
            return 0.0
        return (num_bytes + self.memory_half_bytes) / (bandwidth_bytes_per_second * self.memory_efficiency)


@dataclass(frozen=True, slots=True)
class TargetHooks:
    """A target's plug-in hooks (targets/hooks.py, targets/plugins.py): what its vendor's code says where the
    spec's data cannot.

    `support(node)` returns why the target refuses an op node its spec accepts,
    or None; `cost(node, target)` returns the seconds the node takes there (None:
    the cost model's figure; a profile's measurement still wins); `compile(
    PartitionToCompile)` returns a CompiledPartition or raises PartitionRefused.
    """

    support: Callable[[Any], str | None] | None = None
    cost: Callable[[Any, Target], float | None] | None = None
    compile: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class TensorParallel:
    """A group of identical devices running each layer split `degree` ways (Megatron-style tensor parallelism):
    the places it occupies, one member's spec, and the link the collectives between members cross."""

    degree: int
    members: tuple[str, ...]
    member: Target
    link: Link

    def all_reduce_seconds(self, num_bytes: int) -> float:
        """A ring all-reduce of `num_bytes` over the members (NCCL's ring: 2(d-1) steps of 1/d of the bytes each)."""
        steps = 2 * (self.degree - 1)
        return steps * self.link.latency_seconds + steps * num_bytes / self.degree / \
            self.link.bandwidth_bytes_per_second if num_bytes > 0 else 0.0

    def all_gather_seconds(self, num_bytes: int) -> float:
        """A ring all-gather whose result is `num_bytes` (d-1 steps of 1/d of them each)."""
        steps = self.degree - 1
        return steps * self.link.latency_seconds + steps * num_bytes / self.degree / \
            self.link.bandwidth_bytes_per_second if num_bytes > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Target:
    """One device kind that can run part of a model, as described by its spec file; or, with `tensor_parallel`,
    a group of identical devices running layers split across them, as one place (targets/tensor_parallel.py)."""

    name: str
    kind: str
    description: str
    torch_device: str
    onnx_execution_provider: str
    price_per_hour: float
    memory_bytes: int
    memory_bandwidth_bytes_per_second: float
    peak_flops_per_second: Mapping[str, float]
    compute_efficiency: float
    memory_efficiency: float
    launch_overhead_seconds: float
    host_link: Link
    support: SupportRules
    links: Mapping[str, Link] = field(default_factory=dict)
    spec_path: str = ""
    op_classes: Mapping[str, RooflineConstants] = field(default_factory=dict)
    # The fixed time of a view or bookkeeping op (eager dispatch; no device work, no launch).
    view_overhead_seconds: float = 0.0
    # The fixed time a partition boundary costs on this target: launching a separately compiled graph and waiting
    # for the stage before it (partitioner/placement/hops.py). Spec field `stage_launch_microseconds`.
    stage_launch_seconds: float = 0.0
    # What each kernel adds when a step is replayed from a captured graph (CUDA graphs: no host dispatch, views
    # cost nothing), as serving engines run an LLM's decode step; None where the target replays none, and its
    # decode step costs as it runs eagerly (cost_models/graph_replay.py). Spec field `graph_kernel_microseconds`.
    graph_kernel_seconds: float | None = None
    # Its compute units (a GPU's streaming multiprocessors): a kernel's blocks run in waves of one a unit
    # (cost_models/kernel_shapes.py); None: no waves. Spec field `compute_units`.
    compute_units: int | None = None
    origin: str = "built-in"  # where the spec came from: "built-in", "file", or "plug-in <package> <version>"
    hooks: TargetHooks | None = None  # a plug-in's code for what the spec's data cannot say (targets/hooks.py)
    tensor_parallel: TensorParallel | None = None

    @property
    def price_per_second(self) -> float:
        return self.price_per_hour / 3600.0

    @property
    def is_host(self) -> bool:
        """Whether this target is the host CPU, whose memory is where other devices' host links lead."""
        return self.kind == "cpu"

    def constants_for(self, op_class: str, dtype: str | None = None) -> RooflineConstants:
        """The roofline constants of an op class on `dtype`: the spec's table for that class and dtype, else
        the class's own, else the spec's top-level figures."""
        return (self.op_classes.get(f"{op_class}.{dtype}") or self.op_classes.get(op_class)
                or RooflineConstants(self.compute_efficiency, self.memory_efficiency, self.launch_overhead_seconds))

    def peak_for(self, dtype: str) -> float:
        """Peak FLOP/s for `dtype`; dtypes the spec does not list run at the float32 rate."""
        return self.peak_flops_per_second.get(dtype, self.peak_flops_per_second["float32"])


@dataclass(frozen=True, slots=True)
class Topology:
    """Where the places of a fleet sit: each place's host and target spec, the hosts' shared PCIe (or memory)
    bandwidth where they have one, and the network between hosts (targets/fleet.py builds it)."""

    host_of: Mapping[str, str]
    spec_of: Mapping[str, str]
    network: Link | None = None
    host_bandwidth: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TargetSet:
    """The targets a plan may use, in priority order, and which one is the fallback.

    The fallback runs whatever no other target supports, so it must support every op. A fleet's target set has
    one target per device (a place, named `npu-example.0`, ...) and a `topology`; without one, every target is
    one device in one host.
    """

    targets: tuple[Target, ...]
    fallback: str
    topology: Topology | None = None
    _index: dict[str, Target] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({target.name: target for target in self.targets})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    def __getitem__(self, name: str) -> Target:
        return self._index[name]

    def group_of(self, name: str) -> str:
        """The group of identical devices a place belongs to: its spec in its host (`npu-example@node0`). Places
        of one group have the same costs, price, memory and links to every other place, so a plan may swap them."""
        spec = self.topology.spec_of[name] if self.topology else name
        split = self[name].tensor_parallel
        return f"{spec}@{self._host(name)}" + (f"/tp{split.degree}" if split else "")

    def __iter__(self):
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def link(self, source: str, destination: str) -> Link:
        """The path data takes from `source` to `destination`.

        A direct link declared by either side wins. A copy between a device and
        the host CPU (a target of kind "cpu", whose memory is host memory)
        crosses the device's host link alone; between two other devices, data
        goes through host memory over each one's host link in turn.
        """
        src, dst = self[source], self[destination]
        direct = self._direct_link(source, destination)
        if direct is not None:
            return direct
        if self._host(source) != self._host(destination):
            path = [] if src.is_host else [src.host_link]
            path += [self.topology.network] + ([] if dst.is_host else [dst.host_link])
            return functools.reduce(Link.then, path)
        if src.is_host != dst.is_host:
            return dst.host_link if src.is_host else src.host_link
        return src.host_link.then(dst.host_link)

    def route(self, source: str, destination: str) -> tuple[str, ...]:
        """The shared resources (see `resources`) a copy from `source` to `destination` occupies: a peer link,
        or the sender's host link out, the host's PCIe, the network and the receiver's host link in."""
        if self._direct_link(source, destination) is not None:
            return (f"{source}->{destination}",)
        src, dst, hops = self[source], self[destination], []
        if not src.is_host:
            hops.append(f"{source}:out")
        if self.topology and self._host(source) in self.topology.host_bandwidth:
            hops.append(f"{self._host(source)}:pcie")
        if self._host(source) != self._host(destination):
            hops.append(f"network:{self._host(source)}->{self._host(destination)}")
            if self.topology and self._host(destination) in self.topology.host_bandwidth:
                hops.append(f"{self._host(destination)}:pcie")
        if not dst.is_host:
            hops.append(f"{destination}:in")
        return tuple(hops)

    def resources(self) -> dict[str, float]:
        """Every link resource copies share, with its bandwidth in bytes per second: each device's host link in
        each direction (PCIe is full duplex), each peer link in each direction, each host's PCIe where shared,
        the network in each direction between hosts."""
        found: dict[str, float] = {}
        for target in self.targets:
            if not target.is_host:
                found[f"{target.name}:out"] = found[f"{target.name}:in"] = target.host_link.bandwidth_bytes_per_second
        for source in self.names:
            for destination in self.names:
                if source != destination and (direct := self._direct_link(source, destination)) is not None:
                    found[f"{source}->{destination}"] = direct.bandwidth_bytes_per_second
                elif source != destination and self._host(source) != self._host(destination):
                    found[f"network:{self._host(source)}->{self._host(destination)}"] = (
                        self.topology.network.bandwidth_bytes_per_second)
        if self.topology:
            found.update({f"{host}:pcie": bandwidth for host, bandwidth in self.topology.host_bandwidth.items()})
        return found

    def _host(self, name: str) -> str:
        return self.topology.host_of[name] if self.topology else "host"

    def _direct_link(self, source: str, destination: str) -> Link | None:
        """A peer link declared by either side's spec, between devices of one host."""
        if self._host(source) != self._host(destination):
            return None
        spec_of = self.topology.spec_of if self.topology else {}
        src, dst = self[source], self[destination]
        return (src.links.get(spec_of.get(destination, destination))
                or dst.links.get(spec_of.get(source, source)))
