"""Serve an LLM plan on Ray as tokens: one actor per device, each prompt prefilled where the plan places prefill,
its KV cache handed to a decode batch where the plan places decode, decode steps pipelined across batches.

`deploy_llm_on_ray(plan, model)` captures both phases of the model (with its weights) at the plan's sizes, places
their ops as the plan placed them (partitioner/deploy/llm_phase_stages.py) and starts one `LLMDeviceWorker`
actor per device the plan uses, holding its partitions of both phases (co-located: one device holds a layer's
weights for both; disaggregated: prefill devices and decode devices, each with their own) and, resident, the KV
cache tensors its partitions read (partitioner/deploy/llm_worker.py).

The driver schedules, as a serving engine's scheduler does. Requests are grouped into decode batches of the
plan's batch size by prompt and output length (a static cache takes one position for a whole batch, so its rows
advance together). A batch is admitted into a free decode slot: each prompt is prefilled alone (its stages
chained actor to actor through Ray's object store), its first token chosen greedily by the actor that computes
the logits (only the token comes back to the driver), and its
cache handed from the prefill devices to its row of the slot. Then the batch's decode steps run, each token fed
back as the next step's input. Several batches are in flight at once (by default one per device decode runs on),
so while one batch's step runs on a device, another's runs on the next: the pipeline the plan's throughput
assumes. Actors take calls as their inputs are ready (Ray's out-of-order actor execution); each call waits for
what it must follow on its own actor (the previous step of its batch, the hand-over of its cache). Where a
partition on another device updates a cache tensor (it was handed on as an alias, such as a position counter a
no-op cast passes through), its new value is copied back to the actor that keeps it, as shared memory would have
it.

Faults end it all: a dead actor, a call past the timeout, Ctrl-C: one error (or the interrupt), after every
actor, the placement groups and a local Ray instance are removed.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

from partitioner.deploy import ray_instance
from partitioner.deploy.cluster import check_devices, placed_actor, reserve_hosts, start_fault
from partitioner.deploy.in_flight import local_store_bytes
from partitioner.deploy.llm_measurement import LLMServeMeasurement
from partitioner.deploy.llm_phase_stages import PhaseStages, phase_stages
from partitioner.deploy.llm_requests import LLMRequest
from partitioner.deploy.llm_worker import LLMDeviceWorker, WorkerPhase
from partitioner.deploy.ray_instance import StartedRay, check_timeout, require_ray
from partitioner.deploy.resources import resources_needed
from partitioner.deploy.shipment import shipped
from partitioner.deploy.stages import FromPartition
from partitioner.deploy.teardown import remove
from partitioner.deploy.worker import STATISTICS, emulated_places
from partitioner.errors import PartitionerError
from partitioner.execution.tensor_parallel import require_weights
from partitioner.llm.deployment import LLMPlan
from partitioner.llm.phases import DECODE, PREFILL, token_positions

_T = TypeVar("_T")
# Prefills timed alone per prompt length for the measurement's TTFT beside the plan's (the median is kept).
ALONE_RUNS = 3
# Decode steps of a batch submitted beyond the last whose token came.
STEPS_AHEAD = 2


@dataclass(eq=False)
class _Batch:
    """A decode batch being served: its requests (rows past them are empty), and what it has produced so far."""

    requests: Sequence[LLMRequest]
    rows: int
    slot: int = -1
    admitted: float = 0.0
    first_token_at: dict[int, float] = field(default_factory=dict)  # row -> when its first token came
    first_tokens: dict[int, int] = field(default_factory=dict)
    steps: list[torch.Tensor] = field(default_factory=list)  # each decode step's tokens, one per row
    step_at: list[float] = field(default_factory=list)
    waits: dict[str, list[Any]] = field(default_factory=dict)  # place -> calls there the next step must follow
    submitted: int = 0  # decode steps submitted so far
    fed: Any = None  # what the next step's tokens come from: (results holding them, their item)

    @property
    def prompt_tokens(self) -> int:
        return self.requests[0].prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.requests[0].output_tokens

    def tokens(self) -> torch.Tensor:
        """The tokens generated, one row per request: the first (from prefill) and every decode step's."""
        first = torch.tensor([self.first_tokens[row] for row in range(len(self.requests))])
        return torch.stack([first, *(step[:len(self.requests)] for step in self.steps)], dim=1)


