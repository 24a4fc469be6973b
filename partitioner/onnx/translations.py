"""ONNX translations for ops torch.onnx has none for: a registry the exporter passes as its custom table.

torch.onnx lowers each ATen op with its own library (torchlib); custom ops
(e.g. transformers' `grouped_mm_fallback` in mixture-of-experts layers) need
an onnxscript function of their own. transformers ships translations for its
custom ops and for ATen ops whose default lowering ONNX Runtime cannot run;
they are used whenever transformers is loaded. `register_translation` adds
or overrides one, for a model's own custom ops.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable

_REGISTERED: dict[Any, Callable] = {}


def register_translation(op: Any, function: Callable) -> None:
    """Translate `op` (e.g. `torch.ops.mylib.fused_gelu.default`) with the onnxscript `function` on export."""
    _REGISTERED[op] = function


def translation_table() -> dict[Any, Callable]:
    """Every translation the exporter should use: transformers' own where transformers is loaded (a model built
    from it has imported it), then the registered ones, which win."""
    table: dict[Any, Callable] = {}
    if "transformers" in sys.modules:
        table.update(_transformers_translations())
    table.update(_REGISTERED)
    return table


def _transformers_translations() -> dict[Any, Callable]:
    try:  # transformers' exporter module, present from transformers 5; older ones ship no table
        from transformers.exporters.exporter_onnx import _ONNX_TRANSLATION_TABLE
    except ImportError:
        return {}
    return dict(_ONNX_TRANSLATION_TABLE)


def missing_translation(error: BaseException) -> str | None:
    """The op named by torch.onnx's 'No ONNX function found for <OpOverload(...)>' error, e.g.
    `transformers.grouped_mm_fallback.default`, or None when the error is about something else."""
    found = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", str(error))
    return f"{found.group(1)}.{found.group(2)}" if found else None
