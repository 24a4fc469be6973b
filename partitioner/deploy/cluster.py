"""What a deployment takes from a Ray cluster: the plan's devices and room for its channels, each fleet host's
devices reserved on one node, and one worker actor per device.

The engine (partitioner/deploy/ray_engine.py) calls these in order once Ray is up; each refuses what cannot
work in one `PartitionerError` before the next begins.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Mapping, Sequence

from partitioner.deploy import ray_instance
from partitioner.deploy.in_flight import ChannelMemory
from partitioner.deploy.resources import actor_options, bundle, missing_resources, resource_of
from partitioner.deploy.shipment import shipped
from partitioner.deploy.stages import StageGraph
from partitioner.deploy.worker import STATISTICS, DeviceWorker
from partitioner.errors import PartitionerError
from partitioner.plan_records import TargetRecord


def check_cluster(ray: Any, needed: Mapping[str, int], channels: ChannelMemory, max_in_flight: int,
                  address: str | None) -> None:
    """Refuse a cluster without the devices, with others holding them, or whose object stores cannot hold the
    requests in flight (the smallest node's: any may hold a host's workers)."""
    check_devices(ray, needed, address)
    stores = [node["Resources"].get("object_store_memory", 0.0) for node in ray.nodes() if node.get("Alive")]
    channels.check(max_in_flight, min(stores, default=0.0), "the smallest Ray node's object store")


def check_devices(ray: Any, needed: Mapping[str, int], address: str | None) -> None:
    """Refuse a cluster without the devices `needed`, or with others holding them."""
    lacking = missing_resources(needed, ray.cluster_resources())
    if lacking:
        raise PartitionerError(_lacking_message(lacking, address, ray_instance.gcs_address(ray)))
    busy = missing_resources(needed, ray.available_resources())
    if busy:
        what = ", ".join(f"{count} x {name} ({free:g} free)" for name, (count, free) in busy.items())
        raise PartitionerError(f"the Ray cluster has the plan's devices, but others hold them now: {what}. "
                               "Fix: shut down the deployment or job that holds them (ray status), then deploy "
                               "again.")


def reserve_hosts(ray: Any, places: Sequence[TargetRecord], timeout: float
                  ) -> tuple[list[Any], dict[str, tuple[Any, int]]]:
    """One placement group per fleet host, packing its devices onto one node; where each place's bundle is."""
    hosts: dict[str, list[TargetRecord]] = {}
    for place in places:
        hosts.setdefault(place.host, []).append(place)
    groups, slots = [], {}
    for host, members in hosts.items():
        group = ray.util.placement_group([bundle(resource_of(p)) for p in members], strategy="STRICT_PACK")
        groups.append(group)
        for index, place in enumerate(members):
            slots[place.name] = (group, index)
    for (host, members), group in zip(hosts.items(), groups):
        try:
            ray.get(group.ready(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            for made in groups:
                ray.util.remove_placement_group(made)
            devices = ", ".join(p.name for p in members)
            whose = f"host {host}'s" if host else "the plan's"
            raise PartitionerError(f"no node of the Ray cluster holds all of {whose} devices "
                                   f"({devices}) within {timeout:g} s. Fix: give one node all of them (a fleet host "
                                   "is one machine), or plan on a fleet whose hosts match the cluster's nodes.")
    return groups, slots


def start_workers(ray: Any, places: Sequence[TargetRecord], slots: Mapping[str, tuple[Any, int]],
                  graph: StageGraph, module: Any, partitions: Mapping[int, Any],
                  threads_per_worker: int | None) -> dict[str, Any]:
    """One `DeviceWorker` actor per place, in its host's placement group, holding that place's partitions."""
    remote_worker = ray.remote(concurrency_groups={STATISTICS: 1})(DeviceWorker)
    run_id = uuid.uuid4().hex[:8]
    workers = {}
    for place in places:
        stages = {s.partition: s for s in graph.stages if s.target == place.name}
        modules = {p: module.submodule(partitions[p]) for p in stages}
        workers[place.name] = remote_worker.options(**placed_actor(ray, place, slots, f"partitioner-{run_id}")).remote(
            place.name, place.torch_device, stages, shipped(modules, modules.values()), threads_per_worker)
    return workers


def placed_actor(ray: Any, place: TargetRecord, slots: Mapping[str, tuple[Any, int]], prefix: str) -> dict:
    """Ray actor options for one place's actor: its device's resource, its bundle of its host's placement group,
    no restarts (a dead device actor ends the deployment), and a name that says which place it is."""
    group, bundle_index = slots[place.name]
    strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
        group, placement_group_bundle_index=bundle_index)
    return {**actor_options(resource_of(place)), "scheduling_strategy": strategy, "max_restarts": 0,
            "name": f"{prefix}-{place.name}"}


def start_fault(ray: Any, error: BaseException, startup_timeout_seconds: float) -> PartitionerError | None:
    """The one-line error for a Ray error while the deployment started (None: raise `error` as it is)."""
    if isinstance(error, ray.exceptions.GetTimeoutError):
        return PartitionerError(f"the device workers did not start within {startup_timeout_seconds:g} s. Fix: "
                                "check the cluster (ray status), or raise the startup timeout.")
    if isinstance(error, ray.exceptions.RayActorError):
        return PartitionerError(f"a device worker failed to start: {ray_instance.last_line(error)}. Fix: run the plan "
                                "in process (partitioner run --check), which gives the same error with its "
                                "traceback.")
    if isinstance(error, ray.exceptions.RayError):
        return PartitionerError(f"the Ray engine could not start the plan: {type(error).__name__}: "
                                f"{ray_instance.first_line(error)}. Fix: see `ray status`, then deploy again.")
    return None


def _lacking_message(lacking: Mapping[str, tuple[int, float]], address: str | None, head: str | None) -> str:
    what = ", ".join(f"{needed} x {name} (it has {available:g})" for name, (needed, available) in lacking.items())
    flags = [f"--num-gpus={needed}" for name, (needed, _) in lacking.items() if name == "GPU"]
    custom = {name: needed for name, (needed, _) in lacking.items() if name != "GPU"}
    if custom:
        flags.append("--resources='" + json.dumps(custom) + "'")
    return (f"the Ray cluster{' at ' + address if address else ''} lacks the plan's devices: {what}. Fix: start "
            f"the nodes that hold them with `ray start --address={head or 'HEAD_HOST:PORT'} {' '.join(flags)}` (a "
            "node declares the devices it has), or plan on a fleet this cluster holds.")
