"""Run what a plan splits across a tensor-parallel group, and check it against the model.

A plan's tensor-parallel place (`GroupCollectives` in partitioner/llm/deployment.py) names the modules its
members split. Each member is a process that is handed a copy of the whole model (a check, not a deployment:
it needs the memory of `degree` models, where a served member holds its share): it shards those modules with
transformers' own tensor-parallel layers (`apply_tensor_parallelism`: column-parallel weights split by output
feature, row-parallel ones by input feature with their partial sums all-reduced, the embedding by vocabulary,
the LM head gathered; each member's attention and KV cache hold its heads) over a torch.distributed process
group (gloo on CPU, NCCL on CUDA), and generates. The members run the same steps in lockstep, joined by the
collectives, so the first member's tokens are the group's. Members are processes on this machine
(`Members.PROCESSES`) or actors on a Ray instance (`Members.RAY`): one member per device of the group.

A run splits, at one degree, every module the plan's places of that degree split: a module's arithmetic at a
degree does not depend on which place runs it. Modules the plan keeps whole run whole on every member (each
holds their weights), which gives the same numbers as running them on another device.
"""

from __future__ import annotations

import copy
import enum
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from partitioner.errors import PartitionerError
from partitioner.execution.check import REDUCED_PRECISION, CheckResult, compare_outputs
from partitioner.llm.deployment import Deployment, GroupCollectives
from partitioner.llm.phases import vocabulary_size

DEFAULT_TIMEOUT_SECONDS = 300.0
NEW_TOKENS = 8  # generated per prompt by a check


class Members(enum.Enum):
    """Where a tensor-parallel group's members run."""

    PROCESSES = "processes"  # one process each on this machine
    RAY = "ray"  # one Ray actor each, on a local instance or a cluster


@dataclass(frozen=True, slots=True)
class SplitRun:
    """One run of a tensor-parallel group: its degree (members) and the modules split across them."""

    degree: int
    modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SplitGeneration:
    """What a group generated: the token ids (prompt included) and each generated step's logits."""

    run: SplitRun
    tokens: torch.Tensor
    logits: torch.Tensor  # [steps, batch, vocabulary]
    seconds: float


@dataclass(frozen=True, slots=True)
class SplitCheck:
    """A group's generation beside the model's own greedy `generate`: for how many generated steps the tokens are
    the same, and how far the logits of every step are from the model's on the same tokens.

    In float32 every token must be the same. In float16 and bfloat16 the members sum their partial results in
    another order than one device does, so greedy choices between near-equal logits may part; from there the
    group's logits are compared with the model's along the tokens the group chose, and all are judged as
    `run --check` judges reduced precision (partitioner/execution/check.py: within the dtype's tolerance, or no
    farther from a float32 run than the model's own)."""

    run: SplitRun
    same_steps: int
    steps: int
    logits: CheckResult  # every generated step's, against the model's along the same tokens
    seconds: float
    reduced_precision: bool = False

    @property
    def same_tokens(self) -> bool:
        return self.same_steps == self.steps

    @property
    def passed(self) -> bool:
        return self.logits.passed and (self.same_tokens or self.reduced_precision)


def split_runs(groups: Iterable[GroupCollectives]) -> tuple[SplitRun, ...]:
    """One run per tensor-parallel degree of a deployment's `groups` (its places' collectives), splitting every
    module its places of that degree split; none where it uses no tensor-parallel place."""
    modules: dict[int, set[str]] = {}
    for collectives in groups:
        modules.setdefault(collectives.degree, set()).update(collectives.split_modules)
    return tuple(SplitRun(degree, tuple(sorted(names))) for degree, names in sorted(modules.items()))


