"""Run a placed model: one submodule per partition, each on its target's torch device.

Builds on the captured program (`ExportedProgram.module()`) and the partitions
of the split pass: torch.fx's `fuse_by_partitions` turns each partition into a
submodule (its weights move with it), and a transfer is inserted wherever a
value crosses to another device, once per (value, device). Targets without a
real device here are emulated on the CPU, with one warning each.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.export import ExportedProgram
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

from partitioner.errors import PartitionerError
from partitioner.execution.split import Partition

_PARTITION_PREFIX = "partition_"


class PartitionedModule(torch.nn.Module):
    """The model as placed: calling it runs each partition on its device in order.

    It takes the same inputs as the original model and returns the same
    structure; outputs stay on the device of the partition that made them.
    """

    def __init__(self, graph_module: torch.fx.GraphModule, partitions: Sequence[Partition],
                 devices: Mapping[str, torch.device]):
        super().__init__()
        self.graph_module = graph_module
        self.partitions = tuple(partitions)
        self.devices = dict(devices)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    def train(self, mode: bool = True) -> PartitionedModule:
        """Only sets the flag: dropout and batch-norm behaviour were fixed when the model was captured.

        (The captured module itself refuses train()/eval(); training loops call them.)
        """
        self.training = mode
        return self

    def submodule(self, partition: Partition) -> torch.fx.GraphModule:
        """The GraphModule that runs `partition`."""
        return self.graph_module.get_submodule(f"{_PARTITION_PREFIX}{partition.index}")


@contextlib.contextmanager
def buffers_kept(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Within, a run may update the modules' buffers (a forward that keeps state: a running sum, a cache); on
    leaving, each holds again what it held. A partitioned module shares its buffers with the model it was built
    from, so two runs, or a run and an export, would otherwise see each other's updates."""
    buffers = {id(b): b for module in modules if module is not None for b in module.buffers()}
    saved = {key: buffer.detach().clone() for key, buffer in buffers.items()}
    try:
        yield
    finally:
        with torch.no_grad():
            for key, buffer in buffers.items():
                buffer.copy_(saved[key])


def resolve_devices(targets: Mapping[str, str], device_map: Mapping[str, str] | None = None) -> dict[str, torch.device]:
    """The real torch device for each target (name -> its spec's torch device).

    `device_map` overrides it per target; a target whose device is not present
    here runs on the CPU instead, with a warning.
    """
    device_map = dict(device_map or {})
    unknown = sorted(set(device_map) - set(targets))
    if unknown:
        raise PartitionerError(
            f"device_map names {unknown[0]!r}, which is not a target of this plan ({', '.join(targets)}). "
            "Fix: map the plan's target names."
        )
    devices = {}
    for name, spec_device in targets.items():
        if name in device_map:
            devices[name] = _present_device(device_map[name], name)
        elif _is_present(torch.device(spec_device)):
            devices[name] = torch.device(spec_device)
        else:
            warnings.warn(f"target {name}: no {spec_device} device here, emulating it on the CPU", stacklevel=2)
            devices[name] = torch.device("cpu")
    return devices


def build_partitioned_module(program: ExportedProgram, partitions: Sequence[Partition],
                             devices: Mapping[str, torch.device]) -> PartitionedModule:
    """A runnable module for `program` split into `partitions`, each on `devices[partition.target]`."""
    graph_module = program.module()
    nodes = {node.name: node for node in graph_module.graph.nodes}
    missing = [name for p in partitions for name in p.nodes if name not in nodes]
    if missing:
        raise PartitionerError(
            f"the plan names node {missing[0]!r}, which the model no longer has. "
            "Fix: compile the plan again for this model."
        )
    groups = [dict.fromkeys(nodes[name] for name in p.nodes) for p in partitions]
    _give_each_partition_its_weights(graph_module, groups)
    # fuse_by_partitions keeps the given order among independent nodes: in graph order, an in-place update stays
    # after the reads the model makes before it (with weight reads listed last, it could overtake them).
    position = {node: index for index, node in enumerate(graph_module.graph.nodes)}
    groups = [dict.fromkeys(sorted(group, key=position.__getitem__)) for group in groups]
    fused = fuse_by_partitions(graph_module, groups, prefix=_PARTITION_PREFIX)
    partition_devices = {p.index: devices[p.target] for p in partitions}
    for index, device in partition_devices.items():
        _move(fused.get_submodule(f"{_PARTITION_PREFIX}{index}"), device)
    _run_in_partition_order(fused)
    _insert_transfers(fused, partition_devices)
    fused.delete_all_unused_submodules()
    fused.recompile()
    for index in partition_devices:
        _cache_weight_paths(fused.get_submodule(f"{_PARTITION_PREFIX}{index}"))
    return PartitionedModule(fused, partitions, devices)


def _move(submodule: torch.nn.Module, device: torch.device) -> None:
    """Move a partition's weights to `device` as new tensors: the caller's model keeps its own.

    (By default `Module.to` swaps the data of the very Parameter objects the
    original model holds, which would move the user's model too.)
    """
    tensors = list(submodule.parameters()) + list(submodule.buffers())
    if all(same_device(tensor.device, device) for tensor in tensors):
        return
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        submodule.to(device)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)


