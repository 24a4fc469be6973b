"""An LLM plan served on Ray against its own figures: does it deliver the tokens per second, TTFT and TPOT it
promises when planned with costs measured on the machine that serves it?

On this machine: a Llama-style decoder with real weights (fp32), a workload of two prompt lengths, a fleet of
CPU devices whose memory each holds only part of the model (so the plan must split it), every op of both phases
timed on the CPU with one thread (what one actor gets), and the engine's cost per hop (measured here by serving a
model of negligible compute across two devices). Plan with those costs, serve the plan on a local Ray instance, and print measured over
predicted: output tokens per second at full load, TTFT of each prompt length alone, TPOT alone. Not a test;
writes Markdown and JSON.

    python benchmarks/ray_llm_serving.py [--devices 2] [--requests 64] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from cost_models.measured import MeasuredCostModel  # noqa: E402
from cost_models.profile import load_profiles  # noqa: E402
from cost_models.profiling import profile_model  # noqa: E402
from partitioner.deploy.llm_engine import deploy_llm_on_ray  # noqa: E402
from partitioner.deploy.llm_requests import workload_requests  # noqa: E402
from partitioner.deploy.summary import format_llm_measurement  # noqa: E402
from partitioner.execution.llm_phases import as_planned, phase_inputs, placed_phase  # noqa: E402
from partitioner.files import write_atomically  # noqa: E402
from partitioner.frontend.capture import capture  # noqa: E402
from partitioner.frontend.input_containers import register_input_containers  # noqa: E402
from partitioner.llm.phases import DECODE, PREFILL, serving_inputs  # noqa: E402
from partitioner.llm.planning import plan_llm  # noqa: E402
from targets.fleet import load_fleet  # noqa: E402
from targets.workload import load_workload  # noqa: E402

WORKLOAD = """name = "cpu-chat"
prompt_tokens = [{ tokens = 32, share = 0.5 }, { tokens = 64, share = 0.5 }]
output_tokens = 16
batch_size = 8
"""
BUILTIN = Path(__file__).resolve().parents[1] / "targets" / "builtin"
# Runs of the calibration model whose median time per decode step gives the engine's hop (one run varies by 30%).
CALIBRATION_RUNS = 5


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=8192, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def small_cpu_fleet(folder: Path, devices: int, memory_gib: float) -> str:
    """`devices` copies of the built-in CPU spec, each with `memory_gib` of memory, on one host."""
    folder.mkdir(exist_ok=True)
    spec = re.sub(r"^memory_gib = .*$", f"memory_gib = {memory_gib}", (BUILTIN / "cpu-x86.toml").read_text(),
                  flags=re.MULTILINE)
    spec = re.sub(r'^name = .*$', 'name = "cpu-small"', spec, count=1, flags=re.MULTILINE)
    (folder / "cpu-small.toml").write_text(spec)
    fleet = folder / "fleet.toml"
    fleet.write_text(f'name = "{devices} x cpu-small"\n[[hosts]]\nname = "node0"\n'
                     f'devices = [{{ target = "{folder / "cpu-small.toml"}", count = {devices} }}]\n')
    return str(fleet)


def profile_phases(llm: torch.nn.Module, workload, folder: Path) -> MeasuredCostModel:
    """Every op of a prefill at each prompt length and of the decode step at the workload's batch, timed here."""
    register_input_containers(llm)
    inputs = serving_inputs(llm)
    context = workload.context_tokens
    examples = [inputs.prefill_inputs(tokens, context) for tokens, _ in workload.prompt.buckets]
    examples.append(inputs.decode_inputs(workload.batch_size, context))
    for example in examples:  # timed inside whole runs: a decode step streams its weights from memory
        profile_model(capture(llm, example, "llama"), ["cpu"], folder, in_model=True)
    return MeasuredCostModel(load_profiles(folder))


def tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=128, n_positions=128, bos_token_id=0, eos_token_id=0)).eval()


def hops_per_step(plan) -> int:
    """Device changes along a decode step as the plan places it, the token's way back to the first op included."""
    places = [plan.best.assignment[f"decode/{op.name}"] for op in plan.phase_ops["decode"]]
    return sum(a != b for a, b in zip(places, places[1:] + places[:1]))


