"""One device of an LLM plan served on Ray: an actor holding its partitions of both phases and the KV caches of
the layers it runs.

A phase's captured program takes its KV cache as inputs it writes in place (partitioner/llm/phases.py). Shipped
with every call, each step would copy the whole cache there and back; so each actor keeps the cache tensors its
partitions read, one set per prefill in flight and one per decode batch in flight (a slot), and the engine
(partitioner/deploy/llm_engine.py) sends only the tokens and positions. After a prefill, the prompt's part of
each cache tensor is handed from the actor that wrote it to the one that holds the decode batch's copy of it:
the copy the plan prices (partitioner/llm/joint.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
from torch.utils import _pytree as pytree

from partitioner.deploy.shipment import Shipment
from partitioner.deploy.stages import FromPartition, Stage
from partitioner.deploy.worker import present_or_cpu


@dataclass(frozen=True, slots=True)
class CacheTensor:
    """One KV cache input of a phase: its name (the same in both phases), shape and dtype, and the dimension that
    holds context positions (None: a position counter, copied whole)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    context_dim: int | None


@dataclass(frozen=True, slots=True)
class WorkerPhase:
    """What one actor runs of one phase at one size: its stages, their modules, the cache inputs they read (by
    flat input position) and, per partition, the items of its results that others read (None: all of them)."""

    stages: Mapping[int, Stage]
    modules: Mapping[int, torch.nn.Module]
    cache: Mapping[int, CacheTensor]
    kept: Mapping[int, frozenset[int] | None]
    logits: FromPartition | None = None  # where the phase's logits are, if this actor computes them
    tokens_at: int = 0  # the flat input position of the token ids


class _Inputs:
    """A request's flat inputs as a stage reads them: the cache positions from the actor's own slot."""

    def __init__(self, sent: Mapping[int, Any], resident: Mapping[int, torch.Tensor]):
        self.sent, self.resident = sent, resident

    def __getitem__(self, position: int) -> Any:
        return self.resident[position] if position in self.resident else self.sent[position]


