"""A phase whose size varies from request to request (prompt lengths in buckets) as one placement problem.

Under the serving model every figure that prices a placement is a sum over
requests, so a stream in which a share of the requests has each size is priced
exactly by one problem whose compute seconds and copied bytes are the
share-weighted means of the sizes' own problems (partitioner/llm/planning.py
joins it with decode). What must hold for every request holds at every size:
a node runs only where every size of it is supported, and its working set is
the largest. Latency is not a mean: each size keeps its own problem for that.

Some models take another path at some sizes (Gemma-2's sliding window: a prompt
longer than the window is masked and cached differently), so their sizes capture
as different graphs. One placement must serve every size, so such a phase is
planned on its largest size's graph, scaled at each size to what that size's own
graph costs in all (`on_one_graph`): exact in total per device, approximate per op.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from partitioner.placement.problem import PlacementProblem, ProblemNode, ProblemValue


def same_graph(first: PlacementProblem, other: PlacementProblem) -> bool:
    """Whether two problems are of one graph: the same nodes and the same tensors between them."""
    return ([n.name for n in other.nodes] == [n.name for n in first.nodes]
            and [(v.producer, v.consumers) for v in other.values] == [(v.producer, v.consumers) for v in first.values])


def on_one_graph(by_size: Mapping[int, PlacementProblem]) -> dict[int, PlacementProblem]:
    """The problems of a phase's sizes, all of one graph: as they are where they are; else each size as the
    largest size's graph with every op's seconds on a target scaled by that size's total seconds there over the
    largest's, and every tensor's bytes by that size's total bytes copied over the largest's."""
    largest = by_size[max(by_size)]
    if all(same_graph(largest, problem) for problem in by_size.values()):
        return dict(by_size)
    return {size: problem if problem is largest else _scaled_to(largest, problem) for size, problem in by_size.items()}


def _scaled_to(base: PlacementProblem, problem: PlacementProblem) -> PlacementProblem:
    def total(p: PlacementProblem, target: str) -> float:
        return sum(n.compute_seconds.get(target, 0.0) for n in p.nodes)

    seconds = {t: (total(problem, t) / total(base, t) if total(base, t) else 1.0) for t in base.target_names}
    base_bytes = sum(v.num_bytes for v in base.values)
    bytes_ratio = sum(v.num_bytes for v in problem.values) / base_bytes if base_bytes else 1.0
    nodes = [ProblemNode(n.name, n.kind, {t: s * seconds[t] for t, s in n.compute_seconds.items()}, n.parameters,
                         n.follows, n.working_bytes) for n in base.nodes]
    values = [ProblemValue(v.producer, v.consumers, round(v.num_bytes * bytes_ratio)) for v in base.values]
    return base.with_graph(nodes, values)


def mean_problem(problems: Sequence[tuple[PlacementProblem, float]]) -> PlacementProblem:
    """The share-weighted mean of problems of one graph at several sizes (shares summing to 1)."""
    first = problems[0][0]
    if len(problems) == 1:
        return first
    if not all(same_graph(first, problem) for problem, _ in problems[1:]):
        raise ValueError("the sizes of a phase were captured as different graphs: put them on one (on_one_graph)")
    nodes = []
    for index, node in enumerate(first.nodes):
        versions = [(problem.nodes[index], share) for problem, share in problems]
        supported = [t for t in node.compute_seconds if all(t in n.compute_seconds for n, _ in versions)]
        nodes.append(ProblemNode(node.name, node.kind,
                                 {t: sum(n.compute_seconds[t] * share for n, share in versions) for t in supported},
                                 node.parameters, node.follows, max(n.working_bytes for n, _ in versions)))
    values = [ProblemValue(value.producer, value.consumers,
                           round(sum(problem.values[index].num_bytes * share for problem, share in problems)))
              for index, value in enumerate(first.values)]
    parameter_bytes = {name: max(problem.parameter_bytes[name] for problem, _ in problems)
                       for name in first.parameter_bytes}
    return first.with_graph(nodes, values, parameter_bytes=parameter_bytes)
