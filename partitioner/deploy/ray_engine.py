"""Run a plan on a Ray cluster: one actor per device, requests pipelined through a Ray Compiled Graph.

`deploy_on_ray(plan)` starts a local Ray instance that stands in for the plan's fleet
(or joins a cluster at `address`), reserves each host's devices with a
placement group (all of a host's devices on one node), starts one
`DeviceWorker` actor per device the plan uses holding that device's partitions,
and compiles the stages into a Ray Compiled Graph (`ray.dag`) with several
executions in flight, so different requests occupy different devices at once,
as the serving model (partitioner/placement/serving.py) assumes. Values move
between actors over Ray's channels: shared memory on one node, the network
between nodes, NCCL between two CUDA workers.

Faults end the deployment: a dead actor, a request past its timeout or a
cluster without the devices gives one `PartitionerError`, after every actor
and placement group of the deployment is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from partitioner.deploy.resources import actor_options, bundle, missing_resources, resource_of, resources_needed
from partitioner.deploy.stages import FromPartition, StageGraph, stage_graph
from partitioner.deploy.worker import DeviceWorker
from partitioner.errors import PartitionerError
from partitioner.execution.partitioned_module import build_partitioned_module
from partitioner.frontend.capture import split_inputs
from partitioner.plan import Plan
from partitioner.plan_records import TargetRecord


# The workers' concurrency group that answers while the compiled graph holds their main thread.
STATISTICS = "statistics"


@dataclass(frozen=True, slots=True)
class ServeMeasurement:
    """What serving `requests` requests with `concurrency` in flight measured, beside the plan's prediction.

    `utilisation` is each device's busy share of the measured wall time;
    `predicted_*` are the plan's own figures (its cost model, its devices), so
    they are comparable only where the plan was made for the devices it runs on.
    """

    requests: int
    concurrency: int
    seconds: float
    latencies: tuple[float, ...]
    utilisation: Mapping[str, float]
    devices: Mapping[str, str]  # place -> the torch device its worker ran on ("cpu" where it was emulated)
    predicted_requests_per_second: float | None
    predicted_latency_seconds: float | None
    predicted_utilisation: Mapping[str, float]  # place -> its occupancy over the bottleneck's, at full load

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def predicted_requests_per_second_in_flight(self) -> float | None:
        """What the plan predicts with `concurrency` requests in flight, each sent when one returns: at most
        `concurrency` per request latency, and never more than its bottleneck device allows."""
        if self.predicted_requests_per_second is None or not self.predicted_latency_seconds:
            return None
        return min(self.concurrency / self.predicted_latency_seconds, self.predicted_requests_per_second)

    def latency_percentile(self, percent: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(percent / 100 * (len(ordered) - 1))))]


def require_ray():
    """The `ray` module, or one clear error where the optional extra is not installed."""
    try:
        import ray
    except ImportError:
        raise PartitionerError("the Ray engine needs Ray, an optional extra. Fix: pip install 'partitioner[ray]'.")
    return ray


class RayDeployment:
    """A plan running on Ray: call it like the model; `benchmark` streams requests; `shutdown` removes it all."""

    def __init__(self, plan: Plan, graph: StageGraph, workers: Mapping[str, Any], placement_groups: Sequence[Any],
                 owns_ray: bool, max_in_flight: int, request_timeout_seconds: float, over_nccl: set[int],
                 nodes: Mapping[str, str], devices: Mapping[str, str]):
        self.plan = plan
        self.graph = graph
        self.workers = dict(workers)
        self._placement_groups = list(placement_groups)
        self._owns_ray = owns_ray
        self.max_in_flight = max_in_flight
        self.request_timeout_seconds = request_timeout_seconds
        self._over_nccl = over_nccl  # partitions whose results go device to device (see device_to_device)
        self.nodes = dict(nodes)  # place -> the Ray node id its worker runs on
        self.devices = dict(devices)  # place -> the torch device its worker runs on
        self._compiled = None
        self._returned: tuple[int, ...] = ()
        self._closed = False
        self._submitted = 0  # requests sent, over all compiled graphs
        self._typical_latency: float | None = None  # seconds from send to result, smoothed; None before the first
        # The model inputs some stage reads, in order: a compiled graph takes exactly the inputs it uses.
        self._sent = sorted({source.position for stage in graph.stages for source in stage.upstream
                             if not isinstance(source, FromPartition)})

    def __enter__(self) -> RayDeployment:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The model's outputs for these inputs, computed by the deployment."""
        flat = self.graph.flat_inputs(args, kwargs)
        return self._outputs(flat, self._submit(flat), time.perf_counter())

    def benchmark(self, requests: int, concurrency: int, inputs: Any = None) -> ServeMeasurement:
        """Serve `requests` copies of `inputs` (default: the plan's example inputs), `concurrency` at a time."""
        if requests < 1 or concurrency < 1:
            raise PartitionerError("requests and concurrency must be at least 1. Fix: pass e.g. 100 and 8.")
        if concurrency > self.max_in_flight:
            raise PartitionerError(f"concurrency {concurrency} is over this deployment's {self.max_in_flight} "
                                   "requests in flight. Fix: deploy with max_in_flight of at least the concurrency.")
        concurrency = min(concurrency, requests)  # never more in flight than there are requests
        args, kwargs = split_inputs(inputs if inputs is not None else self.plan.captured_model().example_inputs)
        flat = self.graph.flat_inputs(args, kwargs)
        # Warm up: the first request compiles the graph if needed, and the workers' first runs allocate.
        self._outputs(flat, self._submit(flat), time.perf_counter())
        before = self._submitted  # every request runs each stage once, so these are the runs before this benchmark
        in_flight: list[tuple[float, Any]] = []
        latencies = []
        started = time.perf_counter()
        for _ in range(requests):
            if len(in_flight) == concurrency:
                submitted, ref = in_flight.pop(0)
                self._outputs(flat, ref, submitted)
                latencies.append(time.perf_counter() - submitted)
            in_flight.append((time.perf_counter(), self._submit(flat)))
        for submitted, ref in in_flight:
            self._outputs(flat, ref, submitted)
            latencies.append(time.perf_counter() - submitted)
        seconds = time.perf_counter() - started
        busy = self._busy_seconds(before)
        predicted = self.plan.score()
        serving = predicted.serving
        return ServeMeasurement(
            requests, concurrency, seconds, tuple(latencies),
            {place: busy.get(place, 0.0) / seconds for place in self.workers}, dict(self.devices),
            serving.throughput_per_second if serving else None, predicted.latency_seconds,
            {place: serving.occupancy_seconds.get(place, 0.0) / serving.bottleneck_seconds
             for place in self.workers} if serving and serving.bottleneck_seconds else {})

    def shutdown(self) -> None:
        """Remove the actors, the compiled graph and the placement groups (and Ray, if this started it)."""
        if self._closed:
            return
        self._closed = True
        compiled, self._compiled = self._compiled, None
        _remove(require_ray(), self.workers.values(), self._placement_groups, self._owns_ray, compiled)

    def _submit(self, flat: list[Any]) -> Any:
        if self._closed:
            raise PartitionerError("this deployment is shut down. Fix: deploy the plan again.")
        if self._compiled is None:
            self._compiled, self._returned = self._compile()
        try:
            ref = self._compiled.execute(*(flat[position] for position in self._sent))
            self._submitted += 1
            return ref
        except Exception as error:
            raise self._fault(error) from error

    def _outputs(self, flat: list[Any], ref: Any, submitted: float) -> Any:
        """The model's outputs of the request `ref` sent at `submitted` (perf_counter seconds).

        Ray's driver polls its channel while it waits (a spin that yields), which on a machine with few
        cores takes a core from the device workers; so it first sleeps through half of a typical request's
        latency, since the result cannot come much sooner, and only then waits in Ray.
        """
        if self._typical_latency:
            time.sleep(max(0.0, submitted + self._typical_latency / 2 - time.perf_counter()))
        try:
            returned = require_ray().get(ref, timeout=self.request_timeout_seconds)
        except Exception as error:
            raise self._fault(error) from error
        latency = time.perf_counter() - submitted
        self._typical_latency = latency if self._typical_latency is None else min(
            latency, 0.9 * self._typical_latency + 0.1 * latency)
        return self.graph.model_outputs(flat, dict(zip(self._returned, returned)))

    def _compile(self) -> tuple[Any, tuple[int, ...]]:
        """The stages as a Ray Compiled Graph: each stage a method call on its device's actor."""
        from ray.dag import InputNode, MultiOutputNode

        consumers = self.graph.consumers
        # A compiled graph may not end in a node nobody reads: a partition whose results only the model's outputs
        # read, or nothing reads (it only writes state), is returned to the driver.
        returned = tuple(p for p, readers in consumers.items() if None in readers or not readers)
        nodes: dict[int, Any] = {}
        with InputNode() as request:
            for stage in self.graph.stages:
                received = [nodes[source.partition] if isinstance(source, FromPartition)
                            else request[self._sent.index(source.position)] for source in stage.upstream]
                node = self.workers[stage.target].run.bind(stage.partition, *received)
                if stage.partition in self._over_nccl:
                    node = node.with_tensor_transport(transport="nccl")
                nodes[stage.partition] = node
            dag = MultiOutputNode([nodes[p] for p in returned])
        try:
            return dag.experimental_compile(_max_inflight_executions=self.max_in_flight), returned
        except Exception as error:
            raise self._fault(error) from error

    def _busy_seconds(self, runs_before: int) -> dict[str, float]:
        """Each device's time in its partitions since the first `runs_before` requests.

        Asked in the workers' own concurrency group: their main thread is the compiled graph's loop.
        """
        ray = require_ray()
        asked = {place: worker.busy_seconds.options(concurrency_group=STATISTICS).remote()
                 for place, worker in self.workers.items()}
        try:
            answers = dict(zip(asked, ray.get(list(asked.values()), timeout=self.request_timeout_seconds)))
        except Exception as error:
            raise self._fault(error) from error
        return {place: sum(sum(seconds[runs_before:]) for seconds in times.values())
                for place, times in answers.items()}

    def _dead_workers(self) -> list[str]:
        """The places whose worker no longer answers (a closed channel is how a dead peer first shows)."""
        ray = require_ray()
        dead = []
        for place, worker in self.workers.items():
            try:
                ray.get(worker.describe.options(concurrency_group=STATISTICS).remote(), timeout=5)
            except Exception:
                dead.append(place)
        return dead

    def _fault(self, error: Exception) -> PartitionerError:
        """Remove everything, then say what went wrong in one line."""
        ray = require_ray()
        dead = self._dead_workers() if isinstance(error, ray.exceptions.RayChannelError) else []
        if isinstance(error, ray.exceptions.RayActorError) or dead:
            which = f"{', '.join(dead)}: " if dead else ""
            message = (f"a device worker died while serving ({which}{_first_line(error)}). Everything this "
                       "deployment started is removed. Fix: see the worker's log (ray logs), then deploy again.")
        elif isinstance(error, (ray.exceptions.RayChannelTimeoutError, ray.exceptions.GetTimeoutError)):
            emulated = emulated_places(self.devices, self.plan.targets)
            slow = (f" ({', '.join(emulated)} ran on the CPU in place of {'their' if len(emulated) > 1 else 'its'} "
                    "device, where a request can take far longer)" if emulated else "")
            message = (f"a request took over {self.request_timeout_seconds:g} s{slow}. Everything this deployment "
                       "started is removed. Fix: raise the request timeout (--timeout), or look for a device that "
                       "is stuck.")
        elif isinstance(error, ray.exceptions.RayTaskError):
            message = (f"a partition failed on its worker: {_first_line(error.cause or error)}. Everything this "
                       "deployment started is removed. Fix: run the plan in process (partitioner run --check) to "
                       "find the partition.")
        else:
            message = (f"the Ray engine failed: {type(error).__name__}: {_first_line(error)}. Everything this "
                       "deployment started is removed.")
        self.shutdown()
        return PartitionerError(message)


