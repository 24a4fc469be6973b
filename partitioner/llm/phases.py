"""The two phases of serving a causal LM, captured: prefill of one prompt, and one decode step of a batch.

Both run against a static KV cache (transformers' `StaticCache`, allocated up
front for the whole context), so the cache is state the graph updates in place:
the frontend counts it as memory resident where its layer's attention runs, not
as data copied in with each call (partitioner/frontend/op_graph.py). On the
`meta` device nothing is allocated, so 7B and 70B shapes are planned without
weights. A decode step reads the whole static cache, as static-cache kernels do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from partitioner.errors import PartitionerError
from partitioner.frontend.capture import CapturedModel, ModelSource, capture


@dataclass(frozen=True, slots=True)
class CacheShape:
    """What one request's KV cache holds per layer: key and value heads of `head_dim` for `context` tokens."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def bytes_for(self, context_tokens: int, batch: int = 1) -> int:
        """Bytes of a static cache for `batch` sequences of `context_tokens`: 2 (K and V) x kv_heads x head_dim
        x context x batch x dtype size, per layer, over all layers."""
        per_layer = 2 * self.kv_heads * self.head_dim * context_tokens * batch * self.dtype.itemsize
        return per_layer * self.layers


def cache_shape(model: torch.nn.Module) -> CacheShape:
    """The KV cache layout of a transformers causal LM, from its config."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    if text is None or heads is None or not hasattr(text, "num_hidden_layers"):
        raise PartitionerError(
            f"--workload plans a transformers causal LM, and {type(model).__name__} has no such config "
            "(num_hidden_layers, num_attention_heads). Fix: build a transformers *ForCausalLM model, or plan one "
            "pass with compile and no --workload.")
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return CacheShape(text.num_hidden_layers, getattr(text, "num_key_value_heads", None) or heads, head_dim, dtype)


def capture_prefill(model: torch.nn.Module, prompt_tokens: int, context_tokens: int, shape: CacheShape,
                    source: ModelSource | None = None, name: str | None = None) -> CapturedModel:
    """Prefill of one `prompt_tokens` prompt into a static cache of `context_tokens`."""
    if prompt_tokens >= context_tokens:
        raise PartitionerError(f"a prompt of {prompt_tokens} tokens leaves no room to decode in a context of "
                               f"{context_tokens}. Fix: give output_tokens of at least 1.")
    device = _device_of(model)
    return capture(model, {"input_ids": torch.zeros(1, prompt_tokens, dtype=torch.long, device=device),
                           "past_key_values": _static_cache(model, shape, 1, context_tokens, device),
                           "cache_position": torch.arange(prompt_tokens, device=device), "use_cache": True},
                   name=f"{name or type(model).__name__} prefill", source=source)


def capture_decode(model: torch.nn.Module, batch: int, context_tokens: int, shape: CacheShape,
                   source: ModelSource | None = None, name: str | None = None) -> CapturedModel:
    """One decode step of `batch` sequences, each with a static cache of `context_tokens` (read in full)."""
    device = _device_of(model)
    return capture(model, {"input_ids": torch.zeros(batch, 1, dtype=torch.long, device=device),
                           "past_key_values": _static_cache(model, shape, batch, context_tokens, device),
                           "cache_position": torch.tensor([context_tokens - 1], device=device), "use_cache": True},
                   name=f"{name or type(model).__name__} decode", source=source)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _static_cache(model: torch.nn.Module, shape: CacheShape, batch: int, context: int, device: torch.device):
    """A StaticCache allocated now (transformers allocates it lazily, inside the first call, which would put its
    zero-filling in the graph), so the capture sees it as state passed in."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=context, max_batch_size=batch, device=device,
                        dtype=shape.dtype)
    example = torch.empty(batch, shape.kv_heads, 1, shape.head_dim, dtype=shape.dtype, device=device)
    for layer in cache.layers:
        layer.lazy_initialization(example, example)
    return cache