def member_plan(model: torch.nn.Module, modules: Sequence[str]) -> dict[str, str]:
    """transformers' tensor-parallel plan of `model` (module and parameter names to styles) with only `modules`
    split: the entries of the model's own `tp_plan` for those of them it declares (a module a plan marks split
    for running on its share, such as an attention's rotary, needs no entry). A layer part (an attention, an
    MLP) must split all its planned modules or none: a column-parallel projection whose row-parallel partner
    runs whole would hand it a share of its input."""
    from transformers.distributed.parallel_utils import replace_layer_number_by_wildcard

    styles = dict(getattr(model, "tp_plan", None) or {})
    if not styles:
        raise PartitionerError(f"{type(model).__name__} declares no tensor-parallel plan (no tp_plan), so its "
                               "modules cannot be split. Fix: plan it again with this version, which keeps every "
                               "layer whole on a model that declares none.")
    wanted = set(modules)
    parameters = {name for name, _ in model.named_parameters()}  # a tied weight once, under its first owner's name
    if not wanted:
        raise PartitionerError("the plan names no module its group splits (a plan written before plans recorded "
                               "them). Fix: compile the model again with --workload.")
    plan: dict[str, str] = {}
    split_parts: dict[str, list[bool]] = {}
    for name, module in model.named_modules():
        style = styles.get(replace_layer_number_by_wildcard(name))
        if style is None:
            continue
        if style in ("colwise", "rowwise"):
            split_parts.setdefault(name.rpartition(".")[0], []).append(name in wanted)
        if name in wanted:
            plan[name] = style
            plan.update({f"{name}.{parameter}": style for parameter, _ in module.named_parameters(recurse=False)
                         if f"{name}.{parameter}" in parameters})
    partial = sorted(part for part, split in split_parts.items() if any(split) and not all(split))
    if partial:
        raise PartitionerError(f"the plan splits some of the projections of {', '.join(partial[:3])} and keeps the "
                               "others whole (a stage boundary inside the part, between a group and a device "
                               "alone), and a group here runs a part split whole or not at all. Fix: check a plan "
                               "whose groups are all of one degree on a fleet of one kind of device, where each "
                               "part is split whole.")
    if not plan:
        raise PartitionerError(f"none of the modules the plan splits ({', '.join(sorted(wanted)[:3])}, ...) is one "
                               f"{type(model).__name__} declares in its tensor-parallel plan: the plan is of another "
                               "model. Fix: run it with the model it was compiled for.")
    return plan


