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

Every way out is clean. A number in flight whose channels Ray's object store
cannot hold is refused before anything starts (partitioner/deploy/in_flight.py).
A dead actor, a request past its timeout or a cluster without the devices gives
one `PartitionerError`, and an interrupt (Ctrl-C) goes on as KeyboardInterrupt,
each after every actor, the compiled graph and the placement groups are
removed, and a local instance with every process of it.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import torch

from partitioner.deploy import ray_instance
from partitioner.deploy.cluster import check_cluster, reserve_hosts, start_fault, start_workers
from partitioner.deploy.in_flight import channel_memory, local_store_bytes, ray_buffer_bytes, request_bytes
from partitioner.deploy.measurement import ServeMeasurement
from partitioner.deploy.ray_instance import MAX_TIMEOUT_SECONDS, StartedRay, check_timeout, require_ray
from partitioner.deploy.resources import resources_needed
from partitioner.deploy.stages import FromPartition, StageGraph, stage_graph
from partitioner.deploy.teardown import quiet_compiled_graphs, remove
from partitioner.deploy.worker import STATISTICS, emulated_places
from partitioner.errors import PartitionerError
from partitioner.execution.partitioned_module import build_partitioned_module
from partitioner.execution.split import memory_kept_whole
from partitioner.frontend.capture import split_inputs
from partitioner.frontend.op_graph import annotate
from partitioner.llm.deployment import LLMPlan
from partitioner.plan import Plan

if TYPE_CHECKING:
    from partitioner.deploy.llm_engine import LLMRayDeployment

_T = TypeVar("_T")


