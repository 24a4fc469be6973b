"""One phase of an LLM plan at one size as stages for the Ray engine: what each actor runs of it, which of its
inputs are KV cache tensors (kept in actors) and which are sent per call (tokens, positions), and where its
logits come from.

The phase is captured with the model's weights and placed as the plan placed it
(partitioner/execution/llm_phases.py), split into partitions, and read as stages (partitioner/deploy/stages.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch.utils import _pytree as pytree

from partitioner.deploy.llm_worker import CacheTensor, WorkerPhase
from partitioner.deploy.stages import FromInput, FromPartition, StageGraph, stage_graph
from partitioner.errors import PartitionerError
from partitioner.execution.llm_phases import as_planned, phase_inputs, placed_phase
from partitioner.llm.deployment import LLMPlan
from partitioner.llm.phases import PREFILL, token_positions


@dataclass(frozen=True, slots=True)
class PhaseStages:
    """A phase at one size (prompt tokens for prefill, batch for decode), ready to run one actor per place."""

    key: str  # "prefill/256", "decode/16": how actors name it
    phase: str
    size: int
    graph: StageGraph
    cache: Mapping[int, CacheTensor]  # flat input position -> the cache tensor there
    holder: Mapping[str, str]  # cache tensor name -> the place whose stages read it
    sent: Mapping[int, tuple[int, ...]]  # partition -> the flat inputs the engine sends it (no cache)
    tokens_at: int  # flat position of the token ids
    positions_at: Mapping[str, int]  # flat position of each input that says where the tokens go (token_positions)
    constants: Mapping[int, Any]  # other flat inputs, the same every call (use_cache)
    logits: FromPartition
    # Cache tensor name -> where its updated value comes from, where a partition on another place than its holder
    # writes it (through an alias a partition handed on, such as a counter `to` leaves as it is): the holder
    # copies it in after the phase runs, as one memory shared by both would have it.
    write_backs: Mapping[str, FromPartition] = field(default_factory=dict)
    # Partition -> the partitions its results depend on, through others' results: a call already runs after those.
    ancestors: Mapping[int, frozenset[int]] = field(default_factory=dict)

    def places(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(stage.target for stage in self.graph.stages))


def phase_stages(plan: LLMPlan, model: torch.nn.Module, phase: str, size: int, context: int
                 ) -> tuple[PhaseStages, dict[str, WorkerPhase]]:
    """`phase` of `model` at `size` placed as `plan` places it, and what each place's actor holds of it."""
    with as_planned(plan, model) as inputs:
        example = phase_inputs(inputs, phase, size, context)
        # A cache one position longer shows which dimension holds positions (at a decode batch of one: a second
        # cache of the whole batch would be held only for its shape).
        longer = phase_inputs(inputs, phase, size if phase == PREFILL else 1, context + 1)
        _, module, _, _ = placed_phase(plan, model, phase, example)
    graph = stage_graph(module)
    flat = graph.flat_inputs((), example)
    at = {id(value): position for position, value in enumerate(flat)}
    missing = [key for key in ("input_ids", "past_key_values", "cache_position") if key not in example]
    if missing:
        raise PartitionerError(f"{plan.model_name} is called with {', '.join(example)} in its {phase}, not "
                               "input_ids, past_key_values and cache_position: the Ray engine serves causal LMs "
                               "called as transformers' are. Fix: give the model prefill_inputs/decode_inputs of "
                               "that form (partitioner/llm/phases.py).")
    cache_tensors = _tensors(example["past_key_values"])
    cache = {at[id(tensor)]: CacheTensor(f"cache{index}", tuple(tensor.shape), tensor.dtype,
                                         _context_dim(tensor, wider))
             for index, (tensor, wider) in enumerate(zip(cache_tensors, _tensors(longer["past_key_values"]),
                                                         strict=True))}
    key = f"{phase}/{size}"
    holder = _holders(graph, cache, plan.model_name, phase)
    tokens_at = at[id(example["input_ids"])]
    positions_at = {name: at[id(example[name])] for name in token_positions(0, 1) if name in example}
    sent = {stage.partition: tuple(source.position for source in stage.upstream
                                   if isinstance(source, FromInput) and source.position not in cache)
            for stage in graph.stages}
    constants = {position: value for position, value in enumerate(flat)
                 if position not in cache and position != tokens_at and position not in positions_at.values()}
    stages = PhaseStages(key, phase, size, graph, cache, holder, sent, tokens_at, positions_at, constants,
                         _logits_source(graph, plan.model_name), _write_backs(graph, cache, holder),
                         _ancestors(graph))
    return stages, _worker_phases(stages, module)


def _ancestors(graph: StageGraph) -> dict[int, frozenset[int]]:
    """Per partition, every partition whose results reach it (stages are in run order)."""
    found: dict[int, frozenset[int]] = {}
    for stage in graph.stages:
        direct = {source.partition for source in stage.upstream if isinstance(source, FromPartition)}
        found[stage.partition] = frozenset(direct.union(*(found[p] for p in direct)))
    return found


