"""The placement problem as data, and the one scoring function every strategy shares.

`build_problem` turns an op graph, its tagging and a cost model into plain
numbers: compute seconds per (node, supporting target), tensors with their
consumers and bytes, links between targets, prices and memory capacities. The
solver, the baselines and anyone re-reading a plan file score placements with
`score` on this same data, so their figures are comparable by construction.

Model inputs and outputs are delivered and collected by the serving system and
are not costed; parameters must be resident on every target that uses them.
Memory per target is its resident parameters plus an activation arena, when
it runs anything: room for the largest working set (activation bytes read and
written) of any op the target could run, since its ops run one at a time and
the arena is sized before the plan is known. Tensors kept alive across many
ops (a residual stream, a KV cache) are not counted beyond that.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from cost_models.base import CostModel
from partitioner.blocks import repeated_blocks
from partitioner.errors import PartitionerError
from partitioner.graph import NodeKind, OpGraph
from partitioner.schedule import makespan_seconds
from partitioner.tagging import Tagging
from targets.spec import Link, TargetSet

# latency: every op and transfer one after another; cost: money per request;
# makespan: devices run concurrently (see partitioner.schedule).
OBJECTIVES = ("latency", "cost", "makespan")


def check_objective(objective: str) -> None:
    """Reject an objective no strategy optimises, before any work is done."""
    if objective not in OBJECTIVES:
        raise PartitionerError(f"unknown objective {objective!r}. Fix: use one of {', '.join(OBJECTIVES)}.")


@dataclass(frozen=True, slots=True)
class TargetTerms:
    """What the problem needs of a target: its price and its memory capacity."""

    name: str
    price_per_hour: float
    memory_bytes: int

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

    `blocks` are families of repeated blocks (see partitioner.blocks): a hint
    of structure for the solver's search, never a constraint on the plan.
    """

    targets: tuple[TargetTerms, ...]
    fallback: str
    nodes: tuple[ProblemNode, ...]
    values: tuple[ProblemValue, ...]
    parameter_bytes: Mapping[str, int]
    links: Mapping[tuple[str, str], Link]
    blocks: tuple[tuple[tuple[str, ...], ...], ...] = ()
    _node_index: dict[str, ProblemNode] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._node_index.update({node.name: node for node in self.nodes})

    def node(self, name: str) -> ProblemNode:
        return self._node_index[name]

    def target(self, name: str) -> TargetTerms:
        return next(t for t in self.targets if t.name == name)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    def transfer_seconds(self, num_bytes: int, source: str, destination: str) -> float:
        return self.links[(source, destination)].seconds(num_bytes)

    def objective_rate(self, objective: str, *busy_targets: str) -> float:
        """What one second of work that keeps `busy_targets` busy adds to `objective`.

        For latency a second is a second; for cost it is the targets' price per second.
        """
        if objective != "cost":
            return 1.0
        return sum(self.target(name).price_per_second for name in busy_targets)

    def to_dict(self) -> dict:
        return {
            "targets": [
                {"name": t.name, "price_per_hour": t.price_per_hour, "memory_bytes": t.memory_bytes}
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
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PlacementProblem:
        return cls(
            targets=tuple(TargetTerms(t["name"], t["price_per_hour"], t["memory_bytes"]) for t in data["targets"]),
            fallback=data["fallback"],
            nodes=tuple(
                ProblemNode(n["name"], NodeKind(n["kind"]), dict(n["compute_seconds"]), tuple(n["parameters"]),
                            n["follows"], n.get("working_bytes", 0))
                for n in data["nodes"]
            ),
            values=tuple(ProblemValue(v["producer"], tuple(v["consumers"]), v["bytes"]) for v in data["values"]),
            parameter_bytes=dict(data["parameter_bytes"]),
            links={(item["source"], item["destination"]): Link.from_dict(item) for item in data["links"]},
            blocks=tuple(tuple(tuple(block) for block in family) for family in data.get("blocks", ())),
        )


@dataclass(frozen=True, slots=True)
class Transfer:
    """One tensor crossing from the device of its producer to another device."""

    producer: str
    source: str
    destination: str
    num_bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Score:
    """What a placement costs: sequential latency, money per request, makespan and their parts.

    A device is busy while it computes and while it sends or receives a
    transfer; money per request is each device's busy seconds times its price.
    The makespan is the latency when devices run concurrently.
    """

    latency_seconds: float
    cost_per_request: float
    makespan_seconds: float
    compute_seconds: Mapping[str, float]
    busy_seconds: Mapping[str, float]
    memory_bytes: Mapping[str, int]
    over_capacity_bytes: Mapping[str, int]
    transfer_count: int
    transfer_bytes: int
    transfer_seconds: float

    @property
    def fits_memory(self) -> bool:
        return not self.over_capacity_bytes

    def objective(self, name: str) -> float:
        return {"latency": self.latency_seconds, "cost": self.cost_per_request,
                "makespan": self.makespan_seconds}[name]

    def to_dict(self) -> dict:
        return {
            "latency_seconds": self.latency_seconds,
            "cost_per_request": self.cost_per_request,
            "makespan_seconds": self.makespan_seconds,
            "compute_seconds": dict(self.compute_seconds),
            "busy_seconds": dict(self.busy_seconds),
            "memory_bytes": dict(self.memory_bytes),
            "over_capacity_bytes": dict(self.over_capacity_bytes),
            "transfer_count": self.transfer_count,
            "transfer_bytes": self.transfer_bytes,
            "transfer_seconds": self.transfer_seconds,
        }


def build_problem(graph: OpGraph, tagging: Tagging, targets: TargetSet, cost_model: CostModel) -> PlacementProblem:
    """Cost every (node, supporting target) pair and every link of the target set."""
    target_by_name = {t.name: t for t in targets}
    leaders, supported = _colocated_groups(graph, tagging, targets.fallback)
    nodes = []
    for node in graph:
        leader = leaders[node.name]
        compute = {name: cost_model.compute_seconds(node, target_by_name[name]) for name in supported[leader]}
        working = node.bytes_read + node.bytes_written - node.parameter_bytes if node.kind is NodeKind.COMPUTE else 0
        nodes.append(ProblemNode(node.name, node.kind, compute, node.parameters,
                                 leader if leader != node.name else None, max(0, working)))
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
    terms = tuple(TargetTerms(t.name, t.price_per_hour, t.memory_bytes) for t in targets)
    return PlacementProblem(terms, targets.fallback, tuple(nodes), values, dict(graph.parameter_bytes), links,
                            repeated_blocks(graph))


def _colocated_groups(graph: OpGraph, tagging: Tagging, fallback: str) -> tuple[dict[str, str], dict[str, tuple]]:
    """Nodes that must share a target, each mapped to its group's first node, and each group's targets.

    A `getitem` sits with the op whose outputs it picks; an in-place op sits
    with the value it writes, so every later reader sees the write. A group
    may use only the targets every member supports (the fallback supports all).
    """
    leaders: dict[str, str] = {}
    supported: dict[str, tuple[str, ...]] = {}
    for node in graph:
        anchor = node.inputs[0] if node.kind is NodeKind.BOOKKEEPING and node.inputs else node.writes
        leader = leaders[anchor] if anchor is not None else node.name
        leaders[node.name] = leader
        own = tagging.supported[node.name]
        if node.kind is NodeKind.BOOKKEEPING and anchor is None:
            own = (fallback,)  # e.g. an assert on a model input: free, so keep it out of the way
        supported[leader] = tuple(t for t in supported.get(leader, own) if t in own)
    return leaders, supported


def transfers(problem: PlacementProblem, assignment: Mapping[str, str]) -> Iterator[Transfer]:
    """Every tensor move a placement implies: once per (tensor, destination device)."""
    for value in problem.values:
        source = assignment[value.producer]
        for destination in dict.fromkeys(assignment[c] for c in value.consumers):
            if destination != source:
                seconds = problem.transfer_seconds(value.num_bytes, source, destination)
                yield Transfer(value.producer, source, destination, value.num_bytes, seconds)


def resident_parameters(problem: PlacementProblem, assignment: Mapping[str, str]) -> dict[str, set[str]]:
    """For each target, the parameters that must live in its memory."""
    resident: dict[str, set[str]] = defaultdict(set)
    for node in problem.nodes:
        resident[assignment[node.name]].update(node.parameters)
    return resident


def score(problem: PlacementProblem, assignment: Mapping[str, str], order: Sequence[str] | None = None) -> Score:
    """Latency, money, makespan and memory of `assignment` (node name -> target name).

    `order` is the order the nodes run in for the makespan (default: the problem's).
    """
    names = problem.target_names
    compute = dict.fromkeys(names, 0.0)
    for node in problem.nodes:
        compute[assignment[node.name]] += node.compute_seconds[assignment[node.name]]
    busy = dict(compute)
    moves = list(transfers(problem, assignment))
    for move in moves:
        busy[move.source] += move.seconds
        busy[move.destination] += move.seconds
    resident = resident_parameters(problem, assignment)
    arena = {name: activation_arena_bytes(problem, name) for name in names}
    working = dict.fromkeys(names, 0)
    for node in problem.nodes:
        target = assignment[node.name]
        working[target] = max(working[target], arena[target], node.working_bytes)
    memory = {name: sum(problem.parameter_bytes[p] for p in resident.get(name, ())) + working[name] for name in names}
    over = {t.name: memory[t.name] - t.memory_bytes for t in problem.targets if memory[t.name] > t.memory_bytes}
    transfer_seconds = sum(move.seconds for move in moves)
    return Score(
        latency_seconds=sum(compute.values()) + transfer_seconds,
        cost_per_request=sum(busy[t.name] * t.price_per_second for t in problem.targets),
        makespan_seconds=makespan_seconds(problem, assignment, order),
        compute_seconds=compute,
        busy_seconds=busy,
        memory_bytes=memory,
        over_capacity_bytes=over,
        transfer_count=len(moves),
        transfer_bytes=sum(move.num_bytes for move in moves),
        transfer_seconds=transfer_seconds,
    )


def activation_arena_bytes(problem: PlacementProblem, target: str) -> int:
    """The activation memory `target` reserves when it runs anything: the largest working set among the ops it
    supports that fit in its memory at all (an op that does not fit can never run there)."""
    capacity = problem.target(target).memory_bytes
    return max((node.working_bytes for node in problem.nodes
                if target in node.compute_seconds and node.working_bytes <= capacity), default=0)


def targets_whose_memory_can_bind(problem: PlacementProblem) -> list[TargetTerms]:
    """Targets that could not hold every parameter of every node they support plus their activation arena,
    or that support an op whose working set alone does not fit."""
    binding = []
    for target in problem.targets:
        supported = [node for node in problem.nodes if target.name in node.compute_seconds]
        parameters = {p for node in supported for p in node.parameters}
        needed = sum(problem.parameter_bytes[p] for p in parameters) + max(
            (node.working_bytes for node in supported), default=0)
        if needed > target.memory_bytes:
            binding.append(target)
    return binding


def check_assignment(problem: PlacementProblem, assignment: Mapping[str, str]) -> None:
    """Postcondition of every placement strategy: a bug, not a user error, if it fails."""
    for node in problem.nodes:
        target = assignment.get(node.name)
        assert target in node.compute_seconds, f"{node.name} placed on {target}, which does not support it"
        if node.follows is not None:
            assert target == assignment[node.follows], f"{node.name} must sit with {node.follows}"
