"""The summary of an LLM plan: money per token, rates, TTFT and TPOT, KV cache, per phase and deployment."""

from __future__ import annotations

import re
from typing import Mapping

from partitioner.llm.deployment import KV_CACHE, Deployment, LLMPlan
from partitioner.placement.serving import device_kind
from partitioner.units import format_bytes, format_money, format_seconds
from targets.workload import Workload


def format_llm_summary(plan: LLMPlan) -> str:
    best, workload = plan.best, plan.workload
    fallback_kind = device_kind(plan.fallback)
    layers = f"{plan.layers} layer{'s' if plan.layers > 1 else ''}, " if plan.layers else ""
    lines = [
        f"model      {plan.model_name}: {layers}"
        f"{f'experts in {plan.expert_shards} shards a layer, ' if plan.expert_shards else ''}"
        f"{plan.decode_state.value} {format_bytes(plan.kv_cache_bytes_per_request)} per request "
        + (f"at {workload.context_tokens} tokens of context" if plan.decode_state.grows_with_context
           else "whatever the context"),
        f"workload   {workload.describe()}",
        f"fleet      {plan.fleet}",
        "",
        f"plan       {best.name}, decode batch {best.batch_size}: {format_money(best.cost_per_million_output_tokens)} "
        f"per 1M output tokens (all of a request's money), of which prefill is "
        f"{format_money(best.cost_per_million_input_tokens)} per 1M input tokens",
        f"           {best.output_tokens_per_second:.4g} output tokens/s ({best.requests_per_second:.4g} req/s) at "
        f"full load; TTFT {_ttft(best)}, TPOT {format_seconds(best.tpot_seconds)}; "
        f"bottleneck {best.bottleneck}",
        *_placement_lines(best, fallback_kind, plan.graph_replay, "KV cache" if plan.decode_state is KV_CACHE
                          else "states"),
        *([f"tensor     none: {plan.kept_whole}"] if plan.kept_whole else []),
        "",
        f"{'strategy':<28}{'per 1M out':>12}{'tokens/s':>11}{'TTFT':>10}{'TPOT':>10}   vs plan",
    ]
    rows = [("plan", best)]
    other = plan.best_of("disaggregated" if best.name == "co-located" else "co-located")
    if other is not None:
        rows.append((f"best {other.name} (batch {other.batch_size})", other))
    rows += [(f"{name} (batch {d.batch_size})", d) for name, d in plan.baselines.items()]
    for label, deployment in rows:
        lines.append(_row(label, deployment, best, workload))
    replicas, rate = plan.same_price_fallback_tokens_per_second()
    if not plan.baselines["fallback"].fits_memory:
        lines.append(f"the model does not fit one {fallback_kind}, so an all-{fallback_kind} fleet of the same price "
                     "is not compared")
    elif rate > 0:
        lines.append(f"all-{fallback_kind} fleet of the same price ({replicas:.3g} x {fallback_kind}) delivers "
                     f"{rate:.4g} tokens/s at {format_money(plan.baselines['fallback'].cost_per_million_output_tokens)}"
                     f" per 1M output tokens; the plan delivers {best.output_tokens_per_second / rate:.2f}x the tokens")
    if other is None:
        refusal = next((t.refusal for t in plan.tried if t.deployment != best.name and t.refusal), None)
        lines.append(f"no {'disaggregated' if best.name == 'co-located' else 'co-located'} deployment qualified"
                     + (f": {refusal}" if refusal else ""))
    said: set[str] = set()
    attempts = []
    for t in plan.tried:
        reason = "" if not t.refusal else " (as above)" if t.refusal in said else f" ({t.refusal})"
        said.add(t.refusal or "")
        attempts.append(f"{t.deployment} b{t.batch_size}: "
                        + (f"{format_money(t.result.cost_per_million_output_tokens)}/1M" if t.result else "no plan")
                        + reason)
    lines += ["", "tried      " + "; ".join(attempts)]
    floor = format_money(plan.cost_floor_per_million_output_tokens)
    lines.append(f"search     no plan can cost under {floor} per 1M output tokens: gap {100 * plan.gap:.2f}%; "
                 f"planning {plan.planning_seconds:.1f} s in all")
    solver = best.solver
    if solver is not None:
        lines.append(f"solver     on {', '.join(sorted(set(best.assignment.values())))}: throughput search "
                     f"{solver.status}, gap {100 * solver.gap:.2f}%; kept the {solver.origin} placement, the "
                     "cheapest per token")
    return "\n".join(lines)