def _write_backs(graph: StageGraph, cache: Mapping[int, CacheTensor], holder: Mapping[str, str]
                 ) -> dict[str, FromPartition]:
    """The cache tensors whose updated value (the model returns its cache after its logits, tensor for tensor as
    it took it) comes from a partition on another place than the tensor's holder."""
    returned = graph.outputs[1:]
    if len(returned) != len(cache):
        raise PartitionerError(f"the model returns {len(returned)} values after its logits and takes {len(cache)} "
                               "KV cache tensors: the Ray engine cannot tell which returned value updates which "
                               "cache tensor. Fix: run the plan in process (partitioner run --check), which does "
                               "not need to.")
    place = {stage.partition: stage.target for stage in graph.stages}
    order = {stage.partition: index for index, stage in enumerate(graph.stages)}
    names = {tensor.name: position for position, tensor in cache.items()}
    found = {}
    for (name, position), source in zip(sorted(names.items(), key=lambda item: item[1]), returned):
        if not (isinstance(source, FromPartition) and name in holder and place[source.partition] != holder[name]):
            continue
        later = [stage for stage in graph.stages if stage.target == holder[name]
                 and order[stage.partition] > order[source.partition]
                 and any(isinstance(s, FromInput) and s.position == position for s in stage.upstream)]
        if later:
            raise PartitionerError(f"the plan has {holder[name]} read a KV cache tensor after a partition on "
                                   f"{place[source.partition]} updated it, and the Ray engine copies such an update "
                                   "back only after the step. Fix: run the plan in process (partitioner run "
                                   "--check), or compile again so that the cache's readers share a device.")
        found[name] = source
    return found


def _tensors(cache: Any) -> list[torch.Tensor]:
    return [value for value in pytree.tree_leaves(cache) if isinstance(value, torch.Tensor)]


def _context_dim(tensor: torch.Tensor, wider: torch.Tensor) -> int | None:
    """The dimension of a cache tensor that holds positions: the one that grows with the context (`wider` is the
    same tensor of a cache one position longer); None for a counter, or a tensor that does not grow."""
    return next((dim for dim in range(1, tensor.dim()) if wider.shape[dim] != tensor.shape[dim]), None)


def _holders(graph: StageGraph, cache: Mapping[int, CacheTensor], model: str, phase: str) -> dict[str, str]:
    """The place whose stages read each cache tensor; one place per tensor, for the tensor lives in its actor."""
    readers: dict[str, set[str]] = {}
    for stage in graph.stages:
        for source in stage.upstream:
            if isinstance(source, FromInput) and source.position in cache:
                readers.setdefault(cache[source.position].name, set()).add(stage.target)
    for name, places in readers.items():
        if len(places) > 1:
            raise PartitionerError(f"the plan of {model} has ops on {' and '.join(sorted(places))} read one KV cache "
                                   f"tensor in its {phase}; the Ray engine keeps each cache tensor in one actor. "
                                   "Fix: compile the plan again with this version, which keeps a layer's cache "
                                   "reads on one device, or run it in process (partitioner run --check).")
    return {name: next(iter(places)) for name, places in readers.items()}


def _logits_source(graph: StageGraph, model: str) -> FromPartition:
    """Where the phase's logits come from: the first of the model's outputs, named `logits`."""
    names = graph.out_spec.context if isinstance(graph.out_spec.context, (list, tuple)) else None
    source = graph.outputs[0] if graph.outputs else None
    if not names or names[0] != "logits" or not isinstance(source, FromPartition):
        raise PartitionerError(f"{model}'s outputs do not begin with logits computed by a partition, which the Ray "
                               "engine samples tokens from. Fix: serve a causal LM whose output has `logits` "
                               "first (transformers' CausalLMOutput).")
    return source


def _worker_phases(stages: PhaseStages, module: Any) -> dict[str, WorkerPhase]:
    """Per place, its stages and partitions of the phase, the cache inputs they read and the result items others
    read (the logits, values between partitions; a cache tensor a partition returns stays in its actor)."""
    read: dict[int, set[int] | None] = {stage.partition: set() for stage in stages.graph.stages}
    wanted = [argument for stage in stages.graph.stages for argument in stage.arguments
              if isinstance(argument, FromPartition)] + [stages.logits, *stages.write_backs.values()]
    for source in wanted:
        items = read[source.partition]
        if source.item is None:
            read[source.partition] = None
        elif items is not None:
            items.add(source.item)
    partitions = {p.index: p for p in module.partitions}
    phases = {}
    for place in stages.places():
        mine = {stage.partition: stage for stage in stages.graph.stages if stage.target == place}
        cache = {position: tensor for position, tensor in stages.cache.items() if stages.holder.get(tensor.name) == place}
        phases[place] = WorkerPhase(mine, {p: module.submodule(partitions[p]) for p in mine}, cache,
                                    {p: None if read[p] is None else frozenset(read[p]) for p in mine},
                                    stages.logits if stages.logits.partition in mine else None, stages.tokens_at)
    return phases

