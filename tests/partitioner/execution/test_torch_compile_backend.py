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


def deep_mlp(width: int = 64, depth: int = 8) -> nn.Sequential:
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
    assert backend.plans[0].model.parameter_bytes == (16 * 16 + 16) * 4


@pytest.mark.parametrize("arguments, problem", [
    ({"targets": ["no-such-target"]}, "no-such-target"),
    ({"objective": "fastest"}, "fastest"),
    ({"device_map": {"no-such-target": "cpu"}}, "no-such-target"),
])
def test_mistakes_raise_when_the_backend_is_made_not_inside_dynamo(arguments, problem):
    with pytest.raises(PartitionerError, match=problem):
        partitioner.backend(**arguments)


def weight_bytes(model: nn.Module) -> int:
    """The bytes of the model's parameters and buffers, each tensor once (tied weights are one tensor)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class TiedMlp(nn.Module):
    """Three linear layers, the last one sharing the first one's weight (as tied embeddings do)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.first = nn.Linear(width, width)
        self.middle = nn.Linear(width, width)
        self.last = nn.Linear(width, width)
        self.last.weight = self.first.weight

    def forward(self, x):
        return self.last(torch.relu(self.middle(torch.relu(self.first(x)))))


def recording(backend, compiled: list):
    """A Dynamo backend that hands each graph to `backend` and keeps what it returned for the graph."""
    def compile_graph(graph_module, example_inputs):
        compiled.append(backend(graph_module, example_inputs))
        return compiled[-1]
    return compile_graph


def test_plan_holds_the_weights_dynamo_passes_as_inputs_and_equals_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 16)
    backend = partitioner.backend(TARGETS, **SOLVER)

    output = torch.compile(model, backend=backend)(x)

    torch.testing.assert_close(output, model(x))
    plan = backend.plans[0]
    assert plan.model.parameter_bytes == weight_bytes(model) > 0
    assert set(plan.problem.parameter_bytes) == {name for name, _ in model.named_parameters()}
    assert sum(plan.score().memory_bytes.values()) >= weight_bytes(model), "weights reside on some target"


def test_tied_weights_are_counted_once():
    torch.manual_seed(0)
    model = TiedMlp()
    x = torch.randn(4, 16)
    backend = partitioner.backend(TARGETS, **SOLVER)

    output = torch.compile(model, backend=backend)(x)

    torch.testing.assert_close(output, model(x))
    assert backend.plans[0].model.parameter_bytes == weight_bytes(model)
    assert set(backend.plans[0].problem.parameter_bytes) == {name for name, _ in model.named_parameters()}


def test_batch_norm_buffers_are_weights_and_training_updates_the_models_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)).train()
    reference = copy.deepcopy(model)
    backend = partitioner.backend(TARGETS, **SOLVER)
    compiled = torch.compile(model, backend=backend)

    for _ in range(3):
        x = torch.randn(4, 8) + 3
        torch.testing.assert_close(compiled(x), reference(x))

    assert backend.plans[0].model.parameter_bytes == weight_bytes(model)
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(model.get_buffer(name), buffer, msg=lambda m, name=name: f"{name}: {m}")


def test_a_graph_dynamo_reuses_for_another_instance_runs_with_that_instances_weights():
    torch.manual_seed(0)
    first, second = nn.Sequential(nn.Linear(8, 8)), nn.Sequential(nn.Linear(8, 8))
    x = torch.randn(2, 8)
    backend = partitioner.backend(TARGETS, **SOLVER)

    outputs = [torch.compile(model, backend=backend)(x) for model in (first, second, first)]

    assert len(backend.plans) == 1, "Dynamo passes each instance's weights to one graph"
    for output, model in zip(outputs, (first, second, first)):
        torch.testing.assert_close(output, model(x))


def test_weights_updated_in_place_after_compiling_are_used():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    compiled = torch.compile(model, backend=partitioner.backend(TARGETS, **SOLVER))
    x = torch.randn(2, 8)
    compiled(x)

    with torch.no_grad():
        model[0].weight.mul_(2.0)

    torch.testing.assert_close(compiled(x), model(x))


def test_weights_on_another_device_are_copied_once_and_again_only_when_they_change():
    """The meta device is another device to torch: the plan's partitions hold copies of the CPU weights there."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    compiled: list = []
    backend = partitioner.backend(TARGETS, device_map={target: "meta" for target in TARGETS}, **SOLVER)
    run = torch.compile(model, backend=recording(backend, compiled))
    x = torch.randn(2, 8)

    def held() -> dict:
        """Each weight as the plan's partitions hold it, by the model's name for it."""
        module = compiled[0].module
        return {name: tensor for partition in module.partitions
                for name, tensor in module.submodule(partition).named_parameters()}

    with torch.no_grad():
        run(x)
        before = held()
        run(x)
        unchanged = held()
        model[0].weight.mul_(2.0)
        run(x)
        after = held()

    assert len(compiled) == 1 and {t.device.type for t in before.values()} == {"meta"}
    assert all(unchanged[name] is tensor for name, tensor in before.items()), "no copy while nothing changed"
    assert after["0.weight"] is not before["0.weight"]
    assert all(after[name] is before[name] for name in before if name != "0.weight")
