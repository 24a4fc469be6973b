"""The `partitioner` command line: compile writes plan.json and a summary; every user mistake is one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from partitioner.cli import main
from partitioner.placement.objectives import LATENCY
from partitioner.plan import Plan
from targets.loader import available_target_names, builtin_target_names

REPOSITORY = Path(__file__).resolve().parents[2]
VISION_CLASSIFIER = str(REPOSITORY / "examples" / "vision_classifier.py")

# A universal target too small for any real model: the only place the fallback ops can go.
TINY_GPU_SPEC = """
name = "tiny-gpu"
kind = "gpu"
description = "A GPU with 1 MiB of memory"
torch_device = "cuda"
onnx_execution_provider = "CUDAExecutionProvider"
price_per_hour = 1.0
memory_gib = 0.0009765625
memory_bandwidth_gb_per_second = 1000
launch_overhead_microseconds = 5
compute_efficiency = 0.6
memory_efficiency = 0.75

[peak_tflops]
float32 = 50
float16 = 500

[host_link]
bandwidth_gb_per_second = 25
latency_microseconds = 10

[support]
ops = "all"
"""

# A model torch.export cannot trace: line 6 branches on a tensor's value.
BRANCHY_MODEL = textwrap.dedent("""
    import torch

    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x + 1
            return x - 1

    def build():
        return Branchy(), (torch.randn(4),)
