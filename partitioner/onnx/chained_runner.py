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
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImplementedByRuntime
import torch
from torch.utils import _pytree as pytree

from partitioner.errors import PartitionerError
from partitioner.execution.check import CheckResult, compare_outputs, require_real_weights, run_timed
from partitioner.execution.float32_reference import float32_outputs, has_reduced_precision
from partitioner.frontend.capture import split_inputs
from partitioner.onnx.manifest import MANIFEST_NAME, ExportedPartition, Manifest, boundary_mismatch
from partitioner.plan import Plan

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
                raise PartitionerError(f"{file} is missing from the export. Fix: export the plan again.")
            providers = _providers(partition.execution_provider, partition.target, available)
            try:
                session = onnxruntime.InferenceSession(str(file), options, providers=providers)
            except NotImplementedByRuntime as error:
                raise PartitionerError(_no_kernel(partition, providers[0], error)) from None
            except _RUNTIME_ERRORS as error:
                raise PartitionerError(f"{file} is not an ONNX file ONNX Runtime can load ({_first_line(error)}). "
                                       "Fix: export the plan again.") from None
            problem = _file_inconsistency(partition, session)
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
    """What in a manifest cannot be right: no files, a file outside its folder, an unknown execution provider,
    a tensor read before any partition produces it."""
    if not manifest.partitions:
        return "it lists no partitions"
    known_providers = set(onnxruntime.get_all_providers())
    produced = {spec.name for spec in manifest.inputs}
    for position, partition in enumerate(manifest.partitions):
        if Path(partition.file).name != partition.file or not partition.file.endswith(".onnx"):
            return f"file {partition.file!r} is not an .onnx file in the export folder"
        if partition.execution_provider not in known_providers:
            return f"{partition.execution_provider!r} is not an ONNX Runtime execution provider"
        for spec in partition.inputs:
            if spec.name not in produced or (spec.source != "input" and not
                                             (isinstance(spec.source, int) and spec.source < partition.index)):
                return f"{partition.file} reads {spec.name}, which no earlier file or model input provides"
        produced.update(spec.name for spec in partition.outputs)
    missing = next((spec.name for spec in manifest.outputs if spec.name not in produced), None)
    return f"model output {missing} comes from no file" if missing else None


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
