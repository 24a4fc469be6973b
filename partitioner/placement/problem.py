"""The placement problem as data: what every strategy chooses on, with no torch objects inside.

`build_problem` turns an op graph, its tagging and a cost model into plain
numbers: compute seconds per (node, supporting target), tensors with their
consumers and bytes, links between targets, prices and memory capacities. The
solver, the baselines and anyone re-reading a plan file score placements on
this same data (partitioner/placement/scoring.py), so their figures are
comparable by construction.

Model inputs and outputs are delivered and collected by the serving system and
are not costed; parameters must be resident on every target that uses them
(partitioner/placement/memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from cost_models.base import CostModel, node_seconds
from partitioner.errors import PartitionerError
from partitioner.fields import FieldError, entries, flag, listed, number, records, text, text_lists, texts, whole
from partitioner.frontend.op_graph import NodeKind, OpGraph
from partitioner.frontend.written_memory import memory_read_after_writes
from partitioner.placement.blocks import repeated_blocks
from partitioner.placement.tagging import Tagging
from targets.spec import Link, TargetSet


# The serving engine's own time per hop when none is given (partitioner/placement/hops.py): an in-process
# pipeline handing a tensor to the next stage (a Python call and a stream wait); a distributed engine pays far more
# (the Ray engine: about 0.5 ms a hop on a 2-core machine, measured by `benchmarks/engine_hop.py`).
DEFAULT_ENGINE_HOP_SECONDS = 10e-6


@dataclass(frozen=True, slots=True)
class TargetTerms:
    """What the problem needs of a target: its price and its memory capacity; for a tensor-parallel place, the
    devices it occupies (a plan uses it or them, never both)."""

    name: str
    price_per_hour: float
    memory_bytes: int
    occupies: tuple[str, ...] = ()

    @property
    def price_per_second(self) -> float:
        return self.price_per_hour / 3600.0


@dataclass(frozen=True, slots=True)
class ProblemNode:
    """A node to place: its compute time on each target that supports it (priority order).

    A node that `follows` another must sit on the same target (e.g. `getitem`
    of a multi-output op); `parameters` are the weights it needs resident;
    `working_bytes` are the activation bytes it reads and writes.
    """

    name: str
    kind: NodeKind
    compute_seconds: Mapping[str, float]
    parameters: tuple[str, ...] = ()
    follows: str | None = None
    working_bytes: int = 0

    @property
    def supported(self) -> tuple[str, ...]:
        return tuple(self.compute_seconds)


@dataclass(frozen=True, slots=True)
class ProblemValue:
    """A tensor produced by one node and read by others; it crosses to each other device once."""

    producer: str
    consumers: tuple[str, ...]
    num_bytes: int


@dataclass(frozen=True, slots=True)
class PlacementProblem:
    """Everything needed to choose and score a placement, with no torch objects inside.

    `blocks` are families of repeated blocks (see partitioner.placement.blocks): a hint
    of structure for the solver's search, never a constraint on the plan.
    `routes` names the link resources (a device's host link one way, a peer link,
    the network) a copy between two targets occupies, and `resource_bandwidth`
    their bandwidths, for the serving model (partitioner/placement/serving.py);
    a problem without them (a plan from before fleets) has one resource per
    ordered pair of targets, at its link's bandwidth.
    """

    targets: tuple[TargetTerms, ...]
    fallback: str
    nodes: tuple[ProblemNode, ...]
    values: tuple[ProblemValue, ...]
    parameter_bytes: Mapping[str, int]
    links: Mapping[tuple[str, str], Link]
    blocks: tuple[tuple[tuple[str, ...], ...], ...] = ()
    routes: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    resource_bandwidth: Mapping[str, float] = field(default_factory=dict)
    # Nodes are named "<phase>/<name>" (an LLM's prefill and decode), and a device may serve one phase only: a
    # disaggregated deployment (partitioner/llm/joint.py).
    separate_phases: bool = False
    # Each place's group of identical devices (TargetSet.group_of: one spec in one host), where a fleet has them:
    # places of a group have the same costs, price, memory and links, so a plan may swap them. A place absent
    # is a group of its own.
    device_groups: Mapping[str, str] = field(default_factory=dict)
    # Per place, the fixed seconds a partition boundary into it costs (partitioner/placement/hops.py); none: hops
    # are free (a plan from before hops were priced).
    hop_seconds: Mapping[str, float] = field(default_factory=dict)
    # The pairs of nodes that run one after the other, with how many times per request (see `sequence`); None:
    # the nodes in their order, once each.
    adjacent: tuple[tuple[str, str, float], ...] | None = None
    _node_index: dict[str, ProblemNode] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._node_index.update({node.name: node for node in self.nodes})

    def with_graph(self, nodes: Iterable[ProblemNode], values: Iterable[ProblemValue], **changes: Any
                   ) -> PlacementProblem:
        """The same targets, links and devices over other nodes and values (and any field in `changes`): what
        the passes that reshape a problem build (the reduction, a phase on its own, both phases joined)."""
        return replace(self, nodes=tuple(nodes), values=tuple(values), _node_index={}, **{"adjacent": None, **changes})

    def on_devices(self, devices: Iterable[str]) -> PlacementProblem | None:
        """The same problem on part of the fleet (the devices one would rent): every op placed among `devices`
        alone (None where one of them runs on none). The fallback stays where it is kept, else the kept device
        with the most memory takes its place."""
        kept = set(devices)
        nodes = []
        for node in self.nodes:
            compute = {target: seconds for target, seconds in node.compute_seconds.items() if target in kept}
            if not compute:
                return None
            nodes.append(replace(node, compute_seconds=compute))
        targets = tuple(t for t in self.targets if t.name in kept)
        fallback = self.fallback if self.fallback in kept else max(targets, key=lambda t: t.memory_bytes).name
        return replace(self, targets=targets, fallback=fallback, nodes=tuple(nodes), _node_index={},
                       links={pair: link for pair, link in self.links.items() if kept.issuperset(pair)},
                       routes={pair: route for pair, route in self.routes.items() if kept.issuperset(pair)},
                       device_groups={place: group for place, group in self.device_groups.items() if place in kept},
                       hop_seconds={place: seconds for place, seconds in self.hop_seconds.items() if place in kept})

    def sequence(self) -> tuple[tuple[str, str, float], ...]:
        """The pairs of nodes that run one after the other, each with how many times per request it does: where
        they sit on different devices, the plan hops (partitioner/placement/hops.py)."""
        if self.adjacent is not None:
            return self.adjacent
        return tuple((a.name, b.name, 1.0) for a, b in zip(self.nodes, self.nodes[1:]))

    def group(self, place: str) -> str:
        """The group of identical devices `place` belongs to (see `device_groups`)."""
        return self.device_groups.get(place, place)

    def distinct_moves(self) -> list[tuple[str, str]]:
        """One (source, destination) pair of places for each ordered pair of device groups: every move between
        two groups costs what that pair's does, so a bound over moves need look at these alone."""
        return list({(self.group(s), self.group(d)): (s, d) for s, d in self.links}.values())

    def node(self, name: str) -> ProblemNode:
        return self._node_index[name]

    def home(self, name: str) -> str:
        """Where a node goes when nothing better is chosen: the fallback, unless a pin keeps it elsewhere."""
        node = self._node_index[name]
        return self.fallback if self.fallback in node.compute_seconds else node.supported[0]

    def target(self, name: str) -> TargetTerms:
        return next(t for t in self.targets if t.name == name)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    def transfer_seconds(self, num_bytes: int, source: str, destination: str) -> float:
        return self.links[(source, destination)].seconds(num_bytes)

    def route(self, source: str, destination: str) -> tuple[str, ...]:
        """The link resources a copy from `source` to `destination` occupies."""
        return self.routes.get((source, destination)) or (f"{source}->{destination}",)

    def bandwidth(self, resource: str) -> float:
        """Bytes per second through a link resource."""
        if resource in self.resource_bandwidth:
            return self.resource_bandwidth[resource]
        source, destination = resource.split("->")
        return self.links[(source, destination)].bandwidth_bytes_per_second

    def phase_conflicts(self, assignment: Mapping[str, str]) -> tuple[str, ...]:
        """Devices `assignment` gives to more than one phase, where phases must be kept apart (else none)."""
        if not self.separate_phases:
            return ()
        phases: dict[str, set[str]] = {}
        for node in self.nodes:
            phases.setdefault(assignment[node.name], set()).add(phase_of(node.name))
        return tuple(target for target in self.target_names if len(phases.get(target, ())) > 1)

    def to_dict(self) -> dict:
        return {
            "targets": [
                {"name": t.name, "price_per_hour": t.price_per_hour, "memory_bytes": t.memory_bytes,
                 **({"occupies": list(t.occupies)} if t.occupies else {})}
                for t in self.targets
            ],
            "fallback": self.fallback,
            "nodes": [
                {"name": n.name, "kind": n.kind.value, "compute_seconds": dict(n.compute_seconds),
                 "parameters": list(n.parameters), "follows": n.follows, "working_bytes": n.working_bytes}
                for n in self.nodes
            ],
            "values": [
                {"producer": v.producer, "consumers": list(v.consumers), "bytes": v.num_bytes} for v in self.values
            ],
            "parameter_bytes": dict(self.parameter_bytes),
            "links": [
                {"source": s, "destination": d, **link.to_dict()} for (s, d), link in self.links.items()
            ],
            "blocks": [[list(block) for block in family] for family in self.blocks],
            **({"routes": [{"source": s, "destination": d, "resources": list(r)} for (s, d), r in self.routes.items()],
                "resource_bandwidth": dict(self.resource_bandwidth)} if self.routes else {}),
            **({"separate_phases": True} if self.separate_phases else {}),
            **({"device_groups": dict(self.device_groups)} if self.device_groups else {}),
            **({"hop_seconds": dict(self.hop_seconds)} if self.hop_seconds else {}),
            **({"adjacent": [list(pair) for pair in self.adjacent]} if self.adjacent is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PlacementProblem:
        """The problem a plan file holds, each field checked for its type and range (partitioner/fields.py);
        whether its names agree is the plan's check (partitioner/plan_checks.py)."""
        return cls(
            targets=records(data, "targets", lambda t: TargetTerms(text(t, "name"), number(t, "price_per_hour"),
                                                                   whole(t, "memory_bytes", minimum=1),
                                                                   texts(t, "occupies", ()))),
            fallback=text(data, "fallback"),
            nodes=records(data, "nodes", lambda n: ProblemNode(
                text(n, "name"), NodeKind(text(n, "kind", choices=[kind.value for kind in NodeKind])),
                entries(n, "compute_seconds", number), texts(n, "parameters"), text(n, "follows", None),
                whole(n, "working_bytes", 0))),
            values=records(data, "values", lambda v: ProblemValue(text(v, "producer"), texts(v, "consumers"),
                                                                  whole(v, "bytes"))),
            parameter_bytes=entries(data, "parameter_bytes", whole),
            links=dict(records(data, "links", lambda item: (_pair(item), Link.from_dict(item)))),
            blocks=listed(data, "blocks", lambda family: text_lists(family, 2), ()),
            routes=dict(records(data, "routes", lambda item: (_pair(item), texts(item, "resources")), ())),
            resource_bandwidth=entries(data, "resource_bandwidth", number, {}, minimum=0.0, above=True),
            separate_phases=flag(data, "separate_phases", False),
            device_groups=entries(data, "device_groups", text, {}),
            hop_seconds=entries(data, "hop_seconds", number, {}),
            adjacent=listed(data, "adjacent", _adjacent_pair) if data.get("adjacent") is not None else None,
        )


def _adjacent_pair(item: object) -> tuple[str, str, float]:
    if not (isinstance(item, list) and len(item) == 3 and all(isinstance(name, str) for name in item[:2])
            and isinstance(item[2], (int, float)) and not isinstance(item[2], bool) and item[2] >= 0):
        raise FieldError("", f"{item!r} is not [before, after, times per request]")
    return item[0], item[1], float(item[2])


def _pair(item: Mapping) -> tuple[str, str]:
    return text(item, "source"), text(item, "destination")


def phase_of(node_name: str) -> str:
    """The phase a node of a joint problem belongs to: `decode/linear_3` -> `decode` ("" outside one)."""
    return node_name.partition("/")[0] if "/" in node_name else ""


def build_problem(graph: OpGraph, tagging: Tagging, targets: TargetSet, cost_model: CostModel,
                  engine_hop_seconds: float = DEFAULT_ENGINE_HOP_SECONDS) -> PlacementProblem:
    """Cost every (node, supporting target) pair, every link of the target set, and a hop into each target: its
    stage launch plus the serving engine's `engine_hop_seconds` (partitioner/placement/hops.py)."""
    target_by_name = {t.name: t for t in targets}
    leaders, supported = _colocated_groups(graph, tagging)
    nodes = []
    for node in graph:
        leader = leaders[node.name]
        compute = {name: node_seconds(cost_model, node, target_by_name[name]) for name in supported[leader]}
        working = node.activation_bytes if node.kind is NodeKind.COMPUTE else 0
        nodes.append(ProblemNode(node.name, node.kind, compute, node.parameters,
                                 leader if leader != node.name else None, working))
    users = graph.users()
    values = tuple(
        ProblemValue(node.name, tuple(users[node.name]), node.output_bytes)
        for node in graph
        if users[node.name] and node.output_bytes > 0
    )
    links = {
        (source, destination): cost_model.link(targets, source, destination)
        for source in targets.names
        for destination in targets.names
        if source != destination
    }
    terms = tuple(TargetTerms(t.name, t.price_per_hour, t.memory_bytes,
                              t.tensor_parallel.members if t.tensor_parallel else ()) for t in targets)
    routes = {pair: targets.route(*pair) for pair in links}
    groups = {name: targets.group_of(name) for name in targets.names} if targets.topology else {}
    hop_seconds = {t.name: t.stage_launch_seconds + engine_hop_seconds for t in targets}
    return PlacementProblem(terms, targets.fallback, tuple(nodes), values, dict(graph.parameter_bytes), links,
                            repeated_blocks(graph), routes, targets.resources(), device_groups=groups,
                            hop_seconds=hop_seconds)


def _colocated_groups(graph: OpGraph, tagging: Tagging) -> tuple[dict[str, str], dict[str, tuple]]:
    """Nodes that must share a target, each mapped to its group's first node, and each group's targets.

    A `getitem` sits with the op whose outputs it picks; an in-place op sits
    with the value it writes, so every later reader sees the write, and so does
    a view it writes through where later nodes read that memory (see
    written_memory.py); every user of state the model writes in place (a buffer
    it updates) sits with the others, since each device would hold its own copy.
    A group may use only the targets every member supports (the fallback
    supports all).
    """
    written_views = {view: memory.owner for memory in memory_read_after_writes(graph) for view in memory.views}
    position = {node.name: index for index, node in enumerate(graph)}
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    first_user: dict[str, str] = {}
    for node in graph:
        parent[node.name] = node.name
        anchors = [node.inputs[0] if node.kind is NodeKind.BOOKKEEPING and node.inputs else node.writes,
                   written_views.get(node.name)]
        anchors += [first_user.setdefault(p, node.name) for p in node.parameters if p in graph.written_state]
        for anchor in (a for a in anchors if a is not None):
            roots = sorted((find(anchor), find(node.name)), key=position.__getitem__)
            parent[roots[1]] = roots[0]  # a group is named by its first node
    leaders = {node.name: find(node.name) for node in graph}
    supported: dict[str, tuple[str, ...]] = {}
    for node in graph:
        leader, own = leaders[node.name], tagging.supported[node.name]  # an assert on a model input runs anywhere
        group = supported.get(leader, own)
        supported[leader] = tuple(t for t in group if t in own)
        if not supported[leader]:  # only pins narrow the fallback away (see partitioner/placement/pins.py)
            raise PartitionerError(f"{node.name} ({node.op}) must run where {leader} does, and no target runs both "
                                   f"({leader}'s group: {', '.join(group)}; {node.name}: {', '.join(own)}). Fix: pin "
                                   "them alike (a pattern covering both).")
    return leaders, supported


def check_assignment(problem: PlacementProblem, assignment: Mapping[str, str]) -> None:
    """Postcondition of every placement strategy: a bug, not a user error, if it fails."""
    for node in problem.nodes:
        target = assignment.get(node.name)
        assert target in node.compute_seconds, f"{node.name} placed on {target}, which does not support it"
        if node.follows is not None:
            assert target == assignment[node.follows], f"{node.name} must sit with {node.follows}"
