"""Export a plan as one ONNX file per partition, plus a manifest of how they connect.

The last step for vendor toolchains (TensorRT, OpenVINO, QNN, ...), which take
ONNX: each device gets exactly its share. Partitions are exported with
`torch.onnx.export` (dynamo path) at a pinned opset, checked with the full
ONNX checker, strict shape inference and against the boundary the manifest
(manifest.py) records, and written into a temporary folder that replaces the
output folder only once everything succeeded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import onnx
import onnx_ir as ir
import torch
from onnx_ir import tensor_adapters
from torch.utils import _pytree as pytree

from partitioner.errors import PartitionerError
from partitioner.execution.check import require_real_weights
from partitioner.execution.partition_compilers import compile_partition, plan_compilers
from partitioner.execution.partitioned_module import (PartitionedModule, buffers_kept, build_partitioned_module,
                                                      partition_index, to_device)
from partitioner.execution.split import Partition, memory_kept_whole
from partitioner.files import write_json
from partitioner.frontend.capture import CapturedModel, split_inputs
from partitioner.frontend.op_graph import OpGraph, annotate
from partitioner.onnx.manifest import (MANIFEST_NAME, ExportedPartition, Manifest, TensorSpec, boundary_mismatch,
                                       file_boundary, weights_digest)
from partitioner.onnx.translations import missing_translation, translation_table
from partitioner.plan import Plan
from partitioner.plan_records import TargetRecord
from targets.hooks import PartitionRefused, plugin_fault
from targets.spec import Target

OPSET = 18
WHOLE_MODEL_FILE = "whole.onnx"
# Above this a model's weights go to a side file: protobuf cannot hold 2 GiB.
_EXTERNAL_DATA_BYTES = 1 << 30


def export_plan(plan: Plan, output_dir: str | Path, *, whole: bool = False, plan_path: str | Path | None = None,
                opset: int = OPSET) -> Manifest:
    """Write one checked ONNX file per partition of `plan` and `manifest.json` into `output_dir`.

    `whole` also exports the unpartitioned model, so users can compare. The
    folder appears complete or not at all.
    """
    return export_partitions(plan.captured_model(), plan.partitions, plan.targets, plan.model.name,
                             plan.model.fingerprint, output_dir, whole=whole, plan_path=plan_path, opset=opset)


def export_partitions(captured: CapturedModel, partitions: Sequence[Partition], targets: Sequence[TargetRecord],
                      model_name: str, fingerprint: str, output_dir: str | Path, *, whole: bool = False,
                      plan_path: str | Path | None = None, opset: int = OPSET) -> Manifest:
    """Write one checked ONNX file per partition of the captured program and `manifest.json` into `output_dir`
    (a plan's partitions, or one phase's of an LLM plan), each for its target's execution provider."""
    output_dir = Path(output_dir)
    check_output_folder(output_dir)
    require_real_weights(captured)
    module = build_partitioned_module(captured.program, partitions, {t.name: torch.device("cpu") for t in targets})
    args, kwargs = split_inputs(captured.example_inputs if captured.example_inputs is not None
                                else captured.program.example_inputs)
    graph = annotate(captured.program)
    if not partitions:
        raise PartitionerError(f"{model_name} computes nothing (its outputs come from no op on a tensor), so "
                               "there is no partition to export. Fix: export a model whose forward computes tensors "
                               "from its inputs.")
    _check_partitions_stand_alone(partitions, graph)
    partition_inputs = _record_partition_inputs(module, *_fresh(args, kwargs))
    wiring = _Wiring(module)
    providers = {t.name: t.onnx_execution_provider for t in targets}
    compilers = plan_compilers(targets, partitions)
    model_outputs = wiring.model_outputs(module, *_fresh(args, kwargs))  # before the slow part: it may not export
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        exported = []
        for partition in partitions:
            exported.append(_export_partition(partition, module, wiring, partition_inputs[partition.index], staging,
                                              opset, providers[partition.target]))
            if partition.target in compilers:
                compiled, note = _write_compiled(compilers[partition.target], partition, module, graph,
                                                 partition_inputs[partition.index], staging)
                exported[-1] = dataclasses.replace(exported[-1], compiled=compiled, note=note)
        model_inputs = tuple(_spec(name, value, "input") for name, value in wiring.model_inputs(args, kwargs))
        whole_file = None
        if whole:
            whole_file = WHOLE_MODEL_FILE
            names = _distinct_names([t.name for t in model_outputs], [t.name for t in model_inputs])
            whole_args, whole_kwargs = _fresh(args, kwargs)
            _export(captured.program.module(), whole_args, model_inputs,
                    [dataclasses.replace(spec, name=name) for spec, name in zip(model_outputs, names)],
                    staging / whole_file, opset, "the whole model", kwargs=whole_kwargs)
        manifest = Manifest(model_name, fingerprint, str(Path(plan_path).resolve()) if plan_path else None, opset,
                            model_inputs, tuple(exported), model_outputs, whole_file,
                            weights_digest(captured.program))
        write_json(staging / MANIFEST_NAME, manifest.to_dict())
        replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _check_partitions_stand_alone(partitions: Sequence[Partition], graph: OpGraph) -> None:
    """Each file must hand on what its partition computes, writes included: ONNX files share no memory, so a
    partition that only writes into another's memory, or hands nothing on, would be dropped or lose its work."""
    memory_kept_whole(graph, partitions, "ONNX files")
    for partition in partitions:
        if not partition.outputs:
            ops = sorted({graph[name].op for name in partition.nodes})
            raise PartitionerError(
                f"partition {partition.name} hands no value to another partition or to the model's outputs (it "
                f"holds only {', '.join(ops)}), so its file would compute nothing anyone reads. Fix: compile the "
                "plan again with this version of partitioner.")


