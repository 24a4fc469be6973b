"""Plan an LLM for a workload on a fleet: both phases, co-located and disaggregated, priced per token.

Prefill is captured for the workload's prompt lengths and a decode step for the
batch sizes worth trying (partitioner/llm/phases.py), costed (prompt buckets as
their share-weighted mean, partitioner/llm/buckets.py; a decode step as the replay
of a captured graph on devices that replay them, cost_models/graph_replay.py),
joined into one serving problem (partitioner/llm/joint.py): with each weight
placed once (co-located) and with each device given to one phase (disaggregated). Batch sizes whose weights
and KV cache exceed the fleet's memory are refused unsolved.

What is minimised is money per output token, by one search over every
(deployment, batch, devices rented): each rental (partitioner/llm/rentals.py)
is priced at least at its floor, and the cheapest floor is worked on first:
ruled out by its TTFT or TPOT floor, priced again by its linear program, or
searched for throughput on its devices alone (money per token is their price
over that throughput). The search stops when its plan is within 1% of every
floor left, and the least floor left is the plan's bound: its gap is in money
per token. The plan is the deployment with the least money per output token
(partitioner/llm/deployment.py) that meets the workload's limits; each other
(deployment, batch) is reported with its best plan or why it was not searched.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from dataclasses import replace
from typing import Mapping

import torch

from cost_models.base import CostModel
from cost_models.graph_replay import GraphReplay
from cost_models.roofline import RooflineCostModel
from cost_models.tensor_parallel import collective_seconds
from partitioner.errors import PartitionerError
from partitioner.frontend.capture import ModelSource
from partitioner.frontend.meta_twin import meta_twin
from partitioner.frontend.grouped_attention import fuse_grouped_attention
from partitioner.frontend.op_graph import OpGraph
from partitioner.frontend.sharding import (ShardingPlan, model_sharding, replicated_weight_bytes, shard_graph,
                                          splits_its_state)
from partitioner.llm.buckets import mean_problem, on_one_graph
from partitioner.llm.deployment import (CostedPhase, LLMPlan, PhaseOp, Tried, deployment_figures,
                                        model_fingerprint)
from partitioner.llm.experts import expert_shard, experts_per_layer, experts_sharded
from partitioner.llm.joint import describe_devices, joint_problem, phase_split_placements
from partitioner.llm.phases import DECODE, PREFILL, PhaseGraphs, capture_phases, context_limit, decoder_layers
from partitioner.llm.recurrent_states import decode_state
from partitioner.llm.rentals import Rental, per_million_output_tokens, rentals
from partitioner.placement.baselines import BASELINES, SERVING_BASELINES
from partitioner.placement.infeasibility import phases_sharing_a_device
from partitioner.placement.floors import bottleneck_relaxation, latency_floor_seconds, priced_relaxation
from partitioner.placement.objectives import THROUGHPUT
from partitioner.placement.problem import DEFAULT_ENGINE_HOP_SECONDS, PlacementProblem, build_problem
from partitioner.placement.scoring import score
from partitioner.placement.serving import device_kind, place_kind
from partitioner.placement.solver import SolverOptions, solve
from partitioner.placement.tagging import tag
from partitioner.plan_records import target_records
from partitioner.units import format_bytes
from targets.fleet import Fleet
from targets.spec import TargetSet
from targets.tensor_parallel import can_split, devices_alone, with_tensor_parallel_places
from targets.workload import Workload

DEPLOYMENTS = ("co-located", "disaggregated")
BATCH_CANDIDATES = (1, 4, 16, 64, 256)
DEFAULT_EXPERT_SHARDS = 2
# A rental's search takes at most this share of the time limit, so that a search that cannot prove its plan
# leaves time for the next rentals (until one has found a plan within the limits, the larger share).
SEARCHES_IN_A_LIMIT = 6
FIRST_SEARCHES_IN_A_LIMIT = 3
# The share of the time limit in which rentals' floors are worked out before they are searched (after it, they are
# searched in the order of the floors they have).
FLOORS_SHARE = 0.5
# Of the time limit (which covers capture and costing too), the share kept for scoring the plan after the search,
# and the least share the search gets however long capture took.
SCORING_RESERVE = 0.05
LEAST_SEARCH_SHARE = 0.1
# The share of the time limit the whole fleet's TTFT and TPOT floors may take before the search (each is a linear
# program over every place, tensor-parallel ones included).
FLOORS_BEFORE_SEARCH = 0.25
# The search stops once its plan costs at most this much more per token than every rental left may.
CLOSE_ENOUGH_PER_TOKEN = 0.01


def plan_llm(model: torch.nn.Module, workload: Workload, fleet: Fleet, *, time_limit_seconds: float = 60.0,
             cost_model: CostModel | None = None, source: ModelSource | None = None, name: str | None = None,
             fallback: str | None = None, expert_shards: int | None = None, workers: int = 0, seed: int = 0,
             deterministic: bool = False, engine_hop_seconds: float = DEFAULT_ENGINE_HOP_SECONDS,
             tensor_parallel: bool = True) -> LLMPlan:
    """The cheapest way per output token to serve `workload` with `model` on `fleet`, within its limits.

    The model is planned through its weightless twin (partitioner/frontend/meta_twin.py): its weights and caches
    take no memory here, whatever the context, and `model` is left as it was. The experts of a
    mixture-of-experts model are split into `expert_shards` shards a layer, each placed on its own
    (partitioner/llm/experts.py): by default 2 on a fleet of several devices, so a layer's experts can be
    split between two. Every shard runs the routing's gathers and elementwise ops on the whole batch, so each
    shard adds ops (and their launch overhead) to every step: more shards place finer and cost more.
    `time_limit_seconds` covers the whole planning (capture and costing too; the search gets what they leave,
    at least a tenth of it); `workers`, `seed`, `deterministic` and `engine_hop_seconds`
    are as for `compile`. `tensor_parallel=False` keeps every layer whole on one device (no group splits one),
    as the plans `serve` and `export` run need.
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
                     min(shards, experts_per_layer(twin)) if sharded_layers else 0, engine_hop_seconds,
                     tensor_parallel)


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
          engine_hop_seconds: float, tensor_parallel: bool) -> LLMPlan:
    started = time.perf_counter()
    prompts = workload.prompt.buckets
    batches = (workload.batch_size,) if workload.batch_size else tuple(
        b for b in BATCH_CANDIDATES if b <= workload.max_batch_size)
    sharding = model_sharding(model)
    prefill_graphs, decode_graphs = (_as_served(phase, sharding) for phase in capture_phases(
        model, [tokens for tokens, _ in prompts], batches, workload.context_tokens, source, name))
    ops = len(next(iter(prefill_graphs.graphs.values()))) + len(next(iter(decode_graphs.graphs.values())))
    targets = fleet.target_set(fallback, most_of_each=ops)  # more identical devices than ops would stay idle
    any_graph = next(iter(prefill_graphs.graphs.values()))
    splits_state = all(splits_its_state(graph, phase.state) for phase in (prefill_graphs, decode_graphs)
                       for graph in phase.graphs.values())
    if splits_state and tensor_parallel:
        targets = with_tensor_parallel_places(targets, sharding.degrees,
                                              replicated_weight_bytes(any_graph, prefill_graphs.state))
    alone = devices_alone(targets)
    prefill = _costed(prefill_graphs, dict(prompts), targets, cost_model, engine_hop_seconds)
    kv_per_request = prefill_graphs.state_bytes(prompts[0][0])
    runs, tried = _fitting(batches, prefill, kv_per_request)
    decodes = {batch: _costed(decode_graphs, {batch: 1.0}, targets, GraphReplay(cost_model), engine_hop_seconds,
                              token_loop=True)
               for batch in {b for _, b in runs}}
    runs = _within_reach(runs, workload, prefill, decodes, tried, options.time_limit_seconds * FLOORS_BEFORE_SEARCH)
    joints = {(deployment, batch): _joint(prefill, decodes[batch], workload, batch, deployment == "disaggregated")
              for deployment, batch in runs}
    # The limit covers the whole planning: the search gets what capture and costing left of it, less a reserve
    # for scoring the plan found (at least a tenth of the limit, where capture alone took longer).
    left = options.time_limit_seconds * (1 - SCORING_RESERVE) - (time.perf_counter() - started)
    search_options = replace(options, time_limit_seconds=max(left, options.time_limit_seconds * LEAST_SEARCH_SHARE))
    floor = _search(joints, prefill, decodes, workload, _weight_bytes(prefill), kv_per_request, search_options,
                    tried, alone)
    tried.sort(key=lambda t: (t.batch_size, DEPLOYMENTS.index(t.deployment)))
    meeting = [t.result for t in tried if t.result is not None and t.refusal is None]
    if not meeting:
        raise PartitionerError(_nothing_meets(workload, tried))
    best = min(meeting, key=lambda d: d.cost_per_million_output_tokens)
    decode = decodes[best.batch_size]
    joint = joints.get(("co-located", best.batch_size)) or _joint(prefill, decode, workload, best.batch_size, False)
    joint = joint.on_devices(alone) or joint
    baselines = {label: deployment_figures("co-located", best.batch_size, joint, score(joint, assignment), prefill,
                                           decode, workload, assignment, None)
                 for label, assignment in ((label, strategy(joint)) for label, strategy in BASELINES.items())}
    fallback_price = next(t.price_per_hour for t in targets if t.name == targets.fallback)
    return LLMPlan(name, workload, fleet.describe(planned_on=len(alone), ops=ops), targets.fallback,
                   decoder_layers(model), kv_per_request, best, tuple(tried), baselines, fallback_price,
                   time.perf_counter() - started, expert_shards, min(floor, best.cost_per_million_output_tokens),
                   source, _kept_whole(name, sharding, splits_state, tensor_parallel) if can_split(targets)
                   else None,
                   model_fingerprint(model), {phase.phase: _phase_ops(phase) for phase in (prefill_graphs,
                                                                                          decode_graphs)},
                   target_records(targets), {PREFILL: _op_seconds(prefill.problem, targets),
                                             DECODE: _op_seconds(decode.problem, targets)},
                   {device_kind(t.name): t.graph_kernel_seconds for t in targets
                    if t.graph_kernel_seconds is not None},
                   decode_state(model))


