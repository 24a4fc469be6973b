"""One placement problem for both phases of serving an LLM, priced per request under the serving model.

A request is one prefill and, on average, `output_tokens` decode steps; a
decode step serves `batch` requests at once. So per request a device is busy
for its prefill compute plus output_tokens / batch of its decode-step compute,
and a link carries the same shares of each phase's copies. The joint problem
holds both graphs side by side (nodes named `prefill/...` and `decode/...`)
with those weights, so the bottleneck variable of the serving model weighs the
phases as the stream of requests does:

- weights are shared: a device running both phases' ops of a layer holds its
  weights once; the KV cache of the decode batch and that of a prefill are
  each the state of their own phase (one tensor where the sizes agree);
- the prompt's KV cache is handed from prefill to decode once per request: a
  copy from the device that wrote each layer's cache to the ones that read it.

Co-located serving places each weight once: an op of either phase that uses a
weight runs on the device of the first prefill op using it, so both phases of
a layer share its device. Disaggregated serving (`separate_phases`) gives each
device one phase, so prefill and decode run on separate groups of the fleet,
each with its own copy of the weights, and the KV hand-off crosses between them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from partitioner.placement.baselines import fastest_first_placement
from partitioner.placement.problem import PlacementProblem, ProblemNode, ProblemValue, phase_of
from partitioner.placement.serving import device_kind

PHASES = ("prefill", "decode")


def joint_problem(prefill: PlacementProblem, decode: PlacementProblem, state: frozenset[str], decode_weight: float,
                  handoff_share: float, separate_phases: bool) -> PlacementProblem:
    """Both phases in one problem: `decode_weight` decode steps per request (output tokens over batch), and
    `handoff_share` of each prefill cache tensor in `state` (prompt over context) copied to decode per request."""
    if prefill.target_names != decode.target_names:
        raise ValueError("the two phases were costed on different targets")
    parameter_bytes: dict[str, int] = {}
    nodes: list[ProblemNode] = []
    values: list[ProblemValue] = []
    first_user: dict[str, ProblemNode] = {}  # weight -> the prefill node co-located serving keeps its users with
    for n in prefill.nodes:
        for parameter in n.parameters:
            first_user.setdefault(parameter, prefill.node(n.follows or n.name))
    for phase, problem, weight in (("prefill", prefill, 1.0), ("decode", decode, decode_weight)):
        rename = {p: f"{phase}/{p}" if p in state else p for p in problem.parameter_bytes}
        parameter_bytes.update({rename[p]: size for p, size in problem.parameter_bytes.items()})
        for n in problem.nodes:
            follows = f"{phase}/{n.follows}" if n.follows else None
            if follows is None and phase == "decode" and not separate_phases:
                # Tied only where both run on the same targets, so the pair never narrows either's choices.
                follows = next((f"prefill/{first_user[p].name}" for p in n.parameters if p not in state
                                and p in first_user and first_user[p].supported == n.supported), None)
            nodes.append(ProblemNode(f"{phase}/{n.name}", n.kind,
                                     {t: s * weight for t, s in n.compute_seconds.items()},
                                     tuple(rename[p] for p in n.parameters), follows, n.working_bytes))
        values += [ProblemValue(f"{phase}/{v.producer}", tuple(f"{phase}/{c}" for c in v.consumers),
                                round(v.num_bytes * weight)) for v in problem.values if round(v.num_bytes * weight)]
    values += _cache_handoffs(prefill, decode, state, handoff_share)
    blocks = tuple(tuple(tuple(f"{phase}/{name}" for name in block) for block in family)
                   for phase, problem in (("prefill", prefill), ("decode", decode)) for family in problem.blocks)
    # Each phase runs as its own graph, decode_weight times per request for decode: its hops as often.
    adjacent = tuple((f"{phase}/{before}", f"{phase}/{after}", times * weight)
                     for phase, problem, weight in (("prefill", prefill, 1.0), ("decode", decode, decode_weight))
                     for before, after, times in problem.sequence())
    return prefill.with_graph(nodes, values, parameter_bytes=parameter_bytes, blocks=blocks,
                              separate_phases=separate_phases, adjacent=adjacent)


def phase_assignment(joint_assignment: Mapping[str, str], phase: str) -> dict[str, str]:
    """The placement of one phase's own graph, read off a joint placement."""
    prefix = f"{phase}/"
    return {name.removeprefix(prefix): target for name, target in joint_assignment.items() if name.startswith(prefix)}