def _export_partition(partition: Partition, module: PartitionedModule, wiring: _Wiring, inputs: tuple,
                      folder: Path, opset: int, provider: str) -> ExportedPartition:
    """Export one partition to `folder`, its boundary named and typed as the manifest records it."""
    submodule = module.submodule(partition)
    names = [boundary_name(value, partition.index) for value in wiring.outputs(partition.index)]
    input_specs = tuple(_spec(name, value, source) for (name, source), value
                        in zip(wiring.inputs(partition.index), inputs))
    output_specs = tuple(_spec(name, value, partition.index)
                         for name, value in zip(names, _run_outputs(submodule, inputs)))
    file = f"{partition.name}.onnx"
    _export(submodule, inputs, input_specs, output_specs, folder / file, opset, f"partition {partition.name}")
    return ExportedPartition(partition.index, partition.target, provider, file, input_specs, output_specs)


def _write_compiled(target: Target, partition: Partition, module: PartitionedModule, graph: OpGraph,
                    inputs: tuple, folder: Path) -> tuple[tuple[str, ...], str]:
    """Hand `partition` with its real weights and inputs to `target`'s compiler; write what it makes. Returns the
    files' names and the compiler's note (on one line)."""
    try:
        compiled = compile_partition(target, partition, module, graph, inputs)
    except PartitionRefused as refusal:
        raise PartitionerError(
            f"{target.name}'s compiler ({target.origin}) refused partition {partition.name} at export: "
            f"{refusal.reason}. Fix: compile the plan again with this plug-in installed (planning hands each "
            "partition to its compiler and plans around what it refuses).") from None
    files = []
    for suffix, data in compiled.files.items():  # compile_partition checked the suffixes and the bytes
        name = f"{partition.name}{suffix}"
        if (folder / name).exists() or name == MANIFEST_NAME:
            raise plugin_fault(target, f"the compiler of {target.origin} gave file suffix {suffix!r}, which names "
                                       f"{name}, a file export writes itself; it must be a new suffix such as '.bin'")
        (folder / name).write_bytes(data)
        files.append(name)
    return tuple(files), " ".join(compiled.note.split())


def boundary_name(value: str, partition: int) -> str:
    """The ONNX name of a value that partition `partition` hands on, e.g. `p004.transpose`.

    The prefix keeps it apart from the names the exporter gives values inside a file.
    """
    return f"p{partition:03d}.{value}"


