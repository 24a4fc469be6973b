"""Exports that need more than torchlib: custom ops get a registered translation (or an error naming the op);
reduced-precision files are judged against a float32 run; a bfloat16 export is refused where ORT cannot run it."""

from __future__ import annotations

import textwrap

import pytest
import torch
from onnxscript import opset18 as op
from torch import nn

import partitioner
from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.execution.check import compare_outputs
from partitioner.onnx import export, translations
from partitioner.onnx.chained_runner import ChainedOnnxModel
from partitioner.onnx.export import export_plan
from tests.partitioner.onnx.test_export import by_name

pytestmark = [pytest.mark.filterwarnings("ignore:.*emulating it on the CPU:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*is not available here; running on CPUExecutionProvider")]


@torch.library.custom_op("partitioner_test::scaled_tanh", mutates_args=())
def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.tanh(x)


@scaled_tanh.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return scaled_tanh(self.linear(x))


def custom_op_plan():
    torch.manual_seed(0)
    model, inputs = WithCustomOp().eval(), (torch.randn(2, 4),)
    return partitioner.compile(model, inputs, time_limit_seconds=2.0, workers=1), model, inputs


def test_a_custom_op_without_a_translation_is_named_with_the_fix(tmp_path):
    plan, _, _ = custom_op_plan()

    with pytest.raises(PartitionerError, match=r"no translation for the op partitioner_test\.scaled_tanh\.default\. "
                                               r"Fix: register an onnxscript function for it"):
        export_plan(plan, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_a_registered_translation_exports_the_custom_op(tmp_path, monkeypatch):
    def onnx_scaled_tanh(x):
        return op.Mul(op.Tanh(x), op.CastLike(2.0, x))

    monkeypatch.setattr(translations, "_REGISTERED", {})
    translations.register_translation(torch.ops.partitioner_test.scaled_tanh.default, onnx_scaled_tanh)
    plan, model, inputs = custom_op_plan()

    export_plan(plan, tmp_path / "onnx")

    outputs = ChainedOnnxModel(tmp_path / "onnx").run([inputs[0].numpy()])
    torch.testing.assert_close(torch.from_numpy(outputs[0]), model(*inputs).detach())


def test_transformers_translations_are_used_only_once_transformers_is_loaded(monkeypatch):
    import transformers  # noqa: F401 - the zoo models load it; here it must be in sys.modules

    assert "transformers.grouped_mm_fallback.default" in {str(op) for op in translations.translation_table()}
    monkeypatch.delitem(__import__("sys").modules, "transformers")
    assert translations.translation_table() == {}


def test_a_float16_output_beyond_tolerance_passes_when_it_is_as_close_to_float32_as_torchs_own():
    exact = torch.linspace(-1, 1, 64, dtype=torch.float32)
    torch_half = (exact + 0.004).half()       # torch's float16 run: 0.004 off the float32 result
    onnx_half = (exact - 0.003).half()        # another runtime's: 0.007 off torch's, 0.003 off float32

    strict = compare_outputs([torch_half], [onnx_half])
    judged = compare_outputs([torch_half], [onnx_half], float32_reference=[exact])

    assert not strict.passed
    assert judged.passed and judged.mismatches == ()
    assert "rounding, not a wrong result" in judged.notes[0]


def test_a_float16_output_far_from_float32_still_fails():
    exact = torch.linspace(-1, 1, 64, dtype=torch.float32)
    torch_half = (exact + 0.001).half()
    wrong = (exact + 0.05).half()

    judged = compare_outputs([torch_half], [wrong], float32_reference=[exact])

    assert not judged.passed
    assert "more than 2 times the model's own" in judged.mismatches[0]


BFLOAT16_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).to(torch.bfloat16).eval()
        return model, (torch.randn(4, 16, dtype=torch.bfloat16),)
""")


def test_run_onnx_of_a_bfloat16_export_on_the_cpu_provider_is_refused_with_one_line(tmp_path, capsys):
    model_file = tmp_path / "bf16.py"
    model_file.write_text(BFLOAT16_MODEL)
    assert main(["compile", str(model_file), "--time-limit", "2", "--workers", "1", "--quiet",
                 "-o", str(tmp_path / "out")]) == 0
    assert main(["export", str(tmp_path / "out" / "plan.json"), "-o", str(tmp_path / "onnx")]) == 0
    capsys.readouterr()

    code = main(["run-onnx", str(tmp_path / "onnx"), "--check"])

    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert error.startswith("partitioner: error: ONNX Runtime's CPUExecutionProvider has no bfloat16 kernel for ")
    assert "partitioner run PLAN --check" in error


class SquaredNorm(nn.Module):
    """A float16 `pow` + `sum` (torch sums in float32 and rounds back), then more work on it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        h = self.linear(x)
        squared = torch.sum(torch.pow(h, 2), dim=-1, keepdim=True)
        return h / torch.sqrt(squared + 1.0), squared.cumsum(0)


@pytest.fixture(scope="module")
def float16_norm():
    """SquaredNorm in float16, cut right after its `sum`: the sum crosses to the next partition."""
    torch.manual_seed(0)
    model, inputs = SquaredNorm().half().eval(), (torch.randn(4, 8, dtype=torch.float16),)
    plan = partitioner.compile(model, inputs, targets="npu-example,cuda-h100", time_limit_seconds=2.0, workers=1)
    plan = by_name(plan, {"linear": "npu-example", "pow_1": "npu-example", "sum_1": "npu-example",
                          "add": "cuda-h100", "sqrt": "cuda-h100", "div": "cuda-h100", "cumsum": "cuda-h100"})
    return model, inputs, plan


def test_float16_reductions_at_a_partition_boundary_are_exported_in_float16(float16_norm, tmp_path):
    model, inputs, plan = float16_norm

    manifest = export_plan(plan, tmp_path / "onnx")

    boundary = [spec for partition in manifest.partitions for spec in partition.outputs]
    assert {spec.name: spec.dtype for spec in boundary}["p000.sum_1"] == "float16"
    assert {spec.dtype for spec in manifest.outputs} == {"float16"}
    chained = ChainedOnnxModel(tmp_path / "onnx").run([inputs[0].numpy()])  # it checks every file's boundary
    with torch.no_grad():
        expected = model(*inputs)
    for got, want in zip(chained, expected):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-2, atol=1e-2)


def test_a_file_whose_boundary_differs_from_torchs_fails_the_export_naming_the_partition(float16_norm, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setattr(export, "_cast_outputs_to", lambda model, dtypes: None)  # the exporter's float32 sum stays

    with pytest.raises(PartitionerError, match=r"cannot export partition 000_npu-example to ONNX: the file does not "
                                               r"give what torch computes \(its outputs are .*'tensor\(float\)'"):
        export_plan(float16_norm[2], tmp_path / "onnx")

    assert not (tmp_path / "onnx").exists()
