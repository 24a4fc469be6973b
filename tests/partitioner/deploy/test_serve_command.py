"""`partitioner serve`: a compiled plan served on a local Ray instance, measured beside the plan's figures."""

from __future__ import annotations

import sys

import pytest

from partitioner.cli import main
from tests.partitioner.test_cli import assert_one_line_error
from tests.partitioner.test_cli_run import compile_small_model


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
    assert "cuda-h100 ran on the CPU" in out, "an absent device is emulated, and the summary says so"


def test_serve_without_ray_says_how_to_install_it_in_one_line(plan_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError

    assert main(["serve", str(plan_path)]) == 2

    assert_one_line_error(capsys, "needs Ray", "pip install 'partitioner[ray]'")