def _cache_handoffs(prefill: PlacementProblem, decode: PlacementProblem, state: frozenset[str],
                    share: float) -> list[ProblemValue]:
    """Per cache tensor (the same input name in both phases), a copy of the prompt's part of it from the prefill
    node that writes it last to every decode node that uses it."""
    writer: dict[str, str] = {}
    for node in prefill.nodes:
        for parameter in node.parameters:
            writer[parameter] = f"prefill/{node.name}"
    readers: dict[str, list[str]] = {}
    for node in decode.nodes:
        for parameter in node.parameters:
            readers.setdefault(parameter, []).append(f"decode/{node.name}")
    return [ProblemValue(writer[name], tuple(readers[name]), round(prefill.parameter_bytes[name] * share))
            for name in sorted(state) if name in writer and name in readers
            and round(prefill.parameter_bytes[name] * share) > 0]


def phase_split_placements(joint: PlacementProblem) -> dict[str, dict[str, str]]:
    """Placements of a disaggregated problem that give each phase devices of its own, to seed its search (no
    baseline of one request keeps the phases apart): the fleet split by device kind (one kind for a phase, the
    rest for the other) or, with one kind, in halves, each side filled fastest device first. A split where a
    phase has an op none of its devices runs is left out; memory is checked by whoever scores them."""
    names = joint.target_names
    kinds = list(dict.fromkeys(device_kind(name) for name in names))
    sides = ([[n for n in names if device_kind(n) == kind] for kind in kinds] if len(kinds) > 1
             else [list(names[:len(names) // 2])])
    placements = {}
    for side in (side for side in sides if 0 < len(side) < len(names)):
        rest = [name for name in names if name not in side]
        for prefill_devices, decode_devices in ((side, rest), (rest, side)):
            prefill = _phase_on(joint, "prefill", prefill_devices)
            decode = _phase_on(joint, "decode", decode_devices)
            if prefill is not None and decode is not None:
                label = f"prefill on {describe_devices(prefill_devices)}, decode on {describe_devices(decode_devices)}"
                placements[label] = {**fastest_first_placement(prefill), **fastest_first_placement(decode)}
    return placements


def _phase_on(joint: PlacementProblem, phase: str, devices: list[str]) -> PlacementProblem | None:
    """One phase of `joint` alone, its ops restricted to `devices` (None where one of them runs on none)."""
    nodes = []
    for node in joint.nodes:
        if phase_of(node.name) == phase:
            compute = {target: seconds for target, seconds in node.compute_seconds.items() if target in devices}
            if not compute:
                return None
            nodes.append(replace(node, compute_seconds=compute))
    values = [ProblemValue(v.producer, consumers, v.num_bytes) for v in joint.values if phase_of(v.producer) == phase
              if (consumers := tuple(c for c in v.consumers if phase_of(c) == phase))]
    return joint.with_graph(nodes, values, blocks=(), separate_phases=False)


def describe_devices(devices: list[str]) -> str:
    """`4 x trn2`, `cuda-h100` or `2 x trn2 + cuda-h100`: how many devices of each kind."""
    counts: dict[str, int] = {}
    for device in devices:
        counts[device_kind(device)] = counts.get(device_kind(device), 0) + 1
    return " + ".join(kind if count == 1 else f"{count} x {kind}" for kind, count in counts.items())
