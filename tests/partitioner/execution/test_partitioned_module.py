"""The runtime: a partitioned module computes what the original model computes, each partition on its device.

Every target is emulated on the CPU here, so placements are drawn at random over target names and the
partitioned module is compared with the original by torch.testing.assert_close.
"""

from __future__ import annotations

import copy
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map

import partitioner
from partitioner.errors import PartitionerError
from partitioner.execution.partitioned_module import (PartitionedModule, build_partitioned_module, resolve_devices,
                                                      to_device)
from partitioner.execution.split import Partition, split
from partitioner.frontend.capture import capture, load_model_file
from partitioner.frontend.op_graph import OpGraph, annotate
from partitioner.placement.solver import SolverOptions
from partitioner.plan import Plan
from tests.conftest import problem_of
from tests.partitioner.hand_made_models import BranchesThenReduced, random_inputs
from tests.zoo import ZOO

CPU = torch.device("cpu")
TWO_TARGETS_ON_THE_CPU = {"npu": CPU, "cuda": CPU}
SEEDS = range(8)
TARGETS = ["npu-example", "cuda-h100"]
EMULATION_WARNING = "emulating it on the CPU"

# cuda-h100 has no CUDA device here; the tests about that warning record it themselves.
pytestmark = pytest.mark.filterwarnings(f"ignore:.*{EMULATION_WARNING}:UserWarning")


# --- helpers ---------------------------------------------------------------------------------------------------------


def random_assignment(graph: OpGraph, seed: int, targets=("npu", "cuda")) -> dict[str, str]:
    """A random target per node, except that an in-place op sits with the value it writes, as plans guarantee."""
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    for node in graph:
        assignment[node.name] = assignment[node.writes] if node.writes else rng.choice(targets)
    return assignment


def fresh(inputs):
    """A copy of the inputs, so that a model that updates an input in place sees the same values each call."""
    return tree_map(lambda value: value.clone() if isinstance(value, torch.Tensor) else value, inputs)


def call(module: nn.Module, inputs):
    return module(**fresh(inputs)) if isinstance(inputs, dict) else module(*fresh(inputs))


def assert_matches_original_under_random_placements(model: nn.Module, inputs, seeds=SEEDS) -> None:
    """For each seed, place every node on a random target, split, run, and compare with the original."""
    reference = copy.deepcopy(model)
    captured = capture(model, fresh(inputs))
    graph = annotate(captured.program)
    partition_counts = []
    with torch.no_grad():
        expected = call(reference, inputs)
        for seed in seeds:
            partitions = split(graph, random_assignment(graph, seed))
            module = build_partitioned_module(captured.program, partitions, TWO_TARGETS_ON_THE_CPU)
            torch.testing.assert_close(call(module, inputs), expected,
                                       msg=lambda message: f"seed {seed}, {len(partitions)} partitions: {message}")
            partition_counts.append(len(partitions))
    assert max(partition_counts) >= 3, "the placements never cut the model, so the comparison says little"


def partitioned(model: nn.Module, inputs, assignment: dict[str, str],
                devices=TWO_TARGETS_ON_THE_CPU) -> PartitionedModule:
    captured = capture(model, fresh(inputs))
    return build_partitioned_module(captured.program, split(annotate(captured.program), assignment), devices)


def transfers(module: PartitionedModule) -> list[torch.fx.Node]:
    return [node for node in module.graph_module.graph.nodes if node.op == "call_function" and node.target is to_device]


# --- hand-made models ------------------------------------------------------------------------------------------------


class ManyOutputs(nn.Module):
    """Nested dict and tuple outputs, one value returned twice, a model input returned as is, multi-output ops."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x, y):
        h = self.linear(x)
        first, second = h.chunk(2, dim=-1)
        values, indices = torch.topk(h, 3, dim=-1)
        largest, where = h.max(dim=-1)
        return {"hidden": h, "halves": (first.exp(), second * y[:, :4]), "top": (values, indices),
                "max": (largest, where)}, h, y


class SharedInput(nn.Module):
    """One input read by many ops on every branch, and a second input read twice."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x, scale):
        a = self.linear(x) + x
        b = x.sin() * scale
        c = (x @ x.transpose(0, 1)).softmax(-1) @ x
        return a + b + c - x.mean() * scale


