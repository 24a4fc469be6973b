"""Fleets of thousands of devices: planned within the time limit, on as many identical devices as can be used.

A fleet of 1,000 devices once took two minutes to plan a 5-op model (most of it before the solver started) and
wrote a 338 MB plan: every ordered pair of places was costed and given transfer booleans, and the reduction
checked every triple of them. Identical devices (one spec in one host) are interchangeable, so a model of N ops
is planned on at most N of each; checks over devices look at a few of each group; and building the search counts
against the time limit.
"""

from __future__ import annotations

import json

import pytest

from partitioner.cli import main
from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.baselines import BASELINES
from partitioner.placement.objectives import THROUGHPUT
from partitioner.placement.problem import TargetTerms
from partitioner.placement.reduction import reduce_problem
from partitioner.placement.solver import ROUNDED_FLOOR, SolverOptions, solve
from targets.fleet import load_fleet
from targets.spec import Link
from tests.partitioner.placement.problem_builders import make_problem, node, value

FIVE_OPS = """
import torch

class Five(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))))

def build():
    return Five().eval(), (torch.randn(8, 64),)
"""


def test_a_fleet_keeps_at_most_so_many_of_each_hosts_identical_devices_named_as_in_the_whole_fleet():
    fleet = load_fleet("npu-example=1000,cuda-h100=2")

    places = fleet.target_set(most_of_each=3)

    assert places.names == ("npu-example.0", "npu-example.1", "npu-example.2", "cuda-h100.0", "cuda-h100.1")
    assert {places.group_of(name) for name in places.names} == {"npu-example@host", "cuda-h100@host"}
    assert len(fleet.target_set().names) == 1002


def test_a_model_on_a_fleet_of_a_thousand_devices_plans_as_on_the_devices_it_can_use(tmp_path, capsys):
    model = tmp_path / "five_ops.py"
    model.write_text(FIVE_OPS)

    def compiled(fleet: str) -> dict:
        out = tmp_path / fleet.replace("=", "_").replace(",", "_")
        assert main(["compile", str(model), "--fleet", fleet, "--objective", "throughput", "--time-limit", "5",
                     "--json", "-o", str(out)]) == 0
        capsys.readouterr()
        return json.loads((out / "plan.json").read_text())

    thousand, few = compiled("npu-example=1000,cuda-h100=1"), compiled("npu-example=4,cuda-h100=1")

    assert thousand["score"] == few["score"] and thousand["solver"]["status"] == "OPTIMAL"
    assert [t["name"] for t in thousand["targets"]] == [t["name"] for t in few["targets"]]
    assert "planned on 5 of its 1001 devices" in thousand["fleet"]


def fleet_problem(places_per_group: int):
    """A chain through a view on two groups of identical devices and one host, as a fleet's problem is."""
    npus = [TargetTerms(f"npu.{i}", 1.0, 2**35) for i in range(places_per_group)]
    gpus = [TargetTerms(f"gpu.{i}", 8.0, 2**36) for i in range(places_per_group)]
    places = [t.name for t in (*npus, *gpus)]
    groups = {name: f"{name.split('.')[0]}@host" for name in places}
    links = {(s, d): Link(1e-5, 1e10 if groups[s] == groups[d] else 1e9) for s in places for d in places if s != d}
    nodes = [node("a", **dict.fromkeys(places, 1e-3)), node("view", NodeKind.VIEW, **dict.fromkeys(places, 0.0)),
             node("b", **{name: (2e-3 if name.startswith("npu") else 1e-3) for name in places})]
    values = [value("a", "view", num_bytes=10**6), value("view", "b", num_bytes=10**6)]
    return make_problem(nodes, values, targets=(*npus, *gpus), fallback="gpu.0", links=links, device_groups=groups)


def test_the_reduction_judges_a_group_of_identical_devices_by_a_few_of_them_and_reaches_the_same_verdict():
    grouped = fleet_problem(12)
    every_place_its_own = grouped.with_graph(grouped.nodes, grouped.values, device_groups={})

    reduced = reduce_problem(grouped, THROUGHPUT)

    assert reduced.representative["view"] == "a"  # no detour through a third device beats the direct copy
    assert reduced.representative == reduce_problem(every_place_its_own, THROUGHPUT).representative


def test_building_a_search_that_outlasts_the_time_limit_gives_the_best_starting_plan_and_says_so():
    problem = fleet_problem(40)
    hints = {name: strategy(problem) for name, strategy in BASELINES.items()}

    with pytest.warns(UserWarning, match=r"the time limit ran out while building the search for \d+ ops on 80 "
                                         r"devices .* before any search ran: the plan is the best one it would "
                                         r"have started from, [\w ]+\. Fix: raise the time limit"):
        placement = solve(problem, THROUGHPUT, SolverOptions(time_limit_seconds=1e-4), hints=hints)

    # The baselines and the floor's rounded shares are the plans the search would have started from.
    assert placement.report.origin in {*hints, ROUNDED_FLOOR} and placement.report.status == "FEASIBLE"


def test_hosts_with_the_same_devices_are_spares_beyond_as_many_as_the_model_can_use(tmp_path):
    hosts = "".join(f'[[hosts]]\nname = "node{i}"\ndevices = [{{ target = "npu-example", count = 2 }}]\n'
                    for i in range(300))
    fleet_file = tmp_path / "many.toml"
    fleet_file.write_text(f'{hosts}[[hosts]]\nname = "gpus"\ndevices = [{{ target = "cuda-h100", count = 1 }}]\n'
                          "[network]\nbandwidth_gb_per_second = 50\nlatency_microseconds = 10\n")

    places = load_fleet(str(fleet_file)).target_set(most_of_each=3)

    # Three hosts of two NPUs hold every way three ops can spread over NPUs; the rest are spares.
    assert [places.group_of(name) for name in places.names] == [
        "npu-example@node0", "npu-example@node0", "npu-example@node1", "npu-example@node1", "npu-example@node2",
        "npu-example@node2", "cuda-h100@gpus"]


def test_a_fleet_of_one_kind_of_device_is_summarised_as_what_it_is(tmp_path, capsys):
    model = tmp_path / "five_ops.py"
    model.write_text(FIVE_OPS)

    assert main(["compile", str(model), "--fleet", "cuda-h100=3", "--objective", "throughput", "--time-limit", "5",
                 "-o", str(tmp_path / "out")]) == 0

    summary = capsys.readouterr().out
    assert "0.0% of FLOPs off cuda-h100" in summary  # the fleet's other H100s are not off the fallback's kind
    assert "cheaper devices" not in summary