def _fitting(batches: tuple[int, ...], prefill: CostedPhase,
             kv_per_request: int) -> tuple[list[tuple[str, int]], list[Tried]]:
    """The (deployment, batch) pairs whose weights (once co-located, twice disaggregated) and KV caches (the
    decode batch's and a prefill's) fit the fleet's memory at all, and the others, refused with the figures."""
    weights = _weight_bytes(prefill)
    memory = sum(t.memory_bytes for t in prefill.problem.targets if not t.occupies)  # each device once
    runs, refused = [], []
    for batch in batches:
        for deployment in DEPLOYMENTS:
            copies = 2 if deployment == "disaggregated" else 1
            if copies * weights + kv_per_request * (batch + 1) <= memory:
                runs.append((deployment, batch))
            else:
                refused.append(Tried(deployment, batch, None, f"{copies} x {format_bytes(weights)} of weights and "
                                     f"{format_bytes(kv_per_request * (batch + 1))} of KV cache (the batch's and "
                                     f"a prefill's) exceed the fleet's "
                                     f"{format_bytes(memory)}", "add devices or memory to the fleet"))
    return runs, refused


def _weight_bytes(prefill: CostedPhase) -> int:
    """The model's weights (its parameters other than the KV cache)."""
    return sum(size for p, size in prefill.problem.parameter_bytes.items() if p not in prefill.state)


