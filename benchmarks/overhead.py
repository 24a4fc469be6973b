"""Runtime overhead of the partitioned module: the original model against its partitions, all on one device.

For BERT-base and ResNet-50 (transformers configs, random weights, float32,
eval, batch 1) it splits the model the way the `priority` baseline places its
float16 copy on dsp-example, npu-example and cuda-h100 (the float32 graph has
the same nodes), maps every target to one device, and times the original
module, the unpartitioned exported module and the partitioned module in the
same run, interleaved. The solver's own plans for these models have a single
partition at batch 1, which would measure nothing. Not a test; prints Markdown.

    python benchmarks/overhead.py [--repeats 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree
from transformers import BertConfig, BertModel, ResNetConfig, ResNetForImageClassification

from cost_models.roofline import RooflineCostModel
from partitioner.execution.check import compare_outputs
from partitioner.execution.partitioned_module import build_partitioned_module
from partitioner.execution.split import split
from partitioner.frontend.capture import capture, split_inputs
from partitioner.frontend.op_graph import annotate
from partitioner.placement.baselines import priority_placement
from partitioner.placement.problem import build_problem
from partitioner.placement.tagging import tag
from targets.loader import load_targets

TARGETS = ("dsp-example", "npu-example", "cuda-h100")


@dataclass(frozen=True, slots=True)
class Row:
    model: str
    ops: int
    partitions: int
    original_seconds: float
    exported_seconds: float
    partitioned_seconds: float
    max_abs_error: float

    @property
    def ratio(self) -> float:
        return self.partitioned_seconds / self.original_seconds


def bert_base(dtype: torch.dtype, device: str) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(0)
    with torch.device(device):
        model = BertModel(BertConfig()).to(dtype).eval()
        return model, {"input_ids": torch.randint(0, 30522, (1, 128))}


def resnet_50(dtype: torch.dtype, device: str) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(0)
    with torch.device(device):
        model = ResNetForImageClassification(ResNetConfig()).to(dtype).eval()
        return model, (torch.randn(1, 3, 224, 224, dtype=dtype),)


def priority_assignment(build: Callable) -> dict[str, str]:
    """Where the `priority` baseline puts each node of the model's float16 copy.

    Built on the CPU, not on meta: on meta, BERT's attention traces extra `contiguous` nodes.
    """
    model, inputs = build(torch.float16, "cpu")
    graph = annotate(capture(model, inputs).program)
    target_set = load_targets(TARGETS)
    problem = build_problem(graph, tag(graph, target_set), target_set, RooflineCostModel())
    return priority_placement(problem)


def measure(name: str, build: Callable, device: torch.device, repeats: int, warmup: int) -> Row:
    model, inputs = build(torch.float32, "cpu")
    program = capture(model, inputs).program
    graph = annotate(program)
    assignment = priority_assignment(build)
    assert set(assignment) == {node.name for node in graph}, "float16 and float32 graphs differ"
    partitions = split(graph, assignment)
    model = model.to(device)
    inputs = pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), inputs)
    exported = program.module()  # shares the model's weights, as the partitioned module does
    partitioned = build_partitioned_module(program, partitions, {target: device for target in TARGETS})
    modules = {"original": model, "exported": exported, "partitioned": partitioned}
    args, kwargs = split_inputs(inputs)
    with torch.inference_mode():
        error = compare_outputs(model(*args, **kwargs), partitioned(*args, **kwargs)).max_abs_error
        times = interleaved_seconds(modules, args, kwargs, device, repeats, warmup)
    return Row(name, len(graph), len(partitions), times["original"], times["exported"], times["partitioned"], error)


def interleaved_seconds(modules: dict[str, Callable], args: tuple, kwargs: dict, device: torch.device,
                        repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each module, timed in rotating order so drift hits them all alike."""
    samples: dict[str, list[float]] = {name: [] for name in modules}
    names = list(modules)
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            modules[name](*args, **kwargs)
            synchronize(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        getattr(torch, device.type).synchronize()


def markdown(rows: list[Row]) -> str:
    lines = ["| model | ops | partitions | original ms | exported ms | partitioned ms | ratio | overhead % "
             "| max abs error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.ops} | {r.partitions} | {r.original_seconds * 1e3:.2f} "
                     f"| {r.exported_seconds * 1e3:.2f} | {r.partitioned_seconds * 1e3:.2f} | {r.ratio:.3f} "
                     f"| {(r.ratio - 1) * 100:+.1f} | {r.max_abs_error:.2g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed calls of each module (default: 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls of each module first (default: 5)")
    parser.add_argument("--device", default="cpu", help="the one device every target maps to (default: cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [measure(name, build, device, args.repeats, args.warmup)
            for name, build in (("BERT-base (seq 128)", bert_base), ("ResNet-50 (224x224)", resnet_50))]
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, float32, batch 1, "
          f"median of {args.repeats} interleaved calls after {args.warmup} warm-up calls each")
    print(f"partitions: the `priority` baseline's placement of the float16 copy on {', '.join(TARGETS)}, "
          "built with partitioner.execution.split.split + partitioned_module.build_partitioned_module; every target on "
          f"{device}. 'exported' is the unpartitioned ExportedProgram.module().\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
