"""Placement problems for the problem, baseline, reduction and solver tests.

Hand-built ones write nodes, values and targets out literally so that every
expected figure in a test can be worked out by hand from the numbers on the
page; random ones (hypothesis) are small enough to check by brute force.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping

from hypothesis import strategies as st

from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.objectives import Objective
from partitioner.placement.problem import PlacementProblem, ProblemNode, ProblemValue, TargetTerms
from partitioner.placement.scoring import score
from targets.spec import Link

GIB = 1024**3

# A cheap accelerator with partial op support and little memory, and the fallback.
NPU = TargetTerms("npu", price_per_hour=3.6, memory_bytes=8 * GIB)    # 0.001 per second
CUDA = TargetTerms("cuda", price_per_hour=36.0, memory_bytes=80 * GIB)  # 0.01 per second
DSP = TargetTerms("dsp", price_per_hour=7.2, memory_bytes=4 * GIB)     # 0.002 per second


def node(name: str, kind: NodeKind = NodeKind.COMPUTE, parameters: Iterable[str] = (), follows: str | None = None,
         working_bytes: int = 0, **compute_seconds: float) -> ProblemNode:
    """A node with its compute seconds per supporting target, in priority order (keyword order)."""
    return ProblemNode(name, kind, dict(compute_seconds), tuple(parameters), follows, working_bytes)


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
                 links: Mapping[tuple[str, str], Link] | Link = Link(0.001, 1e9),
                 blocks: tuple[tuple[tuple[str, ...], ...], ...] = (),
                 device_groups: Mapping[str, str] | None = None) -> PlacementProblem:
    """A placement problem; a single `Link` is used for every ordered pair of targets; `device_groups` names the
    places that are identical devices (a fleet's)."""
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
        blocks=blocks,
        device_groups=dict(device_groups or {}),
    )


# --- Random DAGs -------------------------------------------------------------------------------------------

TARGET_SETS = ((NPU, CUDA), (NPU, DSP, CUDA))


@st.composite
def random_problems(draw, max_nodes: int = 25) -> PlacementProblem:
    """A random DAG in topological order on 2 or 3 targets; the fallback (cuda) supports every node
    and has room for every parameter, so at least one placement always fits."""
    base = draw(st.sampled_from(TARGET_SETS))
    names = tuple(t.name for t in base)
    seconds = st.floats(0.001, 10.0)
    parameter_bytes = {f"w{i}": draw(st.integers(1, 4 * GIB)) for i in range(draw(st.integers(0, 4)))}
    nodes: list[ProblemNode] = []
    inputs: dict[str, list[str]] = {}
    for i in range(draw(st.integers(3, max_nodes))):
        name = f"n{i}"
        earlier = [n.name for n in nodes]
        kind = draw(st.sampled_from([NodeKind.COMPUTE] * 4 + [NodeKind.VIEW, NodeKind.BOOKKEEPING]))
        if kind is NodeKind.BOOKKEEPING and not earlier:
            kind = NodeKind.COMPUTE  # bookkeeping (a getitem) follows an earlier node and computes nothing
        if kind is NodeKind.BOOKKEEPING:
            followed = problem_node(nodes, draw(st.sampled_from(earlier)))
            nodes.append(ProblemNode(name, kind, {t: 0.0 for t in followed.supported}, (), followed.name))
            inputs[name] = [followed.name]
            continue
        supported = [t for t in names[:-1] if draw(st.booleans())] + [names[-1]]
        compute = {t: 0.0 if kind is NodeKind.VIEW else draw(seconds) for t in supported}
        parameters = tuple(draw(st.lists(st.sampled_from(sorted(parameter_bytes)), max_size=2, unique=True))) \
            if parameter_bytes else ()
        working = 0 if kind is NodeKind.VIEW else draw(st.integers(0, GIB))
        nodes.append(ProblemNode(name, kind, compute, parameters, working_bytes=working))
        inputs[name] = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) if earlier else []
    values = []
    for producer in nodes:
        consumers = tuple(n for n, reads in inputs.items() if producer.name in reads)
        if consumers:
            values.append(ProblemValue(producer.name, consumers, draw(st.integers(0, 10**9))))
    targets = tuple(
        TargetTerms(t.name, draw(st.floats(0.1, 50.0)),
                    sum(parameter_bytes.values()) + max(n.working_bytes for n in nodes) if t.name == "cuda"
                    else draw(st.integers(0, 8 * GIB)))
        for t in base
    )
    links = {(s, d): Link(draw(st.floats(0.0, 0.01)), draw(st.floats(1e8, 1e11)))
             for s in names for d in names if s != d}
    return PlacementProblem(targets, "cuda", tuple(nodes), tuple(values), parameter_bytes, links)


def problem_node(nodes: list[ProblemNode], name: str) -> ProblemNode:
    return next(n for n in nodes if n.name == name)


def brute_force_optimum(problem: PlacementProblem, objective: Objective) -> float:
    """The best objective over every placement that respects supports, followers and memory."""
    best = float("inf")
    for targets in itertools.product(*(n.supported for n in problem.nodes)):
        assignment = dict(zip((n.name for n in problem.nodes), targets))
        if any(n.follows and assignment[n.name] != assignment[n.follows] for n in problem.nodes):
            continue
        result = score(problem, assignment)
        if result.fits_memory:
            best = min(best, objective.value(result))
    return best
