"""Plan an LLM for a workload on a fleet: both phases, co-located and disaggregated, priced per token.

Prefill is captured for the workload's prompt lengths and a decode step for the
batch sizes worth trying (partitioner/llm/phases.py), costed (prompt buckets as
their share-weighted mean, partitioner/llm/buckets.py), joined into one serving
problem (partitioner/llm/joint.py) and solved for throughput: with each weight
placed once (co-located) and with each device given to one phase (disaggregated).
Batch sizes whose weights and KV cache exceed the fleet's memory are refused
unsolved; the others are tried from the largest down, stopping once a batch
meets the limits and the next smaller one costs more per token. The batch and
deployment with the least money per output token (partitioner/llm/deployment.py)
that meets the workload's limits is the plan; the others are reported.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Mapping

import torch

from cost_models.base import CostModel
from cost_models.roofline import RooflineCostModel
from partitioner.errors import PartitionerError
from partitioner.frontend.capture import ModelSource
from partitioner.frontend.meta_twin import meta_twin
from partitioner.frontend.op_graph import OpGraph
from partitioner.llm.buckets import mean_problem, on_one_graph
from partitioner.llm.deployment import CostedPhase, Deployment, LLMPlan, Tried, deployment_figures
from partitioner.llm.experts import expert_shard, experts_per_layer, experts_sharded
from partitioner.llm.joint import joint_problem, phase_split_placements
from partitioner.llm.phases import PhaseGraphs, capture_phases, context_limit, decoder_layers
from partitioner.placement.baselines import BASELINES, SERVING_BASELINES
from partitioner.placement.infeasibility import phases_sharing_a_device
from partitioner.placement.floors import latency_floor_seconds
from partitioner.placement.objectives import THROUGHPUT
from partitioner.placement.problem import DEFAULT_ENGINE_HOP_SECONDS, PlacementProblem, build_problem
from partitioner.placement.scoring import score
from partitioner.placement.solver import SolverOptions, solve
from partitioner.placement.tagging import tag
from partitioner.units import format_bytes
from targets.fleet import Fleet
from targets.spec import TargetSet
from targets.workload import Workload

DEPLOYMENTS = ("co-located", "disaggregated")
BATCH_CANDIDATES = (1, 4, 16, 64, 256)
DEFAULT_EXPERT_SHARDS = 2
# Tries searched at once: CP-SAT releases the GIL while it searches, so one try's search overlaps the next one's
# Python (its joint problem, baselines and model).
TRIES_IN_FLIGHT = 2


def plan_llm(model: torch.nn.Module, workload: Workload, fleet: Fleet, *, time_limit_seconds: float = 60.0,
             cost_model: CostModel | None = None, source: ModelSource | None = None, name: str | None = None,
             fallback: str | None = None, expert_shards: int | None = None, workers: int = 0, seed: int = 0,
             deterministic: bool = False, engine_hop_seconds: float = DEFAULT_ENGINE_HOP_SECONDS) -> LLMPlan:
    """The cheapest way per output token to serve `workload` with `model` on `fleet`, within its limits.

    The model is planned through its weightless twin (partitioner/frontend/meta_twin.py): its weights and caches
    take no memory here, whatever the context, and `model` is left as it was. The experts of a
    mixture-of-experts model are split into `expert_shards` shards a layer, each placed on its own
    (partitioner/llm/experts.py): by default 2 on a fleet of several devices, so a layer's experts can be
    split between two. Every shard runs the routing's gathers and elementwise ops on the whole batch, so each
    shard adds ops (and their launch overhead) to every step: more shards place finer and cost more.
    `time_limit_seconds` covers every solve together; `workers`, `seed`, `deterministic` and `engine_hop_seconds`
    are as for `compile`.
    """
    name = name or type(model).__name__
    _check_context(model, workload, name)
    targets = fleet.target_set(fallback)
    shards = expert_shards if expert_shards is not None else (DEFAULT_EXPERT_SHARDS if len(targets.targets) > 1
                                                              else 1)
    options = SolverOptions(time_limit_seconds=time_limit_seconds, workers=workers, seed=seed,
                            deterministic=deterministic)
    twin = meta_twin(model)
    with experts_sharded(twin, shards) as sharded_layers:
        return _plan(twin, workload, fleet, fallback, options, cost_model or RooflineCostModel(), source, name,
                     min(shards, experts_per_layer(twin)) if sharded_layers else 0, engine_hop_seconds)


def _check_context(model: torch.nn.Module, workload: Workload, name: str) -> None:
    """Refuse a workload whose requests need more context than the model takes (its longest prompt plus its
    longest output): such a plan would price positions the model has no embeddings for."""
    limit = context_limit(model)
    if limit is not None and workload.context_tokens > limit[0]:
        most, field = limit
        raise PartitionerError(
            f"{workload.name} needs a context of {workload.context_tokens:,} tokens (its longest prompt, "
            f"{workload.prompt.longest:,}, plus its longest output, {workload.output.longest:,}), and {name} takes "
            f"at most {most:,} ({field} in its config). Fix: give the workload shorter prompt_tokens or "
            "output_tokens, or plan a model configured for a longer context.")


def _plan(model: torch.nn.Module, workload: Workload, fleet: Fleet, fallback: str | None, options: SolverOptions,
          cost_model: CostModel, source: ModelSource | None, name: str, expert_shards: int,
          engine_hop_seconds: float) -> LLMPlan:
    started = time.perf_counter()
    prompts = workload.prompt.buckets
    batches = (workload.batch_size,) if workload.batch_size else tuple(
        b for b in BATCH_CANDIDATES if b <= workload.max_batch_size)
    prefill_graphs, decode_graphs = capture_phases(model, [tokens for tokens, _ in prompts], batches,
                                                   workload.context_tokens, source, name)
    ops = len(next(iter(prefill_graphs.graphs.values()))) + len(next(iter(decode_graphs.graphs.values())))
    targets = fleet.target_set(fallback, most_of_each=ops)  # more identical devices than ops would stay idle
    prefill = _costed(prefill_graphs, dict(prompts), targets, cost_model, engine_hop_seconds)
    kv_per_request = prefill_graphs.state_bytes(prompts[0][0])
    runs, tried = _fitting(batches, prefill, kv_per_request)
    decodes = {batch: _costed(decode_graphs, {batch: 1.0}, targets, cost_model, engine_hop_seconds)
               for batch in {b for _, b in runs}}
    runs = _within_reach(runs, workload, prefill, decodes, tried)
    # The tries share the time limit, TRIES_IN_FLIGHT at a time: each may take (building its search included) its
    # share of that many limits, and the limit still covers them all. One stop serves every try, so that Ctrl-C
    # (seen by this thread) ends the searches in the others too.
    share = options.time_limit_seconds * TRIES_IN_FLIGHT / max(1, len(runs))
    per_solve = replace(options, time_limit_seconds=share, stop=options.stop or threading.Event())

    def attempt(deployment: str, batch: int) -> tuple[PlacementProblem, Tried]:
        joint = _joint(prefill, decodes[batch], workload, batch, deployment == "disaggregated")
        return joint, _try(deployment, batch, joint, prefill, decodes[batch], workload, per_solve)

    joints = _search(runs, attempt, tried, per_solve.stop)
    tried.sort(key=lambda t: (t.batch_size, DEPLOYMENTS.index(t.deployment)))
    meeting = [t.result for t in tried if t.result is not None and t.refusal is None]
    if not meeting:
        raise PartitionerError(_nothing_meets(workload, tried))
    best = min(meeting, key=lambda d: d.cost_per_million_output_tokens)
    decode = decodes[best.batch_size]
    joint = joints.get(("co-located", best.batch_size)) or _joint(prefill, decode, workload, best.batch_size, False)
    baselines = {label: deployment_figures("co-located", best.batch_size, joint, score(joint, assignment), prefill,
                                           decode, workload, assignment, None)
                 for label, assignment in ((label, strategy(joint)) for label, strategy in BASELINES.items())}
    fallback_price = next(t.price_per_hour for t in targets if t.name == targets.fallback)
    return LLMPlan(name, workload, fleet.describe(planned_on=len(targets), ops=ops), targets.fallback, decoder_layers(model), kv_per_request, best,
                   tuple(tried), baselines, fallback_price, time.perf_counter() - started, expert_shards)


def _fitting(batches: tuple[int, ...], prefill: CostedPhase,
             kv_per_request: int) -> tuple[list[tuple[str, int]], list[Tried]]:
    """The (deployment, batch) pairs whose weights (once co-located, twice disaggregated) and KV caches (the
    decode batch's and a prefill's) fit the fleet's memory at all, and the others, refused with the figures."""
    weights = sum(size for p, size in prefill.problem.parameter_bytes.items() if p not in prefill.state)
    memory = sum(t.memory_bytes for t in prefill.problem.targets)
    runs, refused = [], []
    for batch in batches:
        for deployment in DEPLOYMENTS:
            copies = 2 if deployment == "disaggregated" else 1
            if copies * weights + kv_per_request * (batch + 1) <= memory:
                runs.append((deployment, batch))
            else:
                refused.append(Tried(deployment, batch, None, f"{copies} x {format_bytes(weights)} of weights and "
                                     f"{format_bytes(kv_per_request * batch)} of KV cache exceed the fleet's "
                                     f"{format_bytes(memory)}", "add devices or memory to the fleet"))
    return runs, refused


