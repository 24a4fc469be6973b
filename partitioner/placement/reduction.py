"""Exact graph reduction before solving: nodes that can only sit together become one node.

Sits between `build_problem` and the solver. Two rules merge nodes into groups:

- a node that `follows` another (a `getitem`, an in-place write) is always
  placed with it, so it is merged outright;
- a free node (a view or bookkeeping op, or one that computes nothing on any
  target; no parameters) that reads one tensor, which nothing else reads, and
  passes its result to one consumer joins the producer of what it reads; a
  free node that reads no tensor joins its one consumer. These moves are
  applied only where the problem's own numbers prove them never worse for the
  transfers: the view's output is no larger than its input, and no transfer via
  the view's device beats the direct one.

Where hops are priced, a free node joins only where it runs between two ops as
often, one of them its destination's: sitting there never adds a hop.

Every placement of the reduced problem maps back to one of the original with
the same score. Where views cost nothing, an optimum of the reduced problem is
an optimum of the original (for its objective and for latency, so a latency
limit holds too). Where targets charge a view its dispatch overhead (a few
microseconds), a view runs where its data is by design: it is never worth a
cut on its own, and the optimum is over placements that keep it there. Hops
(partitioner/placement/hops.py) are charged between the groups that place the
ops run one after the other, so a reduced placement's hops are its original's.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

from partitioner.frontend.op_graph import NodeKind
from partitioner.placement.objectives import LATENCY, Objective
from partitioner.placement.problem import PlacementProblem, ProblemNode, ProblemValue


@dataclass(frozen=True, slots=True)
class Reduction:
    """A smaller problem and, for every original node, the reduced node that places it."""

    problem: PlacementProblem
    representative: Mapping[str, str]

    def expand(self, assignment: Mapping[str, str]) -> dict[str, str]:
        """The original placement that a placement of the reduced problem stands for."""
        return {node: assignment[group] for node, group in self.representative.items()}

    def expand_order(self, order: Sequence[str]) -> tuple[str, ...]:
        """The original nodes in the order of their reduced nodes, each group's members in graph order."""
        members: dict[str, list[str]] = {}
        for node, group in self.representative.items():
            members.setdefault(group, []).append(node)
        return tuple(node for group in order for node in members[group])

    def restrict(self, assignment: Mapping[str, str]) -> dict[str, str]:
        """A placement of the reduced problem that puts each group where its first node sits."""
        return {node.name: assignment[node.name] for node in self.problem.nodes}


def reduce_problem(problem: PlacementProblem, objective: Objective) -> Reduction:
    """Merge nodes that an optimal placement for `objective` (and for latency) can always keep together.

    For an objective that schedules ops (makespan), followers keep their own
    node (a merged in-place op would wait for all of its group's inputs) and
    only free nodes merge.
    """
    groups = NodeGroups(problem)
    for node in problem.nodes:
        if node.follows is not None and not objective.schedules_ops:
            groups.merge(node.name, into=node.follows)
    neighbours = _Neighbours(problem)
    for node in problem.nodes:
        if groups.leader(node.name) == node.name and groups.is_free(node.name):
            target_group = _free_group_destination(problem, groups, node.name, objective)
            if target_group is not None and neighbours.never_adds_hops(groups, node.name, target_group):
                groups.merge(node.name, into=target_group)
    return groups.reduction()


