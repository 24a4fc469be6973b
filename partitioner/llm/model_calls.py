"""How a transformers causal LM is called: where its weights are and of what dtype, what its forward takes its cache
and token positions by, and what a cache holds once a token has run into it. Shared by the phases' inputs
(partitioner/llm/phases.py) and the state-space ones (partitioner/llm/recurrent_states.py)."""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Iterator

import torch


@dataclass(frozen=True, slots=True)
class LayerCache:
    """What one layer keeps per token of one sequence: `heads` keys of `key_width` and values of `value_width`
    (an MLA layer keeps one compressed latent and one rotary key instead: one head of each width)."""

    heads: int
    key_width: int
    value_width: int





def written_keys(layer: Any) -> LayerCache | None:
    """What a cache layer holds per token after a token was written into it: its keys' heads and width and its
    values' width (None where it holds no keys and values)."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor):
        return LayerCache(keys.shape[1], keys.shape[-1], values.shape[-1])
    return None


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (float32 where it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's weights (the CPU where it has none)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def token_positions(start: int, count: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Where `count` tokens from position `start` go, the same for every sequence of a batch: their cache slots
    (`cache_position`) and their positions (`position_ids`, one row that broadcasts over the batch; rotary
    embeddings read it). Both are given: a model that derives positions from its cache instead reads a
    sliding-window layer's Python counter, which a capture would keep as a constant."""
    positions = torch.arange(start, start + count, device=device)
    return {"cache_position": positions, "position_ids": positions[None]}


def one_token_cache(model: torch.nn.Module) -> Any:
    """A cache transformers makes from `model`'s config, after one token was run through the model into it (on
    the model's own device: on the meta device, only shapes): each layer then holds what the model writes there.
    Raises whatever running the model raises."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=2)
    device = model_device(model)
    accepted = inspect.signature(model.forward).parameters
    positions = {name: value for name, value in token_positions(0, 1, device).items() if name in accepted}
    with torch.no_grad(), as_exporting():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), **{cache_argument(model): cache},
              **positions, use_cache=True)
    return cache


def cache_argument(model: torch.nn.Module) -> str:
    """The name the model's forward takes its cache by (transformers 5 calls a state-space model's `cache`)."""
    accepted = inspect.signature(model.forward).parameters
    return next((name for name in ("past_key_values", "cache", "cache_params") if name in accepted),
                "past_key_values")


@contextlib.contextmanager
def as_exporting() -> Iterator[None]:
    """Run eagerly as torch.export traces: transformers takes its export paths (e.g. MoE's grouped matmul that
    runs in every dtype), so a model measured here behaves as it will when captured."""
    try:
        from torch._export.utils import _compiling_state_context
    except ImportError:  # another torch: the eager paths are measured instead
        yield
        return
    with _compiling_state_context():
        yield
