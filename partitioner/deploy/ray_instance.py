"""The Ray instance a deployment runs on: a local one it starts and must leave nothing of, or a cluster it joins.

A local instance is a tree of processes (GCS, raylet, dashboard, agents, one per worker) that `ray.shutdown()`
ends from the top: it gives the raylet a second to end its own children, then kills it, and the raylet's
children it had no time for (the dashboard and runtime-env agents, workers) then live on until they notice,
minutes later; a raylet that died before (killed, or out of file descriptors) leaves them all. So `start` notes
the instance's processes, and `stop` ends those still there after Ray's own shutdown, with every worker the
raylet started since (a worker carries its raylet's pid in RAY_RAYLET_PID, even once orphaned).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from partitioner.errors import PartitionerError


# The longest a request or the start may be given: Ray counts timeouts in milliseconds in a 64-bit integer, and a
# request that takes longer than a day is stuck, not slow.
MAX_TIMEOUT_SECONDS = 86_400.0


def require_ray():
    """The `ray` module, or one clear error where the optional extra is not installed."""
    try:
        import ray
    except ImportError:
        raise PartitionerError("the Ray engine needs Ray, an optional extra. Fix: pip install 'partitioner[ray]'.")
    return ray


def check_timeout(seconds: float, what: str, option: str) -> None:
    """Refuse a timeout that is not a positive number of seconds up to a day."""
    number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    if number and 0 < seconds <= MAX_TIMEOUT_SECONDS:
        return
    problem = f"is over a day ({MAX_TIMEOUT_SECONDS:g} s), the longest the Ray engine waits" if number and (
        seconds > MAX_TIMEOUT_SECONDS) else "is not a positive number of seconds"
    raise PartitionerError(f"{what} of {f'{seconds:g} s' if number else repr(seconds)} {problem}. Fix: give "
                           f"{option} a number of seconds over 0 and at most {MAX_TIMEOUT_SECONDS:g}.")


@dataclass(frozen=True, slots=True)
class StartedRay:
    """Ray as this process started it: a cluster it joined (nothing of it runs here) or a local instance."""

    processes: Mapping[int, int] = field(default_factory=dict)  # pid -> start time, of a local instance
    raylet_pid: int | None = None


def start(ray: Any, address: str | None, needed: Mapping[str, int], store_bytes: int | None) -> StartedRay:
    """Join the cluster at `address`, or start a local instance that declares the devices `needed` and has an
    object store of `store_bytes`. The caller's SIGTERM handling is kept: Ray's own handler would dump a stack
    and abort, where the caller ends a deployment as it ends one on Ctrl-C."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        return _start(ray, address, needed, store_bytes)
    finally:
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def _start(ray: Any, address: str | None, needed: Mapping[str, int], store_bytes: int | None) -> StartedRay:
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError and more for an unreachable cluster
            raise PartitionerError(f"could not join the Ray cluster at {address!r}: {first_line(error)}. Fix: "
                                   "start it with `ray start --head` on its head node, or give its address.") from error
        return StartedRay()
    gpus = max(needed.get("GPU", 0), torch.cuda.device_count() if torch.cuda.is_available() else 0)
    # Ray runs workers at niceness 15 so that they yield to drivers; here the workers are the engine's compute,
    # and the driver spins while it waits for a result, so at 15 a few-core machine starves the devices.
    # address="local": a new instance even where RAY_ADDRESS or a `ray start` cluster on this machine would
    # otherwise be joined (joining is what --address is for).
    try:
        ray.init(address="local", num_gpus=gpus, object_store_memory=store_bytes,
                 resources={name: float(count) for name, count in needed.items() if name != "GPU"},
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 _system_config={"worker_niceness": 0})
    except Exception as error:
        raise PartitionerError(f"could not start a local Ray instance: {first_line(error)}. Fix: see `ray status`, "
                               "or join a running cluster with --address.") from error
    return _local_instance(ray)


def stop(ray: Any, started: StartedRay, wait_seconds: float = 5.0) -> None:
    """Shut Ray down in this process and end every process of a local instance it left running."""
    left = {**started.processes, **_local_instance(ray).processes}
    ray.shutdown()
    if started.raylet_pid is not None:
        left.update(_workers_of(started.raylet_pid))
    for pid, start_time in left.items():
        if running(pid, start_time):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + wait_seconds
    while any(running(pid, start_time) for pid, start_time in left.items()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in started.processes:  # reap Ray's own children of this process that Ray did not
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def gcs_address(ray: Any) -> str | None:
    """The host:port of the cluster this process is connected to (what `ray start --address` takes)."""
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # not connected
        return None


def first_line(error: BaseException) -> str:
    text = _plain(str(error)).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


def last_line(error: BaseException) -> str:
    """The last line of a Ray error's text: where a task or an actor's creation raised, the exception itself
    (its first line only says which actor died)."""
    lines = [line.strip() for line in _plain(str(error)).splitlines() if line.strip()]
    return lines[-1].rstrip(".") if lines else type(error).__name__


def _plain(text: str) -> str:
    """`text` without the terminal colour codes Ray puts in its errors."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """Refuse a host:port nothing answers at: Ray itself waits minutes for such a cluster before it gives up."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", or a Ray Client address: Ray finds and checks those itself
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        raise PartitionerError(f"nothing answers at the Ray cluster address {address!r} ({error.strerror or error}). "
                               "Fix: start the cluster with `ray start --head` on its head node, and give "
                               "its address as host:port (the GCS address ray start prints, port 6379 unless "
                               "--port was given), or 'auto' on a node of it.") from error


def _local_instance(ray: Any) -> StartedRay:
    """The processes of the local instance this process runs now (none where it joined a cluster)."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return StartedRay()
    roots = {info.process.pid for infos in node.all_processes.values() for info in infos}
    raylets = node.all_processes.get("raylet") or ()
    return StartedRay(descendants(roots), raylets[0].process.pid if raylets else None)


def _workers_of(raylet_pid: int) -> dict[int, int]:
    """The processes that the raylet `raylet_pid` started as workers, wherever they now hang, and all below them."""
    marker = f"RAY_RAYLET_PID={raylet_pid}".encode()
    workers = set()
    for pid in _processes():
        try:
            with open(f"/proc/{pid}/environ", "rb") as environment:
                if marker in environment.read().split(b"\0"):
                    workers.add(pid)
        except OSError:  # gone, or another user's
            continue
    return descendants(workers)


def _processes() -> dict[int, tuple[int, int, bool]]:
    """Every process of this machine (see `_stat`), from /proc; none where there is no /proc."""
    table = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    return table


def descendants(roots: set[int]) -> dict[int, int]:
    """The processes `roots` and all below them: pid -> start time (so that a reused pid is never taken)."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, pending = {}, [pid for pid in roots if pid in table]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            pending.extend(children.get(pid, ()))
    return found


def running(pid: int, started: int) -> bool:
    """Whether the process `pid` that started at `started` still runs (a zombie has ended)."""
    stat = _stat(pid)
    return stat is not None and stat[1] == started and not stat[2]


def _stat(pid: int) -> tuple[int, int, bool] | None:
    """(parent pid, start time, whether a zombie) of process `pid`, or None where it has gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2:].split()  # after "pid (name) ": state, ppid, ..., starttime (20th)
    return int(fields[1]), int(fields[19]), fields[0] == b"Z"