def _within_reach(runs: list[tuple[str, int]], workload: Workload, prefill: CostedPhase,
                  decodes: Mapping[int, CostedPhase], tried: list[Tried], seconds: float) -> list[tuple[str, int]]:
    """The runs whose TTFT and TPOT limits some placement might meet; the others go to `tried`, refused with the
    least TTFT or TPOT any placement that fits the fleet's memory can have (partitioner/placement/floors.py):
    a search for them could only fail. Raises when that leaves nothing to search. The floors are worked out for
    `seconds` at most (on a fleet of many places each takes seconds); a run whose floor was not reached is kept,
    for its rentals' own floors to rule on."""
    until = time.monotonic() + seconds

    def floor_of(problem: PlacementProblem) -> float:
        return latency_floor_seconds(problem) if time.monotonic() < until else 0.0

    longest = max(prefill.by_size)
    ttft = floor_of(prefill.by_size[longest]) if workload.ttft_seconds else 0.0
    tpot = {b: floor_of(decodes[b].problem) for b in sorted(decodes)} if workload.tpot_seconds else {}
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


def _search(joints: Mapping[tuple[str, int], PlacementProblem], prefill: CostedPhase,
            decodes: Mapping[int, CostedPhase], workload: Workload, weights: int, kv_per_request: int,
            options: SolverOptions, tried: list[Tried], alone: tuple[str, ...]) -> float:
    """Search the rentals (partitioner/llm/rentals.py) of every (deployment, batch) in `joints`, least floor first,
    adding one outcome per (deployment, batch) to `tried`; returns the least money per 1M output tokens any plan
    can cost (the floors of the rentals not searched, the bounds of those searched).

    A rental is first priced by its quick floor; when it comes up, its TTFT and TPOT floors on its devices rule
    it out or its linear program's floor prices it again; when it comes up with that, it is searched for
    throughput on its devices alone (what it costs per token is its price over that). Floors are worked out in
    the first FLOORS_SHARE of the time only, so that a fleet of many rentals still leaves time to search. The
    search ends when the cheapest plan meeting the limits is within CLOSE_ENOUGH_PER_TOKEN of every floor left,
    or when the time is up. The baselines are scored on `alone`, the fleet's devices without its tensor-parallel
    places (a plan may not use both a group and its devices)."""
    deadline = time.monotonic() + options.time_limit_seconds
    floors_until = time.monotonic() + options.time_limit_seconds * FLOORS_SHARE
    stop = options.stop or threading.Event()
    # Least floor first; of equal floors, the fewest devices (their search is the smallest and hops the least).
    queue: list[tuple[float, int, int, Rental]] = []
    order = itertools.count()  # the last tie-break: rentals are not compared
    for (deployment, batch), joint in joints.items():
        memory = (2 if deployment == "disaggregated" else 1) * weights + kv_per_request * (batch + 1)
        for rental in rentals(joint, deployment, batch, workload.output_tokens, memory):
            heapq.heappush(queue, (rental.floor, len(rental.devices), next(order), rental))
    outcomes: dict[tuple[str, int], list[Tried]] = {}
    ruled_out: dict[tuple[str, int], str] = {}
    bounds: dict[tuple[str, int], float] = {}  # per (deployment, batch), the least bound of its rentals searched
    limits = _LatencyFloors(prefill, decodes, workload)
    cheapest = math.inf
    for (deployment, batch), joint in joints.items():  # the baselines first: no plan may be worse than one
        for outcome in [*_baselines(deployment, batch, joint.on_devices(alone) or joint, prefill, decodes[batch],
                                    workload),
                        *_whole_on_one_place(deployment, batch, joint, prefill, decodes[batch], workload)]:
            outcomes.setdefault((deployment, batch), []).append(outcome)
            if outcome.refusal is None:
                cheapest = min(cheapest, outcome.result.cost_per_million_output_tokens)
    found = False
    while queue and queue[0][0] * (1 + CLOSE_ENOUGH_PER_TOKEN) < cheapest:
        left = deadline - time.monotonic()
        if left <= 0 or stop.is_set():
            break
        floor, _, _, rental = heapq.heappop(queue)
        key = (rental.deployment, rental.batch)
        problem = joints[key].on_devices(rental.devices)
        if problem is None:
            continue
        if not rental.exact and time.monotonic() < floors_until:
            miss = limits.missed(rental.batch, rental.devices)
            if miss:
                ruled_out.setdefault(key, miss)
                continue
            relaxation = bottleneck_relaxation(problem, decide_used=False,
                                               phase_limits=_phase_limits(workload, rental.batch))
            if not relaxation.fits:
                ruled_out.setdefault(key, f"on {describe_devices(list(rental.devices))}, no placement both fits "
                                          "memory and keeps its compute within TTFT and TPOT")
            else:
                exact = per_million_output_tokens(rental.price_per_hour, relaxation.value, workload.output_tokens)
                heapq.heappush(queue, (max(floor, exact), len(rental.devices), next(order),
                                       replace(rental, floor=max(floor, exact), exact=True)))
            continue
        # Until a search has found a plan within the limits, a search may take longer: a large model's first
        # plan (its search's model alone takes seconds to build) is worth more than a look at more rentals.
        most = options.time_limit_seconds / (SEARCHES_IN_A_LIMIT if found else FIRST_SEARCHES_IN_A_LIMIT)
        share = replace(options, time_limit_seconds=min(left, most), stop=stop)
        outcome = _try(rental.deployment, rental.batch, problem, prefill, decodes[rental.batch], workload, share,
                       joints[key])
        outcomes.setdefault(key, []).append(outcome)
        searched = floor
        if outcome.result is not None and outcome.result.solver is not None:
            searched = max(floor, per_million_output_tokens(rental.price_per_hour, outcome.result.solver.bound,
                                                            workload.output_tokens))
            if outcome.refusal is None:
                cheapest = min(cheapest, outcome.result.cost_per_million_output_tokens)
                found = True
        bounds[key] = min(bounds.get(key, math.inf), searched)
    for *_, rental in queue:
        key = (rental.deployment, rental.batch)
        bounds[key] = min(bounds.get(key, math.inf), rental.floor)
    for key in joints:
        if key in outcomes:
            tried.append(min(outcomes[key], key=lambda t: (t.result is None, t.refusal is not None,
                                                           t.result.cost_per_million_output_tokens if t.result
                                                           else 0.0)))
        elif key in bounds and bounds[key] * (1 + CLOSE_ENOUGH_PER_TOKEN) >= cheapest:
            tried.append(Tried(*key, None, f"not searched: a plan of it costs at least ${bounds[key]:.3g} per 1M "
                                           "output tokens, no less than the plan's"))
        elif key in bounds:
            tried.append(Tried(*key, None, f"not searched in the time (it may cost as little as ${bounds[key]:.3g} "
                                           "per 1M output tokens)", "raise the time limit"))
        else:
            tried.append(Tried(*key, None, ruled_out.get(key, "no part of the fleet holds its weights and KV cache"),
                               _relax(workload, math.inf, math.inf) if key in ruled_out
                               else "add devices or memory to the fleet"))
    return min(bounds.values(), default=math.inf)


