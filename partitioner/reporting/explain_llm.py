"""Why an op of an LLM plan's phase sits where it sits: read from the plan file alone.

An LLM plan places the ops of two graphs, a prefill and a decode step (partitioner/llm/planning.py); a node is
named by its phase, `decode/linear_3`, or by its name alone where only one phase has it. `explain_llm_node`
gives its op and module, where the plan put it and what else of its module sits there, its compute time on
each kind of device of the fleet (identical devices cost the same; a tensor-parallel place its members' share),
the kinds that do not run it, and, where it sits in a tensor-parallel group, whether the group splits it.
"""

from __future__ import annotations

import difflib

from partitioner.errors import PartitionerError
from partitioner.llm.deployment import LLMPlan, PhaseOp
from partitioner.llm.phases import DECODE, PREFILL
from partitioner.placement.blocks import numbered_block
from partitioner.placement.serving import device_kind, place_kind
from partitioner.units import format_seconds

PHASES = (PREFILL, DECODE)


def explain_llm_node(plan: LLMPlan, name: str) -> str:
    """A readable account of one op of `plan`'s prefill or decode step."""
    phase, op = _find(plan, name)
    best = plan.best
    here = best.assignment[f"{phase}/{op.name}"]
    run = ("one prefill (per request: the workload's prompt lengths by share)" if phase == PREFILL
           else f"one decode step of batch {best.batch_size}")
    lines = [f"node       {phase}/{op.name}: {op.op}" + (f" in {op.module}" if op.module else ""),
             f"placed on  {here}, in {run}; {phase} runs on {', '.join(best.devices[phase])}"]
    if op.module:
        lines.append(_module_line(plan, phase, op, here))
    group = best.collectives.get(here)
    if group is not None:
        split = any(op.module == module or op.module.startswith(f"{module}.") for module in group.split_modules)
        lines.append(f"group      {here} is {group.degree} devices in tensor parallel: "
                     + ("this op's module is split among them, each computing its share" if split else
                        "this op runs whole on each member (its module is not split)"))
    costs = plan.op_seconds.get(phase, {}).get(op.name)
    if costs is None:
        lines.append("costs      the plan keeps no per-op costs (written before plans recorded them). Fix: compile "
                     "the model again with --workload to see them.")
        return "\n".join(lines)
    placed_kind = place_kind(here)
    lines += ["", f"{'device kind':<24}{'compute':>12}   note"]
    for kind in _kinds(plan):
        seconds = costs.get(kind)
        notes = ["placed here"] if kind == placed_kind else []
        if phase == DECODE and device_kind(kind) in plan.graph_replay:
            notes.append(f"a step replayed as a captured graph "
                         f"({format_seconds(plan.graph_replay[device_kind(kind)])} a kernel, no dispatch)")
        shown = format_seconds(seconds) if seconds is not None else "-"
        if seconds is None:
            notes = ["does not run this op"]
        lines.append(f"{kind:<24}{shown:>12}   {'; '.join(notes)}".rstrip())
    return "\n".join(lines)


def _find(plan: LLMPlan, name: str) -> tuple[str, PhaseOp]:
    """The phase and op `name` names: `phase/node`, or a node only one phase has."""
    if not plan.phase_ops:
        raise PartitionerError("the plan keeps no list of its phases' ops (written before plans recorded them). "
                               "Fix: compile the model again with --workload.")
    ops = {phase: {op.name: op for op in plan.phase_ops.get(phase, ())} for phase in PHASES}
    phase, _, node = name.partition("/")
    if node and phase in ops and node in ops[phase]:
        return phase, ops[phase][node]
    having = [phase for phase in PHASES if name in ops[phase]]
    if len(having) == 1:
        return having[0], ops[having[0]][name]
    if len(having) > 1:
        raise PartitionerError(f"both phases have a node {name!r}. Fix: name it with its phase, "
                               f"{' or '.join(f'{phase}/{name}' for phase in having)}.")
    names = [f"{phase}/{node}" for phase in PHASES for node in ops[phase]]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(close)}" if close else "an LLM plan's nodes are phase/node, e.g. decode/linear"
    raise PartitionerError(f"no node {name!r} in this LLM plan. Fix: {hint} (the plan file lists them under "
                           "phase_ops).")


def _module_line(plan: LLMPlan, phase: str, op: PhaseOp, here: str) -> str:
    """Where the ops of the op's layer (or, outside the layers, of its module) sit in the phase."""
    block = numbered_block(op.module) or op.module
    places: dict[str, int] = {}
    for other in plan.phase_ops[phase]:
        if other.module == block or other.module.startswith(f"{block}."):
            place = plan.best.assignment[f"{phase}/{other.name}"]
            places[place] = places.get(place, 0) + 1
    total = sum(places.values())
    label = "layer     " if block != op.module else "module    "
    if set(places) == {here}:
        return f"{label} {block}: {'its one op' if total == 1 else f'all {total} of its ops'} on {here}"
    spread = ", ".join(f"{count} on {place}" for place, count in sorted(places.items(), key=lambda kv: -kv[1]))
    return f"{label} {block}: its {total} ops, {spread}"


def _kinds(plan: LLMPlan) -> list[str]:
    """The kinds of device the plan's costs name, the fleet's order."""
    kinds = list(dict.fromkeys(place_kind(target.name) for target in plan.targets))
    recorded = {kind for ops in plan.op_seconds.values() for costs in ops.values() for kind in costs}
    return kinds + sorted(recorded - set(kinds))