def _within_reach(runs: list[tuple[str, int]], workload: Workload, prefill: CostedPhase,
                  decodes: Mapping[int, CostedPhase], tried: list[Tried]) -> list[tuple[str, int]]:
    """The runs whose TTFT and TPOT limits some placement might meet; the others go to `tried`, refused with the
    least TTFT or TPOT any placement that fits the fleet's memory can have (partitioner/placement/floors.py):
    a search for them could only fail. Raises when that leaves nothing to search."""
    longest = max(prefill.by_size)
    ttft = latency_floor_seconds(prefill.by_size[longest]) if workload.ttft_seconds else 0.0
    tpot = {b: latency_floor_seconds(decodes[b].problem) for b in decodes} if workload.tpot_seconds else {}
    kept = []
    for deployment, batch in runs:
        floors = []
        if workload.ttft_seconds and ttft > workload.ttft_seconds:
            floors.append(f"TTFT at least {ttft * 1e3:.3g} ms for {longest}-token prompts, over "
                          f"{workload.ttft_seconds * 1e3:g} ms")
        if workload.tpot_seconds and tpot[batch] > workload.tpot_seconds:
            floors.append(f"TPOT at least {tpot[batch] * 1e3:.3g} ms, over {workload.tpot_seconds * 1e3:g} ms")
        if floors:
            tried.append(Tried(deployment, batch, None, "; ".join(floors), _relax(workload, ttft, min(tpot.values(),
                                                                                                default=0.0))))
        else:
            kept.append((deployment, batch))
    if runs and not kept:
        least = min(tpot.values(), default=0.0)
        floors = ([f"a prefill of {longest} tokens takes at least {ttft * 1e3:.3g} ms"] if workload.ttft_seconds
                  else []) + ([f"a decode step at least {least * 1e3:.3g} ms"] if workload.tpot_seconds else [])
        raise PartitionerError(
            f"no plan can meet {workload.name}'s limits on this fleet: with every weight where it is fastest and "
            f"fits, {' and '.join(floors)} (the weights that do not fit the fastest devices are read by slower "
            f"ones). Fix: {_relax(workload, ttft, least)}, or plan on faster devices or more memory on the fastest.")
    return kept


