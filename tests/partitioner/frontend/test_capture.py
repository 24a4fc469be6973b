"""Capture: models and example inputs in every accepted form become ExportedPrograms; mistakes become PartitionerErrors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from partitioner.errors import PartitionerError
from partitioner.frontend.capture import CapturedModel, ModelSource, capture, load_model_file


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x, y):
        return self.linear(x) * y


class WithOptionalScale(nn.Module):
    def forward(self, x, scale=None):
        return x * 2 if scale is None else x * scale


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent branch: torch.export cannot trace this
            return x + 1
        return x - 1


def _user_input_count(captured: CapturedModel) -> int:
    return len(captured.program.graph_signature.user_inputs)


def _write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


# --- example inputs in each accepted form ---------------------------------------------------------------------


def test_tuple_inputs_are_positional_arguments():
    model, x, y = TwoInputs(), torch.randn(2, 4), torch.randn(2, 4)

    captured = capture(model, (x, y))

    assert _user_input_count(captured) == 2
    torch.testing.assert_close(captured.program.module()(x, y), model(x, y))


def test_list_inputs_are_positional_arguments():
    model, x, y = TwoInputs(), torch.randn(2, 4), torch.randn(2, 4)

    captured = capture(model, [x, y])

    torch.testing.assert_close(captured.program.module()(x, y), model(x, y))


def test_dict_inputs_are_keyword_arguments():
    model, x, y = TwoInputs(), torch.randn(2, 4), torch.randn(2, 4)

    captured = capture(model, {"y": y, "x": x})

    assert _user_input_count(captured) == 2
    torch.testing.assert_close(captured.program.module()(x=x, y=y), model(x, y))


def test_args_kwargs_pair_passes_both():
    model, x, scale = WithOptionalScale(), torch.randn(3), torch.tensor(5.0)

    captured = capture(model, ((x,), {"scale": scale}))

    assert _user_input_count(captured) == 2
    torch.testing.assert_close(captured.program.module()(x, scale=scale), x * 5)


def test_single_tensor_is_the_only_positional_argument():
    model, x = nn.Linear(4, 3), torch.randn(2, 4)

    captured = capture(model, x)

    assert _user_input_count(captured) == 1
    torch.testing.assert_close(captured.program.module()(x), model(x))


def test_captured_model_is_named_after_its_class_unless_named():
    assert capture(nn.Linear(4, 3), torch.randn(2, 4)).name == "Linear"
    assert capture(nn.Linear(4, 3), torch.randn(2, 4), name="head").name == "head"


def test_model_on_meta_device_captures_without_weights():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096))
    inputs = (torch.empty(8, 4096, device="meta"),)

    captured = capture(model, inputs)

    ops = {str(node.target) for node in captured.program.graph.nodes if node.op == "call_function"}
    assert "aten.linear.default" in ops and "aten.relu.default" in ops
    assert all(p.device.type == "meta" for p in captured.program.state_dict.values())


def test_unsupported_input_type_raises_partitioner_error():
    with pytest.raises(PartitionerError, match="example inputs of type int.*Fix"):
        capture(nn.Linear(4, 3), 3)


# --- models that cannot be captured -------------------------------------------------------------------------------


def test_data_dependent_control_flow_names_the_user_file_and_line():
    source_lines = Path(__file__).read_text().splitlines()
    branch_line = 1 + next(i for i, line in enumerate(source_lines) if "if x.sum() > 0:" in line)

    with pytest.raises(PartitionerError) as raised:
        capture(DataDependent(), (torch.randn(3),))

    message = str(raised.value)
    assert f"{__file__}:{branch_line}" in message
    assert "DataDependent" in message
    assert "Fix:" in message
    assert "\n" not in message


def test_failed_capture_prints_nothing_beside_its_error(capsys):
    with pytest.raises(PartitionerError):
        capture(DataDependent(), (torch.randn(3),))

    assert capsys.readouterr().err == ""  # torch.export's partial graph dump is held back


def test_non_module_raises_partitioner_error():
    with pytest.raises(PartitionerError, match="expected a torch.nn.Module.*got function.*Fix"):
        capture(lambda x: x + 1, (torch.randn(3),))


# --- load_model_file ------------------------------------------------------------------------------------------------

_BUILD_FILE = """
    import torch

    def build():
        return torch.nn.Linear(4, 2), (torch.randn(1, 4),)

    def wide():
        return torch.nn.Linear(8, 2), (torch.randn(1, 8),)

    not_a_function = 3
