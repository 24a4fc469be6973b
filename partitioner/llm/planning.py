"""Plan an LLM for a workload on a fleet: both phases, co-located and disaggregated, priced per token.

Prefill is captured once and a decode step per batch size
(partitioner/llm/phases.py), costed, joined into one serving problem
(partitioner/llm/joint.py) and solved for throughput: with each weight placed
once (co-located) and with each device given to one phase (disaggregated).
Batch sizes whose weights and KV cache exceed the fleet's memory are refused
unsolved; the others are tried from the largest down, stopping once a batch
meets the limits and the next smaller one costs more per token. At full load, money per output token is the price of
the devices used over the tokens they deliver; time to first token (TTFT) is
one prefill through its placement, time per output token (TPOT) one decode
step through its. The batch and deployment with the least money per output
token that meets the workload's limits is the plan; the others are reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Mapping

import torch

from cost_models.base import CostModel
from cost_models.roofline import RooflineCostModel
from partitioner.errors import PartitionerError
from partitioner.frontend.capture import CapturedModel, ModelSource
from partitioner.frontend.mutation import written_inputs
from partitioner.frontend.op_graph import annotate
from partitioner.llm.joint import joint_problem, phase_assignment
from partitioner.llm.phases import CacheShape, cache_shape, capture_decode, capture_prefill
from targets.workload import Workload
from partitioner.placement.baselines import BASELINES
from partitioner.placement.infeasibility import phases_sharing_a_device
from partitioner.placement.objectives import THROUGHPUT
from partitioner.placement.problem import PlacementProblem, build_problem, phase_of
from partitioner.placement.scoring import Score, score
from partitioner.placement.serving import device_kind
from partitioner.placement.solver import SolverOptions, SolverReport, solve
from partitioner.placement.tagging import tag
from partitioner.units import format_bytes
from targets.fleet import Fleet

DEPLOYMENTS = ("co-located", "disaggregated")
BATCH_CANDIDATES = (1, 4, 16, 64, 256)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One way of serving the workload: a batch size, a placement of both phases, and what it delivers."""

    name: str
    batch_size: int
    assignment: Mapping[str, str]  # over the joint problem's nodes, "prefill/..." and "decode/..."
    requests_per_second: float
    output_tokens_per_second: float
    price_per_hour: float
    cost_per_million_output_tokens: float  # the whole request's money over its output tokens: plans compare on it
    cost_per_million_input_tokens: float  # the prefill's share of that money over the prompt's tokens
    ttft_seconds: float
    tpot_seconds: float
    bottleneck: str
    kv_cache_bytes: Mapping[str, int]  # per device, the KV caches it holds
    memory_bytes: Mapping[str, int]
    devices: Mapping[str, tuple[str, ...]]  # per phase, the devices running its ops
    off_fallback_flops: Mapping[str, float]  # per phase, the share of its FLOPs off the fallback
    solver: SolverReport | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "batch_size": self.batch_size, "requests_per_second": self.requests_per_second,
                "output_tokens_per_second": self.output_tokens_per_second, "price_per_hour": self.price_per_hour,
                "cost_per_million_output_tokens": self.cost_per_million_output_tokens,
                "cost_per_million_input_tokens": self.cost_per_million_input_tokens,
                "ttft_seconds": self.ttft_seconds, "tpot_seconds": self.tpot_seconds, "bottleneck": self.bottleneck,
                "kv_cache_bytes": dict(self.kv_cache_bytes), "memory_bytes": dict(self.memory_bytes),
                "devices": {p: list(d) for p, d in self.devices.items()},
                "off_fallback_flops": dict(self.off_fallback_flops),
                "solver": self.solver.to_dict() if self.solver else None, "placement": dict(self.assignment)}


@dataclass(frozen=True, slots=True)
class CostedPhase:
    """One phase ready to join: its problem, its state (the KV cache tensors it updates in place) and the FLOPs
    of each node (for the share of the work off the fallback)."""

    problem: PlacementProblem
    state: frozenset[str]
    flops: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Tried:
    """A (deployment, batch) that was solved or refused, and why it is not the plan if it is not."""

    deployment: str
    batch_size: int
    result: Deployment | None
    refusal: str | None


