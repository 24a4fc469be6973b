"""Capture: from a model and example inputs (or a model file) to an ExportedProgram.

This is the first pass of the pipeline. It uses `torch.export.export` in
non-strict mode, which works on models whose weights live on the `meta`
device, so a 7B model is captured without allocating its weights. Failures
become one `PartitionerError` that says what failed and where in the user's code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import logging
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from partitioner.errors import PartitionerError
from partitioner.fields import part, text
from partitioner.frontend.model_folder import FolderInputs, build_model_folder, is_model_folder
from partitioner.frontend.input_containers import register_input_containers

# This package's own folder, not any folder named "partitioner" (a user's project may have one).
_LIBRARY_MARKERS = ("site-packages", "dist-packages", "/torch/", str(Path(__file__).parent) + "/")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model came from, so later commands can rebuild it.

    `kind` is "python" (a file with a builder function), "exported_program"
    (a `.pt2` file) or "folder" (a Hugging Face model folder); `function` names
    the builder for Python files, `inputs` the example inputs made for a folder.
    """

    kind: str
    path: str
    function: str | None = None
    inputs: FolderInputs | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.function}" if self.function else self.path

    @classmethod
    def parse(cls, spec: str) -> ModelSource:
        """The source a CLI argument names: `file.py`, `file.py:function`, `file.pt2` or a model folder."""
        if is_model_folder(spec):
            return cls("folder", spec)
        path, _, function = spec.partition(":")
        if path.endswith(".pt2") and not function:
            return cls("exported_program", path)
        return cls("python", path, function or None)

    def to_dict(self) -> dict:
        recorded = {"kind": self.kind, "path": self.path, "function": self.function}
        if self.inputs is not None:
            recorded["inputs"] = self.inputs.to_dict()
        return recorded

    @classmethod
    def from_dict(cls, data: dict) -> ModelSource:
        inputs = data.get("inputs")
        return cls(text(data, "kind", choices=("python", "exported_program", "folder")), text(data, "path"),
                   text(data, "function", None), part(data, "inputs", FolderInputs.from_dict) if inputs else None)


@dataclass(frozen=True, slots=True)
class CapturedModel:
    """A captured model: its ExportedProgram, a display name and its source if known.

    `model` and `example_inputs` are what was captured, kept so the placed
    model can be checked against the original (absent for a `.pt2` file).
    """

    program: ExportedProgram
    name: str
    source: ModelSource | None
    model: torch.nn.Module | None = None
    example_inputs: Any = None


def capture(model: torch.nn.Module, example_inputs: Any, name: str | None = None,
            source: ModelSource | None = None, dynamic_shapes: Any = None) -> CapturedModel:
    """Export `model` called on `example_inputs` into an ExportedProgram.

    `example_inputs` is a tuple of positional inputs, a dict of keyword inputs,
    a `(args_tuple, kwargs_dict)` pair, or a single tensor. `dynamic_shapes`
    (torch.export's, for keyword inputs a dict by name) keeps those sizes symbolic.
    """
    if not isinstance(model, torch.nn.Module):
        raise PartitionerError(
            f"expected a torch.nn.Module to capture, got {type(model).__name__}. "
            "Fix: pass the model object itself (or return it from build())."
        )
    args, kwargs = split_inputs(example_inputs)
    register_input_containers(model)
    try:
        # preserve_node_meta keeps what the model annotates its nodes with (torch.fx.traceback.annotate).
        with _held_back_torch_output(), _called_with_keywords(model, kwargs if dynamic_shapes is not None else {}), \
                torch.fx.traceback.preserve_node_meta():
            program = torch.export.export(model, args, kwargs=kwargs, strict=False, dynamic_shapes=dynamic_shapes)
    except Exception as error:  # torch raises many types here; all mean "this model did not trace"
        raise PartitionerError(_capture_failure(model, error, args, kwargs)) from error
    _remove_dead_code(program)
    return CapturedModel(program, name or type(model).__name__, source, model, example_inputs)


def _remove_dead_code(program: ExportedProgram) -> None:
    """Drop ops whose results nothing reads (torch.export keeps e.g. an unused `arange`), so no plan gives them
    a partition of their own; asserts and in-place writes are impure and stay."""
    if program.graph_module.graph.eliminate_dead_code():
        program.graph_module.recompile()


@contextlib.contextmanager
def _called_with_keywords(model: torch.nn.Module, kwargs: dict):
    """While exporting, give `model.forward` a signature of exactly these keywords: torch.export matches dynamic
    shapes against the signature, and a forward taking **kwargs (transformers') would not match a dict of them."""
    if not kwargs:
        yield
        return
    forward, own = model.forward, "forward" in vars(model)

    def keyword_forward(**given):
        return forward(**given)

    keyword_forward.__signature__ = inspect.Signature(
        [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for k in kwargs])
    model.forward = keyword_forward
    try:
        yield
    finally:
        if own:
            model.forward = forward
        else:
            del model.forward  # the class's forward shows through again


