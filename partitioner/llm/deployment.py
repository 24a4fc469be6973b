"""What serving an LLM one way delivers, as values: a deployment's rates, money per token, TTFT, TPOT and memory,
read off a placement of both phases (partitioner/llm/joint.py), and the plan that compares them.

`deployment_figures` prices a joint placement under the serving model: at full
load, money per output token is the price of the devices used over the tokens
they deliver; time to first token (TTFT) is one prefill through its placement
(per prompt length), time per output token (TPOT) one decode step through its.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from partitioner.errors import PartitionerError
from partitioner.fields import FieldError, entries, exactly, listed, number, part, records, text, texts, whole
from partitioner.files import PLAN, check_schema_version, read_json, write_json
from partitioner.frontend.capture import ModelSource
from partitioner.llm.joint import phase_assignment
from partitioner.placement.problem import PlacementProblem, phase_of
from partitioner.placement.scoring import Score, score
from partitioner.placement.serving import device_kind
from partitioner.placement.solver import SolverReport
from partitioner.plan_records import TargetRecord
from targets.workload import Workload

LLM_SCHEMA_VERSION = 1
LLM_PLAN_KIND = "llm-serving"  # what tells an LLM plan file from a plan.json (partitioner/plan.py)


class DecodeState(str, enum.Enum):
    """What a causal LM keeps between decode steps, per request: what sizes its memory beside the weights."""

    KV_CACHE = "KV cache"                                                # keys and values of every token so far
    SSM_STATES = "convolution and SSM states"                            # the same size whatever the context
    HYBRID = "convolution and SSM states and a KV cache"                 # state-space layers and attention layers

    @property
    def grows_with_context(self) -> bool:
        """Whether a request's state grows with its context (an attention layer's keys and values)."""
        return self is not DecodeState.SSM_STATES


KV_CACHE, SSM_STATES, HYBRID_STATES = DecodeState.KV_CACHE, DecodeState.SSM_STATES, DecodeState.HYBRID


@dataclass(frozen=True, slots=True)
class GroupCollectives:
    """A tensor-parallel place's collectives in a deployment (targets/tensor_parallel.py): how many a decode step
    and a prefill (of the longest prompt) run, the seconds they take, and the modules split across its members
    (what running the place shards: partitioner/execution/tensor_parallel.py)."""

    degree: int
    per_decode_step: int
    decode_step_seconds: float
    per_prefill: int
    prefill_seconds: float
    split_modules: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"degree": self.degree, "per_decode_step": self.per_decode_step,
                "decode_step_seconds": self.decode_step_seconds, "per_prefill": self.per_prefill,
                "prefill_seconds": self.prefill_seconds, "split_modules": list(self.split_modules)}

    @classmethod
    def from_dict(cls, data: Mapping) -> GroupCollectives:
        degree = whole(data, "degree", minimum=2)
        if degree & (degree - 1):
            raise FieldError("degree", f"{degree} is not a power of two (the degrees a plan splits at)")
        return cls(degree, whole(data, "per_decode_step"), number(data, "decode_step_seconds"),
                   whole(data, "per_prefill"), number(data, "prefill_seconds"), texts(data, "split_modules", ()))


@dataclass(frozen=True, slots=True)
class PhaseOp:
    """One op of a phase as planned, in graph order: its node, its aten op and the module it belongs to (what lays a
    capture of the model with its weights beside the plan: partitioner/execution/llm_phases.py)."""

    name: str
    op: str
    module: str

    def to_list(self) -> list[str]:
        return [self.name, self.op, self.module]

    @classmethod
    def from_list(cls, found: Any) -> PhaseOp:
        name, op, module = exactly(found, 3, lambda item: text({"item": item}, "item"), "[node, op, module]")
        return cls(name, op, module)


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
    ttft_seconds: float  # the longest prompt's
    tpot_seconds: float
    bottleneck: str
    kv_cache_bytes: Mapping[str, int]  # per device, the KV caches it holds
    memory_bytes: Mapping[str, int]
    devices: Mapping[str, tuple[str, ...]]  # per phase, the devices running its ops
    off_fallback_flops: Mapping[str, float]  # per phase, the share of its FLOPs off the fallback
    ttft_by_prompt: Mapping[int, float]  # per prompt length of the workload, its time to first token
    expert_shards_on: Mapping[str, int]  # per device, the expert shards its decode holds (a mixture of experts)
    over_capacity_bytes: Mapping[str, int]  # per device, the bytes it would need beyond its memory (none: it fits)
    solver: SolverReport | None = None
    collectives: Mapping[str, GroupCollectives] = field(default_factory=dict)  # per tensor-parallel place used

    @property
    def fits_memory(self) -> bool:
        return not self.over_capacity_bytes

    def misses(self, workload: Workload) -> list[str]:
        """The workload's limits this deployment does not meet, each with its figure."""
        misses = []
        if workload.ttft_seconds and self.ttft_seconds > workload.ttft_seconds:
            misses.append(f"TTFT {self.ttft_seconds * 1e3:.3g} ms over {workload.ttft_seconds * 1e3:g} ms")
        if workload.tpot_seconds and self.tpot_seconds > workload.tpot_seconds:
            misses.append(f"TPOT {self.tpot_seconds * 1e3:.3g} ms over {workload.tpot_seconds * 1e3:g} ms")
        if workload.requests_per_second and self.requests_per_second < workload.requests_per_second:
            misses.append(f"{self.requests_per_second:.3g} req/s under {workload.requests_per_second:g}")
        return misses

    def to_dict(self) -> dict:
        return {"name": self.name, "batch_size": self.batch_size, "requests_per_second": self.requests_per_second,
                "output_tokens_per_second": self.output_tokens_per_second, "price_per_hour": self.price_per_hour,
                "cost_per_million_output_tokens": self.cost_per_million_output_tokens,
                "cost_per_million_input_tokens": self.cost_per_million_input_tokens,
                "ttft_seconds": self.ttft_seconds, "tpot_seconds": self.tpot_seconds, "bottleneck": self.bottleneck,
                "ttft_seconds_by_prompt_tokens": {str(k): v for k, v in self.ttft_by_prompt.items()},
                "expert_shards_on": dict(self.expert_shards_on),
                "over_capacity_bytes": dict(self.over_capacity_bytes),
                "kv_cache_bytes": dict(self.kv_cache_bytes), "memory_bytes": dict(self.memory_bytes),
                "devices": {p: list(d) for p, d in self.devices.items()},
                "off_fallback_flops": dict(self.off_fallback_flops),
                "collectives": {place: c.to_dict() for place, c in self.collectives.items()},
                "solver": self.solver.to_dict() if self.solver else None, "placement": dict(self.assignment)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Deployment:
        """The deployment `to_dict` wrote; raises FieldError naming a field that is not right."""
        by_prompt = entries(data, "ttft_seconds_by_prompt_tokens", number)
        if not all(tokens.isdigit() for tokens in by_prompt):
            raise FieldError("ttft_seconds_by_prompt_tokens", "expected prompt lengths (whole numbers) as keys")
        return cls(text(data, "name"), whole(data, "batch_size", minimum=1), entries(data, "placement", text),
                   number(data, "requests_per_second"), number(data, "output_tokens_per_second"),
                   number(data, "price_per_hour"), number(data, "cost_per_million_output_tokens"),
                   number(data, "cost_per_million_input_tokens"), number(data, "ttft_seconds"),
                   number(data, "tpot_seconds"), text(data, "bottleneck"), entries(data, "kv_cache_bytes", whole),
                   entries(data, "memory_bytes", whole), entries(data, "devices", texts),
                   entries(data, "off_fallback_flops", number, maximum=1.0),
                   {int(tokens): seconds for tokens, seconds in by_prompt.items()},
                   entries(data, "expert_shards_on", whole), entries(data, "over_capacity_bytes", whole),
                   part(data, "solver", SolverReport.from_dict) if data.get("solver") is not None else None,
                   entries(data, "collectives", lambda table, name: part(table, name, GroupCollectives.from_dict),
                           {}))


@dataclass(frozen=True, slots=True)
class CostedPhase:
    """One phase ready to join: its problem per request (the share-weighted mean over its sizes: prompt
    buckets), each size's own problem (for its latency), its state (the KV cache tensors it updates in place)
    and the FLOPs of each node per request (for the share of the work off the fallback)."""

    problem: PlacementProblem
    by_size: Mapping[int, PlacementProblem]
    state: frozenset[str]
    flops: Mapping[str, float]
    expert_shards: Mapping[str, str]  # node -> the expert shard whose weights it holds (a mixture of experts)
    # node -> {tensor-parallel place: seconds of the collective it ends with there} (the longest prompt's, for
    # prefill), and each such place's degree.
    collective_seconds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    degrees: Mapping[str, int] = field(default_factory=dict)
    split_modules: Mapping[str, str] = field(default_factory=dict)  # node -> its module, for each op that splits


@dataclass(frozen=True, slots=True)
class Tried:
    """A (deployment, batch) that was solved or refused, and why it is not the plan if it is not."""

    deployment: str
    batch_size: int
    result: Deployment | None
    refusal: str | None
    fix: str | None = None  # what would let a refused one through, where it was refused

    def to_dict(self) -> dict:
        return {"deployment": self.deployment, "batch_size": self.batch_size, "refusal": self.refusal,
                "fix": self.fix, **({"result": self.result.to_dict()} if self.result else {})}

    @classmethod
    def from_dict(cls, data: Mapping) -> Tried:
        return cls(text(data, "deployment"), whole(data, "batch_size", minimum=1),
                   part(data, "result", Deployment.from_dict) if data.get("result") is not None else None,
                   text(data, "refusal", None), text(data, "fix", None))


@dataclass(frozen=True, slots=True)
class LLMPlan:
    model_name: str
    workload: Workload
    fleet: str
    fallback: str
    layers: int | None  # the model's decoder layers, where its config says
    kv_cache_bytes_per_request: int  # at the workload's context
    best: Deployment
    tried: tuple[Tried, ...]
    baselines: Mapping[str, Deployment]  # on the best batch, co-located: all on the fallback, priority
    fallback_price_per_hour: float
    planning_seconds: float
    expert_shards: int  # shards per mixture-of-experts layer, each placed on its own (0: a dense model)
    # The least money per 1M output tokens any plan of the batches and deployments tried can cost: the search's
    # bound (partitioner/llm/rentals.py).
    cost_floor_per_million_output_tokens: float = 0.0
    source: ModelSource | None = None  # where the model came from, so later commands can build it again
    kept_whole: str | None = None  # why no layer may split across a group of devices, where none may
    model_fingerprint: str = ""  # its class, parameter count and dtype: what tells another model given to run it
    phase_ops: Mapping[str, tuple[PhaseOp, ...]] = field(default_factory=dict)  # per phase, its ops in order
    # The devices and tensor-parallel places the plan's deployment uses, as serving them needs (torch device,
    # host, spec): what `serve` starts one actor each for.
    targets: tuple[TargetRecord, ...] = ()
    # Per phase, per op, its compute seconds on one device of each group of identical devices that runs it (and
    # on each tensor-parallel place kind): a prefill's per request (prompt lengths by share), a decode step's.
    op_seconds: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    # Per device kind whose decode step is priced as a captured graph's replay, the seconds each kernel adds
    # (cost_models/graph_replay.py); kinds not named run it eagerly.
    graph_replay: Mapping[str, float] = field(default_factory=dict)
    decode_state: DecodeState = KV_CACHE

    def require_kv_cache(self, doing: str) -> None:
        """Refuse to `doing` a plan whose model keeps states other than a KV cache, which serving and export do not
        hand from prefill to decode yet (run --check does)."""
        if self.decode_state is not KV_CACHE:
            raise PartitionerError(
                f"{self.model_name} keeps {self.decode_state.value} between decode steps, not only a KV cache, and "
                f"{doing} hands only KV caches from prefill to decode so far. Fix: run --check on this plan runs it "
                "as placed (prefill, a decode step and generation beside the model); read its figures with report "
                "and explain.")

    @property
    def gap(self) -> float:
        """How far the plan's money per output token may be above the cheapest plan's: 0 means proven cheapest."""
        cost = self.best.cost_per_million_output_tokens
        return max(0.0, 1 - self.cost_floor_per_million_output_tokens / cost) if cost > 0 else 0.0

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
        return {"schema_version": LLM_SCHEMA_VERSION, "kind": LLM_PLAN_KIND, "model": self.model_name,
                "model_fingerprint": self.model_fingerprint,
                "model_source": self.source.to_dict() if self.source else None, "layers": self.layers,
                "fallback_price_per_hour": self.fallback_price_per_hour, "workload": self.workload.to_dict(),
                "fleet": self.fleet,
                "fallback": self.fallback, "planning_seconds": self.planning_seconds,
                "expert_shards": self.expert_shards,
                "kv_cache_bytes_per_request": self.kv_cache_bytes_per_request,
                "cost_floor_per_million_output_tokens": self.cost_floor_per_million_output_tokens,
                "gap": self.gap, "kept_whole": self.kept_whole, "best": self.best.to_dict(),
                "tried": [t.to_dict() for t in self.tried],
                "baselines": {name: d.to_dict() for name, d in self.baselines.items()},
                "phase_ops": {phase: [op.to_list() for op in ops] for phase, ops in self.phase_ops.items()},
                "targets": [target.to_dict() for target in self.targets],
                "op_seconds": {phase: {node: dict(costs) for node, costs in ops.items()}
                               for phase, ops in self.op_seconds.items()},
                "graph_replay": dict(self.graph_replay), "decode_state": self.decode_state.value}

    @classmethod
    def from_dict(cls, data: Mapping) -> LLMPlan:
        """The plan `to_dict` wrote; raises FieldError naming a field that is not right."""
        recorded = data.get("model_source")
        return cls(text(data, "model"), part(data, "workload", Workload.from_dict), text(data, "fleet"),
                   text(data, "fallback"), whole(data, "layers", minimum=1) if data.get("layers") is not None
                   else None, whole(data, "kv_cache_bytes_per_request"), part(data, "best", Deployment.from_dict),
                   records(data, "tried", Tried.from_dict),
                   entries(data, "baselines", lambda table, name: part(table, name, Deployment.from_dict)),
                   number(data, "fallback_price_per_hour"), number(data, "planning_seconds"),
                   whole(data, "expert_shards"), number(data, "cost_floor_per_million_output_tokens"),
                   part(data, "model_source", ModelSource.from_dict) if recorded is not None else None,
                   text(data, "kept_whole", None), text(data, "model_fingerprint", ""),
                   entries(data, "phase_ops", lambda table, name: listed(table, name, PhaseOp.from_list), {}),
                   records(data, "targets", TargetRecord.from_dict, ()),
                   entries(data, "op_seconds", lambda table, phase: entries(
                       table, phase, lambda ops, node: entries(ops, node, number)), {}),
                   entries(data, "graph_replay", number, {}),
                   DecodeState(text(data, "decode_state", KV_CACHE.value,
                                    choices=tuple(state.value for state in DecodeState))))

    def save(self, path: str | Path) -> Path:
        """Write the plan as versioned JSON (partitioner/files.py writes it whole or not at all)."""
        write_json(Path(path), self.to_dict())
        return Path(path)

    def built_model(self, spec: str | None = None) -> torch.nn.Module:
        """The model the plan was compiled for, built again with its weights from where the plan says it came
        from (or from `spec`, file.py[:function]), in eval mode; one error where it cannot be, or is another
        model (its fingerprint differs)."""
        from partitioner.frontend.capture import build_model_file
        from partitioner.frontend.model_folder import is_model_folder

        spec = spec or (str(self.source) if self.source else None)
        if spec is None:
            raise PartitionerError("the plan does not say where its model came from (written before plans recorded "
                                   "it). Fix: give the model (--model file.py[:function]; model= from Python).")
        if spec == str(self.source) and self.source.kind in ("python", "folder") and not Path(
                self.source.path).exists():
            raise PartitionerError(f"the plan's model {self.source.path!r} is not there (moved or deleted). "
                                   "Fix: give the model with --model file.py[:function] or --model FOLDER.")
        model, _, _ = build_model_file(spec)
        model.eval()  # generation, as served: no dropout
        if any(parameter.is_meta for parameter in model.parameters()) and is_model_folder(spec):
            raise PartitionerError(f"the model folder {spec} holds no weights (model.safetensors or its index): "
                                   "planning needs none, running it does. Fix: save the model's weights into it "
                                   "(model.save_pretrained), or give a build with weights with --model "
                                   "file.py[:function].")
        if any(parameter.is_meta for parameter in model.parameters()):
            raise PartitionerError(f"{spec} builds its model on the meta device (planning needs no weights; running "
                                   "it does). Fix: give a build of the same model with weights, e.g. from its "
                                   "config on the CPU, with --model file.py[:function].")
        if self.model_fingerprint and model_fingerprint(model) != self.model_fingerprint:
            raise PartitionerError(f"{spec} builds {model_fingerprint(model)}, and the plan is of "
                                   f"{self.model_fingerprint}. Fix: give the model the plan was compiled for, or "
                                   "compile this one with --workload.")
        return model

    @classmethod
    def load(cls, path: str | Path) -> LLMPlan:
        """The LLM plan in the file `path`, or one error naming what is wrong with it and the fix."""
        return checked_llm_plan(read_json(path, PLAN), str(path))


def model_fingerprint(model: torch.nn.Module) -> str:
    """What tells one LLM from another without its weights: its class, its parameter count, its dtype."""
    parameters = list(model.parameters())
    count = sum(parameter.numel() for parameter in parameters)
    dtype = str(parameters[0].dtype).removeprefix("torch.") if parameters else "no weights"
    return f"{type(model).__name__}, {count:,} parameters, {dtype}"


def checked_llm_plan(data: Any, source: str) -> LLMPlan:
    """The LLM plan in `data` (read from the file `source`), or a PartitionerError that says what is wrong."""
    version = data.get("schema_version") if isinstance(data, Mapping) else None
    if version is None:
        raise PartitionerError(f"{source} is an LLM serving plan from an earlier version, which wrote no "
                               "schema_version. Fix: compile the model again with --workload (this version "
                               "writes one every command reads).")
    check_schema_version(version, LLM_SCHEMA_VERSION, "LLM plan", "compile the model again with --workload")
    if data.get("kind") != LLM_PLAN_KIND:
        raise PartitionerError(f"{source} is not a valid LLM plan file: its kind is {data.get('kind')!r}, not "
                               f"{LLM_PLAN_KIND!r}. Fix: compile the model again with --workload (the file was "
                               "edited or damaged).")
    try:
        return LLMPlan.from_dict(data)
    except FieldError as error:
        raise PartitionerError(f"{source} is not a valid LLM plan file: its {error}. Fix: compile the model "
                               "again with --workload (the file was edited or damaged).") from None


def deployment_figures(deployment: str, batch: int, joint: PlacementProblem, result: Score, prefill: CostedPhase,
             decode: CostedPhase, workload: Workload, assignment: Mapping[str, str],
             report: SolverReport | None) -> Deployment:
    """What a joint placement (scored as `result`) delivers: rates and money at full load, TTFT and TPOT, memory
    and KV cache."""
    serving = result.serving
    placed = {phase: phase_assignment(assignment, phase) for phase in ("prefill", "decode")}
    ttft = {size: score(problem, placed["prefill"]).latency_seconds for size, problem in prefill.by_size.items()}
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
    held: dict[str, set[str]] = {}  # per device, the shards with weights there (a split shard counts twice)
    for node, shard in decode.expert_shards.items():
        held.setdefault(placed["decode"][node], set()).add(shard)
    shards = {device: len(names) for device, names in sorted(held.items())}
    return Deployment(deployment, batch, dict(assignment), rate, rate * workload.output_tokens,
                      serving.price_per_hour, 1e6 * per_request / workload.output_tokens,
                      1e6 * per_request * share / workload.prompt.mean, max(ttft.values()),
                      decode_alone.latency_seconds, serving.bottleneck, kv_bytes, dict(result.memory_bytes),
                      devices, off, ttft, shards, dict(result.over_capacity_bytes), report,
                      _collectives(placed, prefill, decode))


def _collectives(placed: Mapping[str, Mapping[str, str]], prefill: CostedPhase, decode: CostedPhase
                 ) -> dict[str, GroupCollectives]:
    """Per tensor-parallel place the plan uses, its collectives in a decode step and in a prefill."""
    counts: dict[tuple[str, str], int] = {}
    seconds: dict[tuple[str, str], float] = {}
    degrees: dict[str, int] = {}
    modules: dict[str, set[str]] = {}
    for phase, costed in (("prefill", prefill), ("decode", decode)):
        for node, module in costed.split_modules.items():
            place = placed[phase].get(node)
            if place in costed.degrees:
                degrees[place] = costed.degrees[place]
                modules.setdefault(place, set()).add(module)
        for node, on_place in costed.collective_seconds.items():
            place = placed[phase].get(node)
            if place in on_place:
                degrees[place] = costed.degrees[place]
                counts[place, phase] = counts.get((place, phase), 0) + 1
                seconds[place, phase] = seconds.get((place, phase), 0.0) + on_place[place]
    return {place: GroupCollectives(degree, counts.get((place, "decode"), 0), seconds.get((place, "decode"), 0.0),
                                    counts.get((place, "prefill"), 0), seconds.get((place, "prefill"), 0.0),
                                    tuple(sorted(modules.get(place, ()))))
            for place, degree in sorted(degrees.items())}


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
