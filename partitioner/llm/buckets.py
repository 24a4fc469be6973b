"""A phase whose size varies from request to request (prompt lengths in buckets) as one placement problem.

Under the serving model every figure that prices a placement is a sum over
requests, so a stream in which a share of the requests has each size is priced
exactly by one problem whose compute seconds and copied bytes are the
share-weighted means of the sizes' own problems (partitioner/llm/planning.py
joins it with decode). What must hold for every request holds at every size:
a node runs only where every size of it is supported, and its working set is
the largest. Latency is not a mean: each size keeps its own problem for that.
"""

from __future__ import annotations

from typing import Sequence

from partitioner.placement.problem import PlacementProblem, ProblemNode, ProblemValue


def mean_problem(problems: Sequence[tuple[PlacementProblem, float]]) -> PlacementProblem:
    """The share-weighted mean of problems of one graph at several sizes (shares summing to 1)."""
    first = problems[0][0]
    if len(problems) == 1:
        return first
    for problem, _ in problems[1:]:
        if [n.name for n in problem.nodes] != [n.name for n in first.nodes] or \
                [(v.producer, v.consumers) for v in problem.values] != [(v.producer, v.consumers) for v in first.values]:
            raise ValueError("the sizes of a phase were captured as different graphs")
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
