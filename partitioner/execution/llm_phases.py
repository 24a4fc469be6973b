"""Run each phase of an LLM plan as placed, and check it against the model: a prefill and a decode step.

An LLM plan places the ops of two graphs (partitioner/llm/planning.py): a prefill of the workload's longest
prompt into a static KV cache, and a decode step of its batch. They were captured from the model's weightless
twin, with its layer stack grown from a few layers (partitioner/llm/layer_stack.py), so their nodes are named
otherwise than a capture of the model with its weights. This module captures the model with its weights at the
plan's sizes, lays its ops beside the plan's (`PhaseOp`: each op's aten name and module, in graph order; a
weightless capture may differ by an op, such as a `contiguous` the meta device keeps), gives each op the place
the plan gave its counterpart, and runs the phase split into partitions, every place on this machine's CPU,
against the model's own exported program: the logits and every KV cache tensor it writes are compared.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from partitioner.errors import PartitionerError
from partitioner.execution.check import REDUCED_PRECISION, CheckResult, check_partitioned
from partitioner.execution.partitioned_module import build_partitioned_module
from partitioner.execution.split import split
from partitioner.execution.tensor_parallel import (computing_dtype, generate_as_member, require_weights,
                                                   same_steps)
from partitioner.frontend.capture import capture
from partitioner.frontend.input_containers import register_input_containers
from partitioner.frontend.op_graph import OpGraph, annotate
from partitioner.llm.deployment import LLMPlan, PhaseOp
from partitioner.llm.experts import experts_sharded
from partitioner.llm.joint import phase_assignment
from partitioner.llm.model_calls import cache_argument
from partitioner.llm.phases import (DECODE, PREFILL, rolling_windows, says_how_to_call_it, serving_inputs,
                                    sliding_windows_as_static, vocabulary_size)


@dataclass(frozen=True, slots=True)
class PhaseCheck:
    """One phase of a plan run as placed beside the model: its size (prompt tokens, or decode batch), the
    partitions it ran as, the places they ran for, the ops laid beside none of the plan's, and the comparison."""

    phase: str
    size: int
    partitions: int
    places: tuple[str, ...]
    unmatched_ops: int
    check: CheckResult


@dataclass(frozen=True, slots=True)
class GenerationCheck:
    """Greedy generation through the placed phases beside the model's own `generate`: for how many of the new
    tokens the two agree. In float16 and bfloat16 a capture and the model's eager run may round apart, and
    greedy choices between near-equal logits with them; in float32 every token must agree."""

    prompts: int
    new_tokens: int
    same_steps: int
    reduced_precision: bool

    @property
    def passed(self) -> bool:
        return self.same_steps == self.new_tokens or self.reduced_precision


def check_generation(plan: LLMPlan, model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int
                     ) -> GenerationCheck | None:
    """`generate_as_placed` beside `model.generate` (greedy, the same prompts and length); None for a model that
    says how to call it (prefill_inputs, decode_inputs) but not how to hand a prefilled cache to a decode batch."""
    if says_how_to_call_it(model):
        return None
    got = generate_as_placed(plan, model, prompts, new_tokens)
    expected, _ = generate_as_member(model, prompts, new_tokens)
    start = prompts.shape[1]
    return GenerationCheck(prompts.shape[0], new_tokens, same_steps(expected[:, start:], got[:, start:]),
                           computing_dtype(model) in REDUCED_PRECISION)


def check_phases(plan: LLMPlan, model: torch.nn.Module, *, seed: int = 0) -> tuple[PhaseCheck, ...]:
    """Prefill and a decode step of `model` (with its weights), each split as `plan` places it, beside the model."""
    workload, best = plan.workload, plan.best
    sizes = {PREFILL: workload.prompt.longest, DECODE: best.batch_size}
    checks = []
    with as_planned(plan, model) as inputs:
        for phase, size in sizes.items():
            example = _filled(phase_inputs(inputs, phase, size, workload.context_tokens), model, phase, seed)
            captured, module, partitions, unmatched = placed_phase(plan, model, phase, example)
            result = check_partitioned(captured.program.module(), module, captured.example_inputs)
            places = tuple(dict.fromkeys(partition.target for partition in partitions))
            checks.append(PhaseCheck(phase, size, len(partitions), places, unmatched, result))
    return tuple(checks)