class LLMRayDeployment:
    """An LLM plan running on Ray: `generate` tokens, `benchmark` a stream of requests, `shutdown` it all."""

    def __init__(self, plan: LLMPlan, model: torch.nn.Module, workers: Mapping[str, Any], groups: Sequence[Any],
                 started: StartedRay | None, phases: dict[str, PhaseStages], batches_in_flight: int,
                 timeout_seconds: float, devices: Mapping[str, str]):
        self.plan = plan
        self.model = model
        self.workers = dict(workers)
        self._groups = list(groups)
        self._started = started
        self.phases = phases  # "prefill/256", "decode/16" -> the phase at that size as stages
        self.batches_in_flight = batches_in_flight
        self.timeout_seconds = timeout_seconds
        self.devices = dict(devices)
        self.batch_size = plan.best.batch_size
        self.context = plan.workload.context_tokens
        self._slots = itertools.count()  # prefill slots: one per prompt, never reused
        self._closed = False

    def __enter__(self) -> LLMRayDeployment:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def generate(self, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy generation of `new_tokens` for each row of `prompts` (token ids, one length): the token ids,
        prompts included (`generate`'s layout)."""
        if prompts.dim() != 2 or new_tokens < 1:
            raise PartitionerError("generate takes prompts as a 2-D tensor of token ids and at least 1 new token. "
                                   "Fix: pass e.g. torch.tensor([[1, 2, 3]]) and 8.")
        if prompts.shape[0] == 0:
            raise PartitionerError("generate was given no prompts. Fix: pass at least one row of token ids.")
        batches = self._batched([LLMRequest(row, new_tokens) for row in prompts])
        batches = self._guarded(lambda: self._serve(batches, self.batches_in_flight))
        return torch.cat([prompts, torch.cat([batch.tokens() for batch in batches])], dim=1)

    def benchmark(self, requests: Sequence[LLMRequest]) -> LLMServeMeasurement:
        """Serve `requests` as a stream, `batches_in_flight` decode batches at a time, after a warm-up; measure
        tokens per second, each request's TTFT and TPOT, each device's busy share, and one prefill and one
        batch's decode steps alone."""
        if not requests:
            raise PartitionerError("no requests to serve. Fix: give at least one (--requests 32).")
        batches = self._batched(requests)
        return self._guarded(lambda: self._benchmark(requests, batches))

    def shutdown(self) -> None:
        """Remove the actors and the placement groups (and Ray, if this started it)."""
        if self._closed:
            return
        self._closed = True
        remove(require_ray(), self.workers.values(), self._groups, self._started)

    # -- serving -------------------------------------------------------------------------------------------------

    def _benchmark(self, requests: Sequence[LLMRequest], batches: list[_Batch]) -> LLMServeMeasurement:
        lengths = sorted({request.prompt_tokens for request in requests})
        for length in lengths:  # warm-up: each phase's first run allocates; then one prefill at a time, alone
            self._prefill_alone(requests, length)
        alone_ttft = {length: sorted(self._prefill_alone(requests, length) for _ in range(ALONE_RUNS))[ALONE_RUNS // 2]
                      for length in lengths}
        alone = self._serve([_Batch(batches[0].requests, batches[0].rows)], 1)[0]
        alone_tpot = _mean_step(alone)
        in_flight = min(self.batches_in_flight, len(batches))  # no more in flight than there are batches
        before = self._busy()
        started = time.perf_counter()
        served = self._serve(batches, in_flight)
        seconds = time.perf_counter() - started
        after = self._busy()
        busy = {place: after[place] - before[place] for place in self.workers}
        ttft, tpot = [], []
        generated = {id(request): tuple(row.tolist()) for batch in served
                     for request, row in zip(batch.requests, batch.tokens())}
        for batch in served:
            for row, request in enumerate(batch.requests):
                ttft.append(batch.first_token_at[row] - batch.admitted)
                if batch.steps:
                    tpot.append((batch.step_at[-1] - batch.first_token_at[row]) / len(batch.steps))
        best = self.plan.best
        return LLMServeMeasurement(
            len(requests), sum(request.output_tokens for request in requests), seconds, self.batch_size,
            in_flight, tuple(ttft), tuple(tpot), alone_ttft, alone_tpot,
            len(requests) / sum(batch.rows for batch in served), {p: busy[p] / seconds for p in self.workers},
            self.devices, best.output_tokens_per_second, dict(best.ttft_by_prompt), best.tpot_seconds,
            best.bottleneck, tuple(generated[id(request)] for request in requests))

    def _batched(self, requests: Sequence[LLMRequest]) -> list[_Batch]:
        """The requests as decode batches: those of one prompt and output length together, `batch_size` rows each."""
        for request in requests:
            if request.output_tokens < 1:
                raise PartitionerError(f"a request asks for {request.output_tokens} output tokens. Fix: ask for at "
                                       "least 1.")
            if request.prompt_tokens + request.output_tokens > self.context + 1:
                raise PartitionerError(
                    f"a request of {request.prompt_tokens} prompt tokens and {request.output_tokens} output tokens "
                    f"needs more KV cache than the plan's {self.context} tokens of context (its workload's longest "
                    "prompt plus longest output). Fix: serve shorter requests, or compile for a workload that "
                    "holds them.")
        groups: dict[tuple[int, int], list[LLMRequest]] = {}
        for request in requests:
            groups.setdefault((request.prompt_tokens, request.output_tokens), []).append(request)
        for length in sorted({tokens for tokens, _ in groups}):  # before serving: a length it cannot serve is refused
            self._phase(PREFILL, length)                        # with the deployment still up
        return [_Batch(group[start:start + self.batch_size], self.batch_size)
                for group in groups.values() for start in range(0, len(group), self.batch_size)]

    def _serve(self, batches: Sequence[_Batch], in_flight: int) -> list[_Batch]:
        """Run `batches` to their last token, at most `in_flight` at once; each as soon as a slot is free. The
        driver only watches tokens arrive: each step's token goes from the actor that chose it to the next step's
        first actor directly."""
        ray = require_ray()
        queue, free = list(batches), list(range(in_flight))
        pending: dict[Any, tuple[_Batch, int, FromPartition]] = {}  # token awaited -> (batch, row or -1 - step, where)
        while queue or pending:
            while queue and free:
                batch = queue.pop(0)
                batch.slot = free.pop(0)
                pending.update(self._admit(batch))
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.timeout_seconds)
            if not ready:
                raise self._timed_out()
            arrived = time.perf_counter()
            batch, index, source = pending.pop(ready[0])
            tokens = _item(ray.get(ready[0], timeout=self.timeout_seconds), source)  # chosen where the logits are
            if index >= 0:  # a prompt's prefill: its first token
                batch.first_tokens[index] = int(tokens[0])
                batch.first_token_at[index] = arrived
            else:
                batch.steps[-1 - index] = tokens
                batch.step_at[-1 - index] = arrived
            came = sum(1 for at in batch.step_at if at)
            pending.update(self._decode_steps(batch, came + 1 + STEPS_AHEAD))
            if len(batch.first_tokens) == len(batch.requests) and all(at for at in batch.step_at):
                self._finish(batch)
                free.append(batch.slot)
        return list(batches)

    def _admit(self, batch: _Batch) -> dict[Any, tuple[_Batch, int, FromPartition]]:
        """Prefill each request of `batch` alone, hand its cache to its row of the batch's decode slot, and chain
        the batch's first decode steps after them (`_decode_steps` adds the rest as tokens come); the tokens to
        watch for."""
        batch.admitted = time.perf_counter()
        prefill, decode = self._phase(PREFILL, batch.prompt_tokens), self._phase(DECODE, self.batch_size)
        awaited, chosen = {}, []
        for row, request in enumerate(batch.requests):
            slot = next(self._slots)
            refs, calls = self._submit(prefill, slot, request.prompt[None], 0, {})
            chosen.append(refs[prefill.logits.partition])
            awaited[chosen[-1]] = (batch, row, prefill.logits)
            for place, ref in self._hand_over(prefill, decode, slot, batch.slot, row, calls).items():
                batch.waits.setdefault(place, []).append(ref)
        steps = batch.output_tokens - 1
        batch.steps, batch.step_at = [torch.empty(0)] * steps, [0.0] * steps
        batch.fed = (tuple(chosen), prefill.logits.item)  # the first step reads each row's first token
        return {**awaited, **self._decode_steps(batch, STEPS_AHEAD)}

    def _decode_steps(self, batch: _Batch, upto: int) -> dict[Any, tuple[_Batch, int, FromPartition]]:
        """Submit the batch's decode steps up to step `upto` (chained: each reads the token the one before chose);
        the tokens to watch for. A few steps ahead of the tokens that came keep the actors fed without holding the
        driver at a batch's admission for all of its steps."""
        decode = self._phase(DECODE, self.batch_size)
        blank = torch.zeros(self.batch_size, 1, dtype=torch.long)  # rows past the requests read token 0
        awaited = {}
        while batch.submitted < min(upto, len(batch.steps)):
            step = batch.submitted
            refs, batch.waits = self._submit(decode, batch.slot, blank, batch.prompt_tokens + step, batch.waits,
                                             batch.fed)
            batch.fed = ((refs[decode.logits.partition],), decode.logits.item)
            awaited[refs[decode.logits.partition]] = (batch, -1 - step, decode.logits)
            batch.submitted += 1
        return awaited

    def _hand_over(self, prefill: PhaseStages, decode: PhaseStages, prefill_slot: int, decode_slot: int, row: int,
                   calls: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """The prompt's cache taken from each actor that wrote part of it and put into the decode slot's row on
        each actor that reads part of it; per decode actor, its put (what its first step must follow)."""
        taken = {}
        for place in dict.fromkeys(prefill.holder.values()):
            after = calls.get(place, ())
            taken[place] = self.workers[place].take_prompt.remote(prefill.key, prefill_slot,
                                                                  int(prefill.size), *after)
        puts = {}
        for place in dict.fromkeys(decode.holder.values()):
            names = {name for name, holder in decode.holder.items() if holder == place}
            sources = [taken[p] for p in dict.fromkeys(prefill.holder[n] for n in names if n in prefill.holder)]
            puts[place] = self.workers[place].put_prompt.remote(decode.key, decode_slot, row, *sources)
        return puts

    def _finish(self, batch: _Batch) -> None:
        """Wait for the batch's last calls (a partition that only writes the cache may still run), then free its
        decode slot's caches for the next batch."""
        ray = require_ray()
        ray.get([ref for refs in batch.waits.values() for ref in refs], timeout=self.timeout_seconds)
        batch.waits = {}

    def _submit(self, phase: PhaseStages, slot: int, tokens: torch.Tensor, start: int,
                waits: Mapping[str, Sequence[Any]], fed: tuple[tuple[Any, ...], int | None] | None = None
                ) -> tuple[dict[int, Any], dict[str, list[Any]]]:
        """Each stage of `phase` as a call on its actor, chained by results: per partition its result, and per place
        the calls a later one there must follow (those no later call there already follows through results).

        The first call on a place follows `waits` there; a later one follows the call before it there unless its
        results already reach it (they may write a cache it reads). A call receives what it follows as arguments,
        so following only what data does not already order saves moving those results. `tokens` go to positions
        from `start` on; `fed`: results holding tokens chosen before (and their item), which fill the first rows
        of `tokens` in the calls that read them, actor to actor."""
        count = tokens.shape[1]
        positions = token_positions(start, count)
        values = {**phase.constants, phase.tokens_at: tokens,
                  **{at: positions[name] for name, at in phase.positions_at.items()}}
        refs: dict[int, Any] = {}
        outside = {place: list(refs) for place, refs in waits.items()}
        last: dict[str, Any] = {}  # place -> (partition, its call): the latest call there
        for stage in phase.graph.stages:
            upstream = [refs[source.partition] for source in stage.upstream if isinstance(source, FromPartition)]
            sent = {position: values[position] for position in phase.sent[stage.partition]}
            feeds, item = fed if fed and phase.tokens_at in sent else ((), None)
            after = outside.pop(stage.target, [])
            if stage.target in last and last[stage.target][0] not in phase.ancestors[stage.partition]:
                after.append(last[stage.target][1])
            refs[stage.partition] = self.workers[stage.target].run.remote(
                phase.key, slot, stage.partition, sent, (len(feeds), item), *feeds, *upstream, *after)
            last[stage.target] = (stage.partition, refs[stage.partition])
        calls = {place: [call for _, call in _unreached(phase, place, refs)] for place in last}
        for name, source in phase.write_backs.items():  # a cache tensor another place wrote, copied home
            holder = phase.holder[name]
            after = outside.pop(holder, []) + calls.get(holder, [])
            calls[holder] = [self.workers[holder].write_back.remote(
                phase.key, slot, name, refs[source.partition], source.item, *after)]
        for place, left in outside.items():  # waits on a place this phase runs nothing on still hold
            calls.setdefault(place, []).extend(left)
        return refs, calls

    def _prefill_alone(self, requests: Sequence[LLMRequest], length: int) -> float:
        """Seconds of one prefill of `length` tokens with nothing else in flight, to its logits."""
        ray = require_ray()
        prompt = next(request.prompt for request in requests if request.prompt_tokens == length)
        phase = self._phase(PREFILL, length)
        slot = next(self._slots)
        started = time.perf_counter()
        refs, calls = self._submit(phase, slot, prompt[None], 0, {})
        ray.get(refs[phase.logits.partition], timeout=self.timeout_seconds)  # its first token
        seconds = time.perf_counter() - started
        ray.get([ref for made in calls.values() for ref in made], timeout=self.timeout_seconds)
        ray.get([self.workers[place].free.remote(phase.key, slot) for place in phase.places()],
                timeout=self.timeout_seconds)
        return seconds

    def _phase(self, phase: str, size: int) -> PhaseStages:
        """The phase at `size` as stages, captured and given to the actors on first use (a prompt length the
        deployment was not started with)."""
        key = f"{phase}/{size}"
        if key not in self.phases:
            stages, held = phase_stages(self.plan, self.model, phase, size, self.context)
            _check_places(stages, self.workers)
            _check_hand_over(stages, self.phases[f"{DECODE}/{self.batch_size}"])
            require_ray().get([self.workers[place].add_phase.remote(key, shipped(part, part.modules.values()))
                               for place, part in held.items()], timeout=self.timeout_seconds)
            self.phases[key] = stages
        return self.phases[key]

    def _busy(self) -> dict[str, float]:
        ray = require_ray()
        asked = {place: worker.busy_seconds.options(concurrency_group=STATISTICS).remote()
                 for place, worker in self.workers.items()}
        answers = ray.get(list(asked.values()), timeout=self.timeout_seconds)
        return {place: sum(seconds) for place, seconds in zip(asked, answers)}

    # -- faults --------------------------------------------------------------------------------------------------

    def _guarded(self, work: Callable[[], _T]) -> _T:
        """Do `work`; on any fault or interrupt remove the deployment, and raise one error naming the cause."""
        if self._closed:
            raise PartitionerError("this deployment is shut down. Fix: deploy the plan again.")
        ray = require_ray()
        try:
            return work()
        except PartitionerError:
            self.shutdown()
            raise
        except ray.exceptions.RayError as error:
            fault = self._fault(error)
            self.shutdown()
            raise fault from error
        except BaseException:
            self.shutdown()
            raise

    def _timed_out(self) -> PartitionerError:
        emulated = emulated_places(self.devices, self.plan.targets)
        slow = f" ({', '.join(emulated)} ran on the CPU in place of their device)" if emulated else ""
        return PartitionerError(f"a call to the device actors took over {self.timeout_seconds:g} s{slow}. Everything "
                                "this deployment started is removed. Fix: raise the timeout (--timeout), or look "
                                "for a device that is stuck.")

    def _fault(self, error: Exception) -> PartitionerError:
        ray = require_ray()
        removed = "Everything this deployment started is removed."
        if isinstance(error, ray.exceptions.GetTimeoutError):
            return self._timed_out()
        if isinstance(error, ray.exceptions.RayActorError):
            return PartitionerError(f"a device actor died while serving ({ray_instance.first_line(error)}). "
                                    f"{removed} Fix: see its log (ray logs), then deploy again.")
        if isinstance(error, ray.exceptions.RayTaskError):
            return PartitionerError(f"a call failed on a device actor: {ray_instance.last_line(error.cause or error)}"
                                    f". {removed} Fix: run the plan in process (partitioner run --check), which "
                                    "gives the error with its traceback.")
        return PartitionerError(f"the Ray engine failed: {type(error).__name__}: {ray_instance.first_line(error)}. "
                                f"{removed}")


def deploy_llm_on_ray(plan: LLMPlan, model: torch.nn.Module, *, address: str | None = None,
                      batches_in_flight: int | None = None, timeout_seconds: float = 120.0,
                      startup_timeout_seconds: float = 120.0, threads_per_worker: int | None = None
                      ) -> LLMRayDeployment:
    """Start `plan` on Ray for `model` (with its weights): one actor per device it uses, holding that device's
    partitions of both phases and its KV caches, ready to generate.

    Without `address` a local Ray instance stands in for the plan's fleet (a device this machine lacks is
    emulated on the CPU by its actor); with one ("auto" or host:port) it joins that cluster, which must have
    the devices. `batches_in_flight` decode batches are served at once (default: one per device that decode runs
    on, which fills the pipeline). `threads_per_worker`: each actor's torch threads (default: a local
    instance's cores shared among the actors, one left to the driver).
    """
    ray = require_ray()
    check_timeout(timeout_seconds, "a timeout", "--timeout")
    check_timeout(startup_timeout_seconds, "a startup timeout", "startup_timeout_seconds")
    require_weights(model)
    _check_servable(plan)
    phases, held = _phases(plan, model)
    decode = phases[f"{DECODE}/{plan.best.batch_size}"]
    in_flight = len(decode.places()) if batches_in_flight is None else batches_in_flight
    if not (isinstance(in_flight, int) and in_flight >= 1):
        raise PartitionerError(f"batches_in_flight must be a whole number of at least 1, got {in_flight!r}. Fix: "
                               "pass e.g. 2.")
    records = {target.name: target for target in plan.targets}
    places = [records[name] for name in held]
    owns_ray = not ray.is_initialized()
    if threads_per_worker is None and owns_ray and not address:
        threads_per_worker = max(1, ((os.cpu_count() or 1) - 1) // len(places))
    groups: list[Any] = []
    workers: dict[str, Any] = {}
    started = StartedRay() if owns_ray else None
    try:
        if owns_ray:
            started = ray_instance.start(ray, address, resources_needed(places),
                                         local_store_bytes() if not address else None)
        check_devices(ray, resources_needed(places), address)
        groups, slots = reserve_hosts(ray, places, startup_timeout_seconds)
        workers = _start_workers(ray, places, slots, held, threads_per_worker)
        described = dict(zip(workers, ray.get([w.describe.remote() for w in workers.values()],
                                              timeout=startup_timeout_seconds)))
    except BaseException as error:
        remove(ray, workers.values(), groups, started)
        fault = start_fault(ray, error, startup_timeout_seconds)
        if fault is None:
            raise
        raise fault from error
    devices = {place: device for place, (device, _) in described.items()}
    emulated = emulated_places(devices, plan.targets)
    if emulated:
        warnings.warn(f"{', '.join(emulated)}: not on its own hardware here, emulated on the CPU", stacklevel=2)
    return LLMRayDeployment(plan, model, workers, groups, started, phases, in_flight, timeout_seconds, devices)


def _check_servable(plan: LLMPlan) -> None:
    """Refuse, before anything starts, a plan this engine cannot run."""
    plan.require_kv_cache("serve")
    if not plan.targets:
        raise PartitionerError("the plan records no devices to run on (a plan written before LLM plans recorded "
                               "them). Fix: compile the model again with --workload.")
    if plan.best.collectives:
        groups = ", ".join(plan.best.collectives)
        raise PartitionerError(f"the plan splits layers across tensor-parallel groups ({groups}), which the Ray "
                               "engine does not serve yet (each actor runs whole ops). Fix: compile again with "
                               "--no-tensor-parallel for a plan it serves (each layer whole on one device); the "
                               "groups' tokens can be checked against the model with `partitioner run PLAN --check`.")


def _phases(plan: LLMPlan, model: torch.nn.Module) -> tuple[dict[str, PhaseStages], dict[str, dict[str, WorkerPhase]]]:
    """Each prompt length of the workload's prefill and the plan's decode batch as stages, and per place what its
    actor holds of them."""
    context = plan.workload.context_tokens
    sizes = [(PREFILL, tokens) for tokens, _ in plan.workload.prompt.buckets] + [(DECODE, plan.best.batch_size)]
    phases: dict[str, PhaseStages] = {}
    held: dict[str, dict[str, WorkerPhase]] = {}
    for phase, size in sizes:
        stages, parts = phase_stages(plan, model, phase, size, context)
        phases[stages.key] = stages
        for place, part in parts.items():
            held.setdefault(place, {})[stages.key] = part
    for stages in phases.values():
        if stages.phase == PREFILL:
            _check_hand_over(stages, phases[f"{DECODE}/{plan.best.batch_size}"])
    return phases, held


def _check_hand_over(prefill: PhaseStages, decode: PhaseStages) -> None:
    """Refuse a decode step that reads a cache tensor no prefill writes: its rows would keep another request's."""
    missing = sorted(set(decode.holder) - set(prefill.holder))
    if missing:
        raise PartitionerError(f"the decode step reads {len(missing)} KV cache tensors that a prefill of "
                               f"{prefill.size} tokens never touches, so nothing would hand them over. Fix: run the "
                               "plan in process (partitioner run --check), which hands the whole cache over.")


def _check_places(stages: PhaseStages, workers: Mapping[str, Any]) -> None:
    missing = [place for place in stages.places() if place not in workers]
    if missing:
        raise PartitionerError(f"a prefill of {stages.size} tokens places ops on {', '.join(missing)}, where this "
                               "deployment has no actor (the plan placed other prompt lengths elsewhere). Fix: "
                               "serve prompts of the workload's lengths, or compile for a workload with this one.")


def _start_workers(ray: Any, places: Sequence[Any], slots: Mapping[str, tuple[Any, int]],
                   held: Mapping[str, Mapping[str, WorkerPhase]], threads: int | None) -> dict[str, Any]:
    """One actor per place, in its host's placement group; it takes calls as their inputs are ready."""
    remote_worker = ray.remote(concurrency_groups={STATISTICS: 1})(LLMDeviceWorker)
    run_id = uuid.uuid4().hex[:8]
    workers = {}
    for place in places:
        workers[place.name] = remote_worker.options(
            **placed_actor(ray, place, slots, f"partitioner-llm-{run_id}"), allow_out_of_order_execution=True).remote(
            place.name, place.torch_device,
            shipped(dict(held[place.name]), [m for phase in held[place.name].values() for m in phase.modules.values()]),
            threads)
    return workers


def _unreached(phase: PhaseStages, place: str, refs: Mapping[int, Any]) -> list[tuple[int, Any]]:
    """The calls of `phase` on `place` that no later call there depends on through results: following them, a
    call follows every call of the phase there."""
    mine = [stage.partition for stage in phase.graph.stages if stage.target == place]
    reached = set().union(*(phase.ancestors[p] for p in mine))
    return [(p, refs[p]) for p in mine if p not in reached]


def _item(result: Any, source: FromPartition) -> Any:
    return result if source.item is None else result[source.item]


def _mean_step(batch: _Batch) -> float:
    """A batch's mean seconds per decode step (from its last first token)."""
    if not batch.steps:
        return 0.0
    return (batch.step_at[-1] - max(batch.first_token_at.values())) / len(batch.steps)
