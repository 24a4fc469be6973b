"""Plan files: those written by earlier versions (schema 1) load, re-score and summarise exactly as they did;
edited or damaged ones are refused on load, in one line.

The fixtures were written by `partitioner compile examples/vision_classifier.py --targets
npu-example,dsp-example,cpu-x86,cuda-h100 --objective cost|makespan` before the package took its
stage-by-stage layout and objectives became values; each `.summary.txt` is what that version printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from partitioner.cli import main
from partitioner.errors import PartitionerError
from partitioner.placement.objectives import COST, MAKESPAN
from partitioner.plan import Plan

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("objective", [COST, MAKESPAN], ids=lambda o: o.name)
def test_an_earlier_plan_file_loads_and_writes_back_the_same_json_plus_its_serving_figures_and_no_hops(objective):
    path = FIXTURES / f"plan_v1_{objective.name}.json"

    plan = Plan.load(path)

    written = plan.to_dict()
    scores = [written["score"], *(entry["score"] for entry in written["baselines"].values())]
    assert all(0 < s.pop("serving")["throughput_per_second"] < float("inf") for s in scores)
    assert all((s.pop("hop_count"), s.pop("hop_seconds")) == (0, 0) for s in scores)  # hops were free then
    assert plan.objective is objective
    assert written == json.loads(path.read_text())  # every score and baseline re-scored to the same figures


@pytest.mark.parametrize("objective", [COST, MAKESPAN], ids=lambda o: o.name)
def test_an_earlier_plan_file_prints_the_summary_it_printed_then(objective):
    plan = Plan.load(FIXTURES / f"plan_v1_{objective.name}.json")

    assert plan.summary() + "\n" == (FIXTURES / f"plan_v1_{objective.name}.summary.txt").read_text()


# --- tampered plan files: refused on load, in one line, by every command that reads them ------------------------------


def tampered(edit) -> dict:
    data = json.loads((FIXTURES / "plan_v1_cost.json").read_text())
    edit(data)
    return data


def put(data: dict, node: str, target: str) -> None:
    data["placement"][node] = target


def move_partition(data: dict, index: int, target: str) -> None:
    partition = data["partitions"][index]
    partition["target"] = target
    for name in partition["nodes"]:
        data["placement"][name] = target


def set_all(items: list, **fields) -> None:
    for item in items:
        item.update(fields)


FIX = "Fix: compile the model again (the file was edited or damaged)."

TAMPERINGS = {
    # A field of the wrong type or out of range, named by its path.
    "a string min_throughput": (lambda d: d.update(min_throughput="fast"),
                                "field 'min_throughput': expected a number, got 'fast'"),
    "a string latency limit": (lambda d: d.update(max_latency_seconds="soon"),
                               "field 'max_latency_seconds': expected a number, got 'soon'"),
    "a negative min_throughput": (lambda d: d.update(min_throughput=-5), "field 'min_throughput': -5 is not above 0"),
    "a NaN min_throughput": (lambda d: d.update(min_throughput=float("nan")), "nan is not a finite number"),
    "a zero link bandwidth": (lambda d: d["problem"]["links"][0].update(bandwidth_bytes_per_second=0),
                              "field 'problem.links[0].bandwidth_bytes_per_second': 0 is not above 0"),
    "a negative compute time": (lambda d: d["problem"]["nodes"][0]["compute_seconds"].update({"cuda-h100": -1.0}),
                                "field 'problem.nodes[0].compute_seconds.cuda-h100': -1 is below 0"),
    "a NaN compute time": (lambda d: d["problem"]["nodes"][0]["compute_seconds"].update({"cuda-h100": float("nan")}),
                           "compute_seconds.cuda-h100': nan is not a finite number"),
    "a NaN price": (lambda d: d["problem"]["targets"][0].update(price_per_hour=float("nan")),
                    "field 'problem.targets[0].price_per_hour': nan is not a finite number"),
    "a negative price": (lambda d: d["problem"]["targets"][0].update(price_per_hour=-1),
                         "field 'problem.targets[0].price_per_hour': -1 is below 0"),
    "negative parameter bytes": (lambda d: d["model"].update(parameter_bytes=-5),
                                 "field 'model.parameter_bytes': -5 is below 0"),
    "a string where a number of bytes belongs": (lambda d: d["problem"]["values"][0].update(bytes="12"),
                                                 "field 'problem.values[0].bytes': expected a whole number, got '12'"),
    "a device that runs nothing": (lambda d: d["targets"][0].update(torch_device="meta"),
                                   "field 'targets[0].torch_device': 'meta' is torch's meta device"),
    "a device torch does not know": (lambda d: d["targets"][0].update(torch_device="garbage!!"),
                                     "'garbage!!' is not a torch device"),
    "an execution provider ONNX Runtime does not know": (
        lambda d: d["targets"][0].update(onnx_execution_provider="NoSuchProvider"),
        "field 'targets[0].onnx_execution_provider': 'NoSuchProvider' is not one of"),
    "a list where an object belongs": (lambda d: d.update(problem=[]), "field 'problem': expected an object"),
    "a number where a node belongs": (lambda d: d["nodes"].__setitem__(0, 5), "field 'nodes[0]': expected an object"),
    "a number past 64 bits": (lambda d: d["problem"]["targets"][0].update(memory_bytes=10**400),
                              "field 'problem.targets[0].memory_bytes': a number of 401 digits is above"),
    # Names its parts share, and figures that no longer hold.
    "an op on a target that refuses it": (lambda d: put(d, "softmax", "npu-example"),
                                          "puts softmax on npu-example, which refuses it"),
    "a whole partition on a target that refuses it": (lambda d: move_partition(d, 2, "npu-example"),
                                                      "which refuses it"),
    "an unknown target": (lambda d: put(d, "relu", "tpu-v9"), "puts relu on tpu-v9, which is not one of its targets"),
    "a node missing": (lambda d: d["placement"].pop("relu"), "does not place every node exactly once"),
    "partitions in reverse order": (lambda d: d["partitions"].reverse(), "out of order"),
    "a changed cost table": (lambda d: d["problem"]["nodes"][0]["compute_seconds"].update({"npu-example": 1.0}),
                             "is not what its placement scores on its cost table"),
    "a made-up solver status": (lambda d: d["solver"].update({"status": "BANANA"}), "'BANANA' is neither"),
    "an impossible gap": (lambda d: d["solver"].update({"gap": -5}), "field 'solver.gap': -5 is below 0"),
    "a baseline on a refusing target": (lambda d: d["baselines"]["priority"]["placement"].update(
        {"softmax": "npu-example"}), "the baseline priority puts softmax on npu-example"),
    "a route over a link resource of no known bandwidth": (
        lambda d: d["problem"].update(routes=[{"source": "npu-example", "destination": "cuda-h100",
                                               "resources": ["nocolon"]}], resource_bandwidth={}),
        "crosses 'nocolon', a link resource of no known bandwidth"),
    "a min_throughput the placement does not serve": (lambda d: d.update(min_throughput=1e9),
                                                      "requests/s, below its min_throughput 1e+09"),
    "a latency limit the placement exceeds": (lambda d: d.update(max_latency_seconds=1e-9),
                                              "s per request, over its max_latency_seconds 1e-09"),
    "memory the placement does not fit": (lambda d: set_all(d["problem"]["targets"], memory_bytes=1),
                                          "whose memory_bytes is 1"),
    "a fallback that cannot run the model": (
        lambda d: [d.update(fallback="npu-example"), d["problem"].update(fallback="npu-example")],
        "its fallback npu-example refuses"),
    "compute times whose sum overflows": (
        lambda d: [n["compute_seconds"].update(dict.fromkeys(n["compute_seconds"], 1e307))
                   for n in d["problem"]["nodes"]],
        "its placement's latency or cost, scored on its cost table, is not a finite number"),
    "a node that follows itself": (lambda d: d["problem"]["nodes"][1].update(follows=d["problem"]["nodes"][1]["name"]),
                                   "which is not another of its nodes"),
    "a fallback unlike its problem's": (lambda d: d.update(fallback="cpu-x86"),
                                        "its fallback 'cpu-x86' is not its problem's fallback 'cuda-h100'"),
    "a pin on a target not in the plan": (
        lambda d: d.update(pins=[{"pattern": "aten.relu.default", "target": "tpu-v9", "forbid": False}]),
        "names 'tpu-v9', which is not one of its targets"),
    "a pin matching no node": (lambda d: d.update(pins=[{"pattern": "nowhere.*", "target": "cuda-h100"}]),
                               "--pin 'nowhere.*=cuda-h100' matches none of its nodes"),
    "a compiler refusal of a node not in the plan": (
        lambda d: d.update(compiler_refusals=[{"target": "npu-example", "partition": "000_npu-example",
                                               "nodes": ["nosuch"], "reason": "no"}]),
        "a compiler refusal names the node 'nosuch', which is not one of its nodes"),
    "a compiler refusal of a target not in the plan": (
        lambda d: d.update(compiler_refusals=[{"target": "tpu-v9", "partition": "000_tpu-v9",
                                               "nodes": ["relu"], "reason": "no"}]),
        "a compiler refusal names 'tpu-v9', which is not one of its targets"),
    "a value read before it is made": (lambda d: d["problem"]["values"][1].update(consumers=["conv2d"]),
                                       "is read by a node before it"),
    "an empty partition": (lambda d: d["partitions"].append({"index": len(d["partitions"]), "target": "npu-example",
                                                             "nodes": [], "inputs": [], "outputs": []}),
                           "holds no node"),
    "a partition reading a value no partition makes": (lambda d: d["partitions"][1].update(inputs=["ghost"]),
                                                       "reads 'ghost', which no earlier partition makes"),
    "a partition that hands nothing on": (lambda d: d["partitions"][0].update(outputs=[]),
                                          "which do not list it as an output and an input"),
    "a proof with a bound far below its objective": (lambda d: d["solver"].update(bound=1e-30),
                                                     "says OPTIMAL with gap 0"),
    "a baseline of no strategy": (lambda d: d["baselines"].update(ghost=d["baselines"]["priority"]),
                                  "it has a baseline 'ghost', which is no strategy of this version"),
    "a placement of unknown origin": (lambda d: d["solver"].update(origin="magic"),
                                      "came from 'magic', neither cp-sat, the rounded floor nor one of its baselines"),
    "a dtype torch does not have": (lambda d: d["nodes"][0].update(dtypes=["float128"]),
                                    "names the dtype 'float128', which torch does not have"),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_a_tampered_plan_is_refused_on_load_naming_what_is_wrong(tampering):
    edit, expected = TAMPERINGS[tampering]

    with pytest.raises(PartitionerError) as caught:
        Plan.from_dict(tampered(edit))

    message = str(caught.value)
    assert expected in message
    assert message.startswith(("the plan's field '", "the plan is inconsistent with its own problem data: "))
    assert message.endswith(FIX) and "\n" not in message


@pytest.mark.parametrize("command", [["report"], ["explain", None, "softmax"], ["run"], ["export", None, "-o", "x"]])
def test_every_command_that_reads_a_tampered_plan_exits_2_with_one_line(command, tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(tampered(lambda d: put(d, "softmax", "npu-example"))))
    argv = [command[0], str(path), *[str(tmp_path / part) if part == "x" else part for part in command[2:]]]

    code = main(argv)

    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("partitioner: error: the plan is inconsistent")
    assert not (tmp_path / "x").exists()