@dataclass(frozen=True, slots=True)
class LLMPlan:
    model_name: str
    workload: Workload
    fleet: str
    fallback: str
    cache: CacheShape
    best: Deployment
    tried: tuple[Tried, ...]
    baselines: Mapping[str, Deployment]  # on the best batch, co-located: all on the fallback, priority
    fallback_price_per_hour: float
    planning_seconds: float

    def same_price_fallback_tokens_per_second(self) -> tuple[float, float]:
        """How many fallback devices the plan's hourly price buys (fractional), and the output tokens per second
        they deliver, each serving as the all-on-fallback baseline does."""
        replicas = self.best.price_per_hour / self.fallback_price_per_hour if self.fallback_price_per_hour else 1.0
        return replicas, replicas * self.baselines["fallback"].output_tokens_per_second

    def best_of(self, deployment: str) -> Deployment | None:
        """The cheapest per output token of one deployment that meets the limits."""
        found = [t.result for t in self.tried if t.deployment == deployment and t.result and t.refusal is None]
        return min(found, key=lambda d: d.cost_per_million_output_tokens, default=None)

    def to_dict(self) -> dict:
        return {"model": self.model_name, "workload": self.workload.to_dict(), "fleet": self.fleet,
                "fallback": self.fallback, "planning_seconds": self.planning_seconds,
                "kv_cache_bytes_per_request": self.cache.bytes_for(self.workload.context_tokens),
                "best": self.best.to_dict(),
                "tried": [{"deployment": t.deployment, "batch_size": t.batch_size, "refusal": t.refusal,
                           **({"result": t.result.to_dict()} if t.result else {})} for t in self.tried],
                "baselines": {name: d.to_dict() for name, d in self.baselines.items()}}


def plan_llm(model: torch.nn.Module, workload: Workload, fleet: Fleet, *, time_limit_seconds: float = 60.0,
             cost_model: CostModel | None = None, source: ModelSource | None = None, name: str | None = None,
             fallback: str | None = None) -> LLMPlan:
    """The cheapest way per output token to serve `workload` with `model` on `fleet`, within its limits."""
    started = time.perf_counter()
    cost_model = cost_model or RooflineCostModel()
    targets = fleet.target_set(fallback)
    shape = cache_shape(model)
    name = name or type(model).__name__
    context = workload.context_tokens
    prefill = _costed(capture_prefill(model, workload.prompt_tokens, context, shape, source, name), targets,
                      cost_model)
    batches = (workload.batch_size,) if workload.batch_size else tuple(
        b for b in BATCH_CANDIDATES if b <= workload.max_batch_size)
    weights = sum(size for p, size in prefill.problem.parameter_bytes.items() if p not in prefill.state)
    memory = sum(t.memory_bytes for t in prefill.problem.targets)
    tried: list[Tried] = []
    runs = []  # (deployment, batch) pairs whose weights and KV caches fit the fleet's memory at all
    for batch in batches:
        for deployment in DEPLOYMENTS:
            copies = 2 if deployment == "disaggregated" else 1
            need = copies * weights + shape.bytes_for(context, batch) + shape.bytes_for(context)
            if need > memory:
                tried.append(Tried(deployment, batch, None, f"{copies} x {format_bytes(weights)} of weights and "
                                   f"{format_bytes(shape.bytes_for(context, batch))} of KV cache exceed the fleet's "
                                   f"{format_bytes(memory)}"))
            else:
                runs.append((deployment, batch))
    per_solve = time_limit_seconds / max(1, len(runs))
    decodes, co_located = {}, {}
    for deployment in DEPLOYMENTS:
        # Largest batch first: a smaller one reads the same weights for fewer tokens, so it costs more per token
        # unless the larger misses TPOT. Down from there until a batch meets the limits and the next is dearer.
        best_so_far: Deployment | None = None
        for batch in sorted((b for d, b in runs if d == deployment), reverse=True):
            if batch not in decodes:
                decodes[batch] = _costed(capture_decode(model, batch, context, shape, source, name), targets,
                                         cost_model)
            joint = _joint(prefill, decodes[batch], workload, batch, deployment == "disaggregated")
            if deployment == "co-located":
                co_located[batch] = joint
            attempt = _try(deployment, batch, joint, prefill, decodes[batch], workload, per_solve)
            tried.append(attempt)
            if attempt.result is None or attempt.refusal is not None:
                continue
            if best_so_far is not None and \
                    attempt.result.cost_per_million_output_tokens >= best_so_far.cost_per_million_output_tokens:
                break
            best_so_far = attempt.result
    tried.sort(key=lambda t: (t.batch_size, DEPLOYMENTS.index(t.deployment)))
    meeting = [t.result for t in tried if t.result is not None and t.refusal is None]
    if not meeting:
        raise PartitionerError(_nothing_meets(workload, tried))
    best = min(meeting, key=lambda d: d.cost_per_million_output_tokens)
    decode = decodes[best.batch_size]
    joint = co_located.get(best.batch_size) or _joint(prefill, decode, workload, best.batch_size, False)
    baselines = {}
    for label, strategy in BASELINES.items():
        assignment = strategy(joint)
        baselines[label] = _figures("co-located", best.batch_size, joint, score(joint, assignment), prefill, decode,
                                    workload, assignment, None)
    fallback_price = next(t.price_per_hour for t in targets if t.name == targets.fallback)
    return LLMPlan(name, workload, fleet.describe(), targets.fallback, shape, best, tuple(tried), baselines,
                   fallback_price, time.perf_counter() - started)