@contextlib.contextmanager
def _held_back_torch_output():
    """On failure torch.export prints a partial graph and log lines; our one-line error replaces them.

    What it printed to stderr is passed on if the export succeeds; its log records up to ERROR are dropped.
    """
    printed = io.StringIO()
    previous_disable = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stderr(printed):
            yield
    finally:
        logging.disable(previous_disable)
    sys.stderr.write(printed.getvalue())


def load_model_source(source: ModelSource) -> CapturedModel:
    """Capture the model again from where a plan says it came from (a folder's with its weights and inputs)."""
    return load_model_file(str(source) if source.kind == "python" else source.path, source.inputs)


def load_model_file(spec: str, inputs: FolderInputs | None = None, weights: bool = True) -> CapturedModel:
    """Capture the model named by a CLI argument.

    `spec` is `file.py` (calls `build()`), `file.py:function`, a saved
    ExportedProgram `file.pt2`, or a Hugging Face model folder (with example
    `inputs` of those sizes; with `weights` where it has them, captured on the
    CPU, else on the meta device as planning captures it).
    """
    named = ModelSource.parse(spec)
    if named.kind == "exported_program":
        return _load_exported_program(Path(named.path))
    model, example_inputs, source = build_model_file(spec, inputs, weights)
    return capture(model, example_inputs, name=Path(source.path).stem, source=source)


def planned_with_weights(planned: CapturedModel, weighted: CapturedModel) -> CapturedModel | None:
    """The graph a model folder was planned with (captured on the meta device) given the weights and constants of
    its capture on the CPU, where the two do the same work and differ only by copies (a kernel on one device lays
    a tensor out so that a `contiguous` is a no-op the capture drops; a CPU capture copies the constants a model
    makes); None where the work differs (the model's code takes another path on the meta device, so the planned
    graph may hold ops the CPU does not run)."""
    if _work(planned.program) != _work(weighted.program):
        return None
    tensors = {**weighted.program.state_dict, **weighted.program.constants,
               **dict(weighted.model.named_parameters(remove_duplicate=False)),
               **dict(weighted.model.named_buffers(remove_duplicate=False))}
    program = planned.program
    for held in (program.state_dict, program.constants):
        for name in held:
            if name not in tensors:
                return None
            held[name] = tensors[name]
    _on_the_cpu(program)
    return CapturedModel(program, planned.name, planned.source, weighted.model, weighted.example_inputs)


def _work(program: ExportedProgram) -> list[str]:
    """The ops of a program that compute, in order, less copies: of a tensor into another layout, or of a
    constant the model made (which a capture on the CPU copies and one on the meta device does not)."""
    from partitioner.frontend.op_graph import NodeKind, annotate

    return [node.op for node in annotate(program) if node.kind is NodeKind.COMPUTE and node.op not in _COPIES]


_COPIES = frozenset({"aten.contiguous.default", "aten.clone.default", "aten.lift_fresh_copy.default"})


def _on_the_cpu(program: ExportedProgram) -> None:
    """Make the tensors a program captured on the meta device creates (a range, a mask) on the CPU instead, where
    its weights now are; the devices the plan places them on move them from there."""
    def on_cpu(value: Any) -> Any:
        return torch.device("cpu") if isinstance(value, torch.device) and value.type == "meta" else value

    for node in program.graph.nodes:
        node.args = tuple(on_cpu(arg) for arg in node.args)
        node.kwargs = {key: on_cpu(value) for key, value in node.kwargs.items()}
    program.graph_module.recompile()


def build_model_file(spec: str, inputs: FolderInputs | None = None,
                     weights: bool = True) -> tuple[torch.nn.Module, Any, ModelSource]:
    """Call the builder a CLI argument names (`file.py`, `file.py:function`), or build a model folder's model
    (partitioner/frontend/model_folder.py): the model, its example inputs and where they came from, before any
    capture."""
    named = ModelSource.parse(spec)
    if named.kind == "folder":
        inputs = inputs or FolderInputs()
        model, example_inputs = build_model_folder(named.path, inputs, weights)
        return model, example_inputs, ModelSource("folder", str(Path(named.path).resolve()), inputs=inputs)
    if inputs is not None and not Path(named.path).exists():
        raise PartitionerError(f"there is no model file or folder {named.path!r}. Fix: check the path.")
    if inputs is not None:
        raise PartitionerError(f"--batch, --tokens and --image-size size the inputs made for a model folder; "
                               f"{spec} makes its own. Fix: drop them, or set the sizes in its build().")
    path = Path(named.path)
    function = named.function or "build"
    if path.suffix != ".py":
        raise PartitionerError(
            f"cannot read a model from {spec!r}. Fix: give a Python file with a build() function "
            "(file.py or file.py:function) or a saved ExportedProgram (file.pt2)."
        )
    module = _import_file(path)
    builder = getattr(module, function, None)
    if not callable(builder):
        raise PartitionerError(
            f"{path} has no function {function}(). Fix: define {function}() returning (model, example_inputs), "
            "or name another function with file.py:function."
        )
    try:
        built = builder()
    except SystemExit as error:
        raise PartitionerError(f"{path}:{function}() exited the program (sys.exit({error.code!r})) instead of "
                               "returning. Fix: return (model, example_inputs) from it.") from None
    except Exception as error:
        raise PartitionerError(f"{path}:{function}() failed: {_describe(error)}. Fix: make it run on its own.") from error
    if not (isinstance(built, tuple) and len(built) == 2):
        raise PartitionerError(
            f"{path}:{function}() returned {type(built).__name__}, not (model, example_inputs). "
            "Fix: return a pair such as `return model, (input_tensor,)`."
        )
    model, example_inputs = built
    return model, example_inputs, ModelSource("python", str(path.resolve()), function)