def deploy_on_ray(plan: Plan, *, address: str | None = None, max_in_flight: int = 16,
           request_timeout_seconds: float = 60.0, startup_timeout_seconds: float = 120.0,
           threads_per_worker: int | None = None) -> RayDeployment:
    """Start `plan` on Ray: one actor per device it uses, ready to take requests.

    Without `address`, a local Ray instance stands in for the plan's fleet: it
    declares the devices' resources, and a device this machine lacks is emulated
    on the CPU by its worker. With `address` ("auto" or host:port) it joins that
    cluster, which must have the resources (partitioner/deploy/resources.py).
    `threads_per_worker` is each worker's torch threads; by default a local
    instance shares this machine's cores among its workers, and a joined
    cluster's workers keep torch's own default.
    """
    ray = require_ray()
    captured = plan.captured_model()
    module = build_partitioned_module(captured.program, plan.partitions,
                                      {t.name: torch.device("cpu") for t in plan.targets})
    graph = stage_graph(module)
    records = {t.name: t for t in plan.targets}
    partitions = {p.index: p for p in plan.partitions}
    places = [records[name] for name in dict.fromkeys(stage.target for stage in graph.stages)]
    needed = resources_needed(places)
    owns_ray = not ray.is_initialized()
    if owns_ray:
        _start_ray(ray, address, needed)
    if threads_per_worker is None and owns_ray and not address:
        # One core is left to the driver, which spins while it waits for results (see RayDeployment._outputs).
        threads_per_worker = max(1, ((os.cpu_count() or 1) - 1) // len(places))
    groups: list[Any] = []
    workers: dict[str, Any] = {}
    try:
        lacking = missing_resources(needed, ray.cluster_resources())
        if lacking:
            raise PartitionerError(_lacking_message(lacking, address))
        busy = missing_resources(needed, ray.available_resources())
        if busy:
            what = ", ".join(f"{count} x {name} ({free:g} free)" for name, (count, free) in busy.items())
            raise PartitionerError(f"the Ray cluster has the plan's devices, but others hold them now: {what}. "
                                   "Fix: shut down the deployment or job that holds them (ray status), then deploy "
                                   "again.")
        groups, slots = _reserve_hosts(ray, places, startup_timeout_seconds)
        remote_worker = ray.remote(concurrency_groups={STATISTICS: 1})(DeviceWorker)
        run_id = uuid.uuid4().hex[:8]
        for place in places:
            group, bundle_index = slots[place.name]
            strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=bundle_index)
            stages = {s.partition: s for s in graph.stages if s.target == place.name}
            workers[place.name] = remote_worker.options(
                **actor_options(resource_of(place)), scheduling_strategy=strategy, max_restarts=0,
                name=f"partitioner-{run_id}-{place.name}").remote(
                place.name, place.torch_device, stages, {p: module.submodule(partitions[p]) for p in stages},
                threads_per_worker)
        described = dict(zip(workers, ray.get([w.describe.remote() for w in workers.values()],
                                             timeout=startup_timeout_seconds)))
        cuda_places = {place for place, (device, _) in described.items() if device.startswith("cuda")}
        over_nccl = device_to_device(graph, cuda_places)
        ray.get([worker.keep_on_device.remote([s.partition for s in graph.stages
                                               if s.target == place and s.partition in over_nccl])
                 for place, worker in workers.items()], timeout=startup_timeout_seconds)
    except BaseException as error:
        _remove(ray, workers.values(), groups, owns_ray)
        if isinstance(error, ray.exceptions.GetTimeoutError):
            raise PartitionerError(f"the device workers did not start within {startup_timeout_seconds:g} s. Fix: "
                                   "check the cluster (ray status), or raise the startup timeout.") from error
        if isinstance(error, ray.exceptions.RayActorError):
            raise PartitionerError(f"a device worker failed to start: {_first_line(error)}. Fix: see its log "
                                   "(ray logs).") from error
        if isinstance(error, ray.exceptions.RayError):
            raise PartitionerError(f"the Ray engine could not start the plan: {type(error).__name__}: "
                                   f"{_first_line(error)}. Fix: see `ray status`, then deploy again.") from error
        raise
    emulated = emulated_places({place: device for place, (device, _) in described.items()}, plan.targets)
    if emulated:  # the workers' own warnings stay in their logs
        warnings.warn(f"{', '.join(emulated)}: no such device on the node, emulated on the CPU", stacklevel=2)
    return RayDeployment(plan, graph, workers, groups, owns_ray, max_in_flight, request_timeout_seconds,
                         over_nccl, {place: node for place, (_, node) in described.items()},
                         {place: device for place, (device, _) in described.items()})


