"""Why no placement exists: the binding limit (memory or latency), named with the figures to fix it.

Called by the solver when CP-SAT proves the problem infeasible, so that the
user reads which target is how many GiB short, or how far the latency limit
is from the fastest plan, instead of a bare status.
"""

from __future__ import annotations

from typing import Mapping

from partitioner.placement.problem import PlacementProblem, phase_of
from partitioner.placement.scoring import Score
from partitioner.units import format_bytes


def explain_infeasible(problem: PlacementProblem, max_latency_seconds: float | None = None,
                       hint_scores: Mapping[str, tuple[Mapping[str, str], Score]] | None = None,
                       min_throughput: float | None = None) -> str:
    """Name the limit (memory, latency or throughput) that rules out every placement, as precisely as the data
    allows."""
    fitting = [result for _, result in (hint_scores or {}).values() if result.fits_memory]
    best = max((result.serving.throughput_per_second for result in fitting), default=0.0)  # baselines, seeds
    if min_throughput is not None and fitting and best < min_throughput:
        return (f"throughput: no placement that fits in memory serves {min_throughput:.4g} requests/s on these "
                f"devices (the best baseline serves {best:.4g}/s). Fix: lower --min-throughput (--objective "
                "throughput finds the most this fleet serves), or add devices to the fleet.")
    if max_latency_seconds is not None and fitting:
        fastest = min(result.latency_seconds for result in fitting)
        return (
            f"latency: no placement that fits in memory meets the limit of {_milliseconds(max_latency_seconds)} "
            f"(the fastest baseline takes {_milliseconds(fastest)}). "
            "Fix: raise --max-latency, or add faster targets."
        )
    if (clash := phases_sharing_a_device(problem)) is not None:
        return clash
    for node in problem.nodes:
        if all(node.working_bytes > problem.target(t).memory_bytes for t in node.supported):
            return (
                f"memory: {node.name} reads and writes {format_bytes(node.working_bytes)} of activations, more than any "
                f"target that supports it has "
                f"({', '.join(f'{t} {format_bytes(problem.target(t).memory_bytes)}' for t in node.supported)}). "
                "Fix: use smaller inputs (batch or sequence length), or a target with more memory."
            )
    forced: dict[str, set[str]] = {t.name: set() for t in problem.targets}
    example_op: dict[str, str] = {}
    for node in problem.nodes:
        if len(node.supported) == 1 and node.parameters:
            forced[node.supported[0]].update(node.parameters)
            example_op.setdefault(node.supported[0], node.name)
    for target in problem.targets:
        needed = sum(problem.parameter_bytes[p] for p in forced[target.name])
        if needed > target.memory_bytes:
            return (
                f"memory: {target.name} must hold {format_bytes(needed)} of parameters for ops only it supports "
                f"(e.g. {example_op[target.name]}) but has {format_bytes(target.memory_bytes)}, "
                f"{format_bytes(needed - target.memory_bytes)} short. Fix: use a target with more memory, "
                "lower the precision of the weights, or add targets that support those ops."
            )
    total = sum(problem.parameter_bytes.values())
    capacity = sum(t.memory_bytes for t in problem.targets)
    return (
        f"memory: no placement fits the parameters ({format_bytes(total)}) into the targets' memory "
        f"({', '.join(f'{t.name} {format_bytes(t.memory_bytes)}' for t in problem.targets)}; {format_bytes(capacity)} in all). "
        "Fix: add a target with more memory or lower the precision of the weights."
    )


def phases_sharing_a_device(problem: PlacementProblem) -> str | None:
    """Where phases must be kept apart, a device that ops of two phases can only run on, named with an example
    op of each; None when there is none."""
    if not problem.separate_phases:
        return None
    only_there: dict[str, dict[str, str]] = {}  # device -> phase -> an op only that device runs
    for node in problem.nodes:
        if len(node.supported) == 1:
            only_there.setdefault(node.supported[0], {}).setdefault(phase_of(node.name), node.name)
    for device, examples in only_there.items():
        if len(examples) > 1:
            return (f"phases: {' and '.join(examples)} both have ops only {device} runs "
                    f"(e.g. {', '.join(examples.values())}), and a disaggregated deployment gives each device one "
                    f"phase. Fix: add another device that runs them to the fleet, or serve co-located.")
    return None


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"

