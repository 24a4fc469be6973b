"""Hand-built placement problems for the problem, baseline and solver tests.

Nodes, values and targets are written out literally so that every expected
figure in a test can be worked out by hand from the numbers on the page.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from partitioner.graph import NodeKind
from partitioner.problem import PlacementProblem, ProblemNode, ProblemValue, TargetTerms
from targets.spec import Link

GIB = 1024**3

# A cheap accelerator with partial op support and little memory, and the fallback.
NPU = TargetTerms("npu", price_per_hour=3.6, memory_bytes=8 * GIB)    # 0.001 per second
CUDA = TargetTerms("cuda", price_per_hour=36.0, memory_bytes=80 * GIB)  # 0.01 per second
DSP = TargetTerms("dsp", price_per_hour=7.2, memory_bytes=4 * GIB)     # 0.002 per second


def node(name: str, kind: NodeKind = NodeKind.COMPUTE, parameters: Iterable[str] = (), follows: str | None = None,
         **compute_seconds: float) -> ProblemNode:
    """A node with its compute seconds per supporting target, in priority order (keyword order)."""
    return ProblemNode(name, kind, dict(compute_seconds), tuple(parameters), follows)


def value(producer: str, *consumers: str, num_bytes: int = 1_000_000) -> ProblemValue:
    """The tensor `producer` writes and `consumers` read."""
    return ProblemValue(producer, tuple(consumers), num_bytes)


def every_link(names: Iterable[str], link: Link) -> dict[tuple[str, str], Link]:
    """The same link for every ordered pair of distinct targets."""
    names = tuple(names)
    return {(source, destination): link for source in names for destination in names if source != destination}


def make_problem(nodes: Iterable[ProblemNode], values: Iterable[ProblemValue] = (),
                 targets: Iterable[TargetTerms] = (NPU, CUDA), fallback: str = "cuda",
                 parameter_bytes: Mapping[str, int] | None = None,
                 links: Mapping[tuple[str, str], Link] | Link = Link(0.001, 1e9)) -> PlacementProblem:
    """A placement problem; a single `Link` is used for every ordered pair of targets."""
    targets = tuple(targets)
    if isinstance(links, Link):
        links = every_link((t.name for t in targets), links)
    return PlacementProblem(
        targets=targets,
        fallback=fallback,
        nodes=tuple(nodes),
        values=tuple(values),
        parameter_bytes=dict(parameter_bytes or {}),
        links=dict(links),
    )
