"""How much of a device's compute a tiled kernel's shape lets it use: its tiles, their depth, their waves.

Matmuls (cuBLAS), convolutions (cuDNN's implicit GEMM) and fused attention (FlashAttention, which PyTorch's
scaled_dot_product_attention runs on GPUs) are tiled kernels: each block of the device computes one tile of the
output, looping over the reduction (a matmul's K, a convolution's input channels x kernel window, an attention's
keys). Three things of the shape, not of its FLOPs, set how close such a kernel comes to its large-size efficiency
(NVIDIA, "Matrix Multiplication Background User's Guide", "Dimension Quantization Effects"):
- tile quantisation: an output dimension that is not a multiple of the tile leaves the last tiles part empty,
  computed all the same. Libraries pick narrower tiles for narrow outputs; here a tile is 128 x 128, narrowed to
  the next power of two (at least 16, the tensor cores' smallest) where a dimension is smaller;
- the depth each tile's loop runs: loading its first operands and writing its outputs are paid once per tile,
  so a shallow loop does little work for them. Throughput follows e * depth / (depth + half) (an op class's
  `compute_half_efficiency_depth`; for an attention, FlashAttention-2's published curve over its keys);
- wave quantisation: the tiles run in waves of one a compute unit (`compute_units`: streaming multiprocessors),
  and a last wave part full leaves units idle. Where there are fewer tiles than units, the kernel splits the
  depth among more blocks (cuBLAS's split-K, FlashAttention's split-KV as in a decode step) until the units are
  full or each block has one step of depth.
A target without `compute_units` (CPUs, compiled-graph accelerators) has no waves and no tile grid; a class
without a half depth has no depth curve. A grouped or transposed convolution, and an op whose operand is a vector
(`mv`, `dot`, `matmul` with a 1-D operand), are priced by their FLOPs and bytes alone; a matmul of one row (a
decode step of one sequence) is a tile of 16 rows, one of them real.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from partitioner.frontend.op_graph import OpNode, TensorMeta
from targets.op_classes import op_class
from targets.spec import RooflineConstants, Target

# FlashAttention-2's forward tile: 128 queries a block, 128 keys a step, for head dims up to 128.
QUERY_TILE = 128
# One step of a split: a block keeps at least this much depth (FlashAttention's 128 keys; cuBLAS's split-K
# keeps a few of its 64-deep steps a block).
DEPTH_STEP = 128
# A matmul's or convolution's output tile (cuBLAS's and CUTLASS's common 128 x 128 on Ampere and Hopper), and
# the narrowest tile a library picks for a narrow output.
MATMUL_TILE = 128
NARROWEST_TILE = 16


@dataclass(frozen=True, slots=True)
class KernelShape:
    """What a tiled kernel's efficiency depends on beyond its FLOPs: its output tiles (before any split of the
    depth), the depth each tile's loop runs, and the share of the tiles' area that holds real outputs."""

    tiles: int
    depth: int
    filled: float = 1.0


def kernel_shape(node: OpNode) -> KernelShape | None:
    """The tiled-kernel shape of a matmul, convolution or attention node; None for any other node, or where a
    size is symbolic or zero."""
    return arguments_shape(node.op, node.arguments)


def signature_kernel_shape(op: str, signature: str) -> KernelShape | None:
    """The shape of an op from its profile signature (cost_models/measured.py's `op_signature`: the op and its
    arguments, tensors as [shape, dtype]), for measurements recorded without one."""
    try:
        return arguments_shape(op, json.loads(signature)[1])
    except (ValueError, LookupError, TypeError):
        return None


def arguments_shape(op: str, arguments: Mapping[str, Any]) -> KernelShape | None:
    """The tiled-kernel shape of `op` called with `arguments` (by schema name; tensors as `TensorMeta` or as a
    signature's [shape, dtype])."""
    kind = op_class(op)
    try:
        if kind == "attention":
            return _attention(_sizes(arguments.get("query")), _sizes(arguments.get("key")))
        if kind == "matmul":
            return _matmul(op.split(".")[1], arguments)
        if kind == "convolution" and not op.split(".")[1].startswith("conv_transpose"):
            return _convolution(arguments)
    except (TypeError, ValueError, IndexError):
        return None
    return None


def attention_shape(heads: int, queries: int, keys: int) -> KernelShape:
    """A fused attention's shape: one tile of 128 queries of each (batch x head), keys deep."""
    return KernelShape(heads * math.ceil(queries / QUERY_TILE), keys)


def matmul_shape(batch: int, rows: int, columns: int, depth: int) -> KernelShape:
    """A batch of (rows x depth) @ (depth x columns) products' shape on 128 x 128 tiles, narrowed where the output
    is narrower."""
    row_tile, column_tile = _tile(rows), _tile(columns)
    row_tiles, column_tiles = math.ceil(rows / row_tile), math.ceil(columns / column_tile)
    filled = rows * columns / (row_tiles * row_tile * column_tiles * column_tile)
    return KernelShape(batch * row_tiles * column_tiles, depth, filled)


def shape_efficiency(shape: KernelShape | None, target: Target, constants: RooflineConstants) -> float:
    """The share of its class's compute efficiency a kernel of `shape` reaches on `target` (1 for none)."""
    if shape is None:
        return 1.0
    tiles, depth = shape.tiles, shape.depth
    units = target.compute_units
    if units and tiles < units:
        splits = min(units // tiles, max(1, math.ceil(depth / DEPTH_STEP)))
        tiles, depth = tiles * splits, depth / splits
    share = depth / (depth + constants.compute_half_depth) if constants.compute_half_depth else 1.0
    if units:
        share *= shape.filled * tiles / (math.ceil(tiles / units) * units)
    return share


def _tile(size: int) -> int:
    return min(MATMUL_TILE, max(NARROWEST_TILE, 1 << (size - 1).bit_length()))


def _sizes(value: Any) -> tuple[int, ...] | None:
    """A tensor argument's sizes (a `TensorMeta`, or a signature's [shape, dtype]); None for anything else or a
    symbolic size."""
    if isinstance(value, TensorMeta):
        shape = value.shape
    elif isinstance(value, list) and len(value) == 2 and isinstance(value[0], list) and isinstance(value[1], str):
        shape = value[0]
    else:
        return None
    return tuple(shape) if all(isinstance(size, int) for size in shape) else None


def _positive(*sizes: int) -> bool:
    return all(size >= 1 for size in sizes)


def _attention(query: Sequence[int] | None, key: Sequence[int] | None) -> KernelShape | None:
    if query is None or key is None or len(query) < 3 or len(key) < 2:
        return None
    heads, queries, keys = math.prod(query[:-2]), query[-2], key[-2]
    return attention_shape(heads, queries, keys) if _positive(heads, queries, keys) else None


# Each matmul op's two operands by schema name.
_OPERANDS = {"mm": ("self", "mat2"), "bmm": ("self", "mat2"), "addmm": ("mat1", "mat2"),
             "baddbmm": ("batch1", "batch2"), "matmul": ("self", "other")}


def _matmul(name: str, arguments: Mapping[str, Any]) -> KernelShape | None:
    if name == "linear":  # input [..., K] x weight [N, K]
        inputs, weight = _sizes(arguments.get("input")), _sizes(arguments.get("weight"))
        if inputs is None or weight is None or len(weight) != 2 or not inputs:
            return None
        batch, rows, columns, depth = 1, math.prod(inputs[:-1]), weight[0], inputs[-1]
    elif name in _OPERANDS:
        left, right = (_sizes(arguments.get(operand)) for operand in _OPERANDS[name])
        if left is None or right is None or len(left) < 2 or len(right) < 2:
            return None  # a matrix-vector product has no output tile to speak of
        if len(right) == 2:  # a stack of rows against one matrix: one product of all the rows
            batch, rows = 1, math.prod(left[:-1])
        else:
            batch, rows = math.prod(_broadcast(left[:-2], right[:-2])), left[-2]
        columns, depth = right[-1], left[-1]
    else:
        return None
    return matmul_shape(batch, rows, columns, depth) if _positive(batch, rows, columns, depth) else None


def _broadcast(left: Sequence[int], right: Sequence[int]) -> tuple[int, ...]:
    width = max(len(left), len(right))
    left, right = (1,) * (width - len(left)) + tuple(left), (1,) * (width - len(right)) + tuple(right)
    return tuple(max(a, b) for a, b in zip(left, right))


def _convolution(arguments: Mapping[str, Any]) -> KernelShape | None:
    """An ungrouped convolution as cuDNN's implicit GEMM: (batch x output positions) x output channels, with
    input channels x kernel window as its depth."""
    inputs, weight = _sizes(arguments.get("input")), _sizes(arguments.get("weight"))
    if inputs is None or weight is None or len(inputs) != len(weight) or len(inputs) < 3:
        return None
    if arguments.get("groups", 1) != 1 or arguments.get("transposed", False):
        return None
    window = weight[2:]
    spatial = len(window)
    stride, dilation = _per_dim(arguments.get("stride", 1), spatial), _per_dim(arguments.get("dilation", 1), spatial)
    padding = arguments.get("padding", 0)
    if padding == "same":
        outputs = inputs[2:]
    else:
        padding = _per_dim(0 if padding == "valid" else padding, spatial)
        outputs = tuple((size + 2 * pad - dil * (k - 1) - 1) // step + 1 for size, pad, dil, k, step
                        in zip(inputs[2:], padding, dilation, window, stride))
    rows, columns, depth = inputs[0] * math.prod(outputs), weight[0], weight[1] * math.prod(window)
    return matmul_shape(1, rows, columns, depth) if _positive(rows, columns, depth) else None


def _per_dim(value: Any, dims: int) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not all(isinstance(v, int) for v in values):
        raise TypeError(f"not sizes: {value!r}")
    return values * dims if len(values) == 1 else values
