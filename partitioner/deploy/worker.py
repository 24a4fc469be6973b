"""One device of a deployed plan: a process that holds its partitions and runs them on its torch device.

The engine (partitioner/deploy/ray_engine.py) makes one per device the plan
uses, as a Ray actor, and sends it the values each of its stages reads; the
worker moves them to its device, runs the partition without autograd, and
returns the results on the CPU unless only CUDA workers read them (they then
travel device to device over NCCL). It times each call so the engine can say
how busy each device was.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch.utils import _pytree as pytree

from partitioner.deploy.shipment import Shipment
from partitioner.deploy.stages import Stage
from partitioner.plan_records import TargetRecord

# The workers' concurrency group that answers while the compiled graph holds their main thread.
STATISTICS = "statistics"


class DeviceWorker:
    """Runs the partitions of one place (e.g. `npu-example.2`) on the torch device it stands for."""

    def __init__(self, place: str, torch_device: str, stages: Mapping[int, Stage], modules: Shipment,
                 threads: int | None = None):
        """`modules`: a shipment (partitioner/deploy/shipment.py) of partition index -> its module."""
        if threads:
            torch.set_num_threads(threads)
        self.place = place
        self.device = present_or_cpu(torch.device(torch_device), place)
        self.stages = dict(stages)
        self.modules = {index: module.to(self.device) for index, module in modules.opened().items()}
        self.on_device: set[int] = set()
        self.seconds: dict[int, list[float]] = {index: [] for index in self.modules}

    def describe(self) -> tuple[str, str]:
        """The torch device this worker runs on, and the Ray node the cluster put it on."""
        import ray

        return str(self.device), ray.get_runtime_context().get_node_id()

    def keep_on_device(self, partitions: list[int]) -> None:
        """Return these partitions' results on this device (only CUDA workers read them)."""
        self.on_device = set(partitions)

    def run(self, partition: int, inputs: Any, *upstream_results: Any) -> Any:
        """Run `partition` on the request's flat inputs (None where it reads none) and its upstream results."""
        arguments = pytree.tree_map_only(torch.Tensor, self._here,
                                         self.stages[partition].arguments_given(inputs, upstream_results))
        started = time.perf_counter()
        with torch.inference_mode():
            results = self.modules[partition](*arguments)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[partition].append(time.perf_counter() - started)
        if self.device.type != "cpu" and partition not in self.on_device:
            results = pytree.tree_map_only(torch.Tensor, lambda tensor: tensor.cpu(), results)
        return results

    def busy_seconds(self) -> dict[int, list[float]]:
        """Each partition's run times, oldest first (a copy: runs go on in the worker's main thread)."""
        return {index: list(seconds) for index, seconds in self.seconds.items()}

    def _here(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)


def present_or_cpu(device: torch.device, place: str) -> torch.device:
    module = getattr(torch, device.type, None)
    if device.type in ("cpu", "meta") or (module is not None and hasattr(module, "is_available")
                                          and module.is_available()):
        return device
    warnings.warn(f"{place}: no {device} device in this worker, emulating it on the CPU", stacklevel=2)
    return torch.device("cpu")


def emulated_places(devices: Mapping[str, str], targets: Sequence[TargetRecord]) -> list[str]:
    """The places whose worker did not run on their own hardware, given the torch device each worker ran on.

    That is a worker on another type of torch device than its spec names (the CPU, where that device is
    absent), and a worker on the CPU for a target that is not a CPU: a chip with no torch device here (Trainium,
    Gaudi, an NPU) names `cpu` in its spec only so that it can run at all.
    """
    record = {target.name: target for target in targets}
    return sorted(place for place, device in devices.items() if record[place].emulated_on(device))