class InPlaceUpdates(nn.Module):
    """An input updated in place before its first use, an in-place ReLU module, and chained in-place updates."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x, y):
        x.mul_(2)
        h = self.act(self.linear(x))
        h.add_(y)
        h.sigmoid_()
        return F.relu_(h * 3) + x


class Constants(nn.Module):
    """A registered buffer, a plain tensor attribute (a lifted constant) and a tensor literal in forward."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8))
        self.offset = torch.arange(8.0)

    def forward(self, x):
        h = self.linear(x) * self.scale
        return h + self.offset + torch.tensor([1.0, -1.0] * 4)


class TiedWeights(nn.Module):
    """One weight matrix used by an embedding and by the output projection, as in tied language models."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(32, 16)
        self.mix = nn.Linear(16, 16)
        self.projection = nn.Linear(16, 32, bias=False)
        self.projection.weight = self.embedding.weight

    def forward(self, tokens):
        hidden = torch.tanh(self.mix(self.embedding(tokens)))
        return self.projection(hidden), F.linear(hidden.flip(-1), self.embedding.weight)


class Counter(nn.Module):
    """A buffer updated in place on every call: the model's state."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(4))

    def forward(self, x):
        self.calls.add_(1)
        return self.linear(x) * self.calls


class ReadWithWeightsThenUpdateInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        h = x * 2
        y = self.linear(h)
        h.relu_()
        return y, h


class ReadThenUpdateInPlace(nn.Module):
    def forward(self, x):
        h = x * 2
        total = h.sum(-1)
        h.relu_()
        return h, total


class WriteThroughAView(nn.Module):
    def forward(self, x):
        h = x * 2
        h[:, 0] = 0
        return h * 3


class Fan(nn.Module):
    """One value read by two later ops, and the input read by three."""

    def forward(self, x):
        a = x.relu()
        return a.sin() + x, a.cos() * x


def test_model_with_branches_matches_the_original_under_random_placements():
    torch.manual_seed(0)
    assert_matches_original_under_random_placements(BranchesThenReduced(), random_inputs((4, 16)))


def test_nested_and_repeated_outputs_and_multi_output_ops_match_the_original_under_random_placements():
    torch.manual_seed(0)
    assert_matches_original_under_random_placements(ManyOutputs(), random_inputs((3, 8), (3, 8)))


def test_input_read_by_many_ops_matches_the_original_under_random_placements():
    torch.manual_seed(0)
    assert_matches_original_under_random_placements(SharedInput(), random_inputs((4, 8), (4, 8)))


def test_in_place_updates_match_the_original_under_random_placements():
    torch.manual_seed(0)
    assert_matches_original_under_random_placements(InPlaceUpdates(), random_inputs((3, 8), (3, 8)))


def test_buffers_and_constants_match_the_original_under_random_placements():
    torch.manual_seed(0)
    assert_matches_original_under_random_placements(Constants(), random_inputs((3, 8)))


def test_tied_weights_match_the_original_under_random_placements():
    torch.manual_seed(0)
    assert_matches_original_under_random_placements(TiedWeights(), (torch.tensor([[1, 5, 7, 31], [0, 2, 2, 9]]),))


@pytest.mark.parametrize("seed", range(3))
def test_buffer_updated_in_place_carries_the_same_state_from_call_to_call(seed):
    torch.manual_seed(0)
    model = Counter()
    reference = copy.deepcopy(model)
    captured = capture(model, (torch.randn(2, 4),))
    graph = annotate(captured.program)
    module = build_partitioned_module(captured.program, split(graph, random_assignment(graph, seed)),
                                      TWO_TARGETS_ON_THE_CPU)

    for x in random_inputs((2, 4), (2, 4), (2, 4)):
        torch.testing.assert_close(module(x), reference(x))


