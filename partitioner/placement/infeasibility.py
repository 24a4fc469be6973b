"""Why no placement exists: the binding limit (memory or latency), named with the figures to fix it.

Called by the solver when CP-SAT proves the problem infeasible, so that the
user reads which target is how many GiB short, or how far the latency limit
is from the fastest plan, instead of a bare status.
"""

from __future__ import annotations

from typing import Mapping

from partitioner.placement.problem import PlacementProblem
from partitioner.placement.scoring import Score


def explain_infeasible(problem: PlacementProblem, max_latency_seconds: float | None = None,
                       hint_scores: Mapping[str, tuple[Mapping[str, str], Score]] | None = None) -> str:
    """Name the limit (memory or latency) that rules out every placement, as precisely as the data allows."""
    fitting = [result for _, result in (hint_scores or {}).values() if result.fits_memory]
    if max_latency_seconds is not None and fitting:
        fastest = min(result.latency_seconds for result in fitting)
        return (
            f"latency: no placement that fits in memory meets the limit of {_milliseconds(max_latency_seconds)} "
            f"(the fastest baseline takes {_milliseconds(fastest)}). "
            "Fix: raise --max-latency, or add faster targets."
        )
    for node in problem.nodes:
        if all(node.working_bytes > problem.target(t).memory_bytes for t in node.supported):
            return (
                f"memory: {node.name} reads and writes {_gib(node.working_bytes)} of activations, more than any "
                f"target that supports it has "
                f"({', '.join(f'{t} {_gib(problem.target(t).memory_bytes)}' for t in node.supported)}). "
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
                f"memory: {target.name} must hold {_gib(needed)} of parameters for ops only it supports "
                f"(e.g. {example_op[target.name]}) but has {_gib(target.memory_bytes)}, "
                f"{_gib(needed - target.memory_bytes)} short. Fix: use a target with more memory, "
                "lower the precision of the weights, or add targets that support those ops."
            )
    total = sum(problem.parameter_bytes.values())
    capacity = sum(t.memory_bytes for t in problem.targets)
    return (
        f"memory: no placement fits the parameters ({_gib(total)}) into the targets' memory "
        f"({', '.join(f'{t.name} {_gib(t.memory_bytes)}' for t in problem.targets)}; {_gib(capacity)} in all). "
        "Fix: add a target with more memory or lower the precision of the weights."
    )


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 1024**3:.1f} GiB"
