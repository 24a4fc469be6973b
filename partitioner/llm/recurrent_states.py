"""State-space and hybrid causal LMs (transformers' Mamba, Mamba-2, Jamba, Bamba, LFM2, NemotronH): what their
caches hold and how each phase is called with them.

Their caches hold, per state-space layer, convolution and SSM states the same size whatever the context, and per
attention layer keys and values. What each layer holds is measured by running one token through the model into a
cache transformers makes from its config, so a new mixer's shapes need no code here; a capture's cache is then
allocated up front with those shapes (partitioner/llm/phases.py captures the phases with it).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from partitioner.errors import PartitionerError
from partitioner.llm.deployment import DecodeState
from partitioner.llm.model_calls import (LayerCache, cache_argument, model_device, model_dtype, one_token_cache,
                                         token_positions, written_keys)


@dataclass(frozen=True, slots=True)
class RecurrentLayer:
    """What one state-space layer (Mamba's, Mamba-2's, a hybrid's) keeps per sequence, whatever the context: its
    convolution states and its SSM states, their shapes without the batch (None: a layer that keeps only the
    other, as LFM2's convolution layers)."""

    convolution: tuple[int, ...] | None
    recurrent: tuple[int, ...] | None


class RecurrentStateInputs:
    """The inputs of a transformers causal LM with state-space layers (Mamba, Mamba-2, and hybrids that mix them
    with attention layers: Jamba, Bamba) in each phase: token ids and a cache holding each state-space layer's
    convolution and SSM states and each attention layer's keys and values. The states are the same size whatever
    the context; all of it is allocated up front (transformers would allocate it inside the first call), so the
    capture sees it as state the graph updates in place, and a decode step's cache says it already holds a
    prefill's states. What each layer holds is measured by running one token through the model (`state_layout`)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device = model_device(model)
        self.dtype = model_dtype(model)
        self.layers = state_layout(model)
        accepted = inspect.signature(model.forward).parameters
        self.cache_argument = cache_argument(model)
        self.position_arguments = tuple(name for name in ("cache_position", "position_ids") if name in accepted)

    def prefill_inputs(self, prompt_tokens: int, context_tokens: int) -> dict:
        return {"input_ids": torch.zeros(1, prompt_tokens, dtype=torch.long, device=self.device),
                self.cache_argument: self._cache(1, context_tokens, prefilled=False),
                **self.positions(0, prompt_tokens), "use_cache": True}

    def decode_inputs(self, batch: int, context_tokens: int) -> dict:
        return {"input_ids": torch.zeros(batch, 1, dtype=torch.long, device=self.device),
                self.cache_argument: self._cache(batch, context_tokens, prefilled=True),
                **self.positions(context_tokens - 1, 1), "use_cache": True}

    def positions(self, start: int, count: int) -> dict[str, torch.Tensor]:
        """Where `count` tokens from position `start` go, as the forward takes them (a state-space model: none)."""
        positions = token_positions(start, count, self.device)
        return {name: positions[name] for name in self.position_arguments}

    def _cache(self, batch: int, context: int, prefilled: bool):
        from transformers import StaticCache

        cache = StaticCache(config=self.model.config, max_cache_len=context)
        for layer, kept in zip(cache.layers, self.layers, strict=True):
            if isinstance(kept, RecurrentLayer):
                convolution, recurrent = (None if shape is None else
                                          torch.empty(batch, *shape, dtype=self.dtype, device=self.device)
                                          for shape in (kept.convolution, kept.recurrent))
                layer.lazy_initialization(conv_states=convolution, recurrent_states=recurrent,
                                          conv_kernel_size=None if kept.convolution is None else kept.convolution[-1])
                layer.has_previous_state[0] = prefilled
            elif kept is not None:  # a layer keeping nothing (an MLP layer of a hybrid) is left as it is
                keys, values = (torch.empty(batch, kept.heads, 0, width, dtype=self.dtype, device=self.device)
                                for width in (kept.key_width, kept.value_width))
                layer.lazy_initialization(keys, values)
        return cache


def keeps_recurrent_state(model: torch.nn.Module) -> bool:
    """Whether `model` is a transformers causal LM whose cache holds state-space layers' states (Mamba, Mamba-2,
    hybrids such as Jamba and Bamba): a cache made from its config has such layers."""
    return any(_is_recurrent(layer) for layer in getattr(_config_cache(model), "layers", ()))


def decode_state(model: torch.nn.Module) -> DecodeState:
    """What `model` keeps between decode steps: a KV cache, state-space layers' states, or both."""
    if not keeps_recurrent_state(model):
        return DecodeState.KV_CACHE
    keeps_keys = any(isinstance(kept, LayerCache) for kept in state_layout(model))
    return DecodeState.HYBRID if keeps_keys else DecodeState.SSM_STATES


def state_layout(model: torch.nn.Module) -> tuple[LayerCache | RecurrentLayer | None, ...]:
    """What each layer of a model with state-space layers keeps per sequence (None: nothing, as a hybrid's MLP
    layer), as it writes it when one token is run through it into a cache that sizes itself (on its own device:
    on the meta device, only shapes)."""
    try:
        cache = one_token_cache(model)
    except Exception as error:  # noqa: BLE001 - any failure is one error naming the model
        raise PartitionerError(f"{type(model).__name__} did not run one token into its cache here "
                               f"({type(error).__name__}: {error}), which is how --workload learns the states it "
                               "keeps. Fix: plan one pass of it without --workload.") from None
    return tuple(_layer_kept(model, layer) for layer in cache.layers)


def _layer_kept(model: torch.nn.Module, layer: Any) -> LayerCache | RecurrentLayer | None:
    """What one cache layer holds after a token: keys and values, state-space states, or nothing."""
    if _is_recurrent(layer):
        held = [layer.conv_states, layer.recurrent_states]
        both = isinstance(getattr(layer, "keys", None), torch.Tensor)
        if both or any(isinstance(h, dict) and len(h) > 1 for h in held):
            kept = "keys and values beside state-space states" if both else "several state-space states"
            raise PartitionerError(
                f"{type(model).__name__} keeps {kept} in one cache layer ({type(layer).__name__}), which --workload "
                "does not plan yet. Fix: plan one pass of it without --workload.")
        convolution, recurrent = (next(iter(h.values()), None) if isinstance(h, dict) else h for h in held)
        shapes = [None if state is None else tuple(state.shape[1:]) for state in (convolution, recurrent)]
        return RecurrentLayer(*shapes) if any(shape is not None for shape in shapes) else None
    return written_keys(layer)


def _is_recurrent(layer: Any) -> bool:
    return hasattr(layer, "conv_states") and hasattr(layer, "recurrent_states")


def _config_cache(model: torch.nn.Module) -> Any:
    """A cache made from `model`'s config, unallocated (None where it has no transformers config for one)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    from transformers import StaticCache

    try:
        return StaticCache(config=config, max_cache_len=1)
    except Exception:  # noqa: BLE001 - a config transformers' caches do not read: not a transformers causal LM
        return None