def test_read_before_an_in_place_update_on_one_target_sees_the_old_value():
    # The read needs weights and the update does not: fusing must not let the update run first.
    torch.manual_seed(0)
    model, inputs = ReadWithWeightsThenUpdateInPlace(), random_inputs((3, 4))
    captured = capture(model, fresh(inputs))
    graph = annotate(captured.program)

    module = build_partitioned_module(captured.program, split(graph, dict.fromkeys([n.name for n in graph], "npu")),
                                      TWO_TARGETS_ON_THE_CPU)

    assert len(module.partitions) == 1
    torch.testing.assert_close(call(module, inputs), call(model, inputs))


def test_value_read_before_an_in_place_update_keeps_its_old_value_in_a_later_partition():
    model, inputs = ReadThenUpdateInPlace(), random_inputs((3, 4))
    module = partitioned(model, inputs, {"mul": "npu", "sum_1": "cuda", "relu_": "npu"})

    torch.testing.assert_close(call(module, inputs), call(model, inputs))


def test_write_through_a_view_is_seen_by_later_readers_in_other_partitions():
    model, inputs = WriteThroughAView(), random_inputs((3, 4))
    module = partitioned(model, inputs, {"mul": "npu", "lift_fresh_copy": "cuda", "select": "cuda",
                                         "fill_": "npu", "mul_1": "cuda"})

    torch.testing.assert_close(call(module, inputs), call(model, inputs))


# --- zoo: transformers models with random weights in float32 ---------------------------------------------------------




@pytest.mark.parametrize("model_name", ZOO)
def test_zoo_model_matches_the_original_under_random_placements_on_two_targets(model_name):
    torch.manual_seed(0)
    model, inputs = ZOO[model_name]()

    assert_matches_original_under_random_placements(model, inputs, seeds=range(3))


# --- the public API --------------------------------------------------------------------------------------------------


def deep_mlp(width: int = 64, depth: int = 8) -> nn.Sequential:
    """Linear layers around a layer norm: in float16 under the cost objective it splits npu | cuda | npu (eight
    layers a side save more launch overhead on the cheap NPU than the hops and copies of the split cost)."""
    def block():
        return [layer for _ in range(depth) for layer in (nn.Linear(width, width), nn.ReLU())]
    return nn.Sequential(*block(), nn.LayerNorm(width), *block())


@pytest.fixture(scope="module")
def mlp_plan() -> tuple[nn.Module, tuple, Plan]:
    torch.manual_seed(0)
    model = deep_mlp().to(torch.float16).eval()
    inputs = (torch.randn(4, 64, dtype=torch.float16),)
    plan = partitioner.compile(model, inputs, targets=TARGETS, objective="cost", time_limit_seconds=5.0, workers=1)
    return model, inputs, plan


def test_module_of_a_compiled_plan_matches_the_model(mlp_plan):
    model, inputs, plan = mlp_plan

    module = plan.module()

    assert len(plan.partitions) >= 2
    assert {p.target for p in plan.partitions} == set(TARGETS)
    torch.testing.assert_close(module(*inputs), model(*inputs))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_cuda_target_without_a_cuda_device_runs_on_the_cpu_with_one_warning(mlp_plan):
    model, inputs, plan = mlp_plan

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = plan.module()

    messages = [str(w.message) for w in caught if EMULATION_WARNING in str(w.message)]
    assert messages == [f"target cuda-h100: no cuda device here, {EMULATION_WARNING}"]
    assert module.devices == {"npu-example": CPU, "cuda-h100": CPU}
    for partition in plan.partitions:
        assert {p.device for p in module.submodule(partition).parameters()} == {CPU}
    torch.testing.assert_close(module(*inputs), model(*inputs))


def test_device_map_puts_a_target_on_the_named_device_without_warning(mlp_plan):
    model, inputs, plan = mlp_plan

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = plan.module({"cuda-h100": "cpu"})

    assert not [w for w in caught if EMULATION_WARNING in str(w.message)]
    assert module.devices == {"npu-example": CPU, "cuda-h100": CPU}
    torch.testing.assert_close(module(*inputs), model(*inputs))


def test_device_map_naming_an_unknown_target_is_refused():
    with pytest.raises(PartitionerError, match="device_map names 'gpu', which is not a target of this plan"):
        resolve_devices({"npu-example": "cpu", "cuda-h100": "cuda"}, {"gpu": "cpu"})