def _phase_ops(phase: PhaseGraphs) -> tuple[PhaseOp, ...]:
    """The ops of the graph a phase is planned on (its largest size's: see `_costed`), in order."""
    return tuple(PhaseOp(node.name, node.op, node.module_path) for node in phase.graphs[max(phase.graphs)])


def _kept_whole(name: str, sharding: ShardingPlan, splits_state: bool, tensor_parallel: bool) -> str | None:
    """Why no layer of the model may split across a group, where none may (None where groups were offered)."""
    if not tensor_parallel:
        return ("tensor parallelism was turned off (--no-tensor-parallel), so every layer runs whole on one "
                "device")
    if not sharding.styles:
        return f"{name} declares no tensor-parallel plan (tp_plan), so every layer runs whole on one device"
    if not sharding.degrees:
        return (f"{name}'s heads, KV heads and MLP width share no power-of-two factor, so no group splits them "
                "evenly and every layer runs whole")
    if not splits_state:
        return (f"{name}'s attention has modules of a style not priced here (such as a latent projection), so it "
                "runs whole and each member would hold the whole KV cache: every layer runs whole")
    return None


def _as_served(phase: PhaseGraphs, sharding: ShardingPlan) -> PhaseGraphs:
    """`phase` as a serving engine runs it: grouped-query attention reading each KV head in place
    (frontend/grouped_attention.py), each op marked with how it splits across a tensor-parallel group
    (frontend/sharding.py)."""
    return replace(phase, graphs={size: shard_graph(fuse_grouped_attention(graph), sharding)
                                  for size, graph in phase.graphs.items()})


