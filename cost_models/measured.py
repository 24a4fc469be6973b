"""The measured cost model: op times timed on the real device, transfers fitted from copies.

`measure_ops` times each distinct op signature of a captured model in
isolation with `torch.utils.benchmark` (a warm-up call, then the median of
automatically sized blocks; the Timer synchronises CUDA); `probe_links` fits
latency plus bytes over bandwidth to host-device copies. `MeasuredCostModel`
answers from the profiles of the targets' real devices and falls back to the
roofline for anything not measured, recording which costs were measured.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.utils import benchmark

from cost_models.base import CostModel
from cost_models.kernel_shapes import kernel_shape
from cost_models.profile import OpMeasurement, Profile
from cost_models.roofline import RooflineCostModel
from partitioner.errors import PartitionerError
from partitioner.execution.partitioned_module import to_device
from partitioner.frontend.capture import split_inputs
from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode
from targets.spec import Link, Target, TargetSet

# Copy sizes for link probing: 4 KiB to 256 MiB.
PROBE_BYTES = tuple(4096 * 4**i for i in range(9))
# In a model, an op's weights and inputs arrive from main memory, not from a cache warmed by the previous
# call. Timing cycles through enough copies of the inputs to fill this much memory (at most 32 copies),
# larger than the last-level cache of common CPUs.
COLD_CACHE_BYTES = 256 * 1024**2
_MOST_COPIES = 32


def op_signature(node: OpNode) -> str:
    """What makes two ops cost the same: op key, input shapes and dtypes, and every other argument."""
    return json.dumps([node.op, _plain(node.arguments)], sort_keys=True, default=repr)


def is_timed(node: OpNode) -> bool:
    """Whether profiles time `node`: a compute op, or a view or bookkeeping op that dispatches a torch op
    returning a tensor (whose time is the target's view overhead)."""
    return node.kind is NodeKind.COMPUTE or node.costs_dispatch


def measure_ops(program: ExportedProgram, graph: OpGraph, device: str, known: Iterable[str] = (),
                min_run_seconds: float = 0.05,
                on_progress: Callable[[int, int], None] | None = None) -> dict[str, OpMeasurement]:
    """Time every timed op of `graph` (see `is_timed`) whose signature is not in `known`, once per signature.

    Ops with symbolic shapes, or that fail to run on random inputs, are left out (the roofline covers them).
    """
    fx_nodes = {node.name: node for node in program.graph.nodes}
    pending: dict[str, OpNode] = {}
    for node in graph:
        signature = op_signature(node)
        if is_timed(node) and signature not in known and signature not in pending:
            pending[signature] = node
    measured: dict[str, OpMeasurement] = {}
    for index, (signature, node) in enumerate(pending.items()):
        seconds = _time_op(fx_nodes[node.name], torch.device(device), min_run_seconds)
        if seconds is not None:
            measured[signature] = _measurement(node, seconds, "isolated")
        if on_progress is not None:
            on_progress(index + 1, len(pending))
    return measured


def measure_ops_in_model(program: ExportedProgram, graph: OpGraph, example_inputs, device: str,
                         runs: int = 5) -> dict[str, OpMeasurement]:
    """Time every compute op inside whole runs of the model on `device`: each op's median over `runs`, then
    each signature's median over its ops. Costs then carry the caches and layouts of a real run, which
    isolated timing misses (about 10% on this repository's CPU), but fit only models run this way."""
    module = program.module().to(device)
    inputs = [to_device(value, torch.device(device))
              for value in torch.utils._pytree.tree_leaves(split_inputs(example_inputs))]
    timer = _NodeTimer(module, synchronize=torch.device(device).type == "cuda")

    def fresh() -> list:  # each run on the inputs as given: a model may write into them (a KV cache, its counter)
        return [value.clone() if isinstance(value, torch.Tensor) else value for value in inputs]

    with torch.no_grad():
        timer.run(*fresh())  # warm-up
        timer.seconds.clear()
        for _ in range(runs):
            timer.run(*fresh())
    by_signature: dict[str, list[float]] = {}
    nodes: dict[str, OpNode] = {}
    for node in graph:
        if is_timed(node) and node.name in timer.seconds:
            signature = op_signature(node)
            by_signature.setdefault(signature, []).append(float(np.median(timer.seconds[node.name])))
            nodes.setdefault(signature, node)
    return {signature: _measurement(nodes[signature], float(np.median(times)), "in_model")
            for signature, times in by_signature.items()}


def _measurement(node: OpNode, seconds: float, method: str) -> OpMeasurement:
    """A time for `node`'s signature, with the work the roofline sees in it (for calibration)."""
    return OpMeasurement(seconds, node.flops, node.bytes_read + node.bytes_written, node.compute_dtype, node.op,
                         method, "compute" if node.kind is NodeKind.COMPUTE else "view", kernel_shape(node))


class _NodeTimer(torch.fx.Interpreter):
    """Runs a graph node by node, timing each op call (synchronising CUDA around it)."""

    def __init__(self, module: torch.fx.GraphModule, synchronize: bool):
        super().__init__(module)
        self.synchronize = synchronize
        self.seconds: dict[str, list[float]] = {}

    def run_node(self, node: torch.fx.Node):
        if node.op != "call_function":
            return super().run_node(node)
        if self.synchronize:
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = super().run_node(node)
        if self.synchronize:
            torch.cuda.synchronize()
        self.seconds.setdefault(node.name, []).append(time.perf_counter() - started)
        return result


def _time_op(node: torch.fx.Node, device: torch.device, min_run_seconds: float) -> float | None:
    def fresh_inputs():
        return torch.fx.node.map_aggregate((node.args, node.kwargs), lambda a: _real_input(a, device))

    try:
        inputs = [fresh_inputs()]
        footprint = sum(t.untyped_storage().nbytes() for t in torch.utils._pytree.tree_leaves(inputs[0])
                        if isinstance(t, torch.Tensor))
        while len(inputs) < _MOST_COPIES and len(inputs) * footprint < COLD_CACHE_BYTES:
            inputs.append(fresh_inputs())
        target, turn = node.target, itertools.count()

        def run() -> None:
            args, kwargs = inputs[next(turn) % len(inputs)]
            target(*args, **kwargs)

        run()  # warm-up: caches, lazy initialisation, allocator
        timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_seconds).median
    except Exception:  # noqa: BLE001 - an op that cannot run in isolation is estimated instead
        return None