def _costed(captured: CapturedModel, targets, cost_model: CostModel) -> CostedPhase:
    graph = annotate(captured.program)
    problem = build_problem(graph, tag(graph, targets), targets, cost_model)
    return CostedPhase(problem, frozenset(written_inputs(captured.program.graph)), {n.name: n.flops for n in graph})


def _joint(prefill: CostedPhase, decode: CostedPhase, workload: Workload, batch: int,
           separate_phases: bool) -> PlacementProblem:
    """Both phases for one request of `workload` at decode batch `batch` (see partitioner/llm/joint.py)."""
    return joint_problem(prefill.problem, decode.problem, prefill.state | decode.state,
                         workload.output_tokens / batch, workload.prompt_tokens / workload.context_tokens,
                         separate_phases)


def _try(deployment: str, batch: int, joint: PlacementProblem, prefill: CostedPhase, decode: CostedPhase,
         workload: Workload, seconds: float) -> Tried:
    if (clash := phases_sharing_a_device(joint)) is not None:  # no need to search to know
        return Tried(deployment, batch, None, clash.split(". Fix:")[0])
    hints = {label: strategy(joint) for label, strategy in BASELINES.items()}
    try:
        placement = solve(joint, THROUGHPUT, SolverOptions(time_limit_seconds=seconds), hints=hints)
    except PartitionerError as error:
        return Tried(deployment, batch, None, str(error).split(". Fix:")[0])
    # Throughput is what CP-SAT maximises; money per token is price over throughput, so a baseline on fewer
    # devices may be cheaper per token than the fastest plan: the cheapest valid one is kept.
    scores = {label: score(joint, assignment) for label, assignment in
              {"cp-sat": placement.assignment, **hints}.items()}
    candidates = {label: assignment for label, assignment in {"cp-sat": placement.assignment, **hints}.items()
                  if label == "cp-sat" or (scores[label].fits_memory and not scores[label].phase_conflicts)}
    cheapest = min(candidates, key=lambda label: scores[label].serving.cost_per_request_at_load)
    report = placement.report if cheapest == "cp-sat" else replace(placement.report, origin=cheapest)
    result = _figures(deployment, batch, joint, scores[cheapest], prefill, decode, workload, candidates[cheapest],
                      report)
    misses = []
    if workload.ttft_seconds and result.ttft_seconds > workload.ttft_seconds:
        misses.append(f"TTFT {result.ttft_seconds * 1e3:.3g} ms over {workload.ttft_seconds * 1e3:g} ms")
    if workload.tpot_seconds and result.tpot_seconds > workload.tpot_seconds:
        misses.append(f"TPOT {result.tpot_seconds * 1e3:.3g} ms over {workload.tpot_seconds * 1e3:g} ms")
    if workload.requests_per_second and result.requests_per_second < workload.requests_per_second:
        misses.append(f"{result.requests_per_second:.3g} req/s under {workload.requests_per_second:g}")
    return Tried(deployment, batch, result, "; ".join(misses) or None)


