"""The Ray engine: a plan runs as one actor per device, computes what the model computes, pipelines requests,
and leaves nothing running after a fault.

Each test starts its own local Ray instance (about 5 s): the fleet's devices are
custom resources of this one machine, and every worker runs on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch
from torch import nn

import partitioner
from partitioner.deploy.stages import run_stages, stage_graph
from partitioner.errors import PartitionerError
from partitioner.execution.split import split
from partitioner.frontend.op_graph import annotate
from partitioner.plan import Plan
from targets.fleet import load_fleet

ray = pytest.importorskip("ray")
from partitioner.deploy.ray_engine import deploy_on_ray  # noqa: E402
from partitioner.deploy.ray_instance import descendants, running  # noqa: E402
from tests.partitioner.deploy.test_serve_command import command_line  # noqa: E402

FLEET = "npu-example=2,cuda-h100=1"


class TwoHalves(nn.Module):
    """Eight square layers: enough work per half (tens of milliseconds on a CPU) that Ray's own cost is small."""

    def __init__(self, width: int = 1024, layers: int = 8):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        middle = None
        for index, layer in enumerate(self.layers):
            x = torch.relu(layer(x))
            if index == len(self.layers) // 2 - 1:
                middle = x
        return x, middle.sum(-1)


def staged(plan: Plan, places: tuple[str, ...]) -> Plan:
    """`plan` cut into len(places) consecutive stages of about equal op count, stage k on places[k] (an op that
    place does not support on the fallback)."""
    graph = annotate(plan.captured_model().program)
    assignment: dict[str, str] = {}
    for position, node in enumerate(graph):
        terms = plan.problem.node(node.name)
        place = places[position * len(places) // len(graph)]
        assignment[node.name] = assignment[terms.follows] if terms.follows else (
            place if place in terms.compute_seconds else plan.fallback)
    return dataclasses.replace(plan, placement=assignment, partitions=split(graph, assignment))


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    return TwoHalves().to(torch.bfloat16).eval(), (torch.randn(128, 1024, dtype=torch.bfloat16),)  # npu-example: bf16


@pytest.fixture(scope="module")
def two_stage_plan(model_and_inputs) -> Plan:
    model, inputs = model_and_inputs
    plan = partitioner.compile(model, inputs, load_fleet(FLEET), objective="throughput", time_limit_seconds=2)
    return staged(plan, ("npu-example.0", "cuda-h100"))


@pytest.fixture(autouse=True)
def no_ray_left_running():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_stages_run_in_process_compute_what_the_model_computes(two_stage_plan, model_and_inputs):
    model, inputs = model_and_inputs
    module = two_stage_plan.module({"cuda-h100": "cpu"})
    graph = stage_graph(module)
    assert [stage.target for stage in graph.stages] == ["npu-example.0", "cuda-h100"]
    outputs = run_stages(graph, {p.index: module.submodule(p) for p in two_stage_plan.partitions},
                         graph.flat_inputs(inputs, {}))
    torch.testing.assert_close(outputs, model(*inputs))


def test_a_deployed_plan_returns_the_models_outputs_from_one_actor_per_device(two_stage_plan, model_and_inputs):
    model, inputs = model_and_inputs
    with deploy_on_ray(two_stage_plan, max_in_flight=4) as deployment:
        assert set(deployment.workers) == {"npu-example.0", "cuda-h100"}
        torch.testing.assert_close(deployment(*inputs), model(*inputs))
        named = {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)}
        assert sum(name.startswith("partitioner-") for name in named) == 2


@pytest.mark.slow  # a timing figure (13-60 s, and a loaded machine can miss it): benchmarks/ray_serving.py
def test_requests_in_flight_overlap_the_stages_and_serve_more_per_second(two_stage_plan):
    """Two stages, four requests in flight: each device works on a different request at once. (Best of three
    short runs each way, interleaved, so a moment of noise on a small machine decides nothing.)"""
    with deploy_on_ray(two_stage_plan, max_in_flight=4) as deployment:
        runs = [deployment.benchmark(requests=40, concurrency=concurrency) for _ in range(3) for concurrency in (1, 4)]
    one_at_a_time = max((run for run in runs if run.concurrency == 1), key=lambda run: run.requests_per_second)
    pipelined = max((run for run in runs if run.concurrency == 4), key=lambda run: run.requests_per_second)
    assert pipelined.requests_per_second > 1.25 * one_at_a_time.requests_per_second, (
        f"{pipelined.requests_per_second:.1f} req/s with 4 in flight, {one_at_a_time.requests_per_second:.1f} alone")
    assert sum(one_at_a_time.utilisation.values()) < 1 < sum(pipelined.utilisation.values()), (
        "alone, one device works at a time; pipelined, both at once")
    assert all(0 < share <= 1.05 for share in pipelined.utilisation.values())
    assert one_at_a_time.latency_percentile(50) <= pipelined.latency_percentile(99)


