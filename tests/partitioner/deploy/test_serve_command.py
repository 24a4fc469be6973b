"""`partitioner serve`: a compiled plan served on a local Ray instance, measured beside the plan's figures."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from partitioner.cli import main
from partitioner.deploy.ray_instance import descendants, running
from tests.partitioner.test_cli import assert_one_line_error
from tests.partitioner.test_cli_run import compile_small_model

REPOSITORY = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory):
    return compile_small_model(tmp_path_factory.mktemp("serve"))[1]


def test_serve_prints_measured_throughput_latency_and_utilisation_beside_the_plans(plan_path, capsys):
    pytest.importorskip("ray")
    code = main(["serve", str(plan_path), "--requests", "12", "--concurrency", "3"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "served      12 requests of small, 3 in flight" in out
    assert "req/s measured; the plan predicts" in out and "measured / predicted" in out
    assert "p50" in out and "p99" in out
    assert "free-conv" in out and "cuda-h100" in out and "(plan " in out
    assert "cuda-h100, free-conv ran on the CPU" in out, (
        "an absent device is emulated, and so is a chip whose spec runs it on the CPU: the summary names both")


def test_serve_without_ray_says_how_to_install_it_in_one_line(plan_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError

    assert main(["serve", str(plan_path)]) == 2

    assert_one_line_error(capsys, "needs Ray", "pip install 'partitioner[ray]'")


@pytest.fixture(scope="module")
def plan_of_nothing(tmp_path_factory) -> Path:
    """The plan of a model whose forward returns a string: no op, so no partition, runs on any device."""
    folder = tmp_path_factory.mktemp("nothing")
    model_file = folder / "talk.py"
    model_file.write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Talk(nn.Module):
            def forward(self, x):
                return "hello"

        def build():
            return Talk(), (torch.randn(2, 3),)
    """))
    assert main(["compile", str(model_file), "-o", str(folder / "out")]) == 0
    return folder / "out" / "plan.json"


@pytest.mark.parametrize("case, arguments, fragments", [
    ("more in flight than Ray's shared memory holds", ["--requests", "100000", "--concurrency", "100000"],
     ["100000 requests in flight need", "this machine's Ray object store", "Fix: serve at most", "--concurrency"]),
    ("a timeout Ray cannot wait", ["--timeout", "1e308"],
     ["a request timeout of 1e+308 s is over a day (86400 s)", "Fix: give --timeout a number of seconds over 0 "
      "and at most 86400"]),
    ("a model that computes nothing", [], ["computes nothing on any device", "Fix: serve a model"]),
])
def test_serve_refuses_what_cannot_run_in_one_line_before_starting_ray(case, arguments, fragments, plan_path,
                                                                        plan_of_nothing, capsys, monkeypatch):
    ray = pytest.importorskip("ray")

    def started(*args, **kwargs):
        raise AssertionError(f"{case}: Ray started")

    monkeypatch.setattr(ray, "init", started)
    plan = plan_of_nothing if case == "a model that computes nothing" else plan_path
    capsys.readouterr()

    assert main(["serve", str(plan), *arguments]) == 2

    assert_one_line_error(capsys, *fragments)


def test_ctrl_c_while_serving_exits_130_and_leaves_no_ray_process(plan_path):
    """Ctrl-C taken inside Ray's read of a result used to leave its buffer held, and the process crashed at exit
    (SIGSEGV, exit 139); now it ends the deployment, Ray and every process of it, and exits 130."""
    pytest.importorskip("ray")
    serve = subprocess.Popen([sys.executable, "-m", "partitioner.cli", "serve", str(plan_path), "--requests",
                              "1000000000", "--concurrency", "4"], cwd=REPOSITORY, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(command_line(pid).startswith("ray::DeviceWorker") for pid in descendants({serve.pid})):
            assert serve.poll() is None and time.monotonic() < deadline, serve.stderr and serve.stderr.read()
            time.sleep(0.2)
        time.sleep(3)  # the graph compiles and requests flow
        processes = descendants({serve.pid})
        serve.send_signal(signal.SIGINT)
        code = serve.wait(timeout=60)
    finally:
        serve.kill()
    errors = serve.stderr.read()

    assert code == 130, errors
    assert errors.strip().splitlines()[-1] == "partitioner: interrupted"
    assert not [command_line(pid) for pid, started in processes.items() if pid != serve.pid and running(pid, started)]


def command_line(pid: int) -> str:
    """The command line of process `pid` ("" once it has gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as command:
            return command.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