def _relax(workload: Workload, ttft_floor: float, tpot_floor: float) -> str:
    """`relax ttft_ms or tpot_ms`, naming only the limits the floors break."""
    limits = ([] if not workload.ttft_seconds or ttft_floor <= workload.ttft_seconds else ["ttft_ms"]) + \
        ([] if not workload.tpot_seconds or tpot_floor <= workload.tpot_seconds else ["tpot_ms"])
    return f"relax {' or '.join(limits or ['ttft_ms', 'tpot_ms'])} in the workload"


def _search(runs: list[tuple[str, int]], attempt: Callable[[str, int], tuple[PlacementProblem, Tried]],
            tried: list[Tried], stop: threading.Event) -> dict[tuple[str, int], PlacementProblem]:
    """Try (deployment, batch) pairs, each deployment's largest batch first, adding each result to `tried`; returns
    the joint problem of each pair tried. A smaller batch reads the same weights for fewer tokens, so it costs
    more per token unless the larger misses TPOT: once a batch meets the limits and the next smaller one is
    dearer, smaller ones are not tried. CP-SAT releases the GIL while it searches, so two tries are in flight at
    once: one's search overlaps the other's Python (its joint problem, baselines and model)."""
    order = [(d, b) for d in DEPLOYMENTS for b in sorted((b for d2, b in runs if d2 == d), reverse=True)]
    joints: dict[tuple[str, int], PlacementProblem] = {}
    cheapest: dict[str, Deployment] = {}
    stopped: set[str] = set()
    in_flight: deque = deque()

    def settle() -> None:
        deployment, batch, future = in_flight.popleft()
        joints[deployment, batch], outcome = future.result()
        tried.append(outcome)
        if outcome.result is None or outcome.refusal is not None:
            return
        previous = cheapest.get(deployment)
        if previous is not None and \
                outcome.result.cost_per_million_output_tokens >= previous.cost_per_million_output_tokens:
            stopped.add(deployment)
        else:
            cheapest[deployment] = outcome.result

    with ThreadPoolExecutor(max_workers=TRIES_IN_FLIGHT) as pool:
        try:
            for deployment, batch in order:
                if deployment not in stopped:
                    in_flight.append((deployment, batch, pool.submit(attempt, deployment, batch)))
                if len(in_flight) == TRIES_IN_FLIGHT:
                    settle()
            while in_flight:
                settle()
        except KeyboardInterrupt:
            stop.set()  # the tries in flight stop searching, so the pool ends at once
            raise
    return joints