def test_device_map_naming_an_absent_device_is_refused():
    with pytest.raises(PartitionerError, match="'cuda:7' for cuda-h100 is not present on this machine"):
        resolve_devices({"npu-example": "cpu", "cuda-h100": "cuda"}, {"cuda-h100": "cuda:7"})


def test_device_map_naming_something_that_is_not_a_device_is_refused():
    with pytest.raises(PartitionerError, match="'the-gpu' for cuda-h100 is not a torch device"):
        resolve_devices({"npu-example": "cpu", "cuda-h100": "cuda"}, {"cuda-h100": "the-gpu"})


def test_plan_of_a_python_object_runs_once_bound_to_the_model_again(mlp_plan, tmp_path):
    model, inputs, plan = mlp_plan
    loaded = Plan.load(plan.save(tmp_path / "plan.json"))

    with pytest.raises(PartitionerError, match="does not record where its model came from"):
        loaded.module()
    module = loaded.with_model(model, inputs).module()

    torch.testing.assert_close(module(*inputs), model(*inputs))


MODEL_FILE = """
import torch
from torch import nn

WIDTH = {width}


def build():
    torch.manual_seed(0)
    layers = [layer for _ in range(8) for layer in (nn.Linear(WIDTH, WIDTH), nn.ReLU())]
    model = nn.Sequential(*layers, nn.LayerNorm(WIDTH), *layers).to(torch.float16).eval()
    generator = torch.Generator().manual_seed(1)
    return model, (torch.randn(4, WIDTH, generator=generator).to(torch.float16),)
"""


@pytest.fixture
def file_plan(tmp_path):
    """A plan compiled from a model file, saved and loaded back, and what the file's build() gave."""
    model_file = tmp_path / "mlp_model.py"
    model_file.write_text(MODEL_FILE.format(width=64))
    captured = load_model_file(str(model_file))
    plan = partitioner.compile_captured(captured, TARGETS, "cost",
                                        solver_options=SolverOptions(time_limit_seconds=5.0, workers=1))
    return model_file, captured, Plan.load(plan.save(tmp_path / "plan.json"))


def test_loaded_plan_rebuilds_its_module_from_the_recorded_model_file(file_plan):
    _, captured, loaded = file_plan

    module = loaded.module()

    assert loaded.captured is None
    assert len(loaded.partitions) >= 2
    torch.testing.assert_close(module(*captured.example_inputs), captured.model(*captured.example_inputs))


def test_loaded_plan_refuses_a_model_file_changed_since_compiling(file_plan):
    model_file, _, loaded = file_plan
    # Another width changes the file's size too, so Python cannot reuse the bytecode it cached for the old file.
    model_file.write_text(MODEL_FILE.format(width=128))

    with pytest.raises(PartitionerError, match="mlp_model no longer matches this plan"):
        loaded.module()


# --- transfers and weights -------------------------------------------------------------------------------------------


def test_each_value_moves_to_each_other_device_once():
    # npu runs on the CPU; cuda and dsp share the meta device, so both read relu's result from one transfer.
    devices = {"npu": CPU, "cuda": torch.device("meta"), "dsp": torch.device("meta")}
    assignment = {"relu": "npu", "sin": "cuda", "add": "cuda", "cos": "dsp", "mul": "dsp"}
    module = partitioned(Fan(), random_inputs((3,)), assignment, devices)

    moves = [(node.args[0].name, node.args[1]) for node in transfers(module)]
    calls = {node.target: node for node in module.graph_module.graph.nodes if node.op == "call_module"}

    assert [(p.target, p.nodes) for p in module.partitions] == [
        ("npu", ("relu",)), ("cuda", ("sin", "add")), ("dsp", ("cos", "mul"))]
    assert sorted(moves, key=str) == sorted([("x", CPU), ("x", torch.device("meta")),
                                             ("partition_0", torch.device("meta"))], key=str)
    moved_relu = next(node for node in transfers(module) if node.args[0].name == "partition_0")
    assert moved_relu in calls["partition_1"].args and moved_relu in calls["partition_2"].args
    outputs = module(*random_inputs((3,)))
    assert [(o.device, o.shape) for o in outputs] == [(torch.device("meta"), (3,))] * 2