def _phase_limits(workload: Workload, batch: int) -> dict[str, float]:
    """The most compute seconds per request each phase of a joint problem may take within the workload's limits:
    a prefill's within TTFT (the mean prompt's, no longer than the longest's), the decode steps' within TPOT each
    (output_tokens / batch steps a request)."""
    limits = {}
    if workload.ttft_seconds:
        limits["prefill"] = workload.ttft_seconds
    if workload.tpot_seconds:
        limits["decode"] = workload.tpot_seconds * workload.output_tokens / batch
    return limits


class _LatencyFloors:
    """The least TTFT and TPOT any placement on a set of devices has (the latency floor of the longest prompt's
    prefill, and of a decode step at each batch), worked out once per set."""

    def __init__(self, prefill: CostedPhase, decodes: Mapping[int, CostedPhase], workload: Workload):
        self.prefill, self.decodes, self.workload = prefill, decodes, workload
        self.longest = max(prefill.by_size)
        self._ttft: dict[tuple[str, ...], float] = {}
        self._tpot: dict[tuple[int, tuple[str, ...]], float] = {}

    def missed(self, batch: int, devices: tuple[str, ...]) -> str | None:
        """Which of the workload's limits no placement on `devices` meets, with the floors that prove it."""
        misses = []
        if self.workload.ttft_seconds:
            if devices not in self._ttft:
                self._ttft[devices] = _latency_floor_on(self.prefill.by_size[self.longest], devices)
            if self._ttft[devices] > self.workload.ttft_seconds:
                misses.append(_over(self._ttft[devices], self.workload.ttft_seconds,
                                    f"TTFT for {self.longest}-token prompts", devices))
        if self.workload.tpot_seconds:
            if (batch, devices) not in self._tpot:
                self._tpot[batch, devices] = _latency_floor_on(self.decodes[batch].problem, devices)
            if self._tpot[batch, devices] > self.workload.tpot_seconds:
                misses.append(_over(self._tpot[batch, devices], self.workload.tpot_seconds, "TPOT", devices))
        return "; ".join(misses) or None


