"""One job run in a forked child process while this process does other work.

Capturing a model is single-threaded Python (about a minute for each phase of
a 70B-parameter LLM), so two captures that do not depend on each other take
half the wall time on two cores when one runs in a child. A forked child
shares the parent's model without pickling it (a model built from a user's
file could not be pickled); only the result travels back.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def run_forked(job: Callable[[], T]) -> Iterator[Callable[[], T]]:
    """Start `job` in a forked child; inside the block, calling what is yielded waits for the job's result and
    returns it, or raises what the job raised. Where the platform cannot fork, or the child dies without an
    answer (killed, out of memory), the job runs here when its result is asked for. A child still running when
    the block is left is stopped."""
    if "fork" not in multiprocessing.get_all_start_methods():
        yield job
        return
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_and_send, args=(job, sender), daemon=True)
    child.start()
    sender.close()

    def result() -> T:
        try:
            outcome, value = pickle.loads(receiver.recv_bytes())
        except EOFError:
            return job()
        if outcome == "error":
            raise value
        return value

    try:
        yield result
    finally:
        receiver.close()
        if child.is_alive():
            child.terminate()
        child.join()


def _run_and_send(job: Callable[[], object], sender) -> None:
    try:
        payload = pickle.dumps(("value", job()))
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        try:
            payload = pickle.dumps(("error", error))
        except Exception:  # noqa: BLE001 - an exception that does not pickle goes back as its text
            payload = pickle.dumps(("error", RuntimeError(f"{type(error).__name__}: {error}")))
    sender.send_bytes(payload)
    sender.close()
