"""Repeated blocks: the transformer layers (or any numbered submodules) that are copies of one another.

Runs in `build_problem`. A block is the nodes of one numbered submodule
(`model.layers.17`, `transformer.h.3`); blocks of one container whose ops,
shapes and parameter sizes match, node for node, form a family. The solver
uses families to find a good plan fast: it first solves with corresponding
nodes of neighbouring blocks tied to the same target, then unties them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

from partitioner.frontend.op_graph import OpGraph, OpNode

# The outermost numbered submodule in a module path: "model.layers.17.mlp" -> ("model.layers", "17").
_NUMBERED = re.compile(r"^(?P<container>(?:[^.]+\.)*?[^.]+)\.(?P<index>\d+)(?:\.|$)")

Block = tuple[str, ...]


def numbered_block(module_path: str) -> str | None:
    """The outermost numbered submodule a module path lies in ("model.layers.17"), or None."""
    match = _NUMBERED.match(module_path)
    return f"{match['container']}.{match['index']}" if match else None


def repeated_blocks(graph: OpGraph, minimum_family_size: int = 2) -> tuple[tuple[Block, ...], ...]:
    """Families of identical blocks, each family in module order, each block's nodes in graph order."""
    blocks: dict[tuple[str, int], list[OpNode]] = defaultdict(list)
    for node in graph:
        match = _NUMBERED.match(node.module_path)
        if match:
            blocks[match["container"], int(match["index"])].append(node)
    families: dict[tuple, list[Block]] = defaultdict(list)
    for (container, _), nodes in sorted(blocks.items()):
        families[container, block_signature(nodes, graph)].append(tuple(node.name for node in nodes))
    return tuple(tuple(family) for family in families.values() if len(family) >= minimum_family_size)


def block_signature(nodes: Sequence[OpNode], graph: OpGraph) -> tuple:
    """What must match, node for node, for two blocks to be copies: ops, output shapes and dtypes, weights."""
    return tuple(
        (node.op, node.kind, tuple((t.shape, t.dtype) for t in node.output_tensors),
         tuple(graph.parameter_bytes[p] for p in node.parameters))
        for node in nodes
    )
