"""Values sent to an actor with what it must import before it can read them.

A captured graph may call a custom op that a library registers when one of its modules is imported
(transformers' grouped matmul of a mixture of experts, `torch.ops.transformers.grouped_mm_fallback`). An actor
reads its arguments before it runs any code of ours, in a process that never imported that module, and fails
there. So partitions travel pickled, beside the modules that define the custom ops their graphs call, and the
actor imports those first (`Shipment.opened`).
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from typing import Any, Iterable

import torch

# Op namespaces torch itself defines: their ops exist in every process.
TORCH_NAMESPACES = frozenset({"aten", "prim", "prims", "_c10d_functional", "c10d_functional", "_c10d", "c10d",
                              "quantized", "quantized_decomposed", "higher_order", "profiler", "_quantized"})


@dataclass(frozen=True, slots=True)
class Shipment:
    """A pickled value and the modules to import before unpickling it."""

    imports: tuple[str, ...]
    payload: bytes

    def opened(self) -> Any:
        for module in self.imports:
            importlib.import_module(module)
        return pickle.loads(self.payload)


def shipped(value: Any, modules: Iterable[torch.nn.Module]) -> Shipment:
    """`value` pickled, with the modules defining the custom ops the graphs of `modules` call."""
    return Shipment(custom_op_modules(modules), pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def custom_op_modules(modules: Iterable[torch.nn.Module]) -> tuple[str, ...]:
    """The Python modules that define the custom ops (torch.library) called by the graphs within `modules`."""
    from torch._library import custom_ops

    found: dict[str, None] = {}
    for module in modules:
        for graph_module in (m for m in module.modules() if isinstance(m, torch.fx.GraphModule)):
            for node in graph_module.graph.nodes:
                target = node.target
                if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
                    continue
                if target.namespace in TORCH_NAMESPACES:
                    continue
                definition = custom_ops.OPDEFS.get(target._schema.name)
                defined_in = getattr(getattr(definition, "_init_fn", None), "__module__", None)
                if defined_in:
                    found.setdefault(defined_in)
    return tuple(found)