def test_values_between_partitions_on_one_device_are_not_transferred():
    assignment = {"relu": "npu", "sin": "cuda", "add": "npu", "cos": "npu", "mul": "npu"}
    module = partitioned(Fan(), random_inputs((3,)), assignment)

    assert [(p.target, p.nodes) for p in module.partitions] == [
        ("npu", ("relu", "cos", "mul")), ("cuda", ("sin",)), ("npu", ("add",))]
    assert [node.args[0].op for node in transfers(module)] == ["placeholder"]


@pytest.mark.parametrize("model_class", [TiedWeights, Constants])
def test_each_partition_holds_exactly_the_weights_its_nodes_read(model_class):
    torch.manual_seed(0)
    model = model_class()
    model.register_buffer("unused", torch.ones(2))
    inputs = (torch.tensor([[1, 5, 7, 31]]),) if model_class is TiedWeights else random_inputs((3, 8))
    captured = capture(model, inputs)
    graph = annotate(captured.program)
    weights = {**captured.program.state_dict, **captured.program.constants}
    # The graph names each tied tensor once, by the first of its names.
    tied_name = {name: next(n for n, t in weights.items() if t is tensor) for name, tensor in weights.items()}

    for seed in range(4):
        module = build_partitioned_module(captured.program, split(graph, random_assignment(graph, seed)),
                                          TWO_TARGETS_ON_THE_CPU)
        for partition in module.partitions:
            submodule = module.submodule(partition)
            held = dict(submodule.named_parameters(remove_duplicate=False))
            held.update(submodule.named_buffers(remove_duplicate=False))
            assert {tied_name[name] for name in held} == {p for name in partition.nodes
                                                          for p in graph[name].parameters}, partition.name
            for name, tensor in held.items():
                assert torch.equal(tensor, weights[name]), f"{partition.name}: {name}"


def test_submodule_of_a_partition_is_the_module_that_runs_it():
    torch.manual_seed(0)
    model, inputs = BranchesThenReduced(), random_inputs((4, 16))
    captured = capture(model, inputs)
    graph = annotate(captured.program)
    module = build_partitioned_module(captured.program, split(graph, random_assignment(graph, 0)),
                                      TWO_TARGETS_ON_THE_CPU)

    for partition in module.partitions:
        ops = [node.name for node in module.submodule(partition).graph.nodes if node.op == "call_function"]
        assert ops == list(partition.nodes)


def test_plan_naming_a_node_the_model_no_longer_has_is_refused():
    captured = capture(Fan(), random_inputs((3,)))
    stale = (Partition(0, "npu", ("relu", "gelu"), (), ("gelu",)),)

    with pytest.raises(PartitionerError, match="names node 'gelu', which the model no longer has"):
        build_partitioned_module(captured.program, stale, TWO_TARGETS_ON_THE_CPU)


def test_an_in_place_write_placed_away_from_the_value_it_writes_is_a_bug_report():
    graph = annotate(capture(WriteThroughAView(), random_inputs((3, 4))).program)

    with pytest.raises(AssertionError, match="fill_ writes mul in place"):
        split(graph, {"mul": "npu", "lift_fresh_copy": "npu", "select": "npu", "fill_": "cuda", "mul_1": "npu"})


def test_the_planner_keeps_an_in_place_write_with_the_value_it_writes():
    problem = problem_of(WriteThroughAView(), random_inputs((3, 4)), targets=("cpu-x86", "cuda-h100"))

    assert problem.node("fill_").follows == "mul"
    assert problem.node("fill_").supported == problem.node("mul").supported


def test_moving_a_partition_to_another_device_leaves_the_original_models_weights_where_they_were():
    model, inputs = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), random_inputs((2, 4))
    captured = capture(model, inputs)
    graph = annotate(captured.program)
    assignment = {node.name: "cuda" if node.name == "linear_1" else "npu" for node in graph}

    module = build_partitioned_module(captured.program, split(graph, assignment),
                                      {"npu": torch.device("cpu"), "cuda": torch.device("meta")})

    assert all(parameter.device.type == "cpu" for parameter in model.parameters())
    moved = [p for p in module.parameters() if p.device.type == "meta"]
    assert len(moved) == 2  # the second linear's weight and bias, as new tensors
