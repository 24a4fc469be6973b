"""Training through a partitioned module: gradients cross the partitions, so it trains exactly like the original."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import partitioner
from partitioner.execution.partitioned_module import PartitionedModule, build_partitioned_module
from partitioner.execution.split import split
from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import annotate

STEPS = 5
LEARNING_RATE = 0.1
TWO_DEVICES = ("device-a", "device-b")
_PARTITION_PREFIX = re.compile(r"^graph_module\.partition_\d+\.")


class SmallConvNet(nn.Module):
    """Convolution, batch norm (training mode: it updates its running statistics), then two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.hidden = nn.Linear(8 * 6 * 6, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, images):
        features = torch.relu(self.norm(self.conv(images))).flatten(1)
        return self.head(torch.tanh(self.hidden(features)))


def deep_mlp(width: int = 64, depth: int = 8) -> nn.Sequential:
    """Linear layers around a layer norm: under the cost objective the solver splits it npu | cuda | npu."""
    def block():
        return [layer for _ in range(depth) for layer in (nn.Linear(width, width), nn.ReLU())]
    return nn.Sequential(*block(), nn.LayerNorm(width), *block())


def alternating_partitioned_module(model: nn.Module, example_inputs: tuple) -> PartitionedModule:
    """`model` split so that consecutive nodes sit on alternating devices: a cut after nearly every op."""
    captured = capture(model, example_inputs)
    graph = annotate(captured.program)
    assignment = {node.name: TWO_DEVICES[position % 2] for position, node in enumerate(graph)}
    # cpu and cpu:0 are one device to torch but two to the runtime, so every cut gets a real transfer op
    devices = {TWO_DEVICES[0]: torch.device("cpu"), TWO_DEVICES[1]: torch.device("cpu", 0)}
    return build_partitioned_module(captured.program, split(graph, assignment), devices)


def original_name(partitioned_name: str) -> str:
    """`graph_module.partition_3.hidden.weight` -> `hidden.weight`: each partition keeps the model's module paths."""
    name, count = _PARTITION_PREFIX.subn("", partitioned_name)
    assert count == 1, f"{partitioned_name} is not inside a partition"
    return name


def train(module: nn.Module, named_parameters: dict[str, nn.Parameter], batches) -> list[tuple[torch.Tensor, dict]]:
    """Plain SGD on `batches`; per step the loss and each parameter's gradient (by the original model's names)."""
    optimizer = torch.optim.SGD(named_parameters.values(), lr=LEARNING_RATE)
    history = []
    for inputs, labels in batches:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(module(inputs).float(), labels)
        loss.backward()
        history.append((loss.detach(), {name: p.grad.clone() for name, p in named_parameters.items()}))
        optimizer.step()
    return history


def partitioned_parameters(module: PartitionedModule) -> dict[str, nn.Parameter]:
    return {original_name(name): parameter for name, parameter in module.named_parameters()}


def assert_same_training(reference: list, partitioned: list, **tolerance) -> None:
    for step, ((reference_loss, reference_grads), (loss, grads)) in enumerate(zip(reference, partitioned, strict=True)):
        torch.testing.assert_close(loss, reference_loss, **tolerance, msg=lambda m: f"step {step} loss: {m}")
        assert grads.keys() == reference_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], **tolerance,
                                       msg=lambda m: f"step {step} gradient of {name}: {m}")


def random_batches(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, classes: int = 4):
    generator = torch.Generator().manual_seed(1)
    def batch():
        inputs = torch.randn(shape, generator=generator).to(dtype)
        return inputs, torch.randint(0, classes, shape[:1], generator=generator)
    return [batch() for _ in range(STEPS)]


@pytest.fixture
def conv_net_and_partitioned() -> tuple[SmallConvNet, SmallConvNet, PartitionedModule]:
    torch.manual_seed(0)
    model = SmallConvNet()
    reference = copy.deepcopy(model)
    return reference, model, alternating_partitioned_module(model, (torch.randn(4, 3, 6, 6),))


def test_alternating_placement_cuts_the_model_into_many_partitions(conv_net_and_partitioned):
    _, _, partitioned = conv_net_and_partitioned

    targets = [p.target for p in partitioned.partitions]

    assert len(targets) >= 4
    assert all(a != b for a, b in zip(targets, targets[1:])), "neighbouring partitions should change device"


def test_partitioned_model_trains_with_the_losses_and_gradients_of_the_original(conv_net_and_partitioned):
    reference, _, partitioned = conv_net_and_partitioned
    batches = random_batches((4, 3, 6, 6))

    expected = train(reference, dict(reference.named_parameters()), batches)
    actual = train(partitioned, partitioned_parameters(partitioned), batches)

    assert_same_training(expected, actual)
    assert expected[-1][0] < expected[0][0], "the loss should fall, or the comparison says little"


def test_partitioned_model_ends_training_with_the_weights_and_batch_norm_statistics_of_the_original(
        conv_net_and_partitioned):
    reference, _, partitioned = conv_net_and_partitioned
    batches = random_batches((4, 3, 6, 6))

    train(reference, dict(reference.named_parameters()), batches)
    train(partitioned, partitioned_parameters(partitioned), batches)

    # The partitioned module's own state: a partition moved to another device holds copies of its buffers.
    state = {original_name(name): value for name, value in partitioned.state_dict().items()}
    assert state.keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(state[name], value, msg=lambda m: f"{name}: {m}")


def test_partitioned_module_holds_the_original_models_parameter_objects(conv_net_and_partitioned):
    """An optimizer over `model.parameters()` trains it too, while no partition changes memory (cpu, cpu:0)."""
    _, model, partitioned = conv_net_and_partitioned

    parameters = partitioned_parameters(partitioned)

    assert parameters.keys() == dict(model.named_parameters()).keys()
    for name, parameter in parameters.items():
        assert parameter is model.get_parameter(name), name


def test_planned_module_from_compile_trains_like_the_original_in_float16():
    torch.manual_seed(0)
    model = deep_mlp().to(torch.float16)
    reference = copy.deepcopy(model)
    batches = random_batches((4, 64), torch.float16, classes=64)
    plan = partitioner.compile(model, (batches[0][0],), targets=["npu-example", "cuda-h100"], objective="cost",
                               time_limit_seconds=5.0, workers=1)
    partitioned = plan.module({"cuda-h100": "cpu:0"})  # another device to the runtime: cuts get transfers

    expected = train(reference, dict(reference.named_parameters()), batches)
    actual = train(partitioned, partitioned_parameters(partitioned), batches)

    assert [p.target for p in plan.partitions] == ["npu-example", "cuda-h100", "npu-example"]
    assert_same_training(expected, actual, rtol=1e-3, atol=1e-4)
