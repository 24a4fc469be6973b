"""Scoring: what a placement costs, the one function every strategy and every report shares.

`score` gives a placement's sequential latency, money per request, makespan,
busy time and memory per target, its transfers, and its figures under the
serving model (throughput, bottleneck, money per request at full load), from
the problem's data alone; objectives read their figure from the `Score` it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from partitioner.placement.hops import hops
from partitioner.placement.memory import memory_bytes
from partitioner.placement.problem import PlacementProblem
from partitioner.placement.schedule import makespan_seconds
from partitioner.placement.serving import ServingFigures, serving_figures


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

    A device is busy while it computes, while it sends or receives a transfer,
    and while it starts a stage at a hop; money per request is each device's
    busy seconds times its price.
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
    serving: ServingFigures  # the same placement under a stream of requests (partitioner/placement/serving.py)
    hop_count: float = 0.0  # device changes per request (partitioner/placement/hops.py)
    hop_seconds: float = 0.0  # what they cost per request, in the latency and on the devices entered
    phase_conflicts: tuple[str, ...] = ()  # devices serving two phases where they must not (problem.separate_phases)

    @property
    def fits_memory(self) -> bool:
        return not self.over_capacity_bytes

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
            "serving": self.serving.to_dict(),
            "hop_count": self.hop_count,
            "hop_seconds": self.hop_seconds,
            **({"phase_conflicts": list(self.phase_conflicts)} if self.phase_conflicts else {}),
        }


def transfers(problem: PlacementProblem, assignment: Mapping[str, str]) -> Iterator[Transfer]:
    """Every tensor move a placement implies: once per (tensor, destination device)."""
    for value in problem.values:
        source = assignment[value.producer]
        for destination in dict.fromkeys(assignment[c] for c in value.consumers):
            if destination != source:
                seconds = problem.transfer_seconds(value.num_bytes, source, destination)
                yield Transfer(value.producer, source, destination, value.num_bytes, seconds)


def score(problem: PlacementProblem, assignment: Mapping[str, str], order: Sequence[str] | None = None) -> Score:
    """Latency, money, makespan and memory of `assignment` (node name -> target name).

    `order` is the order the nodes run in for the makespan (default: the problem's).
    """
    names = problem.target_names
    compute = dict.fromkeys(names, 0.0)
    for node in problem.nodes:
        compute[assignment[node.name]] += node.compute_seconds[assignment[node.name]]
    stage_starts = dict.fromkeys(names, 0.0)  # hop seconds per device entered
    made = list(hops(problem, assignment))
    for hop in made:
        stage_starts[hop.destination] += hop.seconds
    working = {name: compute[name] + stage_starts[name] for name in names}
    busy = dict(working)
    moves = list(transfers(problem, assignment))
    for move in moves:
        busy[move.source] += move.seconds
        busy[move.destination] += move.seconds
    memory = memory_bytes(problem, assignment)
    over = {t.name: memory[t.name] - t.memory_bytes for t in problem.targets if memory[t.name] > t.memory_bytes}
    transfer_seconds = sum(move.seconds for move in moves)
    hop_seconds = sum(stage_starts.values())
    return Score(
        latency_seconds=sum(compute.values()) + transfer_seconds + hop_seconds,
        cost_per_request=sum(busy[t.name] * t.price_per_second for t in problem.targets),
        makespan_seconds=makespan_seconds(problem, assignment, order),
        compute_seconds=compute,
        busy_seconds=busy,
        memory_bytes=memory,
        over_capacity_bytes=over,
        transfer_count=len(moves),
        transfer_bytes=sum(move.num_bytes for move in moves),
        transfer_seconds=transfer_seconds,
        serving=serving_figures(problem, assignment, working,
                                ((move.source, move.destination, move.num_bytes) for move in moves)),
        hop_count=sum(hop.times for hop in made),
        hop_seconds=hop_seconds,
        phase_conflicts=problem.phase_conflicts(assignment),
    )
