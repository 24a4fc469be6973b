"""How many requests a deployment may keep in flight: the shared memory its compiled graph's channels hold."""

from __future__ import annotations

import pytest

from partitioner.deploy.in_flight import CHANNEL_SHARE_OF_STORE, channel_memory, request_bytes
from partitioner.deploy.stages import stage_graph
from partitioner.errors import PartitionerError
from tests.partitioner.deploy.test_ray_engine import model_and_inputs, two_stage_plan  # noqa: F401 (fixtures)


def test_each_request_in_flight_holds_a_buffer_in_every_channel_between_processes(two_stage_plan):
    """The request goes driver -> npu-example.0 (256 KiB), its results npu-example.0 -> cuda-h100 (512 KiB), and
    cuda-h100's results -> driver (256 KiB): three channels, a buffer each, and a message over Ray's buffer size
    a buffer of its own size besides."""
    module = two_stage_plan.module({"cuda-h100": "cpu"})
    graph = stage_graph(module)
    assert request_bytes(module.graph_module) == 128 * 1024 * 2

    memory = channel_memory(graph, two_stage_plan, request_bytes(module.graph_module), buffer_bytes=300_000)

    assert memory.channels == 3
    assert memory.bytes_per_request == 3 * 300_000 + 2 * 128 * 1024 * 2


def test_more_in_flight_than_the_object_store_holds_is_refused_with_the_number_that_fits(two_stage_plan):
    module = two_stage_plan.module({"cuda-h100": "cpu"})
    memory = channel_memory(stage_graph(module), two_stage_plan, request_bytes(module.graph_module), 1_000_000)
    store = 1e9
    most = memory.most_in_flight(store)
    assert most == int(store * CHANNEL_SHARE_OF_STORE // memory.bytes_per_request) > 0

    memory.check(most, store, "this machine's Ray object store")  # the number the fix gives is accepted
    with pytest.raises(PartitionerError) as refused:
        memory.check(most + 1, store, "this machine's Ray object store")

    message = str(refused.value)
    assert "\n" not in message
    assert f"{most + 1} requests in flight need" in message and f"Fix: serve at most {most} in flight" in message