class _Wiring:
    """Reads the partitioned module's top-level graph: which value feeds each partition input and model output."""

    def __init__(self, module: PartitionedModule):
        self.graph = module.graph_module.graph
        self.partitions = {p.index: p for p in module.partitions}
        self.calls = {partition_index(n): n for n in self.graph.nodes if partition_index(n) is not None}
        self.index_of = {node: index for index, node in self.calls.items()}
        self.submodules = {index: module.graph_module.get_submodule(node.target) for index, node in self.calls.items()}

    def outputs(self, index: int) -> list[str]:
        """Names (in the model's graph) of the values partition `index` returns, in order.

        The submodule's own node names can differ (fusing renames clashes), so the
        split's record names them; both list a partition's outputs in graph order.
        """
        returned = self.submodules[index].graph.output_node().args[0]
        count = len(returned) if isinstance(returned, (tuple, list)) else int(returned is not None)
        names = list(self.partitions[index].outputs)
        assert len(names) == count, f"partition {index} returns {count} values, its record names {len(names)}"
        return names

    def source(self, node: torch.fx.Node) -> tuple[str, str | int]:
        """(value name, source) of a top-level node: a model input, or the output of a partition."""
        while node.op == "call_function" and node.target is to_device:
            node = node.args[0]
        if node.op == "placeholder":
            return node.name, "input"
        if node.op == "call_function" and node.args and node.args[0] in self.index_of:  # getitem of outputs
            index = self.index_of[node.args[0]]
            return boundary_name(self.outputs(index)[node.args[1]], index), index
        if node in self.index_of:
            index = self.index_of[node]
            return boundary_name(self.outputs(index)[0], index), index
        if node.op == "get_attr":
            raise PartitionerError(
                f"the model returns its weight {node.target} as it is, which no op computes, and the exported "
                "files return what their ops compute (or the model's inputs). Fix: return a copy of it from the "
                f"model (e.g. self.{node.target}.clone()), or leave it out of the outputs.")
        raise AssertionError(f"unexpected top-level node {node.format_node()}")

    def inputs(self, index: int) -> list[tuple[str, str | int]]:
        return [self.source(arg) for arg in self.calls[index].args]

    def model_inputs(self, args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
        """The tensor inputs: flags such as `use_cache=False` were fixed when the model was captured."""
        placeholders = [n.name for n in self.graph.nodes if n.op == "placeholder"]
        return [(name, value) for name, value in zip(placeholders, pytree.tree_leaves((args, kwargs)))
                if isinstance(value, torch.Tensor)]

    def model_outputs(self, module: PartitionedModule, args: tuple, kwargs: dict) -> tuple[TensorSpec, ...]:
        with torch.inference_mode(), buffers_kept(module):
            values = pytree.tree_leaves(module(*args, **kwargs))
        returned = pytree.tree_leaves(self.graph.output_node().args[0])
        specs = []
        for position, (node, value) in enumerate(zip(returned, values)):
            if not isinstance(node, torch.fx.Node) or not isinstance(value, torch.Tensor):
                raise PartitionerError(
                    f"the model returns {type(value).__name__} {_shortened(value)} (its flattened output "
                    f"{position}), and an ONNX file returns tensors only. Fix: return only tensors from the model's "
                    "forward (or compile a wrapper that drops the rest), then compile and export again.")
            name, source = self.source(node)
            specs.append(_spec(name, value, source))
        return tuple(specs)


def _shortened(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _record_partition_inputs(module: PartitionedModule, args: tuple, kwargs: dict) -> dict[int, tuple]:
    """Run the module once and keep (a copy of) each partition's actual inputs: the example inputs for its export.
    The buffers a run updates are put back after it, as every run of export does: each file holds the model's
    state as it was, not as export's own runs left it."""
    recorded: dict[int, tuple] = {}

    def keep(index: int, inputs: tuple) -> None:
        recorded[index] = pytree.tree_map_only(torch.Tensor, torch.clone, inputs)

    hooks = [module.submodule(p).register_forward_pre_hook(
        lambda _module, inputs, index=p.index: keep(index, inputs)) for p in module.partitions]
    try:
        with torch.inference_mode(), buffers_kept(module):
            module(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return recorded


def _run_outputs(submodule: torch.nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with torch.inference_mode(), buffers_kept(submodule):
        return pytree.tree_leaves(submodule(*_fresh(inputs, {})[0]))


def _fresh(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Copies of a run's inputs: a model may write into its inputs (a KV cache and its position counter), and
    each of export's runs must see them as given."""
    return pytree.tree_map_only(torch.Tensor, torch.clone, (tuple(args), dict(kwargs or {})))


def _export(module: torch.nn.Module, args: tuple, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
            path: Path, opset: int, what: str, kwargs: dict | None = None) -> None:
    """Export one module to `path` with the boundary `inputs` and `outputs` (names, shapes and dtypes as torch
    gives them), then run the full checker and strict shape inference on it and check its boundary.

    Autograd is off: with it on, decompositions keep views of tensors that need grad, and some of them
    (e.g. T5's attention reshape) cannot be exported.
    """
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(module, args, kwargs=kwargs, dynamo=True, opset_version=opset,
                                        input_names=[t.name for t in inputs], output_names=[t.name for t in outputs],
                                        verbose=False, custom_translation_table=translation_table())
        _cast_outputs_to(program.model, [t.dtype for t in outputs])
        model = program.model_proto
        large = model.ByteSize() > _EXTERNAL_DATA_BYTES
        onnx.save_model(model, path, save_as_external_data=large, location=f"{path.name}.data" if large else None)
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True)
    except Exception as error:
        raise _export_error(what, error) from error
    found = file_boundary(onnx.load(str(path), load_external_data=False).graph)
    mismatch = boundary_mismatch(inputs, outputs, found)
    if mismatch is not None:
        raise PartitionerError(
            f"cannot export {what} to ONNX: the file does not give what torch computes ({mismatch}). Fix: if a "
            "translation you registered (partitioner.onnx.translations) makes one of its ops, make it return "
            "torch's dtype and shape; otherwise report this model.")


def _export_error(what: str, error: Exception) -> PartitionerError:
    """One line for an export that failed: the op without a translation, or the innermost cause."""
    cause = _root_cause(error)
    op = missing_translation(cause)
    if op is not None:
        return PartitionerError(
            f"cannot export {what} to ONNX: torch.onnx has no translation for the op {op}. Fix: register "
            f"an onnxscript function for it with partitioner.onnx.translations.register_translation("
            f"torch.ops.{op}, function) before exporting, or rewrite that op in the model with exportable ones.")
    return PartitionerError(
        f"cannot export {what} to ONNX: {type(cause).__name__}: {_first_line(cause)}. "
        "Fix: every partition goes to ONNX whatever its target, so rewrite that op in the model with "
        "exportable ones, or register an ONNX translation for it (partitioner.onnx.translations).")


def _cast_outputs_to(model: ir.Model, dtypes: Sequence[str]) -> None:
    """Give each graph output the dtype torch gives it, by a Cast where the exporter left another.

    torch.onnx computes low-precision reductions (a float16 `sum`, `cumsum`, `prod`) in float32 and casts the
    result back, but it takes a graph output by the name the op had before that cast was inserted, so the
    file would return float32 where torch returns float16.
    """
    graph = model.graph
    for position, (value, dtype) in enumerate(zip(list(graph.outputs), dtypes)):
        wanted = tensor_adapters.from_torch_dtype(getattr(torch, dtype))
        if value.dtype == wanted:
            continue
        cast = ir.node("Cast", [value], {"to": wanted})
        graph.append(cast)
        result = cast.outputs[0]
        result.dtype, result.shape = wanted, value.shape
        result.name, value.name = value.name, f"{value.name}.before_cast"
        graph.outputs[position] = result


@contextlib.contextmanager
def _quiet():
    """torch.onnx reports progress on stdout, warnings and logs; our error message replaces them."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _spec(name: str, value: Any, source: str | int) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise PartitionerError(f"value {name} is a {type(value).__name__}, not a tensor: ONNX boundaries carry "
                               "tensors only. Fix: keep the op that makes it on the target of its readers.")
    return TensorSpec(name, tuple(value.shape), str(value.dtype).removeprefix("torch."), source)


def check_output_folder(path: Path) -> None:
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / MANIFEST_NAME).exists())):
        raise PartitionerError(f"{path} exists and is not an earlier export. Fix: give a new or empty folder with -o.")
    path.parent.mkdir(parents=True, exist_ok=True)


def replace_folder(staging: Path, output_dir: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes folders private; an export is an ordinary folder
    if output_dir.exists():
        shutil.rmtree(output_dir)
    staging.rename(output_dir)


def _distinct_names(names: list[str], taken: list[str]) -> list[str]:
    """Output names for one ONNX graph, where each needs its own: a value the model returns again, or a model
    input it returns as is, gets its output position appended (e.g. `p000.linear.5`)."""
    used = set(taken)
    distinct = []
    for position, name in enumerate(names):
        distinct.append(name if name not in used else f"{name}.{position}")
        used.add(distinct[-1])
    return distinct


def _root_cause(error: BaseException) -> BaseException:
    """The innermost cause: torch.onnx wraps the error that names the op and the reason in general advice."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]