def _costed(phase: PhaseGraphs, shares: Mapping[int, float], targets: TargetSet, cost_model: CostModel,
            engine_hop_seconds: float) -> CostedPhase:
    """A phase at the sizes `shares` names, each with its share of requests, costed and averaged per request."""
    graphs = {size: phase.graphs[size] for size in shares}
    by_size = on_one_graph({size: build_problem(graph, tag(graph, targets), targets, cost_model, engine_hop_seconds)
                            for size, graph in graphs.items()})
    problem = mean_problem([(by_size[size], share) for size, share in shares.items()])
    graph = graphs[max(graphs)]  # the graph every size is planned on (see on_one_graph)
    flops = {node.name: sum(_flops_at(graphs[size], graph, node.name) * share for size, share in shares.items())
             for node in graph}
    shards = {node.name: shard for node in graph if node.parameters and (shard := expert_shard(node.module_path))}
    return CostedPhase(problem, by_size, phase.state, flops, shards)


def _flops_at(graph: OpGraph, base: OpGraph, name: str) -> float:
    """The FLOPs of `base`'s node `name` in `graph`, the same model at another size: its own where the graphs
    are one, else `base`'s scaled by the two graphs' totals."""
    if name in {node.name for node in graph} and len(graph) == len(base):
        return graph[name].flops
    return base[name].flops * (graph.total_flops / base.total_flops if base.total_flops else 1.0)


def _joint(prefill: CostedPhase, decode: CostedPhase, workload: Workload, batch: int,
           separate_phases: bool) -> PlacementProblem:
    """Both phases for one request of `workload` at decode batch `batch` (see partitioner/llm/joint.py)."""
    return joint_problem(prefill.problem, decode.problem, prefill.state | decode.state,
                         workload.output_tokens / batch, workload.prompt.mean / workload.context_tokens,
                         separate_phases)