def test_a_dead_worker_ends_the_deployment_with_one_error_and_nothing_left_running(two_stage_plan, model_and_inputs):
    _, inputs = model_and_inputs
    ray.init(num_cpus=1, num_gpus=1, resources={"npu-example": 2}, include_dashboard=False, log_to_driver=False)
    deployment = deploy_on_ray(two_stage_plan, max_in_flight=2)
    deployment(*inputs)
    ray.kill(deployment.workers["cuda-h100"])
    with pytest.raises(PartitionerError, match="a device worker died"):
        deployment(*inputs)
    assert ray.is_initialized(), "a cluster the deployment joined is left running"
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("partitioner-")]
    assert all(group["state"] == "REMOVED" for group in ray.util.placement_group_table().values())
    with pytest.raises(PartitionerError, match="shut down"):
        deployment(*inputs)


class ConstantFirst(nn.Module):
    """Its first ops compute from constants alone (a ramp the input is shifted by), as a mask or positions do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.relu(torch.arange(8, dtype=torch.float32).reshape(2, 4) * 2.0 - 3.0)
        return torch.relu(x + ramp) * 2


def test_a_stage_that_reads_no_input_runs_on_ray():
    model, inputs = ConstantFirst(), (torch.randn(2, 4),)
    plan = partitioner.compile(model, inputs, load_fleet(FLEET), objective="throughput", time_limit_seconds=2)
    plan = staged(plan, ("npu-example.0", "cuda-h100"))
    assert not stage_graph(plan.module({"cuda-h100": "cpu"})).stages[0].upstream, "the first stage reads nothing"

    with deploy_on_ray(plan, max_in_flight=2) as deployment:
        torch.testing.assert_close(deployment(*inputs), model(*inputs))


def test_a_local_instance_leaves_no_process_behind_even_after_its_raylet_died(two_stage_plan, model_and_inputs):
    """A raylet that dies (killed, or out of file descriptors) leaves its workers and agents to live on for minutes:
    the deployment that started Ray ends every process of it."""
    _, inputs = model_and_inputs
    deployment = deploy_on_ray(two_stage_plan, max_in_flight=2)
    deployment(*inputs)
    node = ray._private.worker._global_node
    processes = descendants({info.process.pid for infos in node.all_processes.values() for info in infos})
    assert any(command_line(pid).startswith("ray::DeviceWorker") for pid in processes)
    os.kill(node.all_processes["raylet"][0].process.pid, signal.SIGKILL)

    deployment.shutdown()

    assert not ray.is_initialized()
    assert not [command_line(pid) for pid, started in processes.items() if running(pid, started)]


def test_a_request_past_its_timeout_is_one_error_and_the_deployment_is_removed(two_stage_plan, model_and_inputs):
    _, inputs = model_and_inputs
    deployment = deploy_on_ray(two_stage_plan, max_in_flight=2, request_timeout_seconds=1e-4)
    with pytest.raises(PartitionerError, match="took over 0.0001 s"):
        deployment(*inputs)
    assert not ray.is_initialized(), "the deployment started Ray, so its fault shuts Ray down too"


def test_a_cluster_without_the_plans_devices_is_refused_before_anything_starts(two_stage_plan):
    ray.init(num_cpus=1, resources={"npu-example": 1}, include_dashboard=False, log_to_driver=False)
    with pytest.raises(PartitionerError, match=r"lacks the plan's devices: 1 x GPU \(it has 0\)") as refused:
        deploy_on_ray(two_stage_plan)
    assert f"ray start --address={ray.get_runtime_context().gcs_address} --num-gpus=1" in str(refused.value), (
        "the fix names the cluster's own address, not a made-up port")
    assert ray.is_initialized(), "a cluster the deployment joined is left running"
    assert not ray.util.list_named_actors(all_namespaces=True)


def test_devices_another_deployment_holds_are_refused_at_once_not_waited_for(two_stage_plan):
    with deploy_on_ray(two_stage_plan, max_in_flight=2):
        with pytest.raises(PartitionerError, match=r"others hold them now: .*1 x GPU \(0 free\)"):
            deploy_on_ray(two_stage_plan, startup_timeout_seconds=60)
        assert sum(a["name"].startswith("partitioner-") for a in ray.util.list_named_actors(all_namespaces=True)) == 2


def test_a_plan_on_two_hosts_runs_on_two_ray_nodes(model_and_inputs):
    from ray.cluster_utils import Cluster

    model, inputs = model_and_inputs
    fleet = load_fleet("two-hosts")
    plan = partitioner.compile(model, inputs, fleet, objective="throughput", time_limit_seconds=2)
    plan = staged(plan, ("npu-example.0", "cuda-h100.0"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"npu-example": 8}})
    cluster.add_node(num_cpus=1, num_gpus=2)
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        with deploy_on_ray(plan) as deployment:
            torch.testing.assert_close(deployment(*inputs), model(*inputs))
            nodes = deployment.nodes
        assert nodes["npu-example.0"] != nodes["cuda-h100.0"], "each fleet host's devices sit on a node of their own"
    finally:
        ray.shutdown()
        cluster.shutdown()