""")


def assert_nothing_written(output: Path) -> None:
    assert not (output / "plan.json").exists()
    assert not output.exists() or not any(output.iterdir()), f"left behind: {list(output.iterdir())}"


def assert_one_line_error(capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{captured.err}"
    assert lines[0].startswith("partitioner: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert captured.out == ""
    return lines[0]


# --- compile ----------------------------------------------------------------------------------------------------------


def test_compile_writes_plan_json_and_prints_a_summary(tmp_path, capsys):
    output = tmp_path / "out"

    code = main(["compile", VISION_CLASSIFIER, "-o", str(output)])

    assert code == 0
    assert sorted(p.name for p in output.iterdir()) == ["plan.json", "report.html"]
    plan = Plan.load(output / "plan.json")
    assert [t.name for t in plan.targets] == ["npu-example", "cuda-h100"]
    assert plan.objective is LATENCY
    assert plan.model.source is not None and plan.model.source.path == VISION_CLASSIFIER
    printed = capsys.readouterr()
    assert printed.out.startswith("model      vision_classifier:")
    assert "gap" in printed.out and "priority" in printed.out and "fallback" in printed.out
    assert printed.out.rstrip().endswith(f"wrote {output / 'plan.json'} and {output / 'report.html'}")
    assert printed.err == ""


def test_compile_honours_targets_objective_and_time_limit(tmp_path, capsys):
    output = tmp_path / "out"

    code = main(["compile", VISION_CLASSIFIER, "--targets", "npu-example,dsp-example,cuda-h100",
                 "--objective", "cost", "--time-limit", "5", "-o", str(output)])

    assert code == 0
    data = json.loads((output / "plan.json").read_text())
    assert [t["name"] for t in data["targets"]] == ["npu-example", "dsp-example", "cuda-h100"]
    assert data["objective"] == "cost"
    assert data["fallback"] == "cuda-h100"
    for baseline in data["baselines"].values():
        assert data["score"]["cost_per_request"] <= baseline["score"]["cost_per_request"] * (1 + 1e-9)
    assert "objective cost" in capsys.readouterr().out


def test_compile_into_an_existing_folder_replaces_the_plan(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "plan.json").write_text("an old plan")

    assert main(["compile", VISION_CLASSIFIER, "-o", str(output)]) == 0
    assert Plan.load(output / "plan.json").model.name == "vision_classifier"


def test_targets_lists_every_target_built_in_or_plugged_in(capsys):
    code = main(["targets"])

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[0] for line in lines] == available_target_names()  # built-in first, then plug-ins'
    assert {"npu-example", "dsp-example", "cuda-h100"} <= set(builtin_target_names())
    h100 = next(line for line in lines if line.startswith("cuda-h100"))
    npu = next(line for line in lines if line.startswith("npu-example"))
    assert "all ops" in h100 and "$/h" in h100 and "GiB" in h100
    assert " ops" in npu and "all ops" not in npu


# --- user mistakes: exit code 2, one line on stderr, nothing written ------------------------------------------------


def test_misspelt_target_suggests_the_right_name_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out"

    code = main(["compile", VISION_CLASSIFIER, "--targets", "npu-exmaple,cuda-h100", "-o", str(output)])

    assert code == 2
    assert_one_line_error(capsys, "unknown target 'npu-exmaple'", "did you mean 'npu-example'")
    assert_nothing_written(output)


def test_missing_spec_file_names_the_path_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    missing_spec = tmp_path / "specs" / "my-chip.toml"

    code = main(["compile", VISION_CLASSIFIER, "--targets", f"{missing_spec},cuda-h100", "-o", str(output)])

    assert code == 2
    assert_one_line_error(capsys, f"target spec file '{missing_spec}' does not exist", "Fix: check the path")
    assert_nothing_written(output)


def test_invalid_spec_file_names_the_file_field_and_fix(tmp_path, capsys):
    output = tmp_path / "out"
    spec = tmp_path / "bad-chip.toml"
    spec.write_text(TINY_GPU_SPEC.replace("memory_gib = 0.0009765625", 'memory_gib = "lots"'))

    code = main(["compile", VISION_CLASSIFIER, "--targets", str(spec), "-o", str(output)])

    assert code == 2
    assert_one_line_error(capsys, str(spec), "field 'memory_gib'", "Fix:")
    assert_nothing_written(output)


def test_model_file_without_build_says_to_define_it_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    model_file = tmp_path / "model.py"
    model_file.write_text("import torch\nmodel = torch.nn.Linear(4, 4)\n")

    code = main(["compile", str(model_file), "-o", str(output)])

    assert code == 2
    assert_one_line_error(capsys, f"{model_file} has no function build()", "Fix: define build()")
    assert_nothing_written(output)


def test_untraceable_model_file_names_its_line_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    model_file = tmp_path / "branchy.py"
    model_file.write_text(BRANCHY_MODEL)

    code = main(["compile", str(model_file), "-o", str(output)])

    assert code == 2
    assert_one_line_error(capsys, "could not capture Branchy", f"{model_file}:6", "Fix:")
    assert_nothing_written(output)


def test_targets_without_memory_for_the_model_explain_the_shortfall_and_write_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    spec = tmp_path / "tiny-gpu.toml"
    spec.write_text(TINY_GPU_SPEC)

    code = main(["compile", VISION_CLASSIFIER, "--targets", str(spec), "-o", str(output)])

    assert code == 2
    assert_one_line_error(capsys, "memory", "tiny-gpu", "Fix:")
    assert_nothing_written(output)


def test_output_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    output = tmp_path / "plan-here"
    output.write_text("not a folder")

    code = main(["compile", VISION_CLASSIFIER, "-o", str(output)])

    assert code == 2
    assert_one_line_error(capsys, "is a file, not a folder", "Fix:")
    assert output.read_text() == "not a folder"


def test_unknown_objective_is_a_usage_error(tmp_path, capsys):
    output = tmp_path / "out"

    with pytest.raises(SystemExit) as exited:
        main(["compile", VISION_CLASSIFIER, "--objective", "speed", "-o", str(output)])

    assert exited.value.code == 2
    assert "invalid choice: 'speed'" in capsys.readouterr().err
    assert_nothing_written(output)


# --- the installed entry point ------------------------------------------------------------------------------------


def run_console_script(*arguments: str) -> subprocess.CompletedProcess:
    script = shutil.which("partitioner", path=os.path.dirname(sys.executable)) or shutil.which("partitioner")
    assert script, "the `partitioner` console script is not installed; run `pip install -e .`"
    return subprocess.run([script, *arguments], cwd=REPOSITORY, capture_output=True, text=True, timeout=300)


def test_installed_console_script_compiles_an_example(tmp_path):
    output = tmp_path / "out"

    finished = run_console_script("compile", "examples/vision_classifier.py", "-o", str(output))

    assert finished.returncode == 0, finished.stderr
    assert "plan saves" in finished.stdout
    assert Plan.load(output / "plan.json").model.source.path == VISION_CLASSIFIER


def test_installed_console_script_prints_only_one_line_when_torch_export_fails(tmp_path):
    model_file = tmp_path / "branchy.py"
    model_file.write_text(BRANCHY_MODEL)
    output = tmp_path / "out"

    finished = run_console_script("compile", str(model_file), "-o", str(output))

    assert finished.returncode == 2
    assert finished.stderr.count("\n") == 1, finished.stderr  # no partial graph, no torch log lines
    assert finished.stderr.startswith(f"partitioner: error: torch.export could not capture Branchy at {model_file}:6")
    assert finished.stdout == ""
    assert_nothing_written(output)


def test_compile_with_a_latency_limit_records_it_and_marks_baselines_over_it(tmp_path, capsys):
    exit_code = main(["compile", VISION_CLASSIFIER, "--objective", "cost", "--max-latency", "2ms",
                      "--time-limit", "5", "-o", str(tmp_path)])

    assert exit_code == 0
    assert json.loads((tmp_path / "plan.json").read_text())["max_latency_seconds"] == pytest.approx(0.002)
    summary = capsys.readouterr().out
    assert "objective cost within 2 ms" in summary
    assert "priority" in summary and "over the 2 ms latency limit" in summary


def test_a_latency_limit_no_plan_meets_exits_2_and_writes_nothing(tmp_path, capsys):
    exit_code = main(["compile", VISION_CLASSIFIER, "--objective", "cost", "--max-latency", "500us",
                      "--time-limit", "5", "-o", str(tmp_path / "out")])

    assert exit_code == 2
    assert "latency: no placement" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- files, folders and model files a careless or hostile user gives -------------------------------------------------


def test_compile_into_a_folder_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")

    code = main(["compile", VISION_CLASSIFIER, "-o", str(tmp_path / "a-file" / "out")])

    assert code == 2
    assert_one_line_error(capsys, "a-file is a file", "Fix: give another folder with -o")


def test_report_on_a_folder_is_one_line(tmp_path, capsys):
    code = main(["report", str(tmp_path)])

    assert code == 2
    assert_one_line_error(capsys, "is not a plan file: it is a folder")


def test_a_build_function_that_exits_is_an_error_not_a_silent_success(tmp_path, capsys):
    model_file = tmp_path / "exits.py"
    model_file.write_text("import sys\n\ndef build():\n    sys.exit(0)\n")

    code = main(["compile", str(model_file), "-o", str(tmp_path / "out")])

    assert code == 2
    assert_one_line_error(capsys, "build() exited the program (sys.exit(0))", "Fix: return (model, example_inputs)")
    assert not (tmp_path / "out").exists()


def test_a_garbage_exported_program_is_one_line_without_torch_logs(tmp_path, capsys):
    (tmp_path / "model.pt2").write_bytes(b"not a zip file at all")

    code = main(["compile", str(tmp_path / "model.pt2"), "-o", str(tmp_path / "out")])

    assert code == 2
    assert_one_line_error(capsys, "is not a loadable ExportedProgram")


@pytest.mark.parametrize("option", [["--max-latency", "nan"], ["--time-limit", "nan"], ["--time-limit", "1e-9"],
                                    ["--workers", "-3"]])
def test_numbers_the_solver_cannot_use_are_usage_errors(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["compile", VISION_CLASSIFIER, *option, "-o", str(tmp_path / "out")])

    assert exited.value.code == 2
    assert f"argument {option[0]}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_negative_tolerance_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "plan.json"), "--check", "--rtol", "-1"])

    assert exited.value.code == 2
    assert "argument --rtol: must be zero or positive" in capsys.readouterr().err


def test_targets_naming_none_is_refused_not_read_as_the_defaults(tmp_path, capsys):
    code = main(["compile", VISION_CLASSIFIER, "--targets", ",", "-o", str(tmp_path / "out")])

    assert code == 2
    assert_one_line_error(capsys, "--targets ',' names no target")


def test_compile_json_prints_only_the_result_on_stdout_whatever_the_model_prints(tmp_path, capsys):
    model = tmp_path / "chatty.py"
    model.write_text(textwrap.dedent("""
        import torch

        print("building the model")

        class Chatty(torch.nn.Module):
            def forward(self, x):
                print("tracing forward")
                return x.relu()

        def build():
            print("inside build()")
            return Chatty(), (torch.randn(4),)
    """))

    assert main(["compile", str(model), "--json", "-o", str(tmp_path / "out")]) == 0

    printed = capsys.readouterr()
    assert json.loads(printed.out)["plan"] == str(tmp_path / "out" / "plan.json")
    assert "building the model" in printed.err and "inside build()" in printed.err


@pytest.mark.parametrize("argv", [["compile", VISION_CLASSIFIER], ["profile", VISION_CLASSIFIER],
                                  ["export", "plan.json"], ["calibrate", "profiles", "--target", "cpu-x86"]],
                         ids=lambda argv: argv[0])
@pytest.mark.parametrize("output", ["", "  "])
def test_an_empty_output_path_is_refused_not_read_as_the_current_folder(argv, output, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    code = main([*argv, "-o", output])

    assert code == 2
    assert_one_line_error(capsys, f"-o {output!r} names no path. Fix: give one, e.g. -o ")
    assert list(tmp_path.iterdir()) == []


def test_coverage_of_targets_naming_none_is_refused_not_an_empty_table(capsys):
    code = main(["targets", "coverage", VISION_CLASSIFIER, "--targets", ",,,"])

    assert code == 2
    assert_one_line_error(capsys, "--targets ',,,' names no target. Fix: name at least one")