def _load_exported_program(path: Path) -> CapturedModel:
    if not path.is_file():
        raise PartitionerError(f"model file {str(path)!r} does not exist. Fix: check the path.")
    try:
        with _held_back_torch_output():  # torch logs the whole traceback of a bad file before raising
            program = torch.export.load(path)
    except Exception as error:
        raise PartitionerError(
            f"{path} is not a loadable ExportedProgram ({_describe(error)}). "
            "Fix: save one with torch.export.save(torch.export.export(model, args), path)."
        ) from error
    return CapturedModel(program, path.stem, ModelSource("exported_program", str(path.resolve())))


def _import_file(path: Path):
    if not path.is_file():
        raise PartitionerError(f"model file {str(path)!r} does not exist. Fix: check the path.")
    module_name = f"_partitioner_model_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        module_spec.loader.exec_module(module)
    except SystemExit as error:
        raise PartitionerError(f"importing {path} exited the program (sys.exit({error.code!r})). Fix: keep "
                               "script code under `if __name__ == \"__main__\":`.") from None
    except Exception as error:
        raise PartitionerError(f"importing {path} failed: {_describe(error)}. Fix: make the file importable.") from error
    finally:
        sys.path.pop(0)
    return module


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """Positional and keyword inputs from any accepted form of example inputs (see `capture`)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if (isinstance(example_inputs, tuple) and len(example_inputs) == 2
            and isinstance(example_inputs[0], tuple) and isinstance(example_inputs[1], dict)):
        return example_inputs[0], dict(example_inputs[1])
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise PartitionerError(
        f"example inputs of type {type(example_inputs).__name__} are not understood. "
        "Fix: pass a tuple of positional inputs, a dict of keyword inputs, or (args, kwargs)."
    )


def _capture_failure(model: torch.nn.Module, error: Exception, args: tuple, kwargs: dict) -> str:
    location = _user_frame(error)
    where = f" at {location}" if location else ""
    eager = _eager_failure(model, args, kwargs)
    if eager is not None:  # not the tracing: the model does not run on these inputs at all
        eager_where = f" at {location}" if (location := _user_frame(eager)) else ""
        return (f"{type(model).__name__} fails when called on its example inputs{eager_where}: {_describe(eager)}. "
                "Fix: give example inputs the model takes (calling it on them must run), from build() or "
                "partitioner.compile.")
    unsupported = re.search(r"Unsupported input type <class '([^']+)'>", str(error))
    if unsupported:
        return (
            f"torch.export could not capture {type(model).__name__}: an example input is a {unsupported.group(1)}, "
            "which torch.export cannot flatten into tensors. Fix: register that type before compiling "
            "(torch.utils._pytree.register_pytree_node, or torch.export.register_dataclass for a dataclass), "
            "or pass its tensors as plain inputs."
        )
    return (
        f"torch.export could not capture {type(model).__name__}{where}: {_describe(error)}. "
        "Fix: make that code traceable (no data-dependent Python control flow, no unsupported calls), "
        "or export the model yourself and pass the .pt2 file."
    )


def _eager_failure(model: torch.nn.Module, args: tuple, kwargs: dict) -> Exception | None:
    """What calling `model` on the inputs raises, if anything (its buffers put back after): whether a failed
    capture owes to the inputs rather than to tracing. A model on the meta device is not called (some ops do not
    run there), and None is said."""
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            model(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure here is the inputs' or the model's own
        return error
    finally:
        with torch.no_grad():
            for buffer, values in saved:
                buffer.copy_(values)
    return None


def _user_frame(error: BaseException) -> str | None:
    """The innermost frame of the traceback that is the user's code, as `file:line`."""
    frames = traceback.extract_tb(error.__traceback__)
    cause = error.__cause__ or error.__context__
    if cause is not None:
        frames = frames + traceback.extract_tb(cause.__traceback__)
    for frame in reversed(frames):
        # "<string>", "<frozen ...>", "<eval_with_key>": code generated by torch.fx or Python, not the user's
        if not frame.filename.startswith("<") and not any(marker in frame.filename for marker in _LIBRARY_MARKERS):
            return f"{frame.filename}:{frame.lineno}"
    return None


def _describe(error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
