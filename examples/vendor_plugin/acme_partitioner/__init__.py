"""The Acme NPU as a partitioner plug-in: a spec file, plus what only the vendor's code can say.

- `support`: the matrix engine works in whole 16-wide tiles, so a matmul whose inner size is not a multiple of
  16 is refused (a spec's limits bound sizes; they cannot say "a multiple of").
- `cost`: a matmul costs whole 128 x 128 x 128 tiles, padding included; other ops keep the roofline's figure.
- `compile`: the "Acme compiler" turns a partition into its program (here a JSON listing of the ops), and
  refuses exact (erf) GELU, which it cannot lower, naming the nodes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from partitioner.frontend.op_graph import OpNode
from targets.hooks import CompiledPartition, PartitionRefused, PartitionToCompile, TargetHooks
from targets.plugins import TargetPlugin
from targets.spec import Target

MATMULS = {"aten.linear.default", "aten.mm.default", "aten.matmul.default", "aten.addmm.default"}
TILE = 128
TILE_SECONDS = 2 * TILE**3 / 100e12  # one bf16 tile at 100 TFLOP/s, the engine's sustained rate
LAUNCH_SECONDS = 10e-6


def inner_size(node: OpNode) -> int:
    """The size a matmul sums over: the last dimension of its first input."""
    return node.input_tensors[0].shape[-1]


def support(node: OpNode) -> str | None:
    if node.op in MATMULS and inner_size(node) % 16:
        return f"the matrix engine takes whole 16-wide tiles, and inner size {inner_size(node)} is not a multiple of 16"
    return None


def cost(node: OpNode, target: Target) -> float | None:
    if node.op not in MATMULS:
        return None
    rows = math.prod(node.output_tensors[0].shape[:-1])
    columns = node.output_tensors[0].shape[-1]
    tiles = math.ceil(rows / TILE) * math.ceil(columns / TILE) * math.ceil(inner_size(node) / TILE)
    return LAUNCH_SECONDS + tiles * TILE_SECONDS


def compile_partition(partition: PartitionToCompile) -> CompiledPartition:
    exact_gelu = [node.name for node in partition.nodes
                  if node.op == "aten.gelu.default" and node.arguments.get("approximate", "none") != "tanh"]
    if exact_gelu:
        raise PartitionRefused("the Acme compiler 1.0 cannot lower exact (erf) GELU; use approximate='tanh'",
                               exact_gelu)
    program = {"compiler": "acme 1.0", "partition": partition.name,
               "ops": [{"name": node.name, "op": node.op} for node in partition.nodes]}
    count = len(partition.nodes)
    return CompiledPartition({".acme.json": json.dumps(program, indent=1).encode()},
                             f"{count} op{'s' if count != 1 else ''} in one Acme program")


plugin = TargetPlugin(spec_files=(Path(__file__).parent / "acme-npu.toml",),
                      hooks={"acme-npu": TargetHooks(support=support, cost=cost, compile=compile_partition)})
