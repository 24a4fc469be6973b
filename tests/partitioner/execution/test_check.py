"""The output check: a partitioned module is compared with its model leaf by leaf, with tolerances per dtype."""

from __future__ import annotations

import math

import pytest
import torch

from partitioner.errors import PartitionerError
from partitioner.execution.check import Tolerance, check_partitioned, compare_outputs, require_real_weights
from partitioner.execution.partitioned_module import build_partitioned_module
from partitioner.execution.split import split
from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import annotate


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 4)

    def forward(self, x, scale=2.0):
        hidden = torch.relu(self.body(x))
        return {"hidden": hidden, "scaled": (hidden * scale, x.shape[0])}


def one_partition_module(model, example_inputs):
    program = capture(model, example_inputs).program
    graph = annotate(program)
    partitions = split(graph, {node.name: "cpu" for node in graph})
    return build_partitioned_module(program, partitions, {"cpu": torch.device("cpu")})


def test_partitioned_module_of_a_model_passes_with_no_error():
    model, inputs = TwoHeads().eval(), ((torch.randn(3, 4),), {"scale": 3.0})

    result = check_partitioned(model, one_partition_module(model, inputs), inputs)

    assert result.passed and result.mismatches == ()
    assert result.max_abs_error == 0.0 and result.max_rel_error == 0.0
    assert result.tolerances == {"float32": Tolerance(1.3e-6, 1e-5)}


def test_tampered_module_fails_and_names_the_output():
    model, inputs = TwoHeads().eval(), (torch.randn(3, 4),)
    partitioned = one_partition_module(model, inputs)

    def tampered(x):
        outputs = partitioned(x)
        return {**outputs, "scaled": (outputs["scaled"][0] + 0.5, outputs["scaled"][1])}

    result = check_partitioned(model, tampered, inputs)

    assert not result.passed
    assert result.max_abs_error == pytest.approx(0.5)
    assert len(result.mismatches) == 1 and result.mismatches[0].startswith("['scaled'][0] (float32[3, 4]): 12 of 12")


def test_tolerance_follows_the_dtype():
    expected = torch.linspace(1, 2, 10)
    off_by_a_thousandth = expected * (1 + 1e-3)

    assert compare_outputs(expected.bfloat16(), off_by_a_thousandth.bfloat16()).passed
    assert not compare_outputs(expected, off_by_a_thousandth).passed
    assert compare_outputs(expected, off_by_a_thousandth, rtol=2e-3).passed
    assert not compare_outputs(torch.tensor([1, 2]), torch.tensor([1, 3])).passed  # integers match exactly


def test_relative_error_skips_zeros_and_matching_nans_pass():
    expected = torch.tensor([0.0, 2.0, math.nan])
    actual = torch.tensor([1e-6, 2.2, math.nan])

    result = compare_outputs(expected, actual)

    assert result.max_abs_error == pytest.approx(0.2, rel=1e-5)
    assert result.max_rel_error == pytest.approx(0.1, rel=1e-5)
    assert not result.passed


@pytest.mark.parametrize("actual", [(torch.zeros(2),), (torch.zeros(2), 4), (torch.zeros(3), 3), (torch.zeros(2), 5)])
def test_structure_shape_and_python_value_differences_fail(actual):
    result = compare_outputs((torch.zeros(2), 3), actual)

    assert not result.passed
    assert len(result.mismatches) == 1


def test_meta_weights_are_refused_with_a_fix():
    with torch.device("meta"):
        model = torch.nn.Linear(4, 4)

    with pytest.raises(PartitionerError, match="meta device.*Fix: build it with real weights"):
        require_real_weights(capture(model, (torch.randn(2, 4, device="meta"),)))


class RunningSum(torch.nn.Module):
    """A forward that updates its own state: a buffer summed into, then read."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(8, 8)
        self.register_buffer("total", torch.zeros(2, 8))

    def forward(self, x):
        y = self.body(x)
        self.total.add_(y)
        return torch.softmax(self.total, -1) + y


def test_a_model_that_updates_its_own_state_is_checked_from_the_same_state_on_both_sides():
    from partitioner.compiler import compile as compile_model
    from partitioner.execution.check import run_plan

    torch.manual_seed(0)
    model, inputs = RunningSum().eval(), (torch.randn(2, 8),)
    plan = compile_model(model, inputs, targets=["cuda-h100"], time_limit_seconds=2)

    result = run_plan(plan, check=True)

    assert result.check.passed, result.check.mismatches
    # The state changes as one call of the model changes it, not twice.
    torch.testing.assert_close(model.total, model.body(inputs[0]).detach())
