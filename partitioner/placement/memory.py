"""The memory model: what each target must hold for a placement, and which targets' memory can bind at all.

A target holds the parameters of every op it runs and, when it runs anything,
an activation arena: room for the largest working set (activation bytes read
and written) of any op it could run, since its ops run one at a time and the
arena is sized before the plan is known. Tensors kept alive across many ops
(a residual stream, a KV cache) are not counted beyond that. Scoring, the
CP-SAT model read memory through these functions (the `priority` baseline counts
residency as it claims ops, with the same arena).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping

from partitioner.placement.problem import PlacementProblem, TargetTerms


def resident_parameters(problem: PlacementProblem, assignment: Mapping[str, str]) -> dict[str, set[str]]:
    """For each target, the parameters that must live in its memory."""
    resident: dict[str, set[str]] = defaultdict(set)
    for node in problem.nodes:
        resident[assignment[node.name]].update(node.parameters)
    return resident


def activation_arena_bytes(problem: PlacementProblem, target: str) -> int:
    """The activation memory `target` reserves when it runs anything: the largest working set among the ops it
    supports that fit in its memory at all (an op that does not fit can never run there)."""
    capacity = problem.target(target).memory_bytes
    return max((node.working_bytes for node in problem.nodes
                if target in node.compute_seconds and node.working_bytes <= capacity), default=0)


def memory_bytes(problem: PlacementProblem, assignment: Mapping[str, str]) -> dict[str, int]:
    """Bytes each target holds under `assignment`: resident parameters plus, where it runs anything, its arena
    (or the working set of a placed op too large for any arena, which then shows as over capacity)."""
    names = problem.target_names
    resident = resident_parameters(problem, assignment)
    arena = {name: activation_arena_bytes(problem, name) for name in names}
    working = dict.fromkeys(names, 0)
    for node in problem.nodes:
        target = assignment[node.name]
        working[target] = max(working[target], arena[target], node.working_bytes)
    return {name: sum(problem.parameter_bytes[p] for p in resident.get(name, ())) + working[name] for name in names}


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
