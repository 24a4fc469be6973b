"""Tensor-parallel places: a group of identical devices that runs each layer split across its members, offered to
the planner as one more place beside the devices themselves.

For each group of identical devices (one spec in one host) and each degree the model allows (a power of two
that divides its attention heads, its KV heads and its MLP width) up to the group's size, the fleet's target set
gains `count // degree` places named `cuda-h100.tp8.0`, each occupying `degree` of the group's devices: its price
and memory are theirs together, its costs are one member's on its share of the work plus the collectives
(cost_models/tensor_parallel.py), its links to other places are a member's. A plan may use a tensor-parallel
place or the devices it occupies, never both (the rentals of partitioner/llm/rentals.py choose per group one
degree), so the whole fleet's baselines are scored on the devices alone.
"""

from __future__ import annotations

from dataclasses import replace

from targets.spec import TargetSet, TensorParallel, Topology


def with_tensor_parallel_places(targets: TargetSet, degrees: tuple[int, ...], replicated_bytes: int = 0
                                ) -> TargetSet:
    """`targets` and, after them, the tensor-parallel places of each of `degrees` (above 1) that its groups of
    identical devices can form. `replicated_bytes` are the model's weights every member holds whole (those its
    tensor-parallel plan does not split): a place's memory is its members' less the extra copies of them."""
    if not degrees or targets.topology is None:
        return targets
    groups = _groups(targets)
    places, host_of, spec_of = [], dict(targets.topology.host_of), dict(targets.topology.spec_of)
    numbered: dict[tuple[str, int], int] = {}
    for members in groups.values():
        member = targets[members[0]]
        link = targets.link(members[0], members[1]) if len(members) > 1 else None
        for degree in sorted(d for d in degrees if 1 < d <= len(members)):
            memory = member.memory_bytes * degree - replicated_bytes * (degree - 1)
            for index in range(len(members) // degree if memory > 0 else 0):
                occupied = tuple(members[index * degree:(index + 1) * degree])
                number = numbered.get((spec_of[members[0]], degree), 0)
                numbered[spec_of[members[0]], degree] = number + 1
                name = f"{spec_of[members[0]]}.tp{degree}.{number}"
                places.append(replace(member, name=name, price_per_hour=member.price_per_hour * degree,
                                      memory_bytes=memory,
                                      tensor_parallel=TensorParallel(degree, occupied, member, link)))
                host_of[name], spec_of[name] = host_of[members[0]], spec_of[members[0]]
    if not places:
        return targets
    topology = Topology(host_of, spec_of, targets.topology.network, targets.topology.host_bandwidth)
    return TargetSet((*targets.targets, *places), targets.fallback, topology)


def devices_alone(targets: TargetSet) -> tuple[str, ...]:
    """The places of `targets` that are single devices (no tensor-parallel groups)."""
    return tuple(t.name for t in targets if t.tensor_parallel is None)


def can_split(targets: TargetSet) -> bool:
    """Whether `targets` has a group of two or more identical devices that could split a layer among them."""
    return targets.topology is not None and any(len(members) > 1 for members in _groups(targets).values())


def _groups(targets: TargetSet) -> dict[str, list[str]]:
    """The devices of each group of identical devices (one spec in one host), host CPUs left out: their cores
    already run an op together."""
    groups: dict[str, list[str]] = {}
    for target in targets:
        if not target.is_host and target.tensor_parallel is None:
            groups.setdefault(targets.group_of(target.name), []).append(target.name)
    return groups
