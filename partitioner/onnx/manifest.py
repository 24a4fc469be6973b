"""The manifest of an export: the files in run order, the tensors at their boundaries, and where each comes from.

`export.py` writes it beside the ONNX files; `chained_runner.py` reads it and
checks each file against it before running anything. Both compare a file's
boundary with the manifest the same way (`boundary_mismatch`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import onnx
import torch

from partitioner.errors import PartitionerError
from partitioner.fields import FieldError, part, records, sizes, text, texts, value, whole, within
from partitioner.files import MANIFEST, read_json

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# ONNX Runtime's names of tensor element types where they differ from torch's.
_ONNX_TYPE_NAMES = {"float32": "float", "float64": "double"}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor at a boundary: a model input, a partition's input or output, a model output.

    `source` says where the value comes from: "input" (a model input) or the
    index of the partition that produces it.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: str | int = "input"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping) -> TensorSpec:
        source = value(data, "source")
        if source != "input" and (isinstance(source, bool) or not isinstance(source, int) or source < 0):
            raise FieldError("source", f"expected \"input\" or a partition's index, got {source!r:.40}")
        return cls(text(data, "name"), within("shape", sizes, value(data, "shape")), text(data, "dtype"), source)


@dataclass(frozen=True, slots=True)
class ExportedPartition:
    """One ONNX file: the partition it holds, where it should run, and its boundary tensors."""

    index: int
    target: str
    execution_provider: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    compiled: tuple[str, ...] = ()  # what the target's compiler made of it (a plug-in's hook), beside the file
    note: str = ""  # the compiler's line for the user about what it made

    def to_dict(self) -> dict:
        return {"index": self.index, "target": self.target, "execution_provider": self.execution_provider,
                "file": self.file, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                **({"compiled": list(self.compiled)} if self.compiled else {}),
                **({"note": self.note} if self.note else {})}

    @classmethod
    def from_dict(cls, data: Mapping) -> ExportedPartition:
        return cls(whole(data, "index"), text(data, "target"), text(data, "execution_provider"), text(data, "file"),
                   records(data, "inputs", TensorSpec.from_dict), records(data, "outputs", TensorSpec.from_dict),
                   texts(data, "compiled", ()), text(data, "note", ""))


@dataclass(frozen=True, slots=True)
class Manifest:
    """How the exported files connect: model inputs, files in run order, and model outputs by source."""

    model_name: str
    fingerprint: str
    plan_path: str | None
    opset: int
    inputs: tuple[TensorSpec, ...]
    partitions: tuple[ExportedPartition, ...]
    outputs: tuple[TensorSpec, ...]
    whole_model_file: str | None = None
    weights_digest: str | None = None  # of the weights the files hold (`weights_digest`); None in older exports

    def to_dict(self) -> dict:
        return {"schema_version": MANIFEST_SCHEMA_VERSION, "model": {"name": self.model_name,
                "fingerprint": self.fingerprint}, "plan": self.plan_path, "opset": self.opset,
                "inputs": [t.to_dict() for t in self.inputs], "partitions": [p.to_dict() for p in self.partitions],
                "outputs": [t.to_dict() for t in self.outputs], "whole_model_file": self.whole_model_file,
                **({"weights_digest": self.weights_digest} if self.weights_digest else {})}

    @classmethod
    def from_dict(cls, data: Mapping) -> Manifest:
        if data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
            raise PartitionerError(
                f"manifest schema version {data.get('schema_version')!r} is not {MANIFEST_SCHEMA_VERSION}. "
                "Fix: export the plan again with this version of partitioner."
            )
        name, fingerprint = part(data, "model", lambda model: (text(model, "name"), text(model, "fingerprint")))
        return cls(name, fingerprint, text(data, "plan", None), whole(data, "opset"),
                   records(data, "inputs", TensorSpec.from_dict), records(data, "partitions", ExportedPartition.from_dict),
                   records(data, "outputs", TensorSpec.from_dict), text(data, "whole_model_file", None),
                   text(data, "weights_digest", None))

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """The manifest in `path` (or in the folder `path`), read within a bound (partitioner/files.py)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        data = read_json(path, MANIFEST)
        if not isinstance(data, Mapping):
            raise PartitionerError(f"{path} is not a partitioner manifest: it holds a JSON {type(data).__name__}, "
                                   "not an object. Fix: export the plan again.")
        try:
            return cls.from_dict(data)
        except FieldError as error:
            raise PartitionerError(f"{path} is not a partitioner manifest: its {error}. Fix: export the plan "
                                   "again.") from None


def weights_digest(program: torch.export.ExportedProgram) -> str:
    """A digest of a captured model's weights, buffers and constants: what an export's files hold, so that a check
    can tell a model rebuilt with other weights (a build() drawing random ones without a seed) from a wrong file."""
    digest = hashlib.sha256()
    for name, tensor in sorted({**program.state_dict, **program.constants}.items()):
        if isinstance(tensor, torch.Tensor):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def file_boundary(graph: onnx.GraphProto) -> dict[str, list[tuple[str, tuple, str]]]:
    """An ONNX graph's inputs and outputs as (name, shape, type), the type as ONNX Runtime writes it, e.g.
    `tensor(float16)`; a dimension without a fixed size is its name or None."""
    def described(info: onnx.ValueInfoProto) -> tuple[str, tuple, str]:
        tensor = info.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        return info.name, shape, f"tensor({onnx.TensorProto.DataType.Name(tensor.elem_type).lower()})"
    return {"input": [described(i) for i in graph.input], "output": [described(o) for o in graph.output]}


def boundary_mismatch(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                      found: Mapping[str, Sequence[tuple[str, tuple, str]]]) -> str | None:
    """Where a file's inputs or outputs (`file_boundary`'s form) differ from the manifest's names, shapes or
    dtypes; None where they agree."""
    for kind, specs in (("input", inputs), ("output", outputs)):
        wanted = [(spec.name, spec.shape, f"tensor({_ONNX_TYPE_NAMES.get(spec.dtype, spec.dtype)})")
                  for spec in specs]
        if list(found[kind]) != wanted:
            return f"its {kind}s are {list(found[kind])}, the manifest says {wanted}"
    return None