class RayDeployment:
    """A plan running on Ray: call it like the model; `benchmark` streams requests; `shutdown` removes it all."""

    def __init__(self, plan: Plan, graph: StageGraph, workers: Mapping[str, Any], placement_groups: Sequence[Any],
                 started: StartedRay | None, max_in_flight: int, request_timeout_seconds: float, over_nccl: set[int],
                 nodes: Mapping[str, str], devices: Mapping[str, str]):
        self.plan = plan
        self.graph = graph
        self.workers = dict(workers)
        self._placement_groups = list(placement_groups)
        self._started = started  # Ray as this deployment started it; None where it was running already
        self.max_in_flight = max_in_flight
        self.request_timeout_seconds = request_timeout_seconds
        self._over_nccl = over_nccl  # partitions whose results go device to device (see device_to_device)
        self.nodes = dict(nodes)  # place -> the Ray node id its worker runs on
        self.devices = dict(devices)  # place -> the torch device its worker runs on
        self._compiled = None
        self._returned: tuple[int, ...] = ()
        self._closed = False
        self._closing = threading.Lock()
        self._serving: threading.Thread | None = None  # the thread that calls the compiled graph, while it does
        self._submitted = 0  # requests sent, over all compiled graphs
        self._typical_latency: float | None = None  # seconds from send to result, smoothed; None before the first
        # The model inputs some stage reads: a request sends these and None for the others.
        self._sent = {source.position for stage in graph.stages for source in stage.upstream
                      if not isinstance(source, FromPartition)}

    def __enter__(self) -> RayDeployment:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The model's outputs for these inputs, computed by the deployment."""
        flat = self.graph.flat_inputs(args, kwargs)
        return self._guarded(lambda: self._outputs(flat, self._submit(flat), time.perf_counter()))

    def benchmark(self, requests: int, concurrency: int, inputs: Any = None) -> ServeMeasurement:
        """Serve `requests` copies of `inputs` (default: the plan's example inputs), `concurrency` at a time."""
        if requests < 1 or concurrency < 1:
            raise PartitionerError("requests and concurrency must be at least 1. Fix: pass e.g. 100 and 8.")
        concurrency = min(concurrency, requests)  # never more in flight than there are requests
        if concurrency > self.max_in_flight:
            raise PartitionerError(f"concurrency {concurrency} is over this deployment's {self.max_in_flight} "
                                   "requests in flight. Fix: deploy with max_in_flight of at least the concurrency.")
        args, kwargs = split_inputs(inputs if inputs is not None else self.plan.captured_model().example_inputs)
        flat = self.graph.flat_inputs(args, kwargs)
        return self._guarded(lambda: self._stream(flat, requests, concurrency))

    def shutdown(self) -> None:
        """Remove the actors, the compiled graph and the placement groups (and Ray, if this started it)."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            compiled, self._compiled = self._compiled, None
            remove(require_ray(), self.workers.values(), self._placement_groups, self._started, compiled,
                   self._serving)

    def _guarded(self, work: Callable[[], _T]) -> _T:
        """Do `work`, which calls the compiled graph, on a thread of its own while this one waits for it.

        Ctrl-C reaches only the main thread. Taken inside Ray's read of a result, it would leave the result's
        shared-memory buffer held, and the process crashes at exit once Ray's memory is unmapped (SIGSEGV in
        `MutableObjectManager::ReadRelease`). Here it reaches the waiting thread instead, which removes the
        deployment (the work's calls then fail at once) and waits for the work before Ray shuts down. A fault
        of the work removes the deployment the same way.
        """
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = work()
            except BaseException as error:  # handed to the waiting thread, which raises it
                outcome["error"] = error

        self._serving = threading.Thread(target=run, name="partitioner-ray-requests", daemon=True)
        self._serving.start()
        try:
            while self._serving.is_alive():
                self._serving.join(0.1)  # short waits, so that an interrupt is taken at once
            if "error" in outcome:
                raise outcome.pop("error")
        except BaseException:
            self.shutdown()
            raise
        finally:
            self._serving = None
        return outcome["value"]

    def _stream(self, flat: list[Any], requests: int, concurrency: int) -> ServeMeasurement:
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

    def _submit(self, flat: list[Any]) -> Any:
        if self._closed:
            raise PartitionerError("this deployment is shut down. Fix: deploy the plan again.")
        if self._compiled is None:
            self._compiled, self._returned = self._compile()
        try:
            ref = self._compiled.execute(tuple(flat[position] if position in self._sent else None
                                               for position in range(len(flat))))
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
        """The stages as a Ray Compiled Graph: each stage a method call on its device's actor.

        The graph's input is the request as one tuple, sent to every stage that reads it or reads nothing
        else (a compiled graph reaches each call from its input).
        """
        from ray.dag import InputNode, MultiOutputNode

        consumers = self.graph.consumers
        # A compiled graph may not end in a node nobody reads: a partition whose results only the model's outputs
        # read, or nothing reads (it only writes state), is returned to the driver.
        returned = tuple(p for p, readers in consumers.items() if None in readers or not readers)
        nodes: dict[int, Any] = {}
        with InputNode() as request:
            for stage in self.graph.stages:
                results = [nodes[source.partition] for source in stage.upstream if isinstance(source, FromPartition)]
                node = self.workers[stage.target].run.bind(stage.partition, request if stage.reads_request else None,
                                                           *results)
                if stage.partition in self._over_nccl:
                    node = node.with_tensor_transport(transport="nccl")
                nodes[stage.partition] = node
            dag = MultiOutputNode([nodes[p] for p in returned])
        try:
            with quiet_compiled_graphs():
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
        """What went wrong, in one line; whoever waits for the work (`_guarded`) removes everything."""
        ray = require_ray()
        removed = "Everything this deployment started is removed."
        if self._closed:
            return PartitionerError(f"the deployment was shut down while a request was in flight. {removed} Fix: "
                                    "deploy the plan again.")
        dead = self._dead_workers() if isinstance(error, ray.exceptions.RayChannelError) else []
        if isinstance(error, ray.exceptions.RayActorError) or dead:
            which = f"{', '.join(dead)}: " if dead else ""
            return PartitionerError(f"a device worker died while serving ({which}{ray_instance.first_line(error)}). "
                                    f"{removed} Fix: see the worker's log (ray logs), then deploy again.")
        if isinstance(error, (ray.exceptions.RayChannelTimeoutError, ray.exceptions.GetTimeoutError)):
            emulated = emulated_places(self.devices, self.plan.targets)
            slow = (f" ({', '.join(emulated)} ran on the CPU in place of {'their' if len(emulated) > 1 else 'its'} "
                    "device, where a request can take far longer)" if emulated else "")
            return PartitionerError(f"a request took over {self.request_timeout_seconds:g} s{slow}. {removed} Fix: "
                                    f"raise the request timeout (--timeout, up to {MAX_TIMEOUT_SECONDS:g}), or look "
                                    "for a device that is stuck.")
        if isinstance(error, ray.exceptions.RayTaskError):
            return PartitionerError(f"a partition failed on its worker: {ray_instance.first_line(error.cause or error)}"
                                    f". {removed} Fix: run the plan in process (partitioner run --check) to find "
                                    "the partition.")
        return PartitionerError(f"the Ray engine failed: {type(error).__name__}: {ray_instance.first_line(error)}. "
                                f"{removed}")


def deploy_on_ray(plan: Plan | LLMPlan, *, address: str | None = None, max_in_flight: int | None = None,
                  request_timeout_seconds: float = 60.0, startup_timeout_seconds: float = 120.0,
                  threads_per_worker: int | None = None, model: torch.nn.Module | None = None
                  ) -> RayDeployment | LLMRayDeployment:
    """Start `plan` on Ray: one actor per device it uses, ready to take up to `max_in_flight` requests at once
    (default 16).

    An LLM plan (compile --workload) starts as tokens instead (partitioner/deploy/llm_engine.py): `model` with
    its weights (default: built again from where the plan says it came from), `max_in_flight` decode batches
    (default: one per device decode runs on); the deployment generates and benchmarks.

    Without `address`, a local Ray instance stands in for the plan's fleet: it
    declares the devices' resources, and a device this machine lacks is emulated
    on the CPU by its worker. With `address` ("auto" or host:port) it joins that
    cluster, which must have the resources (partitioner/deploy/resources.py).
    `threads_per_worker` is each worker's torch threads; by default a local
    instance shares this machine's cores among its workers, and a joined
    cluster's workers keep torch's own default.
    """
    if isinstance(plan, LLMPlan):
        from partitioner.deploy.llm_engine import deploy_llm_on_ray

        return deploy_llm_on_ray(plan, model if model is not None else plan.built_model(), address=address,
                                 batches_in_flight=max_in_flight, timeout_seconds=request_timeout_seconds,
                                 startup_timeout_seconds=startup_timeout_seconds,
                                 threads_per_worker=threads_per_worker)
    max_in_flight = 16 if max_in_flight is None else max_in_flight
    ray = require_ray()
    check_timeout(request_timeout_seconds, "a request timeout", "--timeout")
    check_timeout(startup_timeout_seconds, "a startup timeout", "startup_timeout_seconds")
    if not (isinstance(max_in_flight, int) and max_in_flight >= 1):
        raise PartitionerError(f"max_in_flight must be a whole number of at least 1, got {max_in_flight!r}. Fix: "
                               "pass e.g. 8.")
    module, graph = _stages(plan)
    records = {t.name: t for t in plan.targets}
    places = [records[name] for name in dict.fromkeys(stage.target for stage in graph.stages)]
    needed = resources_needed(places)
    channels = channel_memory(graph, plan, request_bytes(module.graph_module), ray_buffer_bytes())
    owns_ray = not ray.is_initialized()
    store_bytes = None
    if owns_ray and not address:
        store_bytes = local_store_bytes()
        channels.check(max_in_flight, store_bytes, "this machine's Ray object store")
    if threads_per_worker is None and owns_ray and not address:
        # One core is left to the driver, which spins while it waits for results (see RayDeployment._outputs).
        threads_per_worker = max(1, ((os.cpu_count() or 1) - 1) // len(places))
    groups: list[Any] = []
    workers: dict[str, Any] = {}
    started = StartedRay() if owns_ray else None  # what to end, even if the start itself is cut short
    try:
        if owns_ray:
            started = ray_instance.start(ray, address, needed, store_bytes)
        check_cluster(ray, needed, channels, max_in_flight, address)
        groups, slots = reserve_hosts(ray, places, startup_timeout_seconds)
        workers = start_workers(ray, places, slots, graph, module, {p.index: p for p in plan.partitions},
                                threads_per_worker)
        devices, nodes, over_nccl = _ready(ray, workers, graph, startup_timeout_seconds)
    except BaseException as error:
        remove(ray, workers.values(), groups, started)
        fault = start_fault(ray, error, startup_timeout_seconds)
        if fault is None:
            raise
        raise fault from error
    emulated = emulated_places(devices, plan.targets)
    if emulated:  # the workers' own warnings stay in their logs
        warnings.warn(f"{', '.join(emulated)}: not on its own hardware here, emulated on the CPU", stacklevel=2)
    return RayDeployment(plan, graph, workers, groups, started, max_in_flight, request_timeout_seconds,
                         over_nccl, nodes, devices)


def _stages(plan: Plan) -> tuple[Any, StageGraph]:
    """The plan's partitioned module (on the CPU: each worker moves its own partitions) and its stages."""
    program = plan.captured_model().program
    memory_kept_whole(annotate(program), plan.partitions, "Ray's workers")
    module = build_partitioned_module(program, plan.partitions, {t.name: torch.device("cpu") for t in plan.targets})
    graph = stage_graph(module)
    if not graph.stages:
        raise PartitionerError(f"{plan.model.name} computes nothing on any device (its outputs do not come from "
                               "an op on a tensor), so there is nothing to serve. Fix: serve a model whose forward "
                               "computes tensors from its inputs.")
    return module, graph


def _ready(ray: Any, workers: Mapping[str, Any], graph: StageGraph, timeout: float
           ) -> tuple[dict[str, str], dict[str, str], set[int]]:
    """Wait for the workers: the torch device and Ray node of each, and the partitions that travel over NCCL
    (which their workers keep on the device)."""
    described = dict(zip(workers, ray.get([w.describe.remote() for w in workers.values()], timeout=timeout)))
    cuda_places = {place for place, (device, _) in described.items() if device.startswith("cuda")}
    over_nccl = device_to_device(graph, cuda_places)
    ray.get([worker.keep_on_device.remote([s.partition for s in graph.stages
                                           if s.target == place and s.partition in over_nccl])
             for place, worker in workers.items()], timeout=timeout)
    return ({place: device for place, (device, _) in described.items()},
            {place: node for place, (_, node) in described.items()}, over_nccl)


def device_to_device(graph: StageGraph, cuda_places: set[str]) -> set[int]:
    """The partitions on CUDA workers whose results only other CUDA workers read: they travel over NCCL."""
    place_of = {stage.partition: stage.target for stage in graph.stages}
    return {partition for partition, readers in graph.consumers.items()
            if place_of[partition] in cuda_places and readers
            and all(r is not None and place_of[r] in cuda_places and place_of[r] != place_of[partition]
                    for r in readers)}
