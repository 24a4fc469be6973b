"""Progress of long steps: a live line on a terminal, JSON lines with --json, silence otherwise."""

from __future__ import annotations

import io
import json
from pathlib import Path

from partitioner.cli import main
from partitioner.progress import Progress

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_progress_reports_each_step_and_the_solver_best_and_bound():
    stream = io.StringIO()
    progress = Progress("json", stream)

    with progress.step("planning"):
        progress.solver_update(2.0e-3, 1.5e-3, "seconds")

    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "solver", "done"]
    assert events[1]["objective"] == 2.0e-3 and events[1]["bound"] == 1.5e-3
    assert events[1]["gap"] == 0.25


def test_a_terminal_sees_one_line_rewritten_in_place():
    terminal = Terminal()
    progress = Progress("live", terminal)

    with progress.step("planning"):
        progress.solver_update(2.0e-3, 2.0e-3, "seconds")

    text = terminal.getvalue()
    assert "\r" in text and "best 2 ms, bound 2 ms, gap 0.00%" in text
    assert text.endswith("\n")


def test_nothing_is_written_when_quiet_or_when_not_on_a_terminal():
    for progress in (Progress("quiet", Terminal()), Progress("live", io.StringIO())):
        with progress.step("planning"):
            progress.solver_update(1.0, 0.5, "dollars")
        assert progress.stream.getvalue() == ""


def test_compile_with_json_prints_the_result_as_one_object_and_progress_as_json_lines(tmp_path, capsys):
    # makespan: a search runs (for cost, the floor's rounded plan lies on the floor, proven before any search).
    assert main(["compile", str(EXAMPLES / "vision_classifier.py"), "--objective", "makespan", "--json",
                 "-o", str(tmp_path)]) == 0

    printed = capsys.readouterr()
    result = json.loads(printed.out)
    assert result["status"] == "OPTIMAL" and result["plan"] == str(tmp_path / "plan.json")
    steps = [json.loads(line) for line in printed.err.splitlines()]
    assert {"start", "done", "solver"} <= {e["event"] for e in steps}
