"""report.html: one self-contained page with the plan's figures, its graph by target, and its layers."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from partitioner.reporting import html_report
from partitioner.plan import Plan
from partitioner.reporting.html_report import render_html_report, write_html_report
from tests.partitioner.test_cli_run import compile_small_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Plan:
    return Plan.load(compile_small_model(tmp_path_factory.mktemp("html"))[1])


def graph_svg(page: str) -> str:
    return re.search(r'<svg class="graph".*?</svg>', page, re.S).group(0)


def test_the_page_is_self_contained(plan):
    page = render_html_report(plan)

    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "where the model runs".capitalize() in page and "Ops only the fallback runs" in page


def test_a_small_graph_is_drawn_node_by_node_with_its_cut_edges_marked(plan):
    picture = graph_svg(render_html_report(plan))

    assert picture.count("<rect") == len(plan.nodes)
    cut_edges = {(value.producer, consumer) for value in plan.problem.values for consumer in value.consumers
                 if plan.placement[value.producer] != plan.placement[consumer]}
    assert cut_edges and picture.count("stroke-dasharray") == len(cut_edges)


def test_a_large_graph_is_drawn_as_its_partitions(plan, monkeypatch):
    monkeypatch.setattr(html_report, "MOST_NODES_DRAWN", 3)

    page = render_html_report(plan)

    assert graph_svg(page).count("<rect") == len(plan.partitions)
    assert f"drawn as {len(plan.partitions)} partitions" in page


def test_compile_writes_the_page_beside_the_plan(tmp_path):
    _, plan_path = compile_small_model(tmp_path)

    assert (plan_path.parent / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_headless_chromium_loads_the_page_and_draws_it(plan, tmp_path):
    page = write_html_report(plan, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]

    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    drawn = subprocess.run([CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                           capture_output=True, text=True, timeout=120)

    assert dom.returncode == 0 and "placement plan</h1>" in dom.stdout
    assert 'class="graph"' in dom.stdout
    assert "CONSOLE" not in dom.stderr + drawn.stderr  # no page errors logged
    assert shot.stat().st_size > 10_000
