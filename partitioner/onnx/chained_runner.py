"""Run exported partitions chained in ONNX Runtime, as the manifest connects them.

The proof that the exported files compute the model: one InferenceSession per
file, on the target's execution provider when this machine has it (otherwise
on the CPU, with one warning per provider), tensors fed from model inputs and
earlier partitions by name, model outputs collected in the model's order.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImplementedByRuntime
import torch
from torch.utils import _pytree as pytree

from partitioner.errors import PartitionerError
from partitioner.execution.check import CheckResult, compare_outputs, require_real_weights, run_timed
from partitioner.execution.float32_reference import float32_outputs, has_reduced_precision
from partitioner.frontend.capture import split_inputs
from partitioner.onnx.manifest import (MANIFEST_NAME, ExportedPartition, Manifest, boundary_mismatch,
                                       weights_digest)
from partitioner.plan import Plan
from targets.spec_reader import torch_dtype_names

_CPU = "CPUExecutionProvider"
_RUNTIME_ERRORS = tuple(getattr(_ort_state, name) for name in ("InvalidProtobuf", "Fail", "InvalidGraph",
                                                               "InvalidArgument", "NoSuchFile", "RuntimeException"))


class ChainedOnnxModel:
    """The exported partitions of one plan, loaded and ready to run in order."""

    def __init__(self, manifest_path: str | Path):
        path = Path(manifest_path)
        self.folder = path if path.is_dir() else path.parent
        self.manifest = Manifest.load(path if not path.is_dir() else path / MANIFEST_NAME)
        problem = _manifest_inconsistency(self.manifest)
        if problem is not None:
            raise PartitionerError(f"{self.folder / MANIFEST_NAME}: {problem}. Fix: export the plan again.")
        available = set(onnxruntime.get_available_providers())
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's optimizer notes are not the user's business
        self.sessions = []
        for partition in self.manifest.partitions:
            file = self.folder / partition.file
            if not file.is_file():
                what = "is not a regular file" if file.exists() or file.is_symlink() else "is missing from the export"
                raise PartitionerError(f"{file} {what}. Fix: export the plan again.")
            providers = _providers(partition.execution_provider, partition.target, available)
            try:
                session = onnxruntime.InferenceSession(str(file), options, providers=providers)
            except NotImplementedByRuntime as error:
                raise PartitionerError(_no_kernel(partition, providers[0], error)) from None
            except _RUNTIME_ERRORS as error:
                raise PartitionerError(f"{file} is not an ONNX file ONNX Runtime can load ({_first_line(error)}). "
                                       "Fix: export the plan again.") from None
            problem = _file_inconsistency(partition, session) or _opset_inconsistency(file, self.manifest.opset)
            if problem is not None:
                raise PartitionerError(f"{file} does not match the manifest: {problem}. Fix: export the plan again.")
            self.sessions.append(session)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.manifest.inputs]

    def run(self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The model's outputs, flat and in order, for its flat inputs (in manifest order, or by name)."""
        values = dict(inputs) if isinstance(inputs, Mapping) else dict(zip(self.input_names, inputs))
        missing = [name for name in self.input_names if name not in values]
        if missing:
            raise PartitionerError(f"input {missing[0]!r} is not given. Fix: pass every input of {self.input_names}.")
        for session in self.sessions:
            names = [item.name for item in session.get_inputs()]
            outputs = session.run(None, {name: values[name] for name in names})
            values.update(zip((item.name for item in session.get_outputs()), outputs))
        return [values[spec.name] for spec in self.manifest.outputs]


def _manifest_inconsistency(manifest: Manifest) -> str | None:
    """What in a manifest cannot be right: no files or outputs, a file listed twice or outside its folder, files
    out of run order, an unknown execution provider, an opset other than the files', a dtype torch lacks, a tensor
    read from somewhere that does not make it (or as another shape or dtype than made there)."""
    if not manifest.partitions or not manifest.outputs:
        return "it lists no partitions" if not manifest.partitions else "it lists no model outputs"
    known_providers = set(onnxruntime.get_all_providers())
    made: dict[str, tuple] = {spec.name: (spec.source, spec.shape, spec.dtype) for spec in manifest.inputs}
    files = [partition.file for partition in manifest.partitions]
    if len(set(files)) != len(files) or [p.index for p in manifest.partitions] != list(range(len(files))):
        return "its files are not each listed once, in run order"
    if manifest.whole_model_file is not None and Path(manifest.whole_model_file).name != manifest.whole_model_file:
        return f"its whole-model file {manifest.whole_model_file!r} is not a file in the export folder"
    for partition in manifest.partitions:
        if Path(partition.file).name != partition.file or not partition.file.endswith(".onnx"):
            return f"file {partition.file!r} is not an .onnx file in the export folder"
        if partition.execution_provider not in known_providers:
            return f"{partition.execution_provider!r} is not an ONNX Runtime execution provider"
        strange = next((s.dtype for s in (*manifest.inputs, *partition.inputs, *partition.outputs)
                        if s.dtype not in torch_dtype_names()), None)
        if strange is not None:
            return f"{partition.file} names the dtype {strange!r}, which torch does not have"
        for spec in partition.inputs:
            if made.get(spec.name) != (spec.source, spec.shape, spec.dtype):
                return (f"{partition.file} reads {spec.name} as {spec.dtype}{list(spec.shape)} from {spec.source!r}, "
                        "and no model input or earlier file makes it so")
        made.update({spec.name: (partition.index, spec.shape, spec.dtype) for spec in partition.outputs})
    missing = next((spec.name for spec in manifest.outputs if made.get(spec.name, (None,))[0] != spec.source), None)
    return f"model output {missing} comes from no file" if missing else None