class LLMDeviceWorker:
    """Runs the partitions of one place for every phase size it was given, over the caches it keeps."""

    def __init__(self, place: str, torch_device: str, phases: Shipment, threads: int | None = None):
        """`phases`: a shipment (partitioner/deploy/shipment.py) of phase key -> WorkerPhase."""
        if threads:
            torch.set_num_threads(threads)
        self.place = place
        self.device = present_or_cpu(torch.device(torch_device), place)
        self.phases: dict[str, WorkerPhase] = {}
        self.slots: dict[tuple[str, int], dict[int, torch.Tensor]] = {}
        self.seconds: list[float] = []
        self.weights: dict[str, torch.Tensor] = {}  # by the model's own names, on this device
        for key, phase in phases.opened().items():
            self._take(key, phase)

    def describe(self) -> tuple[str, str]:
        """The torch device this worker runs on, and the Ray node the cluster put it on."""
        import ray

        return str(self.device), ray.get_runtime_context().get_node_id()

    def add_phase(self, key: str, phase: Shipment) -> None:
        """Take the partitions of another phase size (a prompt length first served after the start)."""
        self._take(key, phase.opened())

    def _take(self, key: str, phase: WorkerPhase) -> None:
        """Hold a phase's partitions on this device; a weight an earlier phase brought (the same name, shape and
        dtype: phases are captures of one model) is shared, not held twice."""
        for module in phase.modules.values():
            _share_weights(module, self.weights)
        modules = {index: module.to(self.device) for index, module in phase.modules.items()}
        for module in modules.values():
            self.weights.update({name: tensor for name, tensor in _named_tensors(module)})
        self.phases[key] = replace(phase, modules=modules)

    def run(self, key: str, slot: int, partition: int, sent: Mapping[int, Any], fed: tuple[int, int | None],
            *upstream: Any) -> Any:
        """Run `partition` of phase `key` for the slot's request or batch: `sent` holds the flat inputs the engine
        sends (tokens, positions); `upstream` begins with `fed[0]` results of earlier calls holding chosen tokens
        (at item `fed[1]`), which fill the first rows of the sent tokens, then the results of the partitions it
        reads, then values it only waited for. Returns the items of its results that others read (the rest None);
        the logits as the token each row chooses greedily at its last position (what the engine samples, without
        sending the vocabulary's scores)."""
        phase = self.phases[key]
        stage = phase.stages[partition]
        feeds, upstream = upstream[:fed[0]], upstream[fed[0]:]
        if feeds:
            chosen = torch.cat([_item(result, fed[1]).reshape(-1) for result in feeds])
            tokens = sent[phase.tokens_at].clone()
            tokens[:len(chosen), 0] = chosen
            sent = {**sent, phase.tokens_at: tokens}
        results = upstream[:sum(1 for source in stage.upstream if isinstance(source, FromPartition))]
        arguments = stage.arguments_given(_Inputs(sent, self._slot(key, slot)), results)
        arguments = pytree.tree_map_only(torch.Tensor, lambda tensor: tensor.to(self.device), arguments)
        started = time.perf_counter()
        with torch.inference_mode():
            returned = phase.modules[partition](*arguments)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds.append(time.perf_counter() - started)
        kept = phase.kept[partition]
        if kept is not None and isinstance(returned, (tuple, list)):
            returned = tuple(item if index in kept else None for index, item in enumerate(returned))
        if phase.logits is not None and phase.logits.partition == partition:
            returned = _with_tokens(returned, phase.logits.item)
        return pytree.tree_map_only(torch.Tensor, lambda tensor: tensor.cpu(), returned)

    def take_prompt(self, key: str, slot: int, prompt_tokens: int, *_waited: Any) -> dict[str, torch.Tensor]:
        """The prompt's part of each cache tensor this actor wrote for prefill slot `slot`, by name; the slot is
        freed. `_waited`: the prefill's results here, so that this runs after them."""
        cache = self.phases[key].cache
        held = self.slots.pop((key, slot), {})
        return {cache[position].name: _prompt_part(tensor, cache[position].context_dim, prompt_tokens).cpu()
                for position, tensor in held.items()}

    def put_prompt(self, key: str, slot: int, row: int, *parts: Mapping[str, torch.Tensor]) -> None:
        """Copy a prefilled prompt's cache (`parts`, by name) into row `row` of decode batch slot `slot`."""
        given = {name: tensor for part in parts for name, tensor in part.items()}
        cache = self.phases[key].cache
        for position, tensor in self._slot(key, slot).items():
            part = given.get(cache[position].name)
            if part is None:
                continue
            dim = cache[position].context_dim
            if tensor.dim() == 0:
                tensor.copy_(part)
            elif dim is None:
                tensor[row].copy_(part[0])
            else:
                tensor[row].narrow(dim - 1, 0, part.shape[dim]).copy_(part[0])

    def write_back(self, key: str, slot: int, name: str, result: Any, item: int | None, *_waited: Any) -> None:
        """Copy a cache tensor's updated value, computed by a partition on another place, into the slot's own."""
        position = next(position for position, tensor in self.phases[key].cache.items() if tensor.name == name)
        self._slot(key, slot)[position].copy_(_item(result, item))

    def free(self, key: str, slot: int) -> None:
        self.slots.pop((key, slot), None)

    def busy_seconds(self) -> list[float]:
        """The run time of each partition call, oldest first (a copy)."""
        return list(self.seconds)

    def _slot(self, key: str, slot: int) -> dict[int, torch.Tensor]:
        """The cache tensors of a slot, made (zeros: a prompt attends to none of the rest) on first use; none kept
        for a phase this actor reads no cache of."""
        if not self.phases[key].cache:
            return {}
        if (key, slot) not in self.slots:
            self.slots[key, slot] = {position: torch.zeros(cache.shape, dtype=cache.dtype, device=self.device)
                                     for position, cache in self.phases[key].cache.items()}
        return self.slots[key, slot]


def _named_tensors(module: torch.nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def _share_weights(module: torch.nn.Module, held: dict[str, torch.Tensor]) -> None:
    """Point `module`'s weights at the tensors `held` under the same names (and shape and dtype)."""
    for name, tensor in list(_named_tensors(module)):
        same = held.get(name)
        if same is None or same.shape != tensor.shape or same.dtype != tensor.dtype:
            continue
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        table = owner._parameters if leaf in owner._parameters else owner._buffers
        table[leaf] = same


def _item(result: Any, item: int | None) -> Any:
    return result if item is None else result[item]


def _with_tokens(returned: Any, item: int | None) -> Any:
    """A partition's results with its logits item replaced by each row's greedy token at the last position."""
    if item is None:
        return returned[:, -1].argmax(-1)
    return tuple(value[:, -1].argmax(-1) if index == item else value for index, value in enumerate(returned))


def _prompt_part(tensor: torch.Tensor, context_dim: int | None, prompt_tokens: int) -> torch.Tensor:
    return tensor if context_dim is None else tensor.narrow(context_dim, 0, prompt_tokens)
