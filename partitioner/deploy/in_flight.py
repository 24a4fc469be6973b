"""How many requests a deployment may keep in flight: the shared memory its Ray Compiled Graph holds per request.

Ray gives every channel of a compiled graph between two processes of a node one shared-memory buffer per
execution in flight (`num_shm_buffers = _max_inflight_executions` in ray/dag/compiled_dag_node.py), each of
`DAGContext.buffer_size_bytes` (1 MB) at least; a message larger than that gets a buffer of its own size and
the first is not freed (shared_memory_channel.py, `_create_reader_refs`). Every buffer lives in the node's
object store. Past the store, Ray spills buffers into files, one descriptor each, until the raylet dies of
"Too many open files" and the workers with it; so the engine refuses, before it starts anything, a number in
flight whose buffers the store cannot hold. The count is an upper bound: it takes every channel to be
within one node (a channel to another node has one buffer whatever the number in flight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from partitioner.deploy.stages import StageGraph
from partitioner.errors import PartitionerError
from partitioner.plan import Plan
from partitioner.units import format_bytes

# The share of the object store the channels may take: the rest holds what Ray itself puts there (the
# workers' partitions on their way to them, results of the engine's own calls).
CHANNEL_SHARE_OF_STORE = 0.8


@dataclass(frozen=True, slots=True)
class ChannelMemory:
    """The shared memory one request in flight holds: one buffer in each channel between two processes."""

    bytes_per_request: int
    channels: int

    def most_in_flight(self, store_bytes: float) -> int:
        """The most requests in flight whose buffers fit in the channels' share of a store of `store_bytes`."""
        return int(store_bytes * CHANNEL_SHARE_OF_STORE // self.bytes_per_request)

    def check(self, in_flight: int, store_bytes: float, where: str) -> None:
        """Refuse `in_flight` requests in flight if their buffers do not fit a store of `store_bytes`."""
        most = self.most_in_flight(store_bytes)
        if in_flight <= most:
            return
        fix = (f"serve at most {most} in flight (--concurrency {most})" if most else
               "free memory (and /dev/shm) where Ray runs, or join a cluster with larger nodes (--address)")
        share = int(store_bytes * CHANNEL_SHARE_OF_STORE)
        raise PartitionerError(
            f"{in_flight} requests in flight need {format_bytes(in_flight * self.bytes_per_request)} of Ray's "
            f"shared memory ({format_bytes(self.bytes_per_request)} each: a buffer in each of the plan's "
            f"{self.channels} channels between processes), over the {format_bytes(share)} {where} can give "
            f"them. Fix: {fix}.")


def channel_memory(graph: StageGraph, plan: Plan, input_bytes: int, buffer_bytes: int) -> ChannelMemory:
    """The shared memory per request in flight of `graph` run one worker per place.

    A stage's results cross processes when a stage of another place, or the driver, reads them (a compiled
    graph may not end in a result nobody reads, so those go to the driver too); the request itself goes from
    the driver to the stages that read it. `input_bytes` is the request's size, `buffer_bytes` Ray's
    smallest buffer.
    """
    place = {stage.partition: stage.target for stage in graph.stages}
    sizes = _result_bytes(plan)
    crossing = [partition for partition, readers in graph.consumers.items()
                if not readers or any(reader is None or place[reader] != place[partition] for reader in readers)]
    total = _buffer_bytes(input_bytes, buffer_bytes) + sum(_buffer_bytes(sizes[p], buffer_bytes) for p in crossing)
    return ChannelMemory(total, len(crossing) + 1)


def request_bytes(graph_module: torch.fx.GraphModule) -> int:
    """The size of one request's tensors, from the shapes the model was captured with."""
    values = [node.meta.get("val") for node in graph_module.graph.nodes if node.op == "placeholder"]
    return sum(value.numel() * value.element_size() for value in values if isinstance(value, torch.Tensor))


def ray_buffer_bytes() -> int:
    """The smallest buffer of a compiled graph's channel (Ray's DAGContext, 1 MB unless configured)."""
    from ray.dag import DAGContext

    return int(DAGContext.get_current().buffer_size_bytes)


def local_store_bytes() -> int:
    """The object store a local Ray instance gets on this machine: Ray's own default (a share of the free
    memory, within /dev/shm), worked out before Ray starts so that it can be checked and then passed to it."""
    from ray._private import utils

    return int(utils.resolve_object_store_memory(utils.estimate_available_memory()))


def _result_bytes(plan: Plan) -> Mapping[int, int]:
    """Each partition's results in bytes: the sizes of the values it hands on, as the plan priced them."""
    priced = {value.producer: value.num_bytes for value in plan.problem.values}
    written = {node.name: node.bytes_written for node in plan.nodes}
    return {p.index: sum(priced.get(name, written.get(name, 0)) for name in p.outputs) for p in plan.partitions}


def _buffer_bytes(message_bytes: int, buffer_bytes: int) -> int:
    """One buffer for a message: Ray's smallest, and where the message is larger, one of its size besides."""
    return buffer_bytes + (message_bytes if message_bytes > buffer_bytes else 0)
