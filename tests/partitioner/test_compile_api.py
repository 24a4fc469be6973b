"""`partitioner.compile`: the Python API returns a valid, re-scorable plan that round-trips through its file."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

import partitioner
from partitioner.errors import PartitionerError
from partitioner.frontend.capture import ModelSource, load_model_file
from partitioner.placement.objectives import LATENCY, objective_named
from partitioner.placement.problem import check_assignment
from partitioner.placement.solver import SolverOptions
from partitioner.plan import SCHEMA_VERSION, Plan

THREE_TARGETS = ["npu-example", "dsp-example", "cuda-h100"]
OBJECTIVES = ("latency", "cost")
TIME_LIMIT_SECONDS = 10.0


class ConvClassifier(nn.Module):
    """Convolutions a cheap accelerator takes, then a layer-norm head that only the fallback runs."""

    def __init__(self, width: int = 64, num_classes: int = 100):
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        self.backbone = nn.Sequential(*(
            layer
            for channels_in, channels_out in zip(channels, channels[1:])
            for layer in (nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(channels_out, channels_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        ))
        self.norm = nn.LayerNorm(8 * width)
        self.head = nn.Linear(8 * width, num_classes)

    def forward(self, images):
        features = self.backbone(images).flatten(2).mean(-1)
        return torch.softmax(self.head(self.norm(features)), dim=-1)


def _conv_classifier_on_meta():
    with torch.device("meta"):
        model = ConvClassifier().to(torch.float16).eval()
    return model, (torch.empty(8, 3, 224, 224, dtype=torch.float16, device="meta"),)


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    model, inputs = _conv_classifier_on_meta()
    return {
        objective: partitioner.compile(model, inputs, targets=THREE_TARGETS, objective=objective,
                                       time_limit_seconds=TIME_LIMIT_SECONDS, workers=1)
        for objective in OBJECTIVES
    }


def assert_valid_and_never_worse_than_baselines(plan: Plan) -> None:
    """What every plan promises: each node on a target that supports it, and no baseline beats it."""
    node_names = [node.name for node in plan.problem.nodes]
    assert set(plan.placement) == set(node_names) == {node.name for node in plan.nodes}
    check_assignment(plan.problem, plan.placement)
    for node in plan.nodes:
        assert plan.placement[node.name] not in node.refusals, f"{node.name} sits on a target that refused it"
    assert plan.score().fits_memory
    result = plan.objective.value(plan.score())
    for name, baseline in plan.baseline_scores().items():
        if baseline.fits_memory:
            assert result <= plan.objective.value(baseline) * (1 + 1e-9), f"{name} beats the plan"
    assert 0 <= plan.solver.bound <= plan.solver.objective * (1 + 1e-9)
    assert 0 <= plan.solver.gap <= 1


# --- the plan -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_compile_returns_a_plan_for_the_given_targets_and_objective(plans, objective):
    plan = plans[objective]

    assert isinstance(plan, Plan)
    assert plan.objective is objective_named(objective)
    assert [t.name for t in plan.targets] == THREE_TARGETS
    assert plan.fallback == "cuda-h100"
    assert plan.model.name == "ConvClassifier"
    assert plan.model.node_count == len(plan.nodes) > 0


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_plan_places_every_node_on_a_supporting_target_and_beats_no_baseline(plans, objective):
    assert_valid_and_never_worse_than_baselines(plans[objective])


def test_unsupported_ops_carry_a_refusal_reason_and_run_on_the_fallback(plans):
    plan = plans["cost"]
    layer_norms = [node for node in plan.nodes if node.op == "aten.layer_norm.default"]

    assert layer_norms
    for node in layer_norms:
        assert node.refusals["npu-example"] == "aten.layer_norm.default: op not in support list"
        assert "dsp-example" in node.refusals
        assert "cuda-h100" not in node.refusals  # the fallback refuses nothing
        assert plan.placement[node.name] == "cuda-h100"


def test_cost_objective_moves_convolutions_to_a_cheaper_accelerator(plans):
    plan = plans["cost"]
    convolutions = [node.name for node in plan.nodes if node.op == "aten.conv2d.default"]

    assert {plan.placement[name] for name in convolutions} <= {"npu-example", "dsp-example"}
    assert plan.score().cost_per_request < plan.baseline_scores()["fallback"].cost_per_request


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_plan_score_equals_the_solver_objective(plans, objective):
    plan = plans[objective]

    assert plan.objective.value(plan.score()) == pytest.approx(plan.solver.objective, rel=1e-12)


def test_summary_shows_each_target_the_baselines_and_the_gap(plans):
    plan = plans["cost"]

    summary = plan.summary()

    lines = summary.splitlines()
    for target in THREE_TARGETS:
        assert any(line.startswith(target) for line in lines), f"no line for {target}"
    assert any(line.startswith("fallback") and "plan saves" in line for line in lines)
    assert any(line.startswith("priority") and "plan saves" in line for line in lines)
    assert "gap" in summary and "bound" in summary
    assert "ConvClassifier" in summary


# --- the plan file --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_saved_plan_loads_back_unchanged(plans, objective, tmp_path):
    plan = plans[objective]

    path = plan.save(tmp_path / "plan.json")
    loaded = Plan.load(path)

    assert loaded.to_dict() == plan.to_dict()
    assert loaded.score() == plan.score()
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_save_creates_missing_folders_and_leaves_no_temporary_file(plans, tmp_path):
    path = plans["latency"].save(tmp_path / "deep" / "er" / "plan.json")

    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]


def test_plan_with_newer_schema_version_asks_to_upgrade(plans, tmp_path):
    data = plans["latency"].to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))

    with pytest.raises(PartitionerError, match=f"schema version {SCHEMA_VERSION + 1}.*Fix: upgrade partitioner"):
        Plan.load(path)


def test_plan_without_schema_version_asks_to_compile_again(plans, tmp_path):
    data = plans["latency"].to_dict()
    del data["schema_version"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))

    with pytest.raises(PartitionerError, match="is not a plan: it has no schema_version .* Fix: give the plan.json "
                                               "that compile wrote, or compile the model again"):
        Plan.load(path)


def _truncated(text: str) -> str:
    return text[: len(text) // 2]


def _missing_placement(text: str) -> str:
    data = json.loads(text)
    del data["placement"]
    return json.dumps(data)


def _nodes_not_a_list(text: str) -> str:
    data = json.loads(text)
    data["nodes"] = 5
    return json.dumps(data)


def _model_not_an_object(text: str) -> str:
    data = json.loads(text)
    data["model"] = ["not", "a", "model"]
    return json.dumps(data)


@pytest.mark.parametrize("corrupt", [
    _truncated,
    _missing_placement,
    _nodes_not_a_list,
    _model_not_an_object,
    lambda text: "[1, 2, 3]",
    lambda text: "not json at all",
])
def test_corrupt_plan_file_raises_partitioner_error(plans, tmp_path, corrupt):
    path = plans["latency"].save(tmp_path / "plan.json")
    path.write_text(corrupt(path.read_text()))

    with pytest.raises(PartitionerError, match="plan.json is not a .*plan file.*Fix"):
        Plan.load(path)


def test_binary_plan_file_raises_partitioner_error(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")

    with pytest.raises(PartitionerError, match="plan.json is not a plan file.*Fix"):
        Plan.load(path)


def test_missing_plan_file_says_it_does_not_exist(tmp_path):
    with pytest.raises(PartitionerError, match="does not exist. Fix: check the path"):
        Plan.load(tmp_path / "nowhere.json")


# --- where the model came from --------------------------------------------------------------------------------------


def test_model_from_the_python_api_has_no_recorded_source(plans):
    assert plans["latency"].model.source is None


def test_plan_records_the_source_of_a_file_built_model(tmp_path):
    model_file = tmp_path / "small_model.py"
    model_file.write_text(textwrap.dedent("""
        import torch

        def build_small():
            model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU()).to(torch.float16)
            return model, (torch.randn(4, 16, dtype=torch.float16),)
    """))
    captured = load_model_file(f"{model_file}:build_small")

    plan = partitioner.compile_captured(
        captured, ["npu-example", "cuda-h100"], solver_options=SolverOptions(time_limit_seconds=TIME_LIMIT_SECONDS)
    )
    loaded = Plan.load(plan.save(tmp_path / "out" / "plan.json"))

    expected = ModelSource("python", str(model_file.resolve()), "build_small")
    assert plan.model.source == expected
    assert loaded.model.source == expected
    assert plan.model.name == "small_model"


# --- arguments ------------------------------------------------------------------------------------------------------


def test_default_targets_are_npu_example_with_cuda_h100_as_fallback():
    model, inputs = nn.Linear(8, 8).to(torch.float16), (torch.randn(2, 8, dtype=torch.float16),)

    plan = partitioner.compile(model, inputs, time_limit_seconds=TIME_LIMIT_SECONDS)

    assert [t.name for t in plan.targets] == ["npu-example", "cuda-h100"]
    assert plan.fallback == "cuda-h100"
    assert plan.objective is LATENCY


def test_unknown_objective_is_refused_with_the_choices():
    with pytest.raises(PartitionerError, match="unknown objective 'speed'. Fix: use one of latency, cost"):
        partitioner.compile(nn.Linear(2, 2), (torch.randn(1, 2),), objective="speed")


def test_misspelt_target_suggests_the_built_in_name():
    with pytest.raises(PartitionerError, match="unknown target 'npu-exmaple': did you mean 'npu-example'"):
        partitioner.compile(nn.Linear(2, 2), (torch.randn(1, 2),), targets=["npu-exmaple", "cuda-h100"])


# --- zoo: transformers models built from configs, on the meta device ------------------------------------------------


def _resnet50():
    from transformers import ResNetConfig, ResNetForImageClassification

    with torch.device("meta"):
        model = ResNetForImageClassification(ResNetConfig()).to(torch.float16).eval()
    return model, (torch.empty(1, 3, 224, 224, dtype=torch.float16, device="meta"),)


def _bert_base():
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        model = BertModel(BertConfig()).to(torch.float16).eval()
    return model, {"input_ids": torch.zeros(1, 128, dtype=torch.long, device="meta")}


def _small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=4096, max_position_embeddings=512)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return model, {"input_ids": torch.zeros(1, 64, dtype=torch.long, device="meta"), "use_cache": False}


ZOO = {"resnet50": _resnet50, "bert-base": _bert_base, "small-llama": _small_llama}


@pytest.fixture(scope="module")
def zoo_plans() -> dict[tuple[str, str], Plan]:
    built = {name: builder() for name, builder in ZOO.items()}
    return {
        (name, objective): partitioner.compile(model, inputs, targets=THREE_TARGETS, objective=objective,
                                               time_limit_seconds=TIME_LIMIT_SECONDS, name=name)
        for name, (model, inputs) in built.items()
        for objective in OBJECTIVES
    }


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("model_name", ZOO)
def test_zoo_plans_are_valid_and_never_worse_than_baselines(zoo_plans, model_name, objective):
    plan = zoo_plans[model_name, objective]

    assert plan.model.name == model_name
    assert plan.model.parameter_bytes > 0 and plan.model.total_flops > 0
    assert_valid_and_never_worse_than_baselines(plan)


@pytest.mark.parametrize("model_name", ["bert-base", "small-llama"])
def test_npu_example_refuses_embeddings_in_transformers(zoo_plans, model_name):
    plan = zoo_plans[model_name, "latency"]
    embeddings = [node for node in plan.nodes if node.op == "aten.embedding.default"]

    assert embeddings
    for node in embeddings:
        assert node.refusals["npu-example"] == "aten.embedding.default: op not in support list"
        assert plan.placement[node.name] == "cuda-h100"


def test_npu_example_refuses_layer_norm_in_bert(zoo_plans):
    plan = zoo_plans["bert-base", "latency"]
    refused = [node for node in plan.nodes if node.op == "aten.layer_norm.default"]

    assert len(refused) == 1 + 2 * 12  # embeddings, then attention and feed-forward of each of 12 layers
    assert all("op not in support list" in node.refusals["npu-example"] for node in refused)


def test_dsp_example_refuses_bfloat16_llama_matmuls_by_dtype(zoo_plans):
    plan = zoo_plans["small-llama", "latency"]
    linears = [node for node in plan.nodes if node.op == "aten.linear.default"]

    assert linears
    for node in linears:
        assert "dtype bfloat16 not supported" in node.refusals["dsp-example"]
        assert "npu-example" not in node.refusals


def test_dsp_example_refuses_the_resnet_stem_convolution_by_kernel_size(zoo_plans):
    plan = zoo_plans["resnet50", "latency"]
    reasons = [node.refusals.get("dsp-example", "") for node in plan.nodes if node.op == "aten.conv2d.default"]

    assert reasons.count("aten.conv2d.default: weight=7 > max 3") == 1  # the 7x7 stem; the rest are 3x3 or 1x1
