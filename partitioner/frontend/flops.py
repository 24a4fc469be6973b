"""FLOPs of one op: counted by torch's FlopCounterMode, with formulas for ops it does not know, or marked unknown.

FlopCounterMode counts matmul-class work (matmul, convolution, attention) and
decomposes composite ops into ones it knows; by its convention every other aten
op (elementwise, reductions, data movement) does no FLOPs worth counting, and
the roofline costs it by its bytes. A custom op (another namespace, such as
transformers' MoE `grouped_mm_fallback`) that it cannot see into may hide real
matmul work: unless a formula is known for it (ours below, or one registered
with `torch.utils.flop_counter.register_flop_formula`), its FLOPs are unknown,
and the plan says so rather than calling them zero.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

# Namespaces whose ops follow FlopCounterMode's convention: no formula means no matmul-class work.
_COUNTED_NAMESPACES = frozenset({"aten", "prims", "quantized_decomposed"})

FlopFormula = Callable[..., int]


def _grouped_mm_flops(a_shape, b_shape, *args, **kwargs) -> int:
    """A grouped matmul (MoE experts): every row of `a` meets one group's matrix, whatever the group sizes.

    2-D x 3-D: tokens (S, K) sorted by expert, weights (E, K, N): 2*S*K*N. 3-D x 3-D: a batch of E
    (M, K) x (K, N) products. 3-D x 2-D: groups split the output columns, 2*M*K*N in all; 2-D x 2-D: groups
    split the shared K dimension, 2*M*K*N in all.
    """
    if len(a_shape) == 2 and len(b_shape) == 3:
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 3 and len(b_shape) == 3:
        return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]
    if len(a_shape) == 3 and len(b_shape) == 2:  # (G, M, K) x (K, N) -> (M, N): groups split N
        return 2 * a_shape[1] * a_shape[2] * b_shape[1]
    return 2 * a_shape[0] * a_shape[1] * b_shape[-1]


# Formulas by op name ("namespace.name"), for ops torch's registry lacks; shapes in, FLOPs out.
_FORMULAS: dict[str, FlopFormula] = {
    "aten._grouped_mm": _grouped_mm_flops,
    "transformers.grouped_mm_fallback": _grouped_mm_flops,
}


def count_flops(target: Any, args: tuple, kwargs: dict) -> int | None:
    """FLOPs of calling `target` (an fx call target) on `args` (meta tensors), or None when they are unknown."""
    if isinstance(target, torch._ops.HigherOrderOperator):  # flex_attention has a formula; other wrappers hide work
        return _counted(target, args, kwargs) if target in flop_registry else None
    if not isinstance(target, torch._ops.OpOverload):
        return 0  # operator.getitem and other Python-level calls do no tensor work
    packet = target.overloadpacket
    name = f"{target.namespace}.{packet.__name__}"
    if name in _FORMULAS and packet not in flop_registry:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args]
        return int(_FORMULAS[name](*shapes))
    flops = _counted(target, args, kwargs)
    if flops is None:  # no meta kernel: an aten op (nonzero, bincount) follows the convention, others are unknown
        return 0 if target.namespace in _COUNTED_NAMESPACES else None
    if flops > 0 or packet in flop_registry or target.namespace in _COUNTED_NAMESPACES or _decomposes(target):
        return flops
    return None


def _counted(target: Any, args: tuple, kwargs: dict) -> int | None:
    """FlopCounterMode's count for one call, or None when the call cannot run on meta tensors."""
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            target(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the op still runs on real data, we only lack its FLOPs
        return None
    return int(counter.get_total_flops())


def _decomposes(target: torch._ops.OpOverload) -> bool:
    """Whether the op has a composite kernel, so FlopCounterMode counted the aten ops it is made of."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(target.name(), "CompositeImplicitAutograd")
