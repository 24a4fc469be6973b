"""Export an LLM plan as ONNX: for each phase, at each size the plan serves (a prefill per prompt length of the
workload, the decode step at the plan's batch), one checked file per partition for its device, and a manifest.

Each phase is captured from the model with its weights and placed as the plan placed it
(partitioner/execution/llm_phases.py), then exported as a plan's partitions are (partitioner/onnx/export.py),
into a folder of its own (`prefill-256/`, `decode-16/`) with its `manifest.json`. `llm_manifest.json` lists the
phases. ONNX files share no memory, so a file that writes a layer's KV cache takes the cache tensors as inputs
(`past_key_values_N`) and returns them updated as outputs, which the caller keeps for the next step. The whole
folder appears complete or not at all.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from partitioner.errors import PartitionerError
from partitioner.execution.llm_phases import as_planned, phase_inputs, placed_phase
from partitioner.files import write_json
from partitioner.llm.deployment import LLMPlan
from partitioner.llm.phases import DECODE, PREFILL
from partitioner.onnx.export import OPSET, check_output_folder, replace_folder, export_partitions
from partitioner.onnx.manifest import MANIFEST_NAME, Manifest

LLM_MANIFEST_NAME = "llm_manifest.json"
LLM_MANIFEST_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class PhaseExport:
    """One phase at one size exported: its folder (within the export) and its manifest."""

    phase: str
    size: int
    folder: str
    manifest: Manifest

    def to_dict(self) -> dict:
        return {"phase": self.phase, "size": self.size, "folder": self.folder, "manifest": MANIFEST_NAME,
                "files": [{"file": p.file, "target": p.target, "execution_provider": p.execution_provider}
                          for p in self.manifest.partitions]}


def export_llm_plan(plan: LLMPlan, model: torch.nn.Module, output_dir: str | Path, *, whole: bool = False,
                    plan_path: str | Path | None = None, opset: int = OPSET) -> tuple[PhaseExport, ...]:
    """Write each phase of `plan` (for `model`, with its weights) as ONNX files per partition into `output_dir`."""
    plan.require_kv_cache("export")
    if plan.best.collectives:
        raise PartitionerError(f"the plan splits layers across tensor-parallel groups "
                               f"({', '.join(plan.best.collectives)}), whose shards export does not write yet (a "
                               "file would hold the whole op). Fix: compile again with --no-tensor-parallel for a "
                               "plan it exports (each layer whole on one device); the groups' tokens can be "
                               "checked against the model with `partitioner run PLAN --check`.")
    output_dir = Path(output_dir)
    check_output_folder(output_dir)
    sizes = [(PREFILL, tokens) for tokens, _ in plan.workload.prompt.buckets] + [(DECODE, plan.best.batch_size)]
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        exported = []
        for phase, size in sizes:
            with as_planned(plan, model) as inputs:
                example = phase_inputs(inputs, phase, size, plan.workload.context_tokens)
                captured, _, partitions, _ = placed_phase(plan, model, phase, example)
            folder = f"{phase}-{size}"
            manifest = export_partitions(captured, partitions, plan.targets, plan.model_name, plan.model_fingerprint,
                                         staging / folder, whole=whole, plan_path=plan_path, opset=opset)
            exported.append(PhaseExport(phase, size, folder, manifest))
        write_json(staging / LLM_MANIFEST_NAME, {
            "schema_version": LLM_MANIFEST_SCHEMA_VERSION, "model": plan.model_name,
            "fingerprint": plan.model_fingerprint, "plan": str(Path(plan_path).resolve()) if plan_path else None,
            "context_tokens": plan.workload.context_tokens, "batch_size": plan.best.batch_size,
            "phases": [one.to_dict() for one in exported]})
        replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return tuple(exported)
