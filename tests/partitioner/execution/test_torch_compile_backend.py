"""`partitioner.backend`: torch.compile runs each captured graph placed and split, and computes what eager computes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import partitioner
from partitioner.errors import PartitionerError

TARGETS = ["npu-example", "cuda-h100"]
SOLVER = {"time_limit_seconds": 5.0, "workers": 1}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: no graph cached by Dynamo from an earlier test, none left for a later one."""
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cuda-h100 is emulated on the CPU here
        yield
    torch._dynamo.reset()


def deep_mlp(width: int = 64, depth: int = 4) -> nn.Sequential:
    """Linear layers around a layer norm: in float16 under the cost objective it splits npu | cuda | npu."""
    def block():
        return [layer for _ in range(depth) for layer in (nn.Linear(width, width), nn.ReLU())]
    return nn.Sequential(*block(), nn.LayerNorm(width), *block())


class BrokenMlp(nn.Module):
    """Two halves with a graph break between them, and two outputs: Dynamo hands over two graphs."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(16, 32)
        self.second = nn.Linear(32, 8)

    def forward(self, x):
        hidden = torch.relu(self.first(x))
        torch._dynamo.graph_break()
        return self.second(hidden), hidden.sum()


def test_compiled_float16_model_is_split_across_targets_and_equals_eager():
    torch.manual_seed(0)
    model = deep_mlp().to(torch.float16)
    x = torch.randn(4, 64, dtype=torch.float16)
    backend = partitioner.backend(TARGETS, "cost", **SOLVER)

    output = torch.compile(model, backend=backend)(x)

    torch.testing.assert_close(output, model(x))
    assert len(backend.plans) == 1
    assert [p.target for p in backend.plans[0].partitions] == ["npu-example", "cuda-h100", "npu-example"]


def test_graph_break_gives_one_plan_per_graph_and_equals_eager():
    torch.manual_seed(0)
    model = BrokenMlp()
    x = torch.randn(4, 16)
    backend = partitioner.backend(TARGETS, **SOLVER)

    output = torch.compile(model, backend=backend)(x)

    torch.testing.assert_close(output, model(x))
    assert len(backend.plans) == 2
    first, second = ({node.op for node in plan.nodes} for plan in backend.plans)
    assert "aten.relu.default" in first and "aten.sum.default" in second


def test_compiled_model_is_planned_once_and_reused_on_later_calls():
    model = BrokenMlp()
    backend = partitioner.backend(TARGETS, **SOLVER)
    compiled = torch.compile(model, backend=backend)

    for _ in range(3):
        x = torch.randn(4, 16)
        torch.testing.assert_close(compiled(x), model(x))

    assert len(backend.plans) == 2


def test_gradients_through_the_compiled_model_equal_eager():
    torch.manual_seed(0)
    model = BrokenMlp()
    reference = copy.deepcopy(model)
    x = torch.randn(4, 16)

    output, total = torch.compile(model, backend=partitioner.backend(TARGETS, **SOLVER))(x)
    (output.square().mean() + total).backward()
    expected_output, expected_total = reference(x)
    (expected_output.square().mean() + expected_total).backward()

    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).grad, parameter.grad, msg=lambda m: f"{name}: {m}")


def test_dynamic_shapes_get_one_plan_per_input_shape():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    backend = partitioner.backend(TARGETS, **SOLVER)
    compiled = torch.compile(model, backend=backend, dynamic=True)

    for batch in (2, 3, 2):
        x = torch.randn(batch, 16)
        torch.testing.assert_close(compiled(x), model(x))

    assert len(backend.plans) == 2, "batch 2 is planned once, though called twice"
    assert backend.plans[0].model.fingerprint != backend.plans[1].model.fingerprint


def test_graph_traced_on_fake_tensors_is_planned_without_real_data():
    backend = partitioner.backend(TARGETS, **SOLVER)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        output = torch.compile(model, backend=backend)(torch.randn(4, 16))

    assert isinstance(output, FakeTensor) and output.shape == (4, 16)
    assert len(backend.plans) == 1


@pytest.mark.parametrize("arguments, problem", [
    ({"targets": ["no-such-target"]}, "no-such-target"),
    ({"objective": "fastest"}, "fastest"),
    ({"device_map": {"no-such-target": "cpu"}}, "no-such-target"),
])
def test_mistakes_raise_when_the_backend_is_made_not_inside_dynamo(arguments, problem):
    with pytest.raises(PartitionerError, match=problem):
        partitioner.backend(**arguments)