def _over(floor: float, limit: float, what: str, devices: tuple[str, ...]) -> str:
    """Why no placement on `devices` meets a limit: the floor over it, or no room at all."""
    where = describe_devices(list(devices))
    if math.isinf(floor):
        return f"{what}: no placement of its weights and KV cache fits {where}"
    return f"on {where}, {what} at least {floor * 1e3:.3g} ms, over {limit * 1e3:g} ms"


def _latency_floor_on(problem: PlacementProblem, devices: tuple[str, ...]) -> float:
    """The latency floor of `problem` on `devices` alone (infinite where it has no placement there)."""
    restricted = problem.on_devices(devices)
    relaxation = priced_relaxation(restricted, lambda busy: 1.0, decide_used=False) if restricted else None
    return relaxation.value if relaxation is not None and relaxation.fits else math.inf


def _op_seconds(problem: PlacementProblem, targets: TargetSet) -> dict[str, dict[str, float]]:
    """Each op's compute seconds on one place of each kind (identical devices cost the same)."""
    kinds = list(dict.fromkeys(place_kind(target.name) for target in targets))
    first = {kind: next(t.name for t in targets if place_kind(t.name) == kind) for kind in kinds}
    return {node.name: {kind: node.compute_seconds[place] for kind, place in first.items()
                        if place in node.compute_seconds} for node in problem.nodes}


def _looped(problem: PlacementProblem) -> PlacementProblem:
    """`problem` with its last node followed by its first: the step that comes next."""
    first, last = problem.nodes[0].name, problem.nodes[-1].name
    return replace(problem, adjacent=(*problem.sequence(), (last, first, 1.0)))


def _costed(phase: PhaseGraphs, shares: Mapping[int, float], targets: TargetSet, cost_model: CostModel,
            engine_hop_seconds: float, token_loop: bool = False) -> CostedPhase:
    """A phase at the sizes `shares` names, each with its share of requests, costed and averaged per request.
    `token_loop` (decode): a step's token goes back from its last op (the logits) to its first for the next
    step, one hop more where they sit on different devices, as in any pipelined decode."""
    graphs = {size: phase.graphs[size] for size in shares}
    by_size = on_one_graph({size: build_problem(graph, tag(graph, targets), targets, cost_model, engine_hop_seconds)
                            for size, graph in graphs.items()})
    problem = mean_problem([(by_size[size], share) for size, share in shares.items()])
    if token_loop:
        by_size = {size: _looped(one) for size, one in by_size.items()}
        problem = _looped(problem)
    graph = graphs[max(graphs)]  # the graph every size is planned on (see on_one_graph)
    scale = {size: other.total_flops / graph.total_flops if graph.total_flops else 1.0
             for size, other in graphs.items()}
    flops = {node.name: sum(_flops_at(graphs[size], graph, node.name, scale[size]) * share
                            for size, share in shares.items())
             for node in graph}
    shards = {node.name: shard for node in graph if node.parameters and (shard := expert_shard(node.module_path))}
    groups = [t for t in targets if t.tensor_parallel is not None]
    collectives = {node.name: seconds for node in graph
                   if (seconds := {t.name: s for t in groups if (s := collective_seconds(node, t)) > 0})}
    split = {node.name: node.module_path for node in graph if node.sharding is not None}
    return CostedPhase(problem, by_size, phase.state, flops, shards, collectives,
                       {t.name: t.tensor_parallel.degree for t in groups}, split)


