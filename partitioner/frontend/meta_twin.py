"""A weightless copy of a model: the same modules and code, every tensor it holds on the `meta` device.

Planning needs shapes and dtypes, never values, so a model with real weights is
planned through its meta twin: capturing it allocates no weights, no KV cache
and no activations, whatever the context length, and the user's model is left
exactly as it was (passes such as expert sharding rewrite the twin, not it).
"""

from __future__ import annotations

import copy
import itertools

import torch

from partitioner.errors import PartitionerError


def meta_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` in which each parameter, buffer and tensor attribute is an empty meta tensor of the
    same shape, dtype and strides (tied weights stay tied); `model` itself when it holds no tensor off meta."""
    held = [t for t in itertools.chain(model.parameters(), model.buffers(), _tensor_attributes(model))
            if not t.is_meta]
    if not held:
        return model
    memo: dict[int, object] = {}
    for tensor in held:
        if id(tensor) in memo:
            continue
        empty = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
        memo[id(tensor)] = (torch.nn.Parameter(empty, requires_grad=tensor.requires_grad)
                            if isinstance(tensor, torch.nn.Parameter) else empty)
    try:
        return copy.deepcopy(model, memo)
    except Exception as error:  # noqa: BLE001 - whatever the model holds that does not copy (a lock, a file)
        raise PartitionerError(
            f"{type(model).__name__} cannot be copied to plan it without its weights ({type(error).__name__}: "
            f"{error}). Fix: build the model on the meta device (`with torch.device('meta'):` in build()), "
            "which planning needs no weights for.") from None


def _tensor_attributes(model: torch.nn.Module) -> list[torch.Tensor]:
    """Tensors the modules keep as plain attributes (not registered), e.g. a rotary embedding's original
    frequencies: the forward may read them beside the weights, so they go to meta too."""
    return [value for module in model.modules() for value in vars(module).values()
            if isinstance(value, torch.Tensor)]