def generate_as_placed(plan: LLMPlan, model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int
                       ) -> torch.Tensor:
    """Greedy generation through the placed phases, as a co-located deployment serves: each prompt prefilled
    alone into its own KV cache, the caches handed to one decode batch, then decode steps of the whole batch
    reading and writing that cache; an end-of-sequence token is never chosen, as `generate` with
    `min_new_tokens` does. The token ids, prompts included (`generate`'s layout)."""
    batch, prompt = prompts.shape
    context = prompt + new_tokens
    with as_planned(plan, model) as inputs:
        if inputs is model:
            raise PartitionerError(f"{plan.model_name} says how to call it (prefill_inputs, decode_inputs), but not "
                                   "how to hand a prefilled cache to a decode batch, so generation as placed runs "
                                   "transformers causal LMs only. Fix: check its phases as placed (check_phases).")
        _, prefill, _, _ = placed_phase(plan, model, PREFILL, phase_inputs(inputs, PREFILL, prompt, context))
        _, decode, _, _ = placed_phase(plan, model, DECODE, phase_inputs(inputs, DECODE, batch, context))
        cache = phase_inputs(inputs, DECODE, batch, context)[inputs.cache_argument]
        chosen, ends = [], _end_tokens(model)
        with torch.inference_mode():
            for row in range(batch):
                own = phase_inputs(inputs, PREFILL, prompt, context)[inputs.cache_argument]
                logits = prefill(input_ids=prompts[row:row + 1], **{inputs.cache_argument: own},
                                 **inputs.positions(0, prompt), use_cache=True).logits
                chosen.append(_greedy(logits[0, -1], ends))
                for into, held in zip(cache.layers, own.layers, strict=True):  # the cache handed to decode
                    _hand_over(held, into, row)
            tokens = [torch.stack(chosen)]
            for step in range(new_tokens - 1):
                logits = decode(input_ids=tokens[-1][:, None], **{inputs.cache_argument: cache},
                                **inputs.positions(prompt + step, 1), use_cache=True).logits
                tokens.append(_greedy(logits[:, -1], ends))
    return torch.cat([prompts, torch.stack(tokens, dim=1)], dim=1)


def _end_tokens(model: torch.nn.Module) -> list[int]:
    """The token ids that end a sequence in `model`'s generation config (none where it has none)."""
    ends = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if ends is None else [ends] if isinstance(ends, int) else list(ends)


def _greedy(logits: torch.Tensor, ends: list[int]) -> torch.Tensor:
    """The most likely token of each row of `logits`, an end-of-sequence token left out (an id past the
    vocabulary, a config's default a small model kept, ends nothing)."""
    ends = [end for end in ends if 0 <= end < logits.shape[-1]]
    if ends:
        logits = logits.clone()
        logits[..., ends] = float("-inf")
    return logits.argmax(-1)


def _hand_over(held: Any, into: Any, row: int) -> None:
    """One layer's cache of one prefilled prompt handed to row `row` of a decode batch's: its keys and values (or a
    state-space layer's convolution and SSM states), and the position counters the cache keeps beside them (the
    prompts of a batch are of one length here)."""
    for name, value in vars(held).items():
        for key, tensor in (value.items() if isinstance(value, dict) else [(None, value)]):
            if isinstance(tensor, torch.Tensor):
                target = getattr(into, name) if key is None else getattr(into, name)[key]
                (target if tensor.dim() == 0 else target[row]).copy_(tensor if tensor.dim() == 0 else tensor[0])