def _flops_at(graph: OpGraph, base: OpGraph, name: str, scale: float) -> float:
    """The FLOPs of `base`'s node `name` in `graph`, the same model at another size: its own where the graphs
    are one, else `base`'s times `scale` (the two graphs' totals' ratio)."""
    if len(graph) == len(base) and name in graph:
        return graph[name].flops
    return base[name].flops * scale


def _joint(prefill: CostedPhase, decode: CostedPhase, workload: Workload, batch: int,
           separate_phases: bool) -> PlacementProblem:
    """Both phases for one request of `workload` at decode batch `batch` (see partitioner/llm/joint.py)."""
    return joint_problem(prefill.problem, decode.problem, prefill.state | decode.state,
                         workload.output_tokens / batch, workload.prompt.mean / workload.context_tokens,
                         separate_phases)


def _try(deployment: str, batch: int, joint: PlacementProblem, prefill: CostedPhase, decode: CostedPhase,
         workload: Workload, options: SolverOptions, whole: PlacementProblem) -> Tried:
    """Search `joint` (a rental: the problem on part of the fleet) for throughput, and keep the cheapest per token
    of its plan and its seeds, read off `whole` (the problem on the whole fleet, whose fallback the figures
    compare with)."""
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
            results[label] = deployment_figures(deployment, batch, whole, result, prefill, decode, workload,
                                                assignment, report)
    misses = {label: result.misses(workload) for label, result in results.items()}
    kept = min(results, key=lambda label: (bool(misses[label]), results[label].cost_per_million_output_tokens))
    return Tried(deployment, batch, results[kept], "; ".join(misses[kept]) or None)


def _baselines(deployment: str, batch: int, joint: PlacementProblem, prefill: CostedPhase, decode: CostedPhase,
               workload: Workload) -> list[Tried]:
    """The one-request baselines on the whole fleet that fit and keep the phases apart where they must be, each
    as an outcome (with the limits it misses): scored, not searched."""
    outcomes = (_scored(deployment, batch, joint, strategy(joint), prefill, decode, workload)
                for strategy in BASELINES.values())
    return [outcome for outcome in outcomes if outcome is not None]


def _scored(deployment: str, batch: int, joint: PlacementProblem, assignment: Mapping[str, str],
            prefill: CostedPhase, decode: CostedPhase, workload: Workload) -> Tried | None:
    """A placement scored, not searched, as an outcome (with the limits it misses); None where it does not fit or
    puts both phases on a device a disaggregated deployment keeps apart."""
    result = score(joint, assignment)
    if not result.fits_memory or result.phase_conflicts:
        return None
    figures = deployment_figures(deployment, batch, joint, result, prefill, decode, workload, assignment, None)
    return Tried(deployment, batch, figures, "; ".join(figures.misses(workload)) or None)


def _whole_on_one_place(deployment: str, batch: int, joint: PlacementProblem, prefill: CostedPhase,
                        decode: CostedPhase, workload: Workload) -> list[Tried]:
    """Co-located, the whole model on one place of each kind (a device, or a tensor-parallel place) that runs
    every op and holds it: scored, not searched. Each is a plan the search must beat before it starts, so a
    rental of many devices whose floor is lower cannot take the time that would have found it."""
    if deployment != "co-located":
        return []
    first_of_each: dict[str, str] = {}
    for target in joint.targets:
        first_of_each.setdefault(place_kind(target.name), target.name)
    outcomes = (_scored(deployment, batch, joint, {node.name: place for node in joint.nodes}, prefill, decode,
                        workload)
                for place in first_of_each.values() if joint.on_devices((place,)) is not None)  # it runs every op
    return [outcome for outcome in outcomes if outcome is not None]


def _nothing_meets(workload: Workload, tried: list[Tried]) -> str:
    """Why no deployment is the plan, and what would change that: the refusals, or the limits every plan misses."""
    solved = [t for t in tried if t.result is not None]
    if not solved:
        reasons = list(dict.fromkeys(t.refusal for t in tried if t.refusal))[:2]
        fixes = list(dict.fromkeys(t.fix for t in tried if t.fix))
        fixes = [fix for fix in fixes if not any(fix != other and fix in other for other in fixes)]  # no repeats
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