def _ttft(deployment: Deployment) -> str:
    """The time to first token, per prompt length where the workload has several (longest first)."""
    by_prompt = sorted(deployment.ttft_by_prompt.items(), reverse=True)
    if len(by_prompt) < 2:
        return format_seconds(deployment.ttft_seconds)
    return ", ".join(f"{format_seconds(seconds)} at {tokens}" for tokens, seconds in by_prompt) + " prompt tokens"


def _placement_lines(deployment: Deployment, fallback_kind: str, graph_replay: Mapping[str, float],
                     state_label: str) -> list[str]:
    lines = []
    for phase in ("prefill", "decode"):
        devices = deployment.devices[phase]
        lines.append(f"{phase:<10} on {', '.join(devices)}; {100 * deployment.off_fallback_flops[phase]:.1f}% of its "
                     f"FLOPs off {fallback_kind}" + (_replayed(devices, graph_replay) if phase == "decode" else ""))
    kv = ", ".join(f"{device} {format_bytes(size)}" for device, size in sorted(deployment.kv_cache_bytes.items())
                   if size >= 1024)  # not the position counters a cache also keeps
    lines.append(f"{state_label:<10} {kv or 'none'}")
    for place, collectives in deployment.collectives.items():
        lines.append(f"tensor     {place}: {collectives.degree} x {device_kind(place)} splitting "
                     f"{_split_parts(collectives.split_modules)}; "
                     f"{collectives.per_decode_step} collectives a decode step "
                     f"({format_seconds(collectives.decode_step_seconds)}), {collectives.per_prefill} a prefill "
                     f"({format_seconds(collectives.prefill_seconds)})")
    if deployment.expert_shards_on:
        lines.append("experts    decode's expert shards: " + ", ".join(
            f"{device} {count}" for device, count in deployment.expert_shards_on.items()))
    return lines


def _replayed(devices: list[str], graph_replay: Mapping[str, float]) -> str:
    """Which of the decode step's devices it is priced on as a captured graph's replay, and what a kernel adds."""
    kinds = {kind: graph_replay[kind] for kind in dict.fromkeys(device_kind(d) for d in devices) if kind in graph_replay}
    if not kinds:
        return ""
    return "; a step replayed as a captured graph on " + ", ".join(
        f"{kind} ({format_seconds(seconds)} a kernel)" for kind, seconds in kinds.items()) + ", no host dispatch"


def _split_parts(modules: tuple[str, ...]) -> str:
    """What a group splits, in a model's terms: the layers it holds modules of (by their number in the module
    names; a stage may begin or end inside a layer), the embedding, the LM head."""
    layers = {match.group(1) for module in modules if (match := re.search(r"\.(\d+)\.", module))}
    parts = [f"what it holds of {len(layers)} layer{'s' if len(layers) != 1 else ''}"] if layers else []
    parts += ["the embedding"] if any("embed" in module for module in modules) else []
    parts += ["the LM head"] if any("lm_head" in module for module in modules) else []
    return ", ".join(parts) or f"{len(modules)} modules"


def _row(label: str, deployment: Deployment, best: Deployment, workload: Workload) -> str:
    saving = 1 - best.cost_per_million_output_tokens / deployment.cost_per_million_output_tokens \
        if deployment.cost_per_million_output_tokens else 0.0
    versus = "" if deployment is best else f"plan saves {100 * saving:.1f}% per token"
    if not deployment.fits_memory:
        device, excess = max(deployment.over_capacity_bytes.items(), key=lambda item: item[1])
        versus = f"does not fit: {device} {format_bytes(excess)} over its memory"
    elif misses := deployment.misses(workload):
        versus = f"misses the limits: {'; '.join(misses)}"
    return (f"{label:<28}{format_money(deployment.cost_per_million_output_tokens):>12}"
            f"{deployment.output_tokens_per_second:>11.4g}{format_seconds(deployment.ttft_seconds):>10}"
            f"{format_seconds(deployment.tpot_seconds):>10}   {versus}")