@contextlib.contextmanager
def as_planned(plan: LLMPlan, model: torch.nn.Module):
    """`model` as the plan was made on it (its experts in the plan's shards), and how to call it in each phase."""
    require_weights(model)
    if not plan.phase_ops:
        raise PartitionerError("the plan keeps no list of its phases' ops (a plan written before plans recorded "
                               "them). Fix: compile the model again with --workload.")
    with experts_sharded(model, plan.expert_shards) if plan.expert_shards else contextlib.nullcontext():
        register_input_containers(model)
        yield serving_inputs(model)


def phase_inputs(inputs: Any, phase: str, size: int, context: int) -> Any:
    return inputs.prefill_inputs(size, context) if phase == PREFILL else inputs.decode_inputs(size, context)


def placed_phase(plan: LLMPlan, model: torch.nn.Module, phase: str, example: Any):
    """The model captured for `phase` on `example`, its partitioned module as the plan places it (every place on
    the CPU), its partitions and the ops laid beside none of the plan's."""
    windows = rolling_windows(example.get("past_key_values") if isinstance(example, dict) else None)
    if windows:
        raise PartitionerError(f"{plan.model_name}'s sliding-window attention keeps {min(windows)} tokens, fewer than "
                               f"the plan's {plan.workload.context_tokens} of context: its cache rolls as a request "
                               "goes on, which one captured step cannot follow, so it is not run here. Fix: plan a "
                               "workload whose longest prompt plus longest output fits the window.")
    with sliding_windows_as_static():
        captured = capture(model, example, f"{plan.model_name} {phase}")
    graph = annotate(captured.program)
    assignment, unmatched = placed_like(graph, plan.phase_ops[phase], phase_assignment(plan.best.assignment, phase))
    partitions = split(graph, assignment)
    devices = {partition.target: torch.device("cpu") for partition in partitions}
    return captured, build_partitioned_module(captured.program, partitions, devices), partitions, unmatched


def placed_like(graph: OpGraph, planned: Sequence[PhaseOp], places: Mapping[str, str]
                ) -> tuple[dict[str, str], int]:
    """Each node of `graph` placed where the plan placed its counterpart among `planned` (the same op of the same
    module, in order), and how many nodes have none: those run where the node before them runs."""
    ours = [(node.op, node.module_path) for node in graph]
    theirs = [(op.op, op.module) for op in planned]
    counterpart: dict[int, str] = {}
    for block in difflib.SequenceMatcher(None, ours, theirs, autojunk=False).get_matching_blocks():
        for offset in range(block.size):
            counterpart[block.a + offset] = planned[block.b + offset].name
    if len(counterpart) < len(graph.nodes) / 2:
        raise PartitionerError("the model's ops are not the ones the plan placed (fewer than half are laid beside "
                               "the plan's): the plan is of another model. Fix: give the model the plan was "
                               "compiled for.")
    assignment: dict[str, str] = {}
    last = places[planned[0].name]
    for index, node in enumerate(graph):
        last = places[counterpart[index]] if index in counterpart else last
        assignment[node.name] = last
    return assignment, len(graph.nodes) - len(counterpart)


def _filled(example: Any, model: torch.nn.Module, phase: str, seed: int) -> Any:
    """The phase's example inputs with token ids from the vocabulary and, for a decode step, a KV cache (or
    state-space states) of values (zeros would hide a read from the wrong place), the same for a seed."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(example, dict) and isinstance(example.get("input_ids"), torch.Tensor):
        ids = example["input_ids"]
        example["input_ids"] = torch.randint(0, vocabulary_size(model), ids.shape, generator=generator).to(ids.device)
    cache = example.get(cache_argument(model)) if isinstance(example, dict) else None
    if phase == DECODE and cache is not None:
        for layer in getattr(cache, "layers", ()):
            for held in (getattr(layer, name, None) for name in ("keys", "values", "conv_states", "recurrent_states")):
                for tensor in (held.values() if isinstance(held, dict) else [held]):
                    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                        tensor.copy_(torch.randn(tensor.shape, generator=generator).to(tensor.dtype))
    return example
