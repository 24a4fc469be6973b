"""The two phases of serving a causal LM, each captured once for all its sizes: prefill of one prompt of any
length, and one decode step of any batch.

A phase is exported with the size that varies in it symbolic (torch.export's dynamic shapes) and annotated at
each concrete size the planner asks for (partitioner/frontend/op_graph.py), so trying five batch sizes or three
prompt lengths costs one capture, not one each. A model whose code fixes that size (it will not export with it
symbolic) is captured once per size instead.

Both phases run against a static KV cache allocated up front for the whole context, so the cache is state the
graph updates in place: the frontend counts it as memory resident where its layer's attention runs, not as data
copied in with each call. On the `meta` device nothing is allocated, so 7B and 70B shapes are planned without
weights. A decode step reads the whole static cache, as static-cache kernels do.

What a phase is called with comes from the model: a transformers causal LM gets a `StaticCache`
(`TransformersInputs`); a model of one's own that takes its past keys and values as explicit inputs, written in
place, says how by defining `prefill_inputs(prompt_tokens, context_tokens)` and `decode_inputs(batch,
context_tokens)`, each returning example inputs as `capture` takes them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch
import torch.utils._pytree as pytree

from partitioner.errors import PartitionerError
from partitioner.frontend.capture import CapturedModel, ModelSource, capture, split_inputs
from partitioner.frontend.input_containers import register_input_containers
from partitioner.frontend.mutation import written_inputs
from partitioner.frontend.op_graph import OpGraph, annotate
from partitioner.llm.layer_stack import LayerStack, grown, shallow_twin
from partitioner.llm.model_calls import (LayerCache, model_device, model_dtype, one_token_cache, token_positions,
                                         written_keys)
from partitioner.llm.recurrent_states import RecurrentStateInputs, keeps_recurrent_state

PREFILL, DECODE = "prefill", "decode"
LARGEST_BATCH = 1 << 16
# Where a transformers config states the longest context the model takes (positions it has embeddings or rotary
# scaling for), by the names configs use.
_CONTEXT_LIMIT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class ServingInputs(Protocol):
    """How a causal LM is called in each phase (a model of one's own defines these two methods)."""

    def prefill_inputs(self, prompt_tokens: int, context_tokens: int) -> Any: ...

    def decode_inputs(self, batch: int, context_tokens: int) -> Any: ...


@dataclass(frozen=True, slots=True)
class CacheLayout:
    """The KV cache of a transformers causal LM, layer by layer, as the model writes it; `measured` is false where
    the model could not be run to measure it and the layout was read off its config instead."""

    layers: tuple[LayerCache, ...]
    dtype: torch.dtype
    measured: bool = True


def cache_layout(model: torch.nn.Module) -> CacheLayout:
    """The KV cache layout of a transformers causal LM: measured by running one token through the model into a
    cache that sizes itself (transformers' lazy initialisation), so whatever the model writes (grouped heads, an
    MLA latent, per-layer widths) is what every capture's cache holds; read off the config where the model
    cannot run here."""
    text = _text_config(model)
    heads = getattr(text, "num_attention_heads", None)
    if text is not None and hasattr(text, "num_hidden_layers") and heads is None:
        raise PartitionerError(
            f"{type(model).__name__}'s config has no num_attention_heads: what it keeps between decode steps is not "
            "an attention KV cache, nor a cache of state-space layers transformers makes from its config, which is "
            "what --workload plans. Fix: plan one pass of it without --workload, or give the model "
            "prefill_inputs(prompt_tokens, context_tokens) and decode_inputs(batch, context_tokens) methods that "
            "return its inputs with the state as inputs it writes in place.")
    if text is None or heads is None or not hasattr(text, "num_hidden_layers"):
        raise PartitionerError(
            f"--workload plans a causal LM, and {type(model).__name__} is neither a transformers one (no config "
            "with num_hidden_layers and num_attention_heads) nor says how to call it. Fix: build a transformers "
            "*ForCausalLM model, or give your model prefill_inputs(prompt_tokens, context_tokens) and "
            "decode_inputs(batch, context_tokens) methods returning its example inputs, with the past keys and "
            "values as inputs it writes in place.")
    dtype = model_dtype(model)
    measured = _measured_layout(model, dtype)
    if measured is not None:
        return measured
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return CacheLayout((LayerCache(kv_heads, head_dim, head_dim),) * text.num_hidden_layers, dtype, measured=False)


def _measured_layout(model: torch.nn.Module, dtype: torch.dtype) -> CacheLayout | None:
    """The layout the model writes when one token is run through it (on its own device: on the meta device, only
    shapes are computed), or None where it cannot run eagerly there (a data-dependent op on the meta device)."""
    try:
        cache = one_token_cache(model)
    except Exception:  # noqa: BLE001 - any failure only means the config must be read instead
        return None
    layers = tuple(written_keys(layer) for layer in cache.layers)
    if None in layers:
        return None  # a layer the token did not write (not an attention cache)
    return CacheLayout(layers, dtype)


@contextlib.contextmanager
def sliding_windows_as_static() -> Iterator[None]:
    """Within, a static sliding-window cache layer whose window holds the whole context (it never rolls) gives
    its length as its tensor counter, as a full layer does, not as its Python counter. Masks read a layer's
    length for the queries' positions; a capture keeps a Python number as a constant, so a decode step captured
    with the Python counter would mask every later step as the first (Gemma 2's sliding layers)."""
    try:
        from transformers.cache_utils import StaticSlidingWindowLayer
    except ImportError:
        yield
        return
    original = StaticSlidingWindowLayer.get_seq_length

    def length(self: Any) -> Any:
        return self.cumulative_length if getattr(self, "_is_croppable", False) else original(self)

    StaticSlidingWindowLayer.get_seq_length = length
    try:
        yield
    finally:
        StaticSlidingWindowLayer.get_seq_length = original


def rolling_windows(cache: Any) -> list[int]:
    """The windows of a cache's sliding layers that hold fewer tokens than its context: they roll as a request
    goes on, which one captured step cannot follow."""
    return [layer.max_cache_len for layer in getattr(cache, "layers", ())
            if getattr(layer, "is_sliding", False) and not getattr(layer, "_is_croppable", True)]


def decoder_layers(model: torch.nn.Module) -> int | None:
    """How many decoder layers a transformers model's config says it has (None for a model of one's own)."""
    return getattr(_text_config(model), "num_hidden_layers", None)


def context_limit(model: torch.nn.Module) -> tuple[int, str] | None:
    """The longest context a transformers model takes and the config field that says so (None: no limit stated,
    e.g. a model of one's own or a state-space model)."""
    text = _text_config(model)
    for field in _CONTEXT_LIMIT_FIELDS:
        value = getattr(text, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, field
    return None


def vocabulary_size(model: torch.nn.Module) -> int:
    """How many token ids the model takes (its text config's vocab_size)."""
    size = getattr(_text_config(model), "vocab_size", None)
    if not isinstance(size, int) or size < 1:
        raise PartitionerError(f"{type(model).__name__} has no config.vocab_size to draw token ids from. Fix: give a "
                               "causal LM with a transformers config.")
    return size


def _text_config(model: torch.nn.Module):
    config = getattr(model, "config", None)
    return config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config


class TransformersInputs:
    """The inputs of a transformers causal LM in each phase: token ids and a `StaticCache` for the context."""

    cache_argument = "past_key_values"  # what the forward takes its cache by

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.layout = cache_layout(model)
        self.device = model_device(model)

    def prefill_inputs(self, prompt_tokens: int, context_tokens: int) -> dict:
        return {"input_ids": torch.zeros(1, prompt_tokens, dtype=torch.long, device=self.device),
                "past_key_values": self._static_cache(1, context_tokens),
                **self.positions(0, prompt_tokens), "use_cache": True}

    def decode_inputs(self, batch: int, context_tokens: int) -> dict:
        return {"input_ids": torch.zeros(batch, 1, dtype=torch.long, device=self.device),
                "past_key_values": self._static_cache(batch, context_tokens),
                **self.positions(context_tokens - 1, 1), "use_cache": True}

    def positions(self, start: int, count: int) -> dict[str, torch.Tensor]:
        """Where `count` tokens from position `start` go, as the forward takes them."""
        return token_positions(start, count, self.device)

    def _static_cache(self, batch: int, context: int):
        """A StaticCache of the model's layout, allocated now (transformers allocates it lazily, inside the first
        call, which would put its zero-filling in the graph), so the capture sees it as state passed in."""
        from transformers import StaticCache

        cache = StaticCache(config=self.model.config, max_cache_len=context)
        for layer, shape in zip(cache.layers, self.layout.layers, strict=True):
            keys, values = ((torch.empty(batch, shape.heads, 0, width, dtype=self.layout.dtype, device=self.device))
                            for width in (shape.key_width, shape.value_width))
            layer.lazy_initialization(keys, values)
        return cache


def says_how_to_call_it(model: torch.nn.Module) -> bool:
    """Whether `model` defines its own `prefill_inputs` and `decode_inputs` (and so is its own `ServingInputs`)."""
    return callable(getattr(model, "prefill_inputs", None)) and callable(getattr(model, "decode_inputs", None))


def serving_inputs(model: torch.nn.Module) -> ServingInputs:
    """How to call `model` in each phase: its own `prefill_inputs`/`decode_inputs`, else a transformers cache (of
    states for a state-space model, of keys and values for any other)."""
    if says_how_to_call_it(model):
        return model
    return RecurrentStateInputs(model) if keeps_recurrent_state(model) else TransformersInputs(model)


@dataclass(frozen=True, slots=True)
class PhaseGraphs:
    """One phase's op graph at each size the planner asked for (prompt lengths, or batches), and the state (the
    KV cache) those graphs update in place."""

    phase: str
    graphs: Mapping[int, OpGraph]
    state: frozenset[str]

    def state_bytes(self, size: int) -> int:
        """Bytes of the state (the KV cache) the phase at `size` updates in place."""
        return sum(b for name, b in self.graphs[size].parameter_bytes.items() if name in self.state)


def capture_phases(model: torch.nn.Module, prompt_lengths: Sequence[int], batches: Sequence[int],
                   context_tokens: int, source: ModelSource | None = None,
                   name: str | None = None) -> tuple[PhaseGraphs, PhaseGraphs]:
    """Prefill at each of `prompt_lengths` and a decode step at each of `batches`, for a static cache of
    `context_tokens`, one after the other in this process: a process forked after torch has run deadlocks in
    torch's thread pool, and a spawned one would have to build the model again. A transformers model whose
    layers are copies of one another is captured with a few of them and its graphs grown (layer_stack.py)."""
    own_inputs = says_how_to_call_it(model)
    with contextlib.nullcontext() if own_inputs else shallow_twin(model) as stack:
        inputs = serving_inputs(model)
        phases = (capture_prefill(model, prompt_lengths, context_tokens, source, name, inputs),
                  capture_decode(model, batches, context_tokens, source, name, inputs))
    if stack is None:
        return phases
    grown_phases = tuple(_grown(phase, stack) for phase in phases)
    if any(phase is None for phase in grown_phases):
        return capture_phases_in_full(model, prompt_lengths, batches, context_tokens, source, name)
    return grown_phases


def capture_phases_in_full(model: torch.nn.Module, prompt_lengths: Sequence[int], batches: Sequence[int],
                           context_tokens: int, source: ModelSource | None = None,
                           name: str | None = None) -> tuple[PhaseGraphs, PhaseGraphs]:
    """`capture_phases` tracing every layer (what a grown capture must equal)."""
    inputs = serving_inputs(model)
    return (capture_prefill(model, prompt_lengths, context_tokens, source, name, inputs),
            capture_decode(model, batches, context_tokens, source, name, inputs))


def _grown(phase: PhaseGraphs, stack: LayerStack) -> PhaseGraphs | None:
    """A phase captured on a shallow twin, grown to the whole stack at every size; None where a size's graph
    does not grow."""
    graphs, state = {}, phase.state
    for size, graph in phase.graphs.items():
        grown_graph = grown(graph, stack, phase.state)
        if grown_graph is None:
            return None
        graphs[size], state = grown_graph
    return PhaseGraphs(phase.phase, graphs, state)


def capture_prefill(model: torch.nn.Module, prompt_lengths: Sequence[int], context_tokens: int,
                    source: ModelSource | None = None, name: str | None = None,
                    inputs: ServingInputs | None = None) -> PhaseGraphs:
    """Prefill of one prompt into a static cache of `context_tokens`, at each of `prompt_lengths`."""
    if max(prompt_lengths) >= context_tokens:
        raise PartitionerError(f"a prompt of {max(prompt_lengths)} tokens leaves no room to decode in a context of "
                               f"{context_tokens}. Fix: give output_tokens of at least 1.")
    inputs = inputs or serving_inputs(model)
    return _capture_phase(model, PREFILL, inputs, lambda prompt: inputs.prefill_inputs(prompt, context_tokens),
                          prompt_lengths, range(2, context_tokens), source, name)


def capture_decode(model: torch.nn.Module, batches: Sequence[int], context_tokens: int,
                   source: ModelSource | None = None, name: str | None = None,
                   inputs: ServingInputs | None = None) -> PhaseGraphs:
    """One decode step of a batch of sequences, each with a static cache of `context_tokens`, at each of
    `batches`."""
    inputs = inputs or serving_inputs(model)
    return _capture_phase(model, DECODE, inputs, lambda batch: inputs.decode_inputs(batch, context_tokens),
                          batches, range(1, LARGEST_BATCH + 1), source, name)


def _capture_phase(model: torch.nn.Module, phase: str, inputs: ServingInputs, inputs_at: Callable[[int], Any],
                   wanted: Sequence[int], symbolic_range: range, source: ModelSource | None,
                   name: str | None) -> PhaseGraphs:
    """One size wanted: captured at it. Several: captured with the size symbolic (torch.export traces a symbolic
    size about 2.5-3.5 times slower than a fixed one, on Llama shapes, and then serves every size), with the
    dimensions that differ between the inputs at two sizes (two small primes, unlike any fixed size) as one
    torch.export dimension; a model that fixes the size somewhere is captured per size instead."""
    label = f"{name or type(model).__name__} {phase}"
    inputs_at = _on_the_models_device(model, phase, inputs_at)
    wanted = sorted(set(wanted))
    probes = [size for size in (3, 5, 7, 11) if size in symbolic_range][:2]
    if len(wanted) > 1 and len(probes) == 2 and all(size in symbolic_range for size in wanted):
        first, second = probes
        example = inputs_at(first)
        register_input_containers(model)  # so a KV cache object flattens into its tensors below
        dim = torch.export.Dim(phase, min=symbolic_range.start, max=symbolic_range.stop - 1)
        dynamic = _dynamic_shapes(example, inputs_at(second), first, second, dim)
        try:
            with sliding_windows_as_static():
                captured = capture(model, example, label, source, dynamic_shapes=dynamic) if dynamic else None
        except PartitionerError:
            captured = None  # the model fixes that size somewhere: capture each size instead
        symbol = _size_symbol(captured) if captured is not None else None
        if symbol is not None:
            graphs = {size: annotate(captured.program, {symbol: size}) for size in wanted}
            return PhaseGraphs(phase, graphs, frozenset(written_inputs(captured.program.graph)))
    try:
        with sliding_windows_as_static():
            programs = {size: capture(model, inputs_at(size), label, source).program for size in wanted}
    except PartitionerError as error:
        if isinstance(inputs, TransformersInputs) and not inputs.layout.measured:
            raise PartitionerError(
                f"{str(error).split('. Fix: ')[0]}, with a KV cache sized from the model's config because the model "
                "does not run on the meta device to measure it: if the error is about the cache, the fault is "
                "partitioner's, not the model's. Fix: report it with the model's config, or give the model "
                "prefill_inputs and decode_inputs methods.") from error.__cause__
        raise
    state = frozenset(written_inputs(programs[wanted[0]].graph))
    return PhaseGraphs(phase, {size: annotate(program) for size, program in programs.items()}, state)


def _on_the_models_device(model: torch.nn.Module, phase: str, inputs_at: Callable[[int], Any]
                          ) -> Callable[[int], Any]:
    """`inputs_at`, refusing inputs on another device than the model's weights: planning captures a weightless
    (meta) copy of the model, and a model's own `prefill_inputs`/`decode_inputs` must make their tensors there."""
    device = model_device(model)

    def checked(size: int) -> Any:
        with device:  # tensors made without naming a device land on the model's
            example = inputs_at(size)
        elsewhere = {str(t.device) for t in pytree.tree_leaves(example)
                     if isinstance(t, torch.Tensor) and t.device != device}
        if elsewhere:
            raise PartitionerError(
                f"{type(model).__name__}.{phase}_inputs made tensors on {', '.join(sorted(elsewhere))}, and the "
                f"model's weights are on {device} (planning captures a copy of the model without weights, on the "
                "meta device). Fix: make the inputs without naming a device, or on the device of the model's "
                "parameters.")
        return example

    return checked


def _dynamic_shapes(first: Any, second: Any, first_size: int, second_size: int, dim: Any) -> Any:
    """torch.export's dynamic shapes for inputs given at two sizes: `dim` wherever a tensor's size is the first
    size in one and the second in the other; None when the inputs differ in any other way."""
    def walk(a: Any, b: Any) -> Any:
        if isinstance(a, torch.Tensor):
            if not isinstance(b, torch.Tensor) or a.dim() != b.dim():
                raise ValueError
            varying = {i: dim for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y}
            if any((a.shape[i], b.shape[i]) != (first_size, second_size) for i in varying):
                raise ValueError
            return varying or None
        if type(a) is not type(b):
            raise ValueError
        if isinstance(a, dict):
            if a.keys() != b.keys():
                raise ValueError
            return {key: walk(a[key], b[key]) for key in a}
        if type(a) in (list, tuple):
            if len(a) != len(b):
                raise ValueError
            return type(a)(walk(x, y) for x, y in zip(a, b))
        node = pytree.SUPPORTED_NODES.get(type(a))
        if node is not None:  # a registered container (a KV cache): one spec per child, as torch.export flattens it
            (children_a, _), (children_b, _) = node.flatten_fn(a), node.flatten_fn(b)
            if len(children_a) != len(children_b):
                raise ValueError
            return [walk(x, y) for x, y in zip(children_a, children_b)]
        if a != b:
            raise ValueError
        return None

    args, kwargs = split_inputs(first)
    other_args, other_kwargs = split_inputs(second)
    if args and kwargs:
        return None  # torch.export would match one spec against both; such a model is captured per size
    try:
        return walk(kwargs, other_kwargs) if kwargs else walk(args, other_args)
    except ValueError:
        return None


def _size_symbol(captured: CapturedModel) -> str | None:
    """The name torch.export gave the phase's size: the one symbol the user inputs' shapes use, if exactly one."""
    symbols = set()
    for node in captured.program.graph.nodes:
        value = node.meta.get("val")
        if node.op == "placeholder" and isinstance(value, torch.Tensor):
            for size in value.shape:
                if isinstance(size, torch.SymInt):
                    symbols |= {symbol.name for symbol in size.node.expr.free_symbols}
    return symbols.pop() if len(symbols) == 1 else None