class _Neighbours:
    """Each op's neighbours in the problem's sequence (the ops run right before and after it, and how often), where
    hops are priced (partitioner/placement/hops.py)."""

    def __init__(self, problem: PlacementProblem):
        self.priced = bool(problem.hop_seconds)
        self.after: dict[str, tuple[str, float] | None] = {}
        self.before: dict[str, tuple[str, float] | None] = {}
        for first, second, times in problem.sequence() if self.priced else ():
            # An op with two successors or predecessors (pairs a reduction kept) is no run: None stands for "many".
            self.after[first] = None if first in self.after else (second, times)
            self.before[second] = None if second in self.before else (first, times)
        self.position = {node.name: index for index, node in enumerate(problem.nodes)}

    def never_adds_hops(self, groups: NodeGroups, group: str, destination: str) -> bool:
        """Whether every placement's hops are as cheap with `group` joined to `destination`: the group's ops run
        one right after another, between two ops as often, one of them the destination's. Between ops on devices
        P (before) and N (after), such a run makes hops into N alone (or none) if it sits on P or on N, and more
        anywhere else, so sitting with the destination loses nothing."""
        if not self.priced:
            return True
        members = sorted(groups.members[group], key=self.position.__getitem__)
        if any((self.after.get(a) or ("",))[0] != b for a, b in zip(members, members[1:])):
            return False
        before, after = self.before.get(members[0]), self.after.get(members[-1])
        if before is None or after is None or before[1] != after[1]:
            return False
        return destination in (groups.leader(before[0]), groups.leader(after[0]))


def _free_group_destination(problem: PlacementProblem, groups: NodeGroups, group: str, objective: Objective) -> str | None:
    """The group a free group may join without loss, or None when no rule proves it safe."""
    incoming = groups.incoming(group)
    outgoing = groups.outgoing(group)
    if len(outgoing) > 1:
        return None
    output = outgoing[0] if outgoing else None
    consumer_groups = {groups.leader(c) for c in output.consumers} - {group} if output else set()
    if len(consumer_groups) > 1:
        return None
    consumer = next(iter(consumer_groups), None)
    if not incoming:  # a free source: it only ever saves a transfer to sit with its consumer
        if consumer is not None and _supports_all(groups, group, consumer):
            return consumer
        return None
    if len(incoming) != 1:
        return None
    source = incoming[0]
    producer = groups.leader(source.producer)
    if {groups.leader(c) for c in source.consumers} != {group} or not _supports_all(groups, group, producer):
        return None
    if output is not None and output.num_bytes > source.num_bytes:
        return None
    if consumer is not None and not _direct_never_worse(problem, groups, producer, group, consumer,
                                                        source.num_bytes, output.num_bytes, objective):
        return None
    return producer


def _supports_all(groups: NodeGroups, group: str, other: str) -> bool:
    """Whether `group` may sit wherever `other` may."""
    return set(groups.supported(other)) <= set(groups.supported(group))


def _direct_never_worse(problem: PlacementProblem, groups: NodeGroups, producer: str, middle: str, consumer: str,
                        input_bytes: int, output_bytes: int, objective: Objective) -> bool:
    """Whether sending the output straight from the producer's device is never dearer than a detour
    via the middle node's device (the input's move there plus the output's onward move).

    A move's price depends only on the groups of identical devices it joins and on whether it stays on one
    device, so three devices of each group stand for all of them (any pattern of producer, middle and consumer
    device being the same or not): a fleet of thousands is checked as fast as one of three of each kind."""
    producers, middles, consumers = (_representatives(problem, groups.supported(g))
                                     for g in (producer, middle, consumer))
    for rate_of in dict.fromkeys((objective, LATENCY)):
        def price(num_bytes: int, source: str, destination: str) -> float:
            if source == destination:
                return 0.0
            rate = rate_of.rate(problem, (source, destination))
            return problem.transfer_seconds(num_bytes, source, destination) * rate

        into_middle = {(p, d): price(input_bytes, p, d) for p in producers for d in middles}
        onward = {(d, c): price(output_bytes, d, c) for d in middles for c in consumers}
        for p, c in itertools.product(producers, consumers):
            detour = min(into_middle[p, d] + onward[d, c] * (1 + 1e-12) for d in middles)
            if price(output_bytes, p, c) > detour:
                return False
    return True


def _representatives(problem: PlacementProblem, places: Sequence[str]) -> list[str]:
    """The first three of `places` in each group of identical devices (see PlacementProblem.device_groups)."""
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for place in places:
        seen[problem.group(place)] += 1
        if seen[problem.group(place)] <= 3:
            kept.append(place)
    return kept