def _remove(ray: Any, workers: Iterable[Any], groups: Iterable[Any], owns_ray: bool, compiled: Any = None) -> None:
    """Kill the workers, tear down their compiled graph, remove the placement groups, and end Ray if we began it.

    The actors go first: a compiled graph's own teardown can wait forever on a worker still reading a channel
    its upstream peer has left (seen with two stages and requests in flight), and every worker goes anyway.
    """
    # Ray logs each step of a compiled graph's teardown, and the graph's monitor thread starts one of its own
    # as soon as an actor dies; the teardown was asked for, so none of it is news.
    quiet = logging.getLogger("ray.dag.compiled_dag_node")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        for worker in workers:
            with contextlib.suppress(Exception):
                ray.kill(worker)
        if compiled is not None:
            with contextlib.suppress(Exception):
                compiled.teardown()  # waits for a teardown the monitor thread began
    finally:
        quiet.setLevel(level)
    for group in groups:
        with contextlib.suppress(Exception):
            ray.util.remove_placement_group(group)
    if owns_ray:
        ray.shutdown()


def emulated_places(devices: Mapping[str, str], targets: Sequence[TargetRecord]) -> list[str]:
    """The places whose worker runs on another kind of device than its target's (the CPU, where it is absent)."""
    kind = {target.name: torch.device(target.torch_device).type for target in targets}
    return sorted(place for place, device in devices.items() if torch.device(device).type != kind[place])


