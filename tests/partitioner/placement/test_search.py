"""Running a search: Ctrl-C, or a stop asked for from another thread, ends it at once with KeyboardInterrupt.

CP-SAT's own Ctrl-C handler would end the search as if its time had run out and return its best plan, which a
command would then write as if nothing had happened.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from partitioner.cli import main
from partitioner.placement.baselines import fallback_placement
from partitioner.placement.objectives import MAKESPAN
from partitioner.placement.problem import TargetTerms
from partitioner.placement.solver import SolverOptions, solve
from targets.spec import Link
from tests.partitioner.placement.problem_builders import make_problem, node, value

# Far longer than the tests wait: a search that ends on its own before being stopped would fail them.
LONG_SEARCH = SolverOptions(time_limit_seconds=120)


def hard_problem():
    """Thirty layers of four interchangeable ops on four devices, every op of a layer reading every op of the one
    before: a makespan search that runs to its time limit with a wide gap."""
    rng = random.Random(0)
    targets = tuple(TargetTerms(f"d{i}", 1.0, 10**12) for i in range(4))
    nodes, values, previous = [], [], []
    for layer in range(30):
        current = [f"n{layer}_{position}" for position in range(4)]
        nodes += [node(name, **{t.name: rng.uniform(1e-3, 2e-3) for t in targets}) for name in current]
        values += [value(producer, *current, num_bytes=rng.randint(10**5, 10**6)) for producer in previous]
        previous = current
    return make_problem(nodes, values, targets=targets, fallback="d0", links=Link(1e-5, 1e10))


def test_ctrl_c_during_a_search_stops_it_at_once_and_is_not_taken_for_the_end_of_its_time():
    problem = hard_problem()
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.perf_counter()

    with pytest.raises(KeyboardInterrupt):
        solve(problem, MAKESPAN, LONG_SEARCH, hints={"fallback": fallback_placement(problem)})

    assert time.perf_counter() - started < 30


def test_a_stop_asked_for_from_another_thread_ends_a_search_run_with_those_options():
    problem = hard_problem()
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    started = time.perf_counter()

    with pytest.raises(KeyboardInterrupt):
        solve(problem, MAKESPAN, SolverOptions(time_limit_seconds=120, stop=stop),
              hints={"fallback": fallback_placement(problem)})

    assert time.perf_counter() - started < 30


def test_an_interrupted_compile_exits_130_and_writes_nothing(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("partitioner.compiler.compile_captured", interrupted)
    out = tmp_path / "out"

    assert main(["compile", "examples/vision_classifier.py", "-o", str(out)]) == 130

    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()


def test_sigterm_during_a_search_ends_the_command_as_ctrl_c_does_with_exit_143(tmp_path, monkeypatch, capsys):
    problem = hard_problem()

    def searching(*args, **kwargs):
        return solve(problem, MAKESPAN, LONG_SEARCH, hints={"fallback": fallback_placement(problem)})

    monkeypatch.setattr("partitioner.compiler.compile_captured", searching)
    threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    out = tmp_path / "out"

    assert main(["compile", "examples/vision_classifier.py", "-o", str(out)]) == 143

    assert "terminated" in capsys.readouterr().err
    assert not out.exists()