def _cache_weight_paths(partition: torch.nn.Module) -> None:
    """Let a partition reach its weights without a Python call per module on the path.

    A partition reads each weight through the model's module path (e.g.
    `resnet.encoder.stages.0.layers.1.layer.0.convolution.weight`), and every hop
    is answered by `Module.__getattr__`, a Python function. Run between kernels,
    with cold caches, that cost about 6% on ResNet-50 in 100 partitions on a CPU
    (benchmarks/overhead.py). A child also kept in its parent's `__dict__` is found
    by plain attribute lookup. The path modules are the partition's own (fuse
    made them), and `Module.__setattr__` drops the copy if a child is replaced.
    """
    for parent in partition.modules():
        for name, child in parent._modules.items():
            if child is not None:
                parent.__dict__[name] = child


def same_device(a: torch.device, b: torch.device) -> bool:
    """True when moving between `a` and `b` copies nothing (`cpu` and `cpu:0` are one memory)."""
    return a.type == b.type and (a.type == "cpu" or a.index is None or b.index is None or a.index == b.index)


def _run_in_partition_order(fused: torch.fx.GraphModule) -> None:
    """Call the partitions in the split's order, which also honours in-place writes, not only data edges."""
    calls = sorted((node for node in fused.graph.nodes if partition_index(node) is not None), key=partition_index)
    if not calls:
        return
    anchor = calls[0].prev
    for call in calls:
        anchor.append(call)
        anchor = call
        for item in [user for user in fused.graph.nodes if user.op == "call_function" and user.args[:1] == (call,)]:
            anchor.append(item)
            anchor = item


def partition_index(node: torch.fx.Node) -> int | None:
    """The index of the partition a top-level node of a partitioned module calls, or None for other nodes."""
    if node.op == "call_module" and node.target.startswith(_PARTITION_PREFIX):
        return int(node.target.removeprefix(_PARTITION_PREFIX))
    return None


def to_device(value: Any, device: torch.device) -> Any:
    """Move a tensor to `device`; anything else (sizes, None) passes through."""
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _give_each_partition_its_weights(graph_module: torch.fx.GraphModule, groups: list[dict]) -> None:
    """Put every weight read (`get_attr`) into the partition that uses it, copying the read for each extra user."""
    home = {node: index for index, group in enumerate(groups) for node in group}
    for node in list(graph_module.graph.nodes):
        if node.op != "get_attr":
            continue
        user_partitions = dict.fromkeys(home[user] for user in node.users if user in home)
        for position, index in enumerate(user_partitions):
            read = node
            if position > 0:
                with graph_module.graph.inserting_after(node):
                    read = graph_module.graph.get_attr(node.target)
                for user in [u for u in node.users if home.get(u) == index]:
                    user.replace_input_with(node, read)
            groups[index][read] = None


def _insert_transfers(fused: torch.fx.GraphModule, partition_devices: Mapping[int, torch.device]) -> None:
    """Move inputs from other devices to each partition, once per (value, device).

    A value moves right before the first partition on that device that reads
    it, so the copy sees every in-place write made to it before that point.
    """
    graph = fused.graph
    calls = {node: partition_index(node) for node in graph.nodes if partition_index(node) is not None}
    device_of = _value_devices(graph, calls, partition_devices)
    moved: dict[tuple[torch.fx.Node, torch.device], torch.fx.Node] = {}
    for call, index in calls.items():
        device = partition_devices[index]
        for value in list(call.all_input_nodes):
            if device_of.get(value) == device:
                continue
            if (value, device) not in moved:
                with graph.inserting_before(call):
                    moved[value, device] = graph.call_function(to_device, (value, device))
            call.replace_input_with(value, moved[value, device])


def _value_devices(graph: torch.fx.Graph, calls: Mapping[torch.fx.Node, int],
                   partition_devices: Mapping[int, torch.device]) -> dict[torch.fx.Node, torch.device]:
    """The device of each partition output (and of the items taken from it); model inputs are unknown."""
    devices: dict[torch.fx.Node, torch.device] = {}
    for node in graph.nodes:
        if node in calls:
            devices[node] = partition_devices[calls[node]]
        elif node.op == "call_function" and node.args and node.args[0] in devices:
            devices[node] = devices[node.args[0]]  # getitem of a partition's outputs
    return devices


def _is_present(device: torch.device) -> bool:
    if device.type == "cpu" or device.type == "meta":
        return True
    module = getattr(torch, device.type, None)
    if module is None or not module.is_available():
        return False
    return device.index is None or device.index < module.device_count()


def _present_device(text: str, target: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise PartitionerError(f"device_map: {text!r} for {target} is not a torch device. Fix: use e.g. cpu or cuda:0.")
    if not _is_present(device):
        raise PartitionerError(
            f"device_map: {text!r} for {target} is not present on this machine. "
            "Fix: map it to a device that is (e.g. cpu to emulate)."
        )
    return device