def device_to_device(graph: StageGraph, cuda_places: set[str]) -> set[int]:
    """The partitions on CUDA workers whose results only other CUDA workers read: they travel over NCCL."""
    place_of = {stage.partition: stage.target for stage in graph.stages}
    return {partition for partition, readers in graph.consumers.items()
            if place_of[partition] in cuda_places and readers
            and all(r is not None and place_of[r] in cuda_places and place_of[r] != place_of[partition]
                    for r in readers)}


def _start_ray(ray: Any, address: str | None, needed: Mapping[str, int]) -> None:
    """Join the cluster at `address`, or start a local instance that declares the devices `needed`."""
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError and more for an unreachable cluster
            raise PartitionerError(f"could not join the Ray cluster at {address!r}: {_first_line(error)}. Fix: start "
                                   "it with `ray start --head` on its head node, or give its address.") from error
        return
    gpus = max(needed.get("GPU", 0), torch.cuda.device_count() if torch.cuda.is_available() else 0)
    # Ray runs workers at niceness 15 so that they yield to drivers; here the workers are the engine's compute,
    # and the driver spins while it waits for a result, so at 15 a few-core machine starves the devices.
    # address="local": a new instance even where RAY_ADDRESS or a `ray start` cluster on this machine would
    # otherwise be joined (joining is what --address is for).
    try:
        ray.init(address="local", num_gpus=gpus,
                 resources={name: float(count) for name, count in needed.items() if name != "GPU"},
                 include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    except Exception as error:
        raise PartitionerError(f"could not start a local Ray instance: {_first_line(error)}. Fix: see `ray status`, "
                               "or join a running cluster with --address.") from error


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """Refuse a host:port nothing answers at: Ray itself waits minutes for such a cluster before it gives up."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", or a Ray Client address: Ray finds and checks those itself
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        raise PartitionerError(f"nothing answers at the Ray cluster address {address!r} ({error.strerror or error}). "
                               "Fix: start the cluster with `ray start --head` on its head node, and give "
                               "its address as host:6379 (the GCS port ray start prints), or 'auto' on a node "
                               "of it.") from error


def _reserve_hosts(ray: Any, places: Sequence[TargetRecord], timeout: float
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


def _lacking_message(lacking: Mapping[str, tuple[int, float]], address: str | None) -> str:
    what = ", ".join(f"{needed} x {name} (it has {available:g})" for name, (needed, available) in lacking.items())
    flags = [f"--num-gpus={needed}" for name, (needed, _) in lacking.items() if name == "GPU"]
    custom = {name: needed for name, (needed, _) in lacking.items() if name != "GPU"}
    if custom:
        flags.append("--resources='" + json.dumps(custom) + "'")
    return (f"the Ray cluster{' at ' + address if address else ''} lacks the plan's devices: {what}. Fix: start "
            f"the nodes that hold them with `ray start --address=HEAD:6379 {' '.join(flags)}` (a node declares the "
            "devices it has), or plan on a fleet this cluster holds.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__
