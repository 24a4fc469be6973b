"""Removing a deployment: its actors, its compiled graph, its placement groups, and Ray itself where it began it.

Every way a deployment ends (shutdown, a fault, an interrupt, a failed start) comes here, so that each leaves
nothing running.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Iterable

from partitioner.deploy import ray_instance
from partitioner.deploy.ray_instance import StartedRay

# How long the removal waits for a call in flight to fail once the actors are gone.
SETTLE_SECONDS = 10.0


def remove(ray: Any, workers: Iterable[Any], groups: Iterable[Any], started: StartedRay | None,
           compiled: Any = None, serving: threading.Thread | None = None) -> None:
    """Kill the workers, tear down their compiled graph, let the call in flight (`serving`) fail, remove the
    placement groups, and end Ray with every process of it if we began it (`started`).

    The actors go first: a compiled graph's own teardown can wait forever on a worker still reading a channel
    its upstream peer has left (seen with two stages and requests in flight), and every worker goes anyway.
    A second Ctrl-C meanwhile is ignored: it would leave half of it behind.
    """
    with _uninterrupted(), quiet_compiled_graphs():
        for worker in workers:
            with contextlib.suppress(Exception):
                ray.kill(worker)
        if compiled is not None:
            with contextlib.suppress(Exception):
                compiled.teardown()  # waits for a teardown the monitor thread began
        if serving is not None and serving is not threading.current_thread():
            serving.join(SETTLE_SECONDS)  # Ray must not shut down under a call still in it
        for group in groups:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(group)
        if started is not None:
            ray_instance.stop(ray, started)


@contextlib.contextmanager
def _uninterrupted():
    """Ignore Ctrl-C for the block (only the main thread can, and only it receives one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


@contextlib.contextmanager
def quiet_compiled_graphs():
    """Ray logs each step of a compiled graph's compile and teardown, and the graph's monitor thread starts a
    teardown of its own as soon as an actor dies; none of it is news to someone who serves a plan."""
    quiet = logging.getLogger("ray.dag.compiled_dag_node")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quiet.setLevel(level)