def _figures(deployment: str, batch: int, joint: PlacementProblem, result: Score, prefill: CostedPhase,
             decode: CostedPhase, workload: Workload, assignment: Mapping[str, str],
             report: SolverReport | None) -> Deployment:
    """What a joint placement (scored as `result`) delivers: rates and money at full load, TTFT and TPOT, memory
    and KV cache."""
    serving = result.serving
    placed = {phase: phase_assignment(assignment, phase) for phase in ("prefill", "decode")}
    prefill_alone = score(prefill.problem, placed["prefill"])
    decode_alone = score(decode.problem, placed["decode"])
    rate = serving.throughput_per_second
    per_request = serving.cost_per_request_at_load
    share = _prefill_share(joint, assignment, serving.bottleneck)
    kv: dict[str, set[str]] = {}
    for node in joint.nodes:
        for parameter in node.parameters:
            if phase_of(parameter):  # state, named per phase by joint_problem
                kv.setdefault(assignment[node.name], set()).add(parameter)
    kv_bytes = {target: sum(joint.parameter_bytes[p] for p in names) for target, names in kv.items()}
    devices = {phase: tuple(sorted(set(where.values()))) for phase, where in placed.items()}
    off = {}
    for phase, costed in (("prefill", prefill), ("decode", decode)):
        total = sum(costed.flops.values()) or 1
        off[phase] = sum(f for n, f in costed.flops.items()
                         if device_kind(placed[phase][n]) != device_kind(joint.fallback)) / total
    return Deployment(deployment, batch, dict(assignment), rate, rate * workload.output_tokens,
                      serving.price_per_hour, 1e6 * per_request / workload.output_tokens,
                      1e6 * per_request * share / workload.prompt_tokens, prefill_alone.latency_seconds,
                      decode_alone.latency_seconds, serving.bottleneck, kv_bytes, dict(result.memory_bytes),
                      devices, off, report)


def _prefill_share(joint: PlacementProblem, assignment: Mapping[str, str], bottleneck: str) -> float:
    """The share of a request's money its prefill accounts for: prefill's part of the bottleneck device's compute
    (or, for a link bottleneck, of all compute)."""
    prefill = decode = 0.0
    for node in joint.nodes:
        target = assignment[node.name]
        if bottleneck in joint.target_names and target != bottleneck:
            continue
        seconds = node.compute_seconds[target]
        if phase_of(node.name) == "prefill":
            prefill += seconds
        else:
            decode += seconds
    return prefill / (prefill + decode) if prefill + decode else 0.0


def _nothing_meets(workload: Workload, tried: list[Tried]) -> str:
    solved = [t for t in tried if t.result is not None]
    if not solved:
        reasons = "; ".join(dict.fromkeys(f"{t.deployment} batch {t.batch_size}: {t.refusal}" for t in tried[:2]))
        return f"no deployment of {workload.name} fits this fleet ({reasons}). Fix: add devices or memory."
    ttft = min(t.result.ttft_seconds for t in solved)
    tpot = min(t.result.tpot_seconds for t in solved)
    return (f"no plan meets {workload.name}'s limits: the best TTFT reached is {ttft * 1e3:.3g} ms and the best "
            f"TPOT {tpot * 1e3:.3g} ms (not always in the same plan). Fix: relax ttft_ms or tpot_ms, or plan on "
            "faster devices.")
