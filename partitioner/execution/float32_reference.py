"""A float32 run of a reduced-precision model: the yardstick when two runtimes' float16 or bfloat16 disagree.

Two runtimes computing a float16 model (torch and ONNX Runtime, say) round
differently inside kernels, and through a deep network the outputs drift past
float16's per-op tolerance although neither is wrong. `compare_outputs` then
judges each such output by its distance from this float32 run instead.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils import _pytree as pytree

from partitioner.execution.check import REDUCED_PRECISION, run_timed


def has_reduced_precision(outputs: Any) -> bool:
    """Whether any output leaf is float16 or bfloat16."""
    return any(isinstance(leaf, torch.Tensor) and leaf.dtype in REDUCED_PRECISION
               for leaf in pytree.tree_leaves(outputs))


def float32_outputs(model: torch.nn.Module, example_inputs: Any) -> list[Any]:
    """The leaves of `model`'s outputs with its weights and floating inputs in float32 (on a copy of the model)."""
    upcast = copy.deepcopy(model).float()
    inputs = pytree.tree_map_only(torch.Tensor, lambda t: t.float() if t.dtype in REDUCED_PRECISION else t,
                                  example_inputs)
    return pytree.tree_leaves(run_timed(upcast, inputs).outputs)
