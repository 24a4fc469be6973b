"""Plans for serving, end to end: a model on a fleet, the plan file, the summary and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import partitioner
from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.placement.pipeline import pipeline_placement
from partitioner.placement.scoring import score
from partitioner.plan import Plan
from partitioner.reporting.explain import explain_node
from targets.fleet import load_fleet
from tests.partitioner.placement.problem_builders import make_problem, node, value

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vision_classifier.py"


class Tower(torch.nn.Module):
    """Eight equal linear layers: work a pipeline can share out."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(256, 256) for _ in range(8))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def test_a_fleet_plan_serves_more_than_one_device_and_its_file_rescores_the_same(tmp_path):
    inputs = (torch.randn(64, 256, dtype=torch.float16),)
    fleet = load_fleet("npu-example=4,cuda-h100=1")

    plan = partitioner.compile(Tower().half(), inputs, targets=fleet, objective="throughput", time_limit_seconds=10)

    serving = plan.score().serving
    fallback = plan.baseline_scores()["fallback"].serving
    assert serving.throughput_per_second > fallback.throughput_per_second
    assert len({plan.placement[n.name] for n in plan.nodes if n.flops}) > 1
    again = Plan.load(plan.save(tmp_path / "plan.json"))
    assert again.score() == plan.score() and again.fleet == fleet.describe()
    assert "req/s at full load" in plan.summary() and "bottleneck" in plan.summary()


@pytest.fixture(scope="module")
def tower_plan() -> Plan:
    inputs = (torch.randn(64, 256, dtype=torch.float16),)
    return partitioner.compile(Tower().half(), inputs, targets=load_fleet("npu-example=4,cuda-h100=1"),
                               objective="throughput", time_limit_seconds=10)


def test_the_summary_sets_the_plan_against_an_all_fallback_fleet_of_the_same_price(tower_plan):
    serving = tower_plan.score().serving
    alone = tower_plan.baseline_scores()["fallback"].serving
    replicas = serving.price_per_hour / tower_plan.problem.target("cuda-h100").price_per_hour

    line = next(line for line in tower_plan.summary().splitlines() if "of the same price" in line)

    assert f"({replicas:.3g} x cuda-h100)" in line
    assert f"serves {replicas * alone.throughput_per_second:.4g} req/s" in line
    assert f"the plan serves {serving.throughput_per_second / (replicas * alone.throughput_per_second):.2f}x" in line


def test_explain_of_a_fleet_plan_gives_the_throughput_each_move_would_leave(tower_plan):
    name = next(n.name for n in tower_plan.nodes if n.op == "aten.linear.default")
    here = tower_plan.placement[name]
    other = next(t for t in tower_plan.problem.node(name).supported if t != here)
    moved = score(tower_plan.problem, {**tower_plan.placement, name: other}, tower_plan.order or None)

    text = explain_node(tower_plan, name)

    assert f"req/s at full load, bottleneck {tower_plan.score().serving.bottleneck}" in text
    line = next(line for line in text.splitlines() if line.startswith(other))
    assert f"{moved.serving.throughput_per_second:.4g} req/s" in line
    assert f"bottleneck then {moved.serving.bottleneck}" in line


def test_the_command_line_sizes_a_fleet_to_the_load_it_must_serve(tmp_path, capsys):
    model = tmp_path / "tower.py"
    model.write_text("import torch\nfrom tests.partitioner.test_serving_plans import Tower\n\n"
                     "def build():\n    return Tower().half(), (torch.randn(64, 256, dtype=torch.float16),)\n")

    code = main(["compile", f"{model}", "--fleet", "npu-example=4,cuda-h100=1", "--objective", "serving-cost",
                 "--min-throughput", "2000/s", "--time-limit", "10", "-o", str(tmp_path / "out")])

    assert code == 0, capsys.readouterr().err
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["min_throughput"] == 2000 and plan["score"]["serving"]["throughput_per_second"] >= 2000
    assert "(at least 2000 required)" in capsys.readouterr().out


def test_the_contiguous_pipeline_balances_stages_over_the_devices_in_order():
    problem = make_problem(nodes=[node(f"op{i}", npu=1.0, cuda=1.0) for i in range(4)],
                           values=[value(f"op{i}", f"op{i + 1}") for i in range(3)])

    assert pipeline_placement(problem) == {"op0": "npu", "op1": "npu", "op2": "cuda", "op3": "cuda"}


def test_the_contiguous_pipeline_keeps_an_op_off_a_device_that_cannot_run_it():
    problem = make_problem(nodes=[node("op0", npu=1.0, cuda=1.0), node("op1", cuda=1.0), node("op2", npu=1.0, cuda=1.0)],
                           values=[value("op0", "op1"), value("op1", "op2")])

    placement = pipeline_placement(problem)

    assert placement["op1"] == "cuda" and placement["op2"] == "cuda"


@pytest.mark.parametrize("arguments, message", [
    (["--fleet", "inf2-h100", "--targets", "cuda-h100"], "--fleet and --targets both say what to plan on"),
    (["--fleet", ""], "--fleet '' names no fleet"),
    (["--fleet", "cuda-h100=1,"], "'' names no target. Fix: write name=count pairs"),
    (["--fleet", "inf2-h100", "--objective", "serving-cost"], "Fix: add --min-throughput"),
])
def test_a_fleet_given_wrong_on_the_command_line_is_one_line_naming_the_fix(arguments, message, tmp_path, capsys):
    code = main(["compile", str(EXAMPLE), *arguments, "--time-limit", "2", "-o", str(tmp_path / "out")])

    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "plan.json").exists()


def test_a_fleet_file_that_is_not_text_is_refused_with_the_fix(tmp_path):
    binary = tmp_path / "fleet.toml"
    binary.write_bytes(b"\xff\xfe")

    with pytest.raises(PartitionerError, match="not a text file"):
        load_fleet(str(binary))