"""


def test_python_file_calls_build_and_records_its_source(tmp_path):
    path = _write(tmp_path, "model.py", _BUILD_FILE)

    captured = load_model_file(str(path))

    assert captured.name == "model"
    assert captured.source == ModelSource("python", str(path.resolve()), "build")
    assert captured.program.graph_signature.user_inputs  # an actual program was captured
    weight_shapes = [tuple(p.shape) for p in captured.program.state_dict.values()]
    assert (2, 4) in weight_shapes


def test_python_file_with_function_name_calls_that_function(tmp_path):
    path = _write(tmp_path, "model.py", _BUILD_FILE)

    captured = load_model_file(f"{path}:wide")

    assert captured.source == ModelSource("python", str(path.resolve()), "wide")
    assert str(captured.source) == f"{path.resolve()}:wide"
    weight_shapes = [tuple(p.shape) for p in captured.program.state_dict.values()]
    assert (2, 8) in weight_shapes


def test_model_file_can_import_a_module_beside_it(tmp_path):
    _write(tmp_path, "layers_beside_model.py", "import torch\nLayer = torch.nn.Linear\n")
    path = _write(tmp_path, "model.py", """
        import torch
        from layers_beside_model import Layer

        def build():
            return Layer(4, 2), (torch.randn(1, 4),)
    """)

    assert load_model_file(str(path)).source.function == "build"


def test_missing_function_names_the_function_and_the_fix(tmp_path):
    path = _write(tmp_path, "model.py", _BUILD_FILE)

    with pytest.raises(PartitionerError, match=r"has no function missing\(\).*Fix"):
        load_model_file(f"{path}:missing")


def test_a_non_callable_attribute_is_not_a_builder(tmp_path):
    path = _write(tmp_path, "model.py", _BUILD_FILE)

    with pytest.raises(PartitionerError, match=r"has no function not_a_function\(\)"):
        load_model_file(f"{path}:not_a_function")


def test_file_without_build_says_to_define_build(tmp_path):
    path = _write(tmp_path, "model.py", "import torch\nmodel = torch.nn.Linear(4, 2)\n")

    with pytest.raises(PartitionerError, match=r"has no function build\(\)\. Fix: define build\(\)"):
        load_model_file(str(path))


def test_build_returning_only_the_model_asks_for_a_pair(tmp_path):
    path = _write(tmp_path, "model.py", """
        import torch

        def build():
            return torch.nn.Linear(4, 2)
    """)

    with pytest.raises(PartitionerError, match=r"returned Linear, not \(model, example_inputs\).*Fix"):
        load_model_file(str(path))


def test_build_returning_a_non_module_pair_raises_partitioner_error(tmp_path):
    path = _write(tmp_path, "model.py", """
        import torch

        def build():
            return "model", (torch.randn(1, 4),)
    """)

    with pytest.raises(PartitionerError, match="expected a torch.nn.Module.*got str"):
        load_model_file(str(path))


def test_build_that_raises_reports_the_error(tmp_path):
    path = _write(tmp_path, "model.py", """
        def build():
            raise ValueError("no weights here")
    """)

    with pytest.raises(PartitionerError, match=r"build\(\) failed: ValueError: no weights here\. Fix"):
        load_model_file(str(path))


def test_file_that_fails_to_import_reports_the_error(tmp_path):
    path = _write(tmp_path, "model.py", "import torch\nimport a_module_that_does_not_exist_anywhere\n")

    with pytest.raises(PartitionerError, match=r"importing .*model\.py failed: ModuleNotFoundError.*Fix"):
        load_model_file(str(path))


def test_file_with_syntax_error_reports_the_error(tmp_path):
    path = _write(tmp_path, "model.py", "def build(:\n    pass\n")

    with pytest.raises(PartitionerError, match=r"importing .*model\.py failed: SyntaxError"):
        load_model_file(str(path))


def test_missing_python_file_says_it_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere.py"

    with pytest.raises(PartitionerError, match=r"nowhere\.py' does not exist\. Fix: check the path"):
        load_model_file(str(missing))


def test_file_of_unknown_kind_names_the_accepted_kinds(tmp_path):
    path = _write(tmp_path, "model.onnx", "not a python file")

    with pytest.raises(PartitionerError, match=r"cannot read a model from .*model\.onnx.*Fix: .*build\(\).*\.pt2"):
        load_model_file(str(path))


def test_saved_exported_program_loads_and_records_its_kind(tmp_path):
    model, x = nn.Linear(4, 2), torch.randn(1, 4)
    path = tmp_path / "linear.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)

    captured = load_model_file(str(path))

    assert captured.name == "linear"
    assert captured.source == ModelSource("exported_program", str(path.resolve()))
    assert captured.source.function is None
    torch.testing.assert_close(captured.program.module()(x), model(x))


def test_missing_exported_program_says_it_does_not_exist(tmp_path):
    with pytest.raises(PartitionerError, match=r"gone\.pt2' does not exist\. Fix"):
        load_model_file(str(tmp_path / "gone.pt2"))


def test_corrupt_exported_program_says_how_to_save_one(tmp_path):
    path = tmp_path / "broken.pt2"
    path.write_bytes(b"this is not a zip archive")

    with pytest.raises(PartitionerError, match=r"broken\.pt2 is not a loadable ExportedProgram.*Fix: .*torch\.export\.save"):
        load_model_file(str(path))


def test_model_source_round_trips_through_a_dict():
    for source in (ModelSource("python", "/models/m.py", "build"), ModelSource("exported_program", "/m.pt2")):
        assert ModelSource.from_dict(source.to_dict()) == source


class Memory:
    """A container torch.export has not been taught to flatten."""

    def __init__(self, state: torch.Tensor):
        self.state = state


class ReadsMemory(nn.Module):
    def forward(self, x, memory):
        return x + memory.state


def test_an_input_type_torch_export_cannot_flatten_is_named_with_how_to_register_it():
    with pytest.raises(PartitionerError, match=r"an example input is a .*Memory, which torch.export cannot flatten "
                                               r"into tensors\. Fix: register that type before compiling"):
        capture(ReadsMemory(), (torch.randn(2), Memory(torch.randn(2))))


def test_a_decode_step_with_a_transformers_dynamic_cache_captures():
    from tests.zoo import qwen2_decode_step

    model, inputs = qwen2_decode_step()

    captured = capture(model, inputs)

    tensors = [name for name in captured.program.graph_signature.user_inputs if isinstance(name, str)]
    assert tensors == ["input_ids", "cache_0", "cache_1", "cache_2", "cache_3"]  # keys and values of both layers


class ComputesSomethingUnused(nn.Module):
    def forward(self, x):
        positions = torch.arange(x.shape[-1]).unsqueeze(0)  # noqa: F841 - read by nothing
        return x * 2


def test_ops_whose_results_nothing_reads_are_not_captured():
    captured = capture(ComputesSomethingUnused(), (torch.randn(2, 4),))

    ops = [node.target for node in captured.program.graph.nodes if node.op == "call_function"]
    assert ops == [torch.ops.aten.mul.Tensor]
    torch.testing.assert_close(captured.program.module()(torch.ones(2, 4)), torch.full((2, 4), 2.0))


def test_example_inputs_the_model_does_not_take_are_named_as_the_fault_not_its_tracing():
    model = torch.nn.Linear(8, 8)

    with pytest.raises(PartitionerError, match=r"Linear fails when called on its example inputs: RuntimeError: mat1 "
                                               r"and mat2 shapes cannot be multiplied .* Fix: give example inputs "
                                               r"the model takes"):
        capture(model, (torch.randn(2, 9),))