def _opset_inconsistency(file: Path, opset: int) -> str | None:
    """Where a file's ONNX opset is not the one the manifest records."""
    imports = onnx.load(str(file), load_external_data=False).opset_import
    found = next((entry.version for entry in imports if entry.domain in ("", "ai.onnx")), None)
    return None if found == opset else f"its files are of opset {found}, the manifest says {opset}"


def _file_inconsistency(partition: ExportedPartition, session: onnxruntime.InferenceSession) -> str | None:
    """Where a file's inputs and outputs differ from the manifest's names, shapes or dtypes."""
    found = {kind: [(item.name, tuple(item.shape), item.type) for item in items]
             for kind, items in (("input", session.get_inputs()), ("output", session.get_outputs()))}
    return boundary_mismatch(partition.inputs, partition.outputs, found)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _no_kernel(partition: ExportedPartition, provider: str, error: Exception) -> str:
    """Why ONNX Runtime cannot run a file here: the op it lacks, and for bfloat16 the provider's known limit."""
    missing = re.search(r"Could not find an implementation for (\S+)", str(error))
    op = missing.group(1) if missing else "an op"
    dtypes = {t.dtype for t in partition.inputs + partition.outputs}
    if "bfloat16" in dtypes:
        return (f"ONNX Runtime's {provider} has no bfloat16 kernel for {op} in {partition.file}: it runs bfloat16 for "
                "few ops, so a bfloat16 export cannot run here. Fix: run it where the target's provider "
                f"({partition.execution_provider}) is installed, or check the plan here in torch with "
                "`partitioner run PLAN --check`, or compile and export a float32 build of the model to check the "
                "files.")
    return (f"ONNX Runtime's {provider} has no kernel for {op} in {partition.file}. Fix: run it where the target's "
            f"provider ({partition.execution_provider}) is installed, or check the plan in torch with "
            "`partitioner run PLAN --check`.")


def _providers(wanted: str, target: str, available: set[str]) -> list[str]:
    if wanted in available:
        return [wanted] + ([_CPU] if wanted != _CPU else [])
    if wanted not in _warned:
        _warned.add(wanted)
        warnings.warn(f"{wanted} (for {target}) is not available here; running on {_CPU}", stacklevel=3)
    return [_CPU]


_warned: set[str] = set()


def check_manifest(manifest_path: str | Path, model_source: str | None = None, *,
                   rtol: float | None = None, atol: float | None = None) -> CheckResult:
    """Run the chained ONNX files on the model's example inputs and compare with the original model.

    The model is rebuilt from the plan the manifest records (or `model_source`)
    and must still match it; every output is compared under per-dtype tolerances.
    A float16 or bfloat16 output beyond them (ONNX Runtime's kernels round
    differently from torch's) is judged against a float32 run of the model
    instead, unless `rtol` or `atol` are given.
    """
    chain = ChainedOnnxModel(manifest_path)
    if chain.manifest.plan_path is None:
        raise PartitionerError(
            "the manifest records no plan, so the original model is unknown. "
            "Fix: export with `partitioner export PLAN -o DIR`, which records it."
        )
    plan = Plan.load(chain.manifest.plan_path)
    if model_source is not None:
        plan = plan.with_source(model_source)
    if plan.model.fingerprint != chain.manifest.fingerprint:
        raise PartitionerError(f"the manifest was exported from another version of the plan at "
                               f"{chain.manifest.plan_path}. Fix: export the plan again.")
    captured = plan.captured_model()
    require_real_weights(captured)
    if chain.manifest.weights_digest not in (None, weights_digest(captured.program)):
        raise PartitionerError(
            f"the model built again from {plan.model.source} has other weights than the exported files hold (its "
            "build() draws random weights without a fixed seed, say, or loads another weights file), so the check "
            "would compare two models. Fix: make build() give the same weights every time (torch.manual_seed, or "
            "load saved weights), then export again.")
    expected = run_timed(captured.model or captured.program.module(), captured.example_inputs).outputs
    args, kwargs = split_inputs(captured.example_inputs)
    # Flags such as use_cache=False were fixed at capture: the files take the tensors only.
    inputs = [t.detach().cpu().numpy() for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    actual = [torch.from_numpy(value) for value in chain.run(inputs)]
    expected = pytree.tree_leaves(expected)
    result = compare_outputs(expected, actual, rtol, atol)
    if result.passed or rtol is not None or atol is not None or captured.model is None \
            or not has_reduced_precision(expected):
        return result
    return compare_outputs(expected, actual, float32_reference=float32_outputs(captured.model, captured.example_inputs))