def generate_split(model: torch.nn.Module, run: SplitRun, input_ids: torch.Tensor, new_tokens: int, *,
                   members: Members = Members.PROCESSES, address: str | None = None,
                   timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> SplitGeneration:
    """Greedy generation of `new_tokens` after `input_ids` by a group of `run.degree` members splitting
    `run.modules`, each holding a copy of `model` (on Ray, `address` joins a cluster; none starts a local
    instance that is removed after)."""
    member_plan(model, run.modules)  # refuse a plan this model cannot run before any member starts
    require_weights(model)
    started = time.perf_counter()
    launch = _on_ray if members is Members.RAY else _in_processes
    results = launch(model, run, input_ids, new_tokens, address, timeout_seconds)
    (tokens, logits), others = results[0], results[1:]
    disagreeing = [rank for rank, (other, _) in enumerate(others, 1) if not torch.equal(other, tokens)]
    if disagreeing:
        raise PartitionerError(f"the members of the tensor-parallel group of {run.degree} generated different tokens "
                               f"(member {disagreeing[0]} is not member 0's): their collectives did not join "
                               "their shares. Fix: check the process group's backend on these devices.")
    return SplitGeneration(run, tokens, logits, time.perf_counter() - started)


def require_weights(model: torch.nn.Module) -> None:
    """Refuse a model without weights to run (on the meta device), before anything starts."""
    if any(parameter.is_meta for parameter in model.parameters()):
        raise PartitionerError(f"{type(model).__name__} is on the meta device, without weights to run. Fix: build "
                               "it with weights (for example from its config on the CPU).")


def check_split(model: torch.nn.Module, run: SplitRun, input_ids: torch.Tensor, new_tokens: int = NEW_TOKENS, *,
                members: Members = Members.PROCESSES, address: str | None = None,
                timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, rtol: float | None = None,
                atol: float | None = None) -> SplitCheck:
    """`run`'s generation beside `model.generate`'s (greedy, the same prompt and length); the logits compared
    under `rtol`/`atol`, or the dtype's defaults (partitioner/execution/check.py)."""
    require_weights(model)
    expected_tokens, expected_logits = generate_as_member(model, input_ids, new_tokens)
    got = generate_split(model, run, input_ids, new_tokens, members=members, address=address,
                         timeout_seconds=timeout_seconds)
    prompt = input_ids.shape[1]
    steps = expected_tokens.shape[1] - prompt
    same = same_steps(expected_tokens[:, prompt:], got.tokens[:, prompt:])
    if same < steps or len(got.logits) != len(expected_logits):
        # Past a token that differs, the model's logits along the tokens the group chose (one pass, each position
        # seeing the tokens before it): every step of the group's decode, its sharded KV cache included, is judged.
        expected_logits = _logits_along(model, got.tokens, prompt, len(got.logits))
    # generate hands logits over in float32; they were computed in the model's dtype, and are judged in it
    dtype = computing_dtype(model)
    reduced = dtype in REDUCED_PRECISION
    reference = [_logits_along(copy.deepcopy(model).float(), got.tokens, prompt, len(got.logits))] if reduced \
        else None
    logits = compare_outputs(expected_logits.to(dtype), got.logits.to(dtype), rtol=rtol, atol=atol,
                             float32_reference=reference)
    return SplitCheck(run, same, steps, logits, got.seconds, reduced)


def computing_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model computes its logits in: its LM head's, else its first floating-point weight's."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weights = [head.weight] if head is not None else []
    weights += [p for p in model.parameters() if p.is_floating_point()]
    return weights[0].dtype if weights else torch.float32


def same_steps(expected: torch.Tensor, got: torch.Tensor) -> int:
    """How many generated steps, from the first, chose the same token for every prompt."""
    steps = min(expected.shape[1], got.shape[1]) if expected.shape[0] == got.shape[0] else 0
    differs = (expected[:, :steps] != got[:, :steps]).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else steps


def _logits_along(model: torch.nn.Module, tokens: torch.Tensor, prompt: int, steps: int) -> torch.Tensor:
    """The logits `model` gives for the first `steps` generated steps of `tokens` in one pass over the sequence
    (each position seeing the tokens before it), laid out as `generate_as_member`'s: [steps, batch, vocabulary]."""
    inputs = tokens[:, :prompt + steps - 1]
    with torch.no_grad():
        logits = model(inputs, attention_mask=torch.ones_like(inputs)).logits
    return logits[:, prompt - 1:prompt - 1 + steps].transpose(0, 1).float()


def example_prompts(model: torch.nn.Module, prompts: int = 2, tokens: int = 8, seed: int = 0) -> torch.Tensor:
    """Prompts of random token ids from the model's vocabulary, the same for a seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocabulary_size(model), (prompts, tokens), generator=generator)


def generate_as_member(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy generation: the token ids and every generated step's logits (what each member returns)."""
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    return out.sequences.cpu(), torch.stack(out.logits).cpu()


def run_member(rank: int, run: SplitRun, rendezvous: str, model: torch.nn.Module, input_ids: torch.Tensor,
               new_tokens: int, timeout_seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One member: join the group's process group at `rendezvous`, shard `model`, generate, leave."""
    import datetime

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from transformers.distributed.tensor_parallel import apply_tensor_parallelism

    device = next(model.parameters()).device
    if device.type == "cuda":  # one GPU a member: its rank's among those it sees (one, for a Ray actor)
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        model.to(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=rendezvous, rank=rank,
                            world_size=run.degree, timeout=datetime.timedelta(seconds=timeout_seconds))
    try:
        mesh = init_device_mesh(device.type, (run.degree,))
        apply_tensor_parallelism(model, mesh, member_plan(model, run.modules))
        if hasattr(model, "tie_weights"):
            model.tie_weights()  # sharding replaced a tied weight where it is listed: its other user takes the shard
        return generate_as_member(model, input_ids.to(device), new_tokens)
    finally:
        dist.destroy_process_group()


def free_rendezvous(host: str = "127.0.0.1") -> str:
    """A TCP address at `host` (this machine's) for a process group to meet at: a port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return f"tcp://{host}:{probe.getsockname()[1]}"


def _in_processes(model: torch.nn.Module, run: SplitRun, input_ids: torch.Tensor, new_tokens: int,
                  address: str | None, timeout_seconds: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The members as processes on this machine (fresh interpreters, so a caller's script is not imported again
    and no thread pool is forked): each member's result, or one error naming the member that failed first."""
    if address is not None:
        raise PartitionerError("an address joins a Ray cluster, and these members run as processes here. Fix: run "
                               "the members on Ray, or give no address.")
    rendezvous = free_rendezvous()
    with tempfile.TemporaryDirectory(prefix="partitioner-tp-") as folder:
        work = Path(folder) / "work.pt"
        try:
            torch.save((run, rendezvous, model, input_ids, new_tokens, timeout_seconds), work)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise PartitionerError(f"{type(model).__name__} cannot be handed to the members ({error}). Fix: define "
                                   "the model's classes in a module Python can import (transformers' are).") from None
        # The members import what this process imports: its search path, in its order.
        paths = os.pathsep.join(os.path.abspath(path) for path in sys.path if path != "") or os.getcwd()
        environment = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + paths}
        outcomes = [Path(folder) / f"member{rank}.pt" for rank in range(run.degree)]
        logs = [Path(folder) / f"member{rank}.log" for rank in range(run.degree)]
        processes = []
        try:
            for rank, (outcome, log) in enumerate(zip(outcomes, logs)):
                with log.open("w") as stderr:
                    processes.append(subprocess.Popen(
                        [sys.executable, "-c", _MEMBER_PROCESS, str(rank), str(work), str(outcome)],
                        stdout=subprocess.DEVNULL, stderr=stderr, env=environment))
            _wait(processes, timeout_seconds)
            ended = [process.poll() for process in processes]  # before the others are stopped
        finally:
            for process in processes:
                process.kill()
                process.wait()
        return _results(outcomes, logs, ended)


_MEMBER_PROCESS = "import sys; from partitioner.execution.tensor_parallel import member_process; member_process(*sys.argv[1:])"


def member_process(rank: str, work: str, outcome: str) -> None:
    """A member process's body: read the work, run the member, write its result, or its error and exit 1."""
    run, rendezvous, model, input_ids, new_tokens, timeout_seconds = torch.load(work, weights_only=False)
    try:
        torch.save(run_member(int(rank), run, rendezvous, model, input_ids, new_tokens, timeout_seconds), outcome)
    except Exception as error:  # reported by the parent, which raises one error
        torch.save(f"{type(error).__name__}: {error}", outcome)
        sys.exit(1)


def _wait(processes: Sequence[subprocess.Popen], timeout_seconds: float) -> None:
    """Wait for every member; stop at the first that fails (the others would wait for it until their timeout)."""
    deadline = time.monotonic() + timeout_seconds
    while any(process.poll() is None for process in processes):
        if any(process.returncode not in (None, 0) for process in processes):
            return
        if time.monotonic() > deadline:
            raise PartitionerError(f"the tensor-parallel group gave no result in {timeout_seconds:g} s. Fix: give it "
                                   "more time, or check that this machine has the memory for a copy of the model "
                                   "per member.")
        time.sleep(0.05)


def _results(outcomes: Sequence[Path], logs: Sequence[Path], ended: Sequence[int | None]
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every member's result, or one error about the member that failed on its own (not one stopped after it)."""
    found = [torch.load(outcome, weights_only=False) if outcome.exists() else None for outcome in outcomes]
    degree = len(outcomes)
    # The member that failed first: the others then fail at their next collective ("connection closed by peer").
    failed = sorted((outcomes[rank].stat().st_mtime_ns, rank) for rank, result in enumerate(found)
                    if isinstance(result, str))
    if failed:
        rank = failed[0][1]
        raise PartitionerError(f"tensor-parallel member {rank} of {degree} failed: {found[rank].splitlines()[0]}")
    for rank, (result, code) in enumerate(zip(found, ended)):
        if result is None and code not in (None, 0):
            last = logs[rank].read_text(errors="replace").strip().splitlines()
            killed = " (killed: most likely out of memory)" if code == -9 else ""
            raise PartitionerError(f"tensor-parallel member {rank} of {degree} ended with exit code {code}{killed} "
                                   f"and no result{': ' + last[-1] if last else ''}. Fix: give this machine the "
                                   "memory for a copy of the model per member, or run the members on Ray.")
    return found


def _on_ray(model: torch.nn.Module, run: SplitRun, input_ids: torch.Tensor, new_tokens: int,
            address: str | None, timeout_seconds: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The members as Ray actors, one per device of the group: each member's result."""
    from partitioner.deploy import ray_instance, teardown
    from partitioner.deploy.ray_instance import require_ray

    ray = require_ray()
    started = ray_instance.start(ray, address, {}, None)
    member = ray.remote(_RayMember)
    actors: list[Any] = []
    deadline = time.monotonic() + timeout_seconds
    try:
        gpu = next(model.parameters()).device.type == "cuda"
        actors = [member.options(num_cpus=0, num_gpus=1 if gpu else 0).remote() for _ in range(run.degree)]
        rendezvous = ray.get(actors[0].rendezvous.remote(), timeout=timeout_seconds)
        shared = ray.put(model)
        calls = [actor.generate.remote(rank, run, rendezvous, shared, input_ids, new_tokens, timeout_seconds)
                 for rank, actor in enumerate(actors)]
        pending = list(calls)
        while pending:  # the first member to fail ends the wait (the others would wait for it)
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise PartitionerError(f"the tensor-parallel group on Ray gave no result in {timeout_seconds:g} s. "
                                       "Fix: give it more time, or check that every member's node can reach the "
                                       "first member's (its process group meets at a TCP port there).")
            ray.get(ready)
        return ray.get(calls)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as error:
        raise PartitionerError(f"a tensor-parallel member on Ray failed: "
                               f"{ray_instance.first_line(error.__cause__ or error)}") from error
    finally:
        teardown.remove(ray, actors, (), started)


class _RayMember:
    """A member as a Ray actor (made remote where it is used, so importing this module needs no Ray)."""

    def rendezvous(self) -> str:
        import ray

        return free_rendezvous(ray.util.get_node_ip_address())

    def generate(self, rank: int, run: SplitRun, rendezvous: str, model: torch.nn.Module, input_ids: torch.Tensor,
                 new_tokens: int, timeout_seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
        return run_member(rank, run, rendezvous, model, input_ids, new_tokens, timeout_seconds)


def split_checks(deployment: Deployment, model: torch.nn.Module, input_ids: torch.Tensor,
                 new_tokens: int = NEW_TOKENS, *,
                 members: Members = Members.PROCESSES, address: str | None = None,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> Mapping[int, SplitCheck]:
    """Per tensor-parallel degree the deployment uses, its group's generation checked against the model's."""
    return {run.degree: check_split(model, run, input_ids, new_tokens, members=members, address=address,
                                    timeout_seconds=timeout_seconds)
            for run in split_runs(deployment.collectives.values())}