def engine_hop_seconds(folder: Path, workload) -> float:
    """The LLM engine's own seconds per hop here: a model of negligible compute planned across two devices,
    served one batch alone; its time per decode step less the same step run in process, over the step's hops."""
    tiny = tiny_gpt2()
    fleet = load_fleet(small_cpu_fleet(folder / "tiny", 2, 0.0016))
    plan = plan_llm(tiny, workload, fleet, time_limit_seconds=10, workers=1)
    hops = hops_per_step(plan)
    if hops == 0:
        raise SystemExit("the calibration plan put the tiny model on one device: lower its devices' memory")
    compute = in_process_seconds(plan, tiny, DECODE, plan.best.batch_size)
    requests = workload_requests(workload, plan.best.batch_size, tiny.config.vocab_size)
    with deploy_llm_on_ray(plan, tiny, threads_per_worker=1) as deployment:
        tpot = statistics.median(deployment.benchmark(requests).alone_tpot_seconds for _ in range(CALIBRATION_RUNS))
    return max(0.0, (tpot - compute) / hops)


def in_process_seconds(plan, llm: torch.nn.Module, phase: str, size: int, runs: int = 5) -> float:
    """The median seconds of one run of `phase` at `size` placed as the plan places it, in this process with one
    thread (every place on the CPU): what the plan's cost model predicts, without the engine."""
    with as_planned(plan, llm) as inputs:
        example = phase_inputs(inputs, phase, size, plan.workload.context_tokens)
        _, module, _, _ = placed_phase(plan, llm, phase, example)
        times = []
        with torch.inference_mode():
            for _ in range(runs + 1):
                example = phase_inputs(inputs, phase, size, plan.workload.context_tokens)  # a fresh cache each run
                started = time.perf_counter()
                module(**example)
                times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--memory-gib", type=float, default=0.1, help="each device's memory: under the model's")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--batches-in-flight", type=int, help="default: one per device decode runs on")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # each actor runs with one thread: profile what one actor gets
    llm = model()
    with tempfile.TemporaryDirectory() as folder:
        workload_file = Path(folder) / "workload.toml"
        workload_file.write_text(WORKLOAD)
        workload = load_workload(workload_file)
        started = time.perf_counter()
        cost_model = profile_phases(llm, workload, Path(folder) / "profiles")
        profiling = time.perf_counter() - started
        hop = engine_hop_seconds(Path(folder), workload)
        fleet = load_fleet(small_cpu_fleet(Path(folder), args.devices, args.memory_gib))
        plan = plan_llm(llm, workload, fleet, time_limit_seconds=args.time_limit, cost_model=cost_model,
                        engine_hop_seconds=hop, workers=1)
    alone = {f"prefill {tokens}": in_process_seconds(plan, llm, PREFILL, tokens) for tokens, _ in workload.prompt.buckets}
    alone["decode step"] = in_process_seconds(plan, llm, DECODE, plan.best.batch_size)
    requests = workload_requests(workload, args.requests, llm.config.vocab_size)
    with deploy_llm_on_ray(plan, llm, threads_per_worker=1, batches_in_flight=args.batches_in_flight) as deployment:
        measured = deployment.benchmark(requests)
    summary = format_llm_measurement(measured, plan)
    report = {"devices": args.devices, "memory_gib": args.memory_gib, "workload": workload.describe(),
              "deployment": plan.best.name, "placement": {phase: list(d) for phase, d in plan.best.devices.items()},
              "engine_hop_seconds": hop, "profiling_seconds": profiling, "in_process_seconds": alone,
              "measured": measured.to_dict()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "ray_llm_serving.json", json.dumps(report, indent=1) + "\n")
    in_process = ", ".join(f"{label} {seconds * 1e3:.3g} ms" for label, seconds in alone.items())
    text = (f"# An LLM plan served on Ray against its own figures ({args.devices} CPU devices of "
            f"{args.memory_gib:g} GiB, one thread each)\n\nModel: Llama-style, 8 layers, hidden 512, fp32, real "
            f"weights. Workload: {workload.describe()}, batch {workload.batch_size}. Plan: {plan.best.name}, "
            f"prefill on {', '.join(plan.best.devices['prefill'])}, decode on "
            f"{', '.join(plan.best.devices['decode'])}; costs measured here (every op, one thread), engine hop "
            f"{hop * 1e3:.3g} ms measured here.\n\nThe placed phases run in this process (one thread, no engine): "
            f"{in_process}.\n\n```\n{summary}\n```\n")
    write_atomically(out / "ray_llm_serving.md", text)
    print(text)


if __name__ == "__main__":
    main()
