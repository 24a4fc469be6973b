"""The `partitioner` command line: a thin composition of the pipeline's passes.

User mistakes (a `PartitionerError`) print one line on stderr and exit with
code 2; outputs are written only once everything they depend on succeeded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from partitioner.capture import load_model_file
from partitioner.compiler import compile_captured
from partitioner.errors import PartitionerError
from partitioner.problem import OBJECTIVES
from partitioner.solver import SolverOptions
from targets.loader import DEFAULT_TARGET_NAMES, builtin_target_names, load_target


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except PartitionerError as error:
        print(f"partitioner: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("partitioner: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partitioner",
        description="Place the ops of a PyTorch model on heterogeneous accelerators, optimally.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    compile_parser = commands.add_parser("compile", help="solve a placement for a model and write plan.json")
    compile_parser.add_argument("model", help="file.py (with build()), file.py:function, or an ExportedProgram .pt2")
    compile_parser.add_argument(
        "--targets", default=",".join(DEFAULT_TARGET_NAMES),
        help="comma-separated built-in target names or .toml spec paths, in priority order "
             f"(default: {','.join(DEFAULT_TARGET_NAMES)})")
    compile_parser.add_argument("--fallback", help="the target that runs unsupported ops (default: the first CUDA "
                                                   "target that supports every op)")
    compile_parser.add_argument("--objective", choices=OBJECTIVES, default="latency",
                                help="minimise latency per request or money per request (default: latency)")
    compile_parser.add_argument("--time-limit", type=_positive_float, default=30.0, metavar="SECONDS",
                                help="solver time limit (default: 30)")
    compile_parser.add_argument("--workers", type=int, default=0, help="solver search workers (default: 8)")
    compile_parser.add_argument("--seed", type=int, default=0, help="solver random seed (default: 0)")
    compile_parser.add_argument("-o", "--output", default="out", help="output folder for plan.json (default: out)")
    compile_parser.set_defaults(command=_compile)

    targets_parser = commands.add_parser("targets", help="list the built-in targets")
    targets_parser.set_defaults(command=_list_targets)
    return parser


def _compile(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise PartitionerError(f"output {str(output)!r} is a file, not a folder. Fix: give a folder with -o.")
    captured = load_model_file(args.model)
    targets = [item.strip() for item in args.targets.split(",") if item.strip()]
    options = SolverOptions(time_limit_seconds=args.time_limit, workers=args.workers, seed=args.seed)
    plan = compile_captured(captured, targets, args.objective, fallback=args.fallback, solver_options=options)
    path = plan.save(output / "plan.json")
    print(plan.summary())
    print(f"\nwrote {path}")
    return 0


def _list_targets(args: argparse.Namespace) -> int:
    for name in builtin_target_names():
        target = load_target(name)
        support = "all ops" if target.support.supports_all_ops else f"{len(target.support.ops or ())} ops"
        print(f"{name:<14}{target.kind:<6}{target.price_per_hour:>7.2f} $/h  {target.memory_bytes / 1024**3:>5.0f} GiB"
              f"  {support:<9}  {target.description}")
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
