"""Reading target spec files (TOML) field by field: every check a spec's figures, names and support rules pass.

`targets/loader.py` finds a spec (built-in, a plug-in's, a path) and hands its parsed
text here; a mistake is reported with the file, the field and the fix. Fleets and
workloads are read with the same `TomlReader`.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Iterable

from partitioner.errors import PartitionerError
from partitioner.files import SPEC, FileKind, read_text
from targets.op_classes import OP_CLASSES
from targets.spec import Link, OpLimit, RooflineConstants, SupportRules, Target

_GIB = 1024**3
_GB = 1e9
_MICRO = 1e-6
TARGET_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TOP_LEVEL_FIELDS = {
    "name", "kind", "description", "torch_device", "onnx_execution_provider",
    "price_per_hour", "memory_gib", "memory_bandwidth_gb_per_second",
    "launch_overhead_microseconds", "view_overhead_microseconds", "stage_launch_microseconds",
    "graph_kernel_microseconds", "compute_units", "compute_efficiency",
    "memory_efficiency", "peak_tflops", "host_link", "links", "support", "op_classes",
}
# What no real device comes near, in each field's unit: a figure outside is a typo or a unit mix-up
# (GB/s written as bytes/s, say), and would make a plan silently absurd.
_PLAUSIBLE = {
    "price_per_hour": (0.0, 1e4, "dollars per hour"),
    "memory_gib": (1e-6, 1e6, "GiB"),
    "memory_bandwidth_gb_per_second": (1e-3, 1e6, "GB/s"),
    "bandwidth_gb_per_second": (1e-3, 1e6, "GB/s"),
    "launch_overhead_microseconds": (0.0, 1e6, "microseconds"),
    "view_overhead_microseconds": (0.0, 1e6, "microseconds"),
    "stage_launch_microseconds": (0.0, 1e6, "microseconds"),
    "graph_kernel_microseconds": (0.0, 1e6, "microseconds"),
    "compute_units": (1, 1e6, "compute units"),
    "compute_half_efficiency_depth": (0.0, 1e9, "elements of depth"),
    "compute_half_efficiency_keys": (0.0, 1e9, "keys"),
    "compute_half_efficiency_mflop": (0.0, 1e9, "MFLOP"),
    "memory_half_efficiency_mib": (0.0, 1e7, "MiB"),
    "latency_microseconds": (0.0, 1e7, "microseconds"),
}
_PLAUSIBLE_TFLOPS = (1e-6, 1e6, "TFLOP/s")
_OP_CLASS_FIELDS = {"compute_efficiency", "memory_efficiency", "launch_overhead_microseconds"}
_CURVE_FIELDS = {"compute_half_efficiency_mflop", "memory_half_efficiency_mib", "compute_half_efficiency_depth",
                 "compute_half_efficiency_keys"}
_TILED_CLASSES = ("matmul", "convolution", "attention")  # kernels with a depth curve (cost_models/kernel_shapes.py)
_LINK_FIELDS = {"bandwidth_gb_per_second", "latency_microseconds"}
_SUPPORT_FIELDS = {"ops", "dtypes", "max_rank", "static_shapes_only", "limits", "op_dtypes"}
_LIMIT_FIELDS = {"op", "argument", "max", "min", "allowed", "dims"}
_MOST_DIMS = 64  # torch's limit on a tensor's dimensions


@functools.cache
def torch_dtype_names() -> frozenset[str]:
    """The dtype names torch knows (`float16`, `bool`, ...); torch is imported only when a spec is read."""
    import torch

    return frozenset(str(value).removeprefix("torch.") for value in vars(torch).values()
                     if isinstance(value, torch.dtype))


# What a device is, in the words the runtime and the plan use (Ray resources, reports); a spec names one.
TARGET_KINDS = frozenset({"cpu", "gpu", "npu", "dsp", "tpu", "hpu", "fpga", "asic"})
# What a partition boundary costs a kind of device when its spec does not say (`stage_launch_microseconds`): on a
# GPU, a CUDA graph launch (a few us) and an event wait on the stage before (NCCL's small-message send/recv
# latency within a host is about 10 us, nccl-tests); a CPU, a call and a queue hand-off; a chip that runs whole
# compiled graphs (Neuron, Gaudi, Cloud AI 100, TPU), one graph execution's fixed overhead and a host-side
# synchronisation, of order 100 us in their runtimes' profiles. Modelling defaults, not measurements.
DEFAULT_STAGE_LAUNCH_MICROSECONDS = {"cpu": 10.0, "gpu": 20.0}
COMPILED_GRAPH_STAGE_LAUNCH_MICROSECONDS = 100.0


def execution_providers() -> list[str]:
    """Every execution provider ONNX Runtime knows of, installed here or not."""
    import onnxruntime  # only reading specs and plans needs it

    return onnxruntime.get_all_providers()


def device_problem(text: str) -> str | None:
    """Why `text` cannot name the torch device that runs a target (a spec's, a plan's, --device-map's), or None.

    torch's `meta` device parses, but it holds no data and computes nothing, so no model runs on it.
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        return f"{text!r} is not a torch device"
    if device.type == "meta":
        return f"{text!r} is torch's meta device, which holds no data and runs nothing"
    return None


def read_toml(path: Path, kind: FileKind = SPEC) -> dict[str, Any]:
    """A TOML file's contents, read within the bound of its kind (partitioner/files.py); a file that is not TOML
    (or not text) is a user error naming it."""
    return parse_toml(path, read_text(path, kind), kind)


def parse_toml(path: Path, text: str, kind: FileKind = SPEC) -> dict[str, Any]:
    """The contents of TOML `text` from (or for) `path`; text that is not TOML is a user error naming the path."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PartitionerError(f"{path}: not valid TOML ({error}). Fix the syntax at that line.") from None
    except RecursionError:
        raise PartitionerError(f"{path} is not a {kind.noun}: it nests tables or arrays deeper than Python reads. "
                               f"Fix: {kind.fix}.") from None


class TomlReader:
    """Reads one parsed TOML file (a target spec, a fleet), its errors naming the file, the field and the fix."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    def fail(self, field: str, problem: str, fix: str) -> PartitionerError:
        return PartitionerError(f"{self.path}: field '{field}': {problem}. Fix: {fix}.")

    def check_known_fields(self, table: dict, known: set[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                fix = f"did you mean '{prefix}{close[0]}'" if close else f"remove it; known fields are {sorted(known)}"
                raise self.fail(prefix + key, "unknown field", fix)

    def value(self, field: str, table: dict | None = None, default: Any = ..., prefix: str = "") -> Any:
        table = self.data if table is None else table
        if field not in table:
            if default is ...:
                # `prefix` names the enclosing table so a missing nested field is found.
                where = f"the [{prefix.rstrip('.')}] table" if prefix else "the file"
                raise self.fail(prefix + field, "missing", f"add '{field} = ...' to {where}")
            return default
        return table[field]

    def string(self, field: str, default: Any = ...) -> str:
        value = self.value(field, default=default)
        if not isinstance(value, str) or (default is ... and not value):
            raise self.fail(field, f"expected a non-empty string, got {value!r}", "quote the value")
        return value

    def number(self, field: str, table: dict | None = None, prefix: str = "", *, minimum: float | None = None,
               exclusive_minimum: float | None = None, maximum: float | None = None,
               plausible_as: str | None = None) -> float:
        """A finite number within the bounds given and the plausible range of its field (or of the field
        `plausible_as` names: a host's PCIe is a bandwidth like a link's)."""
        value = self.value(field, table, prefix=prefix)
        name = prefix + field
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"expected a number, got {value!r}", "write a plain number without quotes")
        if not math.isfinite(value):
            raise self.fail(name, f"{value} is not a finite number", "write the figure as a plain finite number")
        if minimum is not None and value < minimum:
            raise self.fail(name, f"{value} is below {minimum}", f"use a value of at least {minimum}")
        if exclusive_minimum is not None and value <= exclusive_minimum:
            raise self.fail(name, f"{value} must be greater than {exclusive_minimum}", "use a positive value")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"{value} is above {maximum}", f"use a value of at most {maximum}")
        plausible = _PLAUSIBLE.get(plausible_as or field)
        if plausible is not None and not plausible[0] <= value <= plausible[1]:
            low, high, unit = plausible
            raise self.fail(name, f"{value:g} {unit} is not a plausible figure for a device",
                            f"give it in {unit}, between {low:g} and {high:g}")
        return float(value)

    def link(self, table: Any, field: str) -> Link:
        if not isinstance(table, dict):
            raise self.fail(field, f"expected a table, got {table!r}", f"write it as a [{field}] section")
        self.check_known_fields(table, _LINK_FIELDS, field + ".")
        return Link(
            latency_seconds=self.number("latency_microseconds", table, field + ".", minimum=0.0) * _MICRO,
            bandwidth_bytes_per_second=self.number("bandwidth_gb_per_second", table, field + ".",
                                                   exclusive_minimum=0.0) * _GB,
        )


class SpecReader(TomlReader):
    """Reads one parsed spec, checking each field as it goes."""

    def target(self) -> Target:
        self.check_known_fields(self.data, _TOP_LEVEL_FIELDS, "")
        name = self.string("name")
        if not TARGET_NAME_PATTERN.match(name):
            raise self.fail("name", f"{name!r} is not a valid target name", "use lowercase letters, digits, '-' and '_'")
        return Target(
            name=name,
            kind=self.choice("kind", TARGET_KINDS),
            description=self.string("description", default=""),
            torch_device=self.torch_device(),
            onnx_execution_provider=self.choice("onnx_execution_provider", execution_providers()),
            price_per_hour=self.number("price_per_hour", minimum=0.0),
            memory_bytes=int(self.number("memory_gib", exclusive_minimum=0.0) * _GIB),
            memory_bandwidth_bytes_per_second=self.number("memory_bandwidth_gb_per_second", exclusive_minimum=0.0)
            * _GB,
            peak_flops_per_second=self.peak_flops(),
            compute_efficiency=self.number("compute_efficiency", exclusive_minimum=0.0, maximum=1.0),
            memory_efficiency=self.number("memory_efficiency", exclusive_minimum=0.0, maximum=1.0),
            launch_overhead_seconds=self.number("launch_overhead_microseconds", minimum=0.0) * _MICRO,
            view_overhead_seconds=self.number("view_overhead_microseconds", {"view_overhead_microseconds": 0.0,
                                                                             **self.data}, minimum=0.0) * _MICRO,
            stage_launch_seconds=self.stage_launch_microseconds() * _MICRO,
            graph_kernel_seconds=(self.number("graph_kernel_microseconds", minimum=0.0) * _MICRO
                                  if "graph_kernel_microseconds" in self.data else None),
            compute_units=self.compute_units(),
            host_link=self.link(self.table("host_link"), "host_link"),
            links={
                peer: self.link(value, f"links.{peer}") for peer, value in self.table("links", default={}).items()
            },
            support=self.support(),
            spec_path=str(self.path),
            op_classes=self.op_classes(),
        )

    def compute_units(self) -> int | None:
        """The spec's `compute_units`, a whole number; None where it gives none."""
        if "compute_units" not in self.data:
            return None
        units = self.number("compute_units", minimum=1)
        if units != int(units):
            raise self.fail("compute_units", f"{units:g} is not a whole number", "count the units: e.g. 132")
        return int(units)

    def stage_launch_microseconds(self) -> float:
        """The spec's `stage_launch_microseconds`, or its kind's default (DEFAULT_STAGE_LAUNCH_MICROSECONDS)."""
        kind = self.data.get("kind")
        default = DEFAULT_STAGE_LAUNCH_MICROSECONDS.get(kind, COMPILED_GRAPH_STAGE_LAUNCH_MICROSECONDS)
        return self.number("stage_launch_microseconds", {"stage_launch_microseconds": default, **self.data},
                           minimum=0.0)

    def op_classes(self) -> dict[str, RooflineConstants]:
        """Per-class roofline constants, keyed "matmul" or, for one dtype of a class, "matmul.bfloat16" (an
        [op_classes.matmul.bfloat16] table). A field a table leaves out takes its class's value, then the spec's
        top-level one; efficiency curves are flat unless a table gives a half-efficiency size."""
        classes = {}
        for name, table in self.table("op_classes", default={}).items():
            prefix = f"op_classes.{name}."
            if name not in OP_CLASSES:
                close = difflib.get_close_matches(name, OP_CLASSES, n=1)
                raise self.fail(f"op_classes.{name}", "unknown op class",
                                f"did you mean '{close[0]}'" if close else f"use one of {', '.join(OP_CLASSES)}")
            if not isinstance(table, dict):
                raise self.fail(f"op_classes.{name}", f"expected a table, got {table!r}",
                                f"write it as an [op_classes.{name}] section")
            by_dtype = {key: value for key, value in table.items() if isinstance(value, dict)}
            own = {key: value for key, value in table.items() if key not in by_dtype}
            for where, fields in [(prefix, own), *((f"{prefix}{d}.", t) for d, t in by_dtype.items())]:
                if name != "attention" and "compute_half_efficiency_keys" in fields:
                    raise self.fail(f"{where}compute_half_efficiency_keys", "only an attention streams keys",
                                    "move it to [op_classes.attention], or drop it")
                if name not in _TILED_CLASSES and "compute_half_efficiency_depth" in fields:
                    raise self.fail(f"{where}compute_half_efficiency_depth", f"only a tiled kernel "
                                    f"({', '.join(_TILED_CLASSES)}) loops over a depth",
                                    "move it to one of those classes' tables, or drop it")
                if {"compute_half_efficiency_keys", "compute_half_efficiency_depth"} <= set(fields):
                    raise self.fail(f"{where}compute_half_efficiency_keys", "an attention's keys are its depth",
                                    "give compute_half_efficiency_depth alone")
                if "compute_half_efficiency_keys" in fields:  # the older name of an attention's depth curve
                    self.number("compute_half_efficiency_keys", fields, where, minimum=0.0)
                    fields["compute_half_efficiency_depth"] = fields.pop("compute_half_efficiency_keys")
            self.check_known_fields(own, _OP_CLASS_FIELDS | _CURVE_FIELDS, prefix)
            defaults = {**dict.fromkeys(_CURVE_FIELDS, 0.0),
                        **{field: self.data.get(field) for field in _OP_CLASS_FIELDS}}
            classes[name] = self.roofline_constants({**defaults, **own}, prefix)
            for dtype, dtype_table in by_dtype.items():
                self.check_dtype(dtype, f"{prefix}{dtype}")
                self.check_known_fields(dtype_table, _OP_CLASS_FIELDS | _CURVE_FIELDS, f"{prefix}{dtype}.")
                classes[f"{name}.{dtype}"] = self.roofline_constants({**defaults, **own, **dtype_table},
                                                                     f"{prefix}{dtype}.")
        return classes

    def roofline_constants(self, table: dict, prefix: str) -> RooflineConstants:
        return RooflineConstants(
            compute_efficiency=self.number("compute_efficiency", table, prefix, exclusive_minimum=0.0, maximum=1.0),
            memory_efficiency=self.number("memory_efficiency", table, prefix, exclusive_minimum=0.0, maximum=1.0),
            launch_overhead_seconds=self.number("launch_overhead_microseconds", table, prefix, minimum=0.0) * _MICRO,
            compute_half_flops=self.number("compute_half_efficiency_mflop", table, prefix, minimum=0.0) * 1e6,
            memory_half_bytes=self.number("memory_half_efficiency_mib", table, prefix, minimum=0.0) * 1024**2,
            compute_half_depth=self.number("compute_half_efficiency_depth", table, prefix, minimum=0.0),
        )

    def choice(self, field: str, choices: Iterable[str]) -> str:
        value = self.string(field)
        choices = sorted(choices)
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            raise self.fail(field, f"{value!r} is not one of {', '.join(choices)}",
                            f"did you mean {close[0]!r}" if close else "use one of those")
        return value

    def table(self, field: str, default: Any = ...) -> dict:
        value = self.value(field, default=default)
        if not isinstance(value, dict):
            raise self.fail(field, f"expected a table, got {value!r}", f"write it as a [{field}] section")
        return value

    def torch_device(self) -> str:
        value = self.string("torch_device")
        problem = device_problem(value)
        if problem is not None:
            raise self.fail("torch_device", problem, "use e.g. 'cpu' or 'cuda'")
        return value

    def peak_flops(self) -> dict[str, float]:
        table = self.table("peak_tflops")
        for dtype in table:
            self.check_dtype(dtype, "peak_tflops")
        if "float32" not in table:
            raise self.fail("peak_tflops.float32", "missing", "add the float32 peak; other dtypes default to it")
        peaks = {dtype: self.number(dtype, table, "peak_tflops.", exclusive_minimum=0.0) for dtype in table}
        for dtype, tflops in peaks.items():
            if not _PLAUSIBLE_TFLOPS[0] <= tflops <= _PLAUSIBLE_TFLOPS[1]:
                low, high, unit = _PLAUSIBLE_TFLOPS
                raise self.fail(f"peak_tflops.{dtype}", f"{tflops:g} {unit} is not a plausible figure for a device",
                                f"give it in {unit}, between {low:g} and {high:g}")
        return {dtype: tflops * 1e12 for dtype, tflops in peaks.items()}

    def check_dtype(self, dtype: Any, field: str) -> str:
        if dtype not in torch_dtype_names():
            close = difflib.get_close_matches(str(dtype), torch_dtype_names(), n=1)
            fix = f"did you mean {close[0]!r}" if close else "use torch dtype names such as 'float16'"
            raise self.fail(field, f"{dtype!r} is not a torch dtype", fix)
        return dtype

    def check_op(self, op: Any, field: str) -> str:
        if not isinstance(op, str) or not resolve_op(op):
            raise self.fail(field, f"{op!r} is not a known op key",
                            "write ops as namespace.name.overload, e.g. 'aten.linear.default'")
        return op

    def support(self) -> SupportRules:
        table = self.table("support")
        self.check_known_fields(table, _SUPPORT_FIELDS, "support.")
        ops = self.value("ops", table, prefix="support.")
        if ops == "all":
            op_set = None
        elif isinstance(ops, list):
            op_set = frozenset(self.check_op(op, "support.ops") for op in ops)
        else:
            raise self.fail("support.ops", f"expected \"all\" or a list of op keys, got {ops!r}",
                            "write ops = \"all\" or ops = [\"aten.linear.default\", ...]")
        dtypes = self.value("dtypes", table, default=None)
        if dtypes is not None:
            if not isinstance(dtypes, list):
                raise self.fail("support.dtypes", f"expected a list, got {dtypes!r}", "write dtypes = [\"float16\"]")
            dtypes = frozenset(self.check_dtype(d, "support.dtypes") for d in dtypes)
        max_rank = self.value("max_rank", table, default=None)
        if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 0):
            raise self.fail("support.max_rank", f"expected a non-negative integer, got {max_rank!r}", "write e.g. 4")
        static = self.value("static_shapes_only", table, default=False)
        if not isinstance(static, bool):
            raise self.fail("support.static_shapes_only", f"expected true or false, got {static!r}", "write true")
        limits = self.value("limits", table, default=[])
        if not isinstance(limits, list):
            raise self.fail("support.limits", "expected an array of tables", "write each as a [[support.limits]] section")
        return SupportRules(op_set, dtypes, max_rank, static, tuple(self.limit(item) for item in limits),
                            self.op_dtypes(self.value("op_dtypes", table, default={}), op_set))

    def op_dtypes(self, table: Any, ops: frozenset[str] | None) -> dict[str, frozenset[str]]:
        """[support.op_dtypes]: op key -> the dtypes that op computes in here, in place of support.dtypes."""
        if not isinstance(table, dict):
            raise self.fail("support.op_dtypes", f"expected a table, got {table!r}",
                            "write a [support.op_dtypes] section of \"op key\" = [\"float32\", ...]")
        rules = {}
        for op, dtypes in table.items():
            field = f'support.op_dtypes."{op}"'
            self.check_op(op, field)
            if ops is not None and op not in ops:
                raise self.fail(field, "the op is not in support.ops, so its dtypes cannot apply",
                                "add the op to support.ops, or remove this line")
            if not isinstance(dtypes, list) or not dtypes:
                raise self.fail(field, f"expected a list of dtypes, got {dtypes!r}", "write e.g. [\"float32\"]")
            rules[op] = frozenset(self.check_dtype(d, field) for d in dtypes)
        return rules

    def limit(self, table: Any) -> OpLimit:
        field = "support.limits"
        if not isinstance(table, dict):
            raise self.fail(field, f"expected a table, got {table!r}", "write each as a [[support.limits]] section")
        self.check_known_fields(table, _LIMIT_FIELDS, field + ".")
        op = self.check_op(self.value("op", table, prefix=field + "."), field + ".op")
        argument = self.value("argument", table, prefix=field + ".")
        schema_arguments = [a.name for a in resolve_op(op)._schema.arguments]
        if argument not in schema_arguments:
            raise self.fail(field + ".argument", f"{op} has no argument {argument!r}",
                            f"use one of {schema_arguments}")
        # A bound that is not a finite number (nan compares false with everything) would switch the limit off.
        bounds = {key: self.number(key, table, field + ".") if key in table else None for key in ("max", "min")}
        allowed = table.get("allowed", [])
        if not isinstance(allowed, list) or any(isinstance(a, float) and not math.isfinite(a) for a in allowed):
            raise self.fail(field + ".allowed", f"expected a list of finite values, got {allowed!r}",
                            "write e.g. allowed = [1, 2]")
        dims = table.get("dims", [])
        if not isinstance(dims, list) or any(isinstance(d, bool) or not isinstance(d, int)
                                             or not -_MOST_DIMS <= d < _MOST_DIMS for d in dims):
            raise self.fail(field + ".dims", f"expected a list of dimension indices (from -{_MOST_DIMS} to "
                                             f"{_MOST_DIMS - 1}: torch tensors have at most {_MOST_DIMS} dimensions), "
                                             f"got {dims!r}", "write e.g. dims = [2, 3]")
        if bounds["max"] is None and bounds["min"] is None and not allowed:
            raise self.fail(field, f"the limit on {op} {argument} bounds nothing", "add max, min or allowed")
        return OpLimit(op, argument, bounds["max"], bounds["min"], tuple(allowed), tuple(dims))


def resolve_op(op_key: str):
    """The torch OpOverload for a key like `aten.linear.default`, or None if there is none."""
    parts = op_key.split(".")
    if len(parts) != 3:
        return None
    namespace, name, overload = parts
    import torch

    try:
        return getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except (AttributeError, RuntimeError):
        return None