def _try(deployment: str, batch: int, joint: PlacementProblem, prefill: CostedPhase, decode: CostedPhase,
         workload: Workload, options: SolverOptions) -> Tried:
    if (clash := phases_sharing_a_device(joint)) is not None:  # no need to search to know
        return Tried(deployment, batch, None, *clash.removesuffix(".").split(". Fix: "))
    hints = {label: strategy(joint) for label, strategy in {**BASELINES, **SERVING_BASELINES}.items()}
    if joint.separate_phases:
        hints.update(phase_split_placements(joint))
    try:
        placement = solve(joint, THROUGHPUT, options, hints=hints)
    except PartitionerError as error:
        return Tried(deployment, batch, None, *str(error).removesuffix(".").split(". Fix: "))
    # Throughput is what CP-SAT maximises; money per token is price over throughput, so a baseline on fewer
    # devices may be cheaper per token than the fastest plan, and a slower one may meet a TTFT or TPOT limit the
    # fastest misses: of the plans that fit, the cheapest that meets the limits is kept (else the cheapest).
    results = {}
    for label, assignment in {"cp-sat": placement.assignment, **hints}.items():
        result = score(joint, assignment)
        if label == "cp-sat" or (result.fits_memory and not result.phase_conflicts):
            report = placement.report if label == "cp-sat" else replace(placement.report, origin=label)
            results[label] = deployment_figures(deployment, batch, joint, result, prefill, decode, workload,
                                                assignment, report)
    misses = {label: _misses(workload, result) for label, result in results.items()}
    kept = min(results, key=lambda label: (bool(misses[label]), results[label].cost_per_million_output_tokens))
    return Tried(deployment, batch, results[kept], "; ".join(misses[kept]) or None)


def _misses(workload: Workload, result: Deployment) -> list[str]:
    """The workload's limits `result` does not meet, each with its figure."""
    misses = []
    if workload.ttft_seconds and result.ttft_seconds > workload.ttft_seconds:
        misses.append(f"TTFT {result.ttft_seconds * 1e3:.3g} ms over {workload.ttft_seconds * 1e3:g} ms")
    if workload.tpot_seconds and result.tpot_seconds > workload.tpot_seconds:
        misses.append(f"TPOT {result.tpot_seconds * 1e3:.3g} ms over {workload.tpot_seconds * 1e3:g} ms")
    if workload.requests_per_second and result.requests_per_second < workload.requests_per_second:
        misses.append(f"{result.requests_per_second:.3g} req/s under {workload.requests_per_second:g}")
    return misses


def _nothing_meets(workload: Workload, tried: list[Tried]) -> str:
    """Why no deployment is the plan, and what would change that: the refusals, or the limits every plan misses."""
    solved = [t for t in tried if t.result is not None]
    if not solved:
        reasons = list(dict.fromkeys(t.refusal for t in tried if t.refusal))[:2]
        fixes = list(dict.fromkeys(t.fix for t in tried if t.fix))
        return (f"no deployment of {workload.name} can be planned on this fleet ({'; '.join(reasons)}). Fix: "
                f"{'; or '.join(fixes) or 'add devices or memory to the fleet'}.")
    limits = []  # (workload field, what the best plan reaches against the limit, whether some plan meets it)
    if workload.ttft_seconds:
        best = min(t.result.ttft_seconds for t in solved)
        limits.append(("ttft_ms", f"the best TTFT reached is {best * 1e3:.3g} ms (limit "
                                  f"{workload.ttft_seconds * 1e3:g} ms)", best <= workload.ttft_seconds))
    if workload.tpot_seconds:
        best = min(t.result.tpot_seconds for t in solved)
        limits.append(("tpot_ms", f"the best TPOT reached is {best * 1e3:.3g} ms (limit "
                                  f"{workload.tpot_seconds * 1e3:g} ms)", best <= workload.tpot_seconds))
    if workload.requests_per_second:
        most = max(t.result.requests_per_second for t in solved)
        limits.append(("requests_per_second", f"the most requests per second served is {most:.3g} (required "
                                              f"{workload.requests_per_second:g})", most >= workload.requests_per_second))
    missed = [field for field, _, met in limits if not met] or [field for field, _, _ in limits]
    return (f"no plan meets {workload.name}'s limits: {'; '.join(reached for _, reached, _ in limits)}; no plan "
            f"meets them all at once. Fix: relax {' or '.join(missed)} in the workload, or plan on faster or more "
            "devices.")