def is_free(node: ProblemNode) -> bool:
    """Whether a node does no work worth a cut: a view or bookkeeping op (at most its dispatch overhead), or one
    that computes nothing anywhere; and it holds no weights."""
    return not node.parameters and (node.kind is not NodeKind.COMPUTE or not any(node.compute_seconds.values()))


class NodeGroups:
    """Disjoint groups of nodes, each named by its leader, and the tensors that enter and leave them."""

    def __init__(self, problem: PlacementProblem):
        self.problem = problem
        self.parent = {node.name: node.name for node in problem.nodes}
        self.members: dict[str, list[str]] = {node.name: [node.name] for node in problem.nodes}
        self.reads: dict[str, list[ProblemValue]] = defaultdict(list)
        self.writes: dict[str, list[ProblemValue]] = defaultdict(list)
        for value in problem.values:
            self.writes[value.producer].append(value)
            for consumer in dict.fromkeys(value.consumers):
                self.reads[consumer].append(value)

    def leader(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def merge(self, name: str, into: str) -> None:
        group, target = self.leader(name), self.leader(into)
        if group != target:
            self.parent[group] = target
            self.members[target] += self.members.pop(group)

    def supported(self, group: str) -> tuple[str, ...]:
        """The targets every member supports, in the leader's priority order."""
        member_nodes = [self.problem.node(m) for m in self.members[group]]
        return tuple(t for t in member_nodes[0].supported if all(t in n.compute_seconds for n in member_nodes))

    def is_free(self, group: str) -> bool:
        return all(is_free(self.problem.node(m)) for m in self.members[group])

    def incoming(self, group: str) -> list[ProblemValue]:
        """Tensors produced outside the group and read inside it."""
        return [v for m in self.members[group] for v in self.reads[m] if self.leader(v.producer) != group]

    def outgoing(self, group: str) -> list[ProblemValue]:
        """Tensors produced inside the group and read outside it."""
        return [v for m in self.members[group] for v in self.writes[m]
                if any(self.leader(c) != group for c in v.consumers)]

    def _blocks(self, representative: Mapping[str, str]) -> tuple[tuple[tuple[str, ...], ...], ...]:
        """The repeated blocks, keeping only positions whose node in every block stands for itself."""
        families = []
        for family in self.problem.blocks:
            kept = [position for position in range(len(family[0]))
                    if all(representative[block[position]] == block[position] for block in family)]
            families.append(tuple(tuple(block[p] for p in kept) for block in family))
        return tuple(families)

    def reduction(self) -> Reduction:
        representative = {node.name: self.leader(node.name) for node in self.problem.nodes}
        nodes = []
        for node in self.problem.nodes:
            if representative[node.name] != node.name:
                continue
            members = [self.problem.node(m) for m in self.members[node.name]]
            compute = {t: sum(m.compute_seconds[t] for m in members) for t in self.supported(node.name)}
            parameters = tuple(dict.fromkeys(p for m in members for p in m.parameters))
            follows = representative[node.follows] if node.follows is not None else None
            working = max(m.working_bytes for m in members)
            nodes.append(ProblemNode(node.name, node.kind, compute, parameters, follows, working))
        values = []
        for value in self.problem.values:
            producer = representative[value.producer]
            consumers = tuple(dict.fromkeys(representative[c] for c in value.consumers if
                                            representative[c] != producer))
            if consumers:
                values.append(ProblemValue(producer, consumers, value.num_bytes))
        reduced = self.problem.with_graph(nodes, values, blocks=self._blocks(representative),
                                          adjacent=self._sequence(representative))
        return Reduction(reduced, representative)

    def _sequence(self, representative: Mapping[str, str]) -> tuple[tuple[str, str, float], ...]:
        """The problem's pairs of ops run one after the other, between the groups that place them: a pair within
        one group never hops, and pairs between the same two groups hop together (their times added)."""
        pairs: dict[tuple[str, str], float] = {}
        for before, after, times in self.problem.sequence() if self.problem.hop_seconds else ():
            pair = representative[before], representative[after]
            if pair[0] != pair[1]:
                pairs[pair] = pairs.get(pair, 0.0) + times
        return tuple((before, after, times) for (before, after), times in pairs.items())
