"""Pins and forbids: the user overrules the placement, and the solver, every baseline, the plan file and
`explain` honour it; a pin that cannot hold is one clear error."""

from __future__ import annotations

import pytest
import torch

import partitioner
from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.plan import Plan
from targets.fleet import load_fleet

HALF = torch.float16
TARGETS = ["npu-example", "cuda-h100"]


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 64)
        self.down = torch.nn.Linear(64, 64)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class TwoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return torch.softmax(x, dim=-1)


@pytest.fixture(scope="module")
def model_and_inputs():
    return TwoBlocks().to(HALF).eval(), (torch.randn(8, 64, dtype=HALF),)


def ops_in(plan: Plan, prefix: str) -> list[str]:
    return [n.name for n in plan.nodes if n.module_path.startswith(prefix) and n.op != "aten.view.default"]


def test_a_pinned_module_runs_on_its_target_in_the_plan_and_in_every_baseline(model_and_inputs, tmp_path):
    model, inputs = model_and_inputs
    free = partitioner.compile(model, inputs, TARGETS, "cost", time_limit_seconds=2)
    plan = partitioner.compile(model, inputs, TARGETS, "cost", pins=["blocks.1=npu-example"], time_limit_seconds=2)

    pinned = ops_in(plan, "blocks.1")
    # Unpinned, the fallback keeps them: ops of microseconds do not pay for a hop to the NPU and back.
    assert "npu-example" not in {free.placement[name] for name in pinned}
    assert pinned and {plan.placement[name] for name in pinned} == {"npu-example"}
    for name, assignment in plan.baselines.items():
        assert {assignment[node] for node in pinned} == {"npu-example"}, name
    reloaded = Plan.load(plan.save(tmp_path / "plan.json"))
    assert [str(pin) for pin in reloaded.pins] == ["--pin 'blocks.1=npu-example'"]
    record = next(n for n in reloaded.nodes if n.name == pinned[0])
    assert record.refusals["cuda-h100"] == "pinned to npu-example by --pin 'blocks.1=npu-example'"


def test_a_module_pinned_off_the_fallback_stays_off_it_in_every_baseline(model_and_inputs):
    model, inputs = model_and_inputs
    plan = partitioner.compile(model, inputs, TARGETS, "latency", pins=["blocks.0=npu-example"], time_limit_seconds=2)

    pinned = ops_in(plan, "blocks.0")
    for name, assignment in {"plan": plan.placement, **plan.baselines}.items():
        assert {assignment[node] for node in pinned} == {"npu-example"}, name


def test_a_forbid_by_op_key_keeps_every_such_op_off_the_target(model_and_inputs):
    model, inputs = model_and_inputs
    plan = partitioner.compile(model, inputs, TARGETS, "cost", forbids=["aten.linear.default=npu-example"],
                               time_limit_seconds=2)

    linears = [n.name for n in plan.nodes if n.op == "aten.linear.default"]
    assert len(linears) == 4 and {plan.placement[name] for name in linears} == {"cuda-h100"}


def test_a_pin_on_a_fleet_names_a_spec_and_any_of_its_devices_may_take_the_ops(model_and_inputs):
    model, inputs = model_and_inputs
    plan = partitioner.compile(model, inputs, load_fleet("npu-example=2,cuda-h100=1"), "throughput",
                               pins=["blocks.*=npu-example"], time_limit_seconds=2)

    assert {plan.placement[name] for name in ops_in(plan, "blocks.")} <= {"npu-example.0", "npu-example.1"}


@pytest.mark.parametrize("pin, message", [
    ("aten.softmax.int=npu-example", r"puts softmax \(aten.softmax.int\) on a target that does not run it "
                                     r"\(npu-example: aten.softmax.int: op not in support list\)"),
    ("decoder.*=npu-example", "matches no op of the model. Fix: match an op key"),
    ("blocks.0=tpu-v9", r"names 'tpu-v9', which is not a target of this plan \(npu-example, cuda-h100\)"),
    ("blocks.0", "is not PATTERN=TARGET"),
])
def test_a_pin_that_cannot_hold_is_one_clear_error(model_and_inputs, pin, message):
    model, inputs = model_and_inputs
    with pytest.raises(PartitionerError, match=message):
        partitioner.compile(model, inputs, TARGETS, pins=[pin], time_limit_seconds=1)


def test_forbidding_every_target_that_runs_an_op_is_refused(model_and_inputs):
    model, inputs = model_and_inputs
    with pytest.raises(PartitionerError, match="leaves softmax .* no target"):
        partitioner.compile(model, inputs, TARGETS, forbids=["aten.softmax.int=cuda-h100"], time_limit_seconds=1)


def test_the_cli_takes_pins_and_forbids_and_the_summary_plan_records_them(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import torch\nfrom tests.partitioner.placement.test_pins import TwoBlocks\n\n"
                     "def build():\n    return TwoBlocks().half().eval(), (torch.randn(8, 64, dtype=torch.float16),)\n")
    out = tmp_path / "out"

    assert main(["compile", str(model), "--pin", "blocks.0=cuda-h100", "--forbid", "blocks.1.down=npu-example",
                 "--time-limit", "2", "--quiet", "-o", str(out)]) == 0

    plan = Plan.load(out / "plan.json")
    assert [str(pin) for pin in plan.pins] == ["--pin 'blocks.0=cuda-h100'", "--forbid 'blocks.1.down=npu-example'"]
    assert {plan.placement[name] for name in ops_in(plan, "blocks.0")} == {"cuda-h100"}
    assert {plan.placement[name] for name in ops_in(plan, "blocks.1.down")} == {"cuda-h100"}