def _real_input(argument, device: torch.device):
    """A real tensor on `device` for an fx node argument (random floats, zero integers); anything else as is."""
    if not isinstance(argument, torch.fx.Node):
        return argument
    value = argument.meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{argument.name} has no tensor value")
    if any(not isinstance(s, int) for s in (*value.shape, *value.stride())):
        raise ValueError(f"{argument.name} has a symbolic shape")
    tensor = torch.empty_strided(tuple(value.shape), tuple(value.stride()), dtype=value.dtype, device=device)
    return tensor.normal_() if tensor.is_floating_point() else tensor.zero_()


def probe_links(device: str, sizes: Sequence[int] = PROBE_BYTES) -> dict[str, Link]:
    """Latency and bandwidth of host-to-device and device-to-host copies, fitted over `sizes`.

    Empty for the CPU: it is the host, with nothing to copy over."""
    target = torch.device(device)
    if target.type == "cpu":
        return {}
    host_seconds, device_seconds = [], []
    for size in sizes:
        host = torch.empty(size, dtype=torch.uint8).pin_memory()
        on_device = torch.empty(size, dtype=torch.uint8, device=target)
        host_seconds.append(_median_seconds(lambda: on_device.copy_(host, non_blocking=False)))
        device_seconds.append(_median_seconds(lambda: host.copy_(on_device, non_blocking=False)))
    return {"host_to_device": fit_link(sizes, host_seconds), "device_to_host": fit_link(sizes, device_seconds)}


def _median_seconds(work: Callable[[], object]) -> float:
    work()
    return benchmark.Timer(stmt="work()", globals={"work": work}).blocked_autorange(min_run_time=0.05).median


def fit_link(sizes: Sequence[int], seconds: Sequence[float]) -> Link:
    """The least-squares line seconds = latency + bytes / bandwidth, with latency and bandwidth kept positive."""
    slope, intercept = np.polyfit(np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float), 1)
    slope = max(float(slope), 1e-15)
    return Link(latency_seconds=max(float(intercept), 0.0), bandwidth_bytes_per_second=1.0 / slope)


def profiled_device_type(target: Target) -> str | None:
    """The torch device type whose profile measures `target` ("cpu" for kind cpu, "cuda" for kind gpu), or None
    for a device no profile measures (an NPU, which this machine can only emulate)."""
    return {"cpu": "cpu", "gpu": "cuda"}.get(target.kind)


class MeasuredCostModel:
    """Measured times where a profile of the target's real device has them, the roofline elsewhere.

    A profile measured on a CPU serves targets of kind "cpu"; one measured on
    CUDA serves targets of kind "gpu". Emulated targets (an NPU run on the CPU
    for testing) are never costed with the CPU's times.
    """

    def __init__(self, profiles: Sequence[Profile], estimate: CostModel | None = None):
        by_type: dict[str, list[Profile]] = {}
        for profile in profiles:
            by_type.setdefault(profile.identity.device_type, []).append(profile)
        for device_type, same in by_type.items():
            if len(same) > 1:
                raise PartitionerError(
                    f"{len(same)} {device_type} profiles ({'; '.join(p.identity.describe() for p in same)}) could "
                    f"each cost the {device_type} targets. Fix: keep one profile per device type in the folder "
                    "(a folder per machine).")
        self.profiles = tuple(profiles)
        self.estimate = estimate or RooflineCostModel()
        # The plan records which devices the measurements came from.
        self.name = f"measured ({'; '.join(p.identity.describe() for p in self.profiles)})"

    def profile_for(self, target: Target) -> Profile | None:
        wanted = profiled_device_type(target)
        return next((p for p in self.profiles if p.identity.device_type == wanted), None)

    def measured(self, node: OpNode, target: Target) -> OpMeasurement | None:
        profile = self.profile_for(target)
        return profile.ops.get(op_signature(node)) if profile is not None else None

    def compute_seconds(self, node: OpNode, target: Target) -> float:
        if not is_timed(node):
            return 0.0
        measurement = self.measured(node, target)
        return measurement.seconds if measurement is not None else self.estimate.compute_seconds(node, target)

    def link(self, targets: TargetSet, source: str, destination: str) -> Link:
        source_target, destination_target = targets[source], targets[destination]
        if source_target.is_host and (profile := self.profile_for(destination_target)):
            if "host_to_device" in profile.links:
                return profile.links["host_to_device"]
        if destination_target.is_host and (profile := self.profile_for(source_target)):
            if "device_to_host" in profile.links:
                return profile.links["device_to_host"]
        return self.estimate.link(targets, source, destination)


def _plain(value):
    """Arguments as JSON-able data, tensors as [shape, dtype], so signatures are stable across runs."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [list(value.shape), str(value.dtype)]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)
