"""Loading target specs: built-ins, user files, fallback choice, validation messages, links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from partitioner.errors import PartitionerError
from targets.loader import builtin_target_names, load_target, load_targets
from targets.spec import Link

BUILTIN_NAMES = ["cpu-graviton4", "cpu-x86", "cpu-xeon-amx", "cuda-a100", "cuda-h100", "cuda-h200", "cuda-l4", "cuda-l40s", "dsp-example", "gaudi2", "gaudi3", "inf2", "npu-example", "qaic-ai100", "rocm-mi300x", "trn2"]

MINIMAL_SPEC = """\
name = "my-chip"
kind = "npu"
torch_device = "cpu"
onnx_execution_provider = "CPUExecutionProvider"
price_per_hour = 0.5
memory_gib = 8
memory_bandwidth_gb_per_second = 100
launch_overhead_microseconds = 5
compute_efficiency = 0.5
memory_efficiency = 0.5

[peak_tflops]
float32 = 1
float16 = 4

[host_link]
bandwidth_gb_per_second = 10
latency_microseconds = 20

[support]
ops = ["aten.linear.default"]
dtypes = ["float16"]

[[support.limits]]
op = "aten.linear.default"
argument = "weight"
dims = [0]
max = 4096
"""

UNIVERSAL_SPEC = """\
name = "{name}"
kind = "gpu"
torch_device = "{device}"
onnx_execution_provider = "CPUExecutionProvider"
price_per_hour = 1.0
memory_gib = 8
memory_bandwidth_gb_per_second = 100
launch_overhead_microseconds = 5
compute_efficiency = 0.5
memory_efficiency = 0.5

[peak_tflops]
float32 = 1

[host_link]
bandwidth_gb_per_second = 10
latency_microseconds = 20

[support]
ops = "all"
{extra_support}
"""


def write_spec(tmp_path: Path, text: str, filename: str = "my-chip.toml") -> Path:
    path = tmp_path / filename
    path.write_text(text)
    return path


def spec_variant(old: str, new: str) -> str:
    assert old in MINIMAL_SPEC, f"the variant must change the minimal spec: {old!r}"
    return MINIMAL_SPEC.replace(old, new, 1)


# --- built-in specs ---------------------------------------------------------------------------


def test_builtin_target_names_list_every_shipped_spec():
    assert builtin_target_names() == BUILTIN_NAMES


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_builtin_spec_loads_with_sane_figures(name):
    target = load_target(name)

    assert target.name == name
    assert target.spec_path.endswith(f"{name}.toml")
    assert target.price_per_hour > 0
    assert target.memory_bytes > 0
    assert target.memory_bandwidth_bytes_per_second > 0
    assert "float32" in target.peak_flops_per_second
    assert 0 < target.compute_efficiency <= 1
    assert 0 < target.memory_efficiency <= 1
    assert target.host_link.bandwidth_bytes_per_second > 0


def test_spec_units_are_converted_to_seconds_bytes_and_flops():
    target = load_target("cuda-h100")

    assert target.price_per_hour == 6.88
    assert target.price_per_second == pytest.approx(6.88 / 3600)
    assert target.memory_bytes == 80 * 1024**3
    assert target.memory_bandwidth_bytes_per_second == pytest.approx(3350e9)
    assert target.launch_overhead_seconds == pytest.approx(6e-6)
    assert target.peak_flops_per_second["float16"] == pytest.approx(989e12)
    assert target.host_link == Link(latency_seconds=pytest.approx(10e-6), bandwidth_bytes_per_second=55e9)


def test_example_npu_spec_restricts_ops_dtypes_and_rank():
    support = load_target("npu-example").support

    assert "aten.linear.default" in support.ops
    assert "aten.embedding.default" not in support.ops
    assert support.dtypes == frozenset({"float16", "bfloat16", "int8"})
    assert support.max_rank == 5
    assert not support.supports_all_ops


# --- choosing the fallback --------------------------------------------------------------------


def test_fallback_defaults_to_first_cuda_target_that_supports_every_op():
    # cpu-x86 supports every op and comes first, but a CUDA device is preferred.
    targets = load_targets(["npu-example", "cpu-x86", "cuda-l4", "cuda-h100"])

    assert targets.fallback == "cuda-l4"
    assert targets.names == ("npu-example", "cpu-x86", "cuda-l4", "cuda-h100")


def test_fallback_is_first_universal_target_when_there_is_no_cuda_target():
    assert load_targets(["npu-example", "cpu-x86"]).fallback == "cpu-x86"


def test_explicit_fallback_is_honoured():
    assert load_targets(["cuda-l4", "cuda-h100"], fallback="cuda-h100").fallback == "cuda-h100"


def test_fallback_that_restricts_ops_is_rejected():
    with pytest.raises(PartitionerError, match="'npu-example' does not support every op") as error:
        load_targets(["npu-example", "cuda-h100"], fallback="npu-example")
    assert "Fix:" in str(error.value)


@pytest.mark.parametrize(
    "extra_support",
    ['dtypes = ["float16"]', "max_rank = 4", "static_shapes_only = true"],
    ids=["dtypes", "max_rank", "static_shapes_only"],
)
def test_fallback_whose_spec_has_any_restriction_is_rejected(tmp_path, extra_support):
    path = write_spec(tmp_path, UNIVERSAL_SPEC.format(name="almost-all", device="cuda", extra_support=extra_support))

    with pytest.raises(PartitionerError, match="does not support every op"):
        load_targets([path, "cuda-h100"], fallback="almost-all")
    assert load_targets([path, "cuda-h100"]).fallback == "cuda-h100"


def test_fallback_not_in_target_set_is_rejected():
    with pytest.raises(PartitionerError, match="fallback 'cuda-a100' is not in the target set"):
        load_targets(["npu-example", "cuda-h100"], fallback="cuda-a100")


def test_target_set_without_a_universal_target_is_rejected():
    with pytest.raises(PartitionerError, match="supports every op") as error:
        load_targets(["npu-example", "dsp-example"])
    assert "Fix: add a fallback such as cuda-h100" in str(error.value)


def test_empty_target_list_is_rejected():
    with pytest.raises(PartitionerError, match="no targets given"):
        load_targets([])


def test_duplicate_target_is_rejected():
    with pytest.raises(PartitionerError, match="'cuda-h100' is listed twice"):
        load_targets(["npu-example", "cuda-h100", "cuda-h100"])


def test_user_spec_named_like_a_builtin_is_refused_rather_than_shadowing_it(tmp_path):
    path = write_spec(tmp_path, UNIVERSAL_SPEC.format(name="cuda-h100", device="cuda", extra_support=""))

    with pytest.raises(PartitionerError, match="'cuda-h100' is the name of a built-in target, which this spec would "
                                               "shadow. Fix: give it a name of its own"):
        load_targets([path])


# --- names and paths --------------------------------------------------------------------------


def test_unknown_target_name_suggests_a_close_builtin_and_lists_all():
    with pytest.raises(PartitionerError) as error:
        load_targets(["npu-exmaple", "cuda-h100"])

    message = str(error.value)
    assert "unknown target 'npu-exmaple'" in message
    assert "did you mean 'npu-example'?" in message
    for name in BUILTIN_NAMES:
        assert name in message


def test_unknown_target_name_without_close_match_still_lists_builtins():
    with pytest.raises(PartitionerError) as error:
        load_target("quantum-computer")

    assert "did you mean" not in str(error.value)
    assert "cuda-h100" in str(error.value)


def test_missing_spec_file_is_reported(tmp_path):
    missing = tmp_path / "nowhere.toml"

    with pytest.raises(PartitionerError, match="does not exist"):
        load_target(missing)


def test_user_spec_file_loads_by_path(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC)

    target = load_target(str(path))

    assert target.name == "my-chip"
    assert target.spec_path == str(path)
    assert target.price_per_hour == 0.5
    assert target.peak_flops_per_second == {"float32": 1e12, "float16": 4e12}
    assert target.host_link == Link(latency_seconds=pytest.approx(20e-6), bandwidth_bytes_per_second=10e9)
    assert target.support.ops == frozenset({"aten.linear.default"})
    assert target.support.dtypes == frozenset({"float16"})
    (limit,) = target.support.limits
    assert (limit.op, limit.argument, limit.dims, limit.max) == ("aten.linear.default", "weight", (0,), 4096)


def test_user_spec_joins_builtins_in_a_target_set(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC)

    targets = load_targets([path, "cuda-h100"])

    assert targets.names == ("my-chip", "cuda-h100")
    assert targets.fallback == "cuda-h100"
    assert targets["my-chip"].price_per_hour == 0.5


# --- validation messages name the file, the field and the fix ---------------------------------

INVALID_SPECS = {
    "unknown field": (
        ("price_per_hour = 0.5", "pric_per_hour = 0.5"),
        "pric_per_hour", "did you mean 'price_per_hour'",
    ),
    "unknown nested field": (
        ("\nbandwidth_gb_per_second = 10", "\nbandwith_gb_per_second = 10"),
        "host_link.bandwith_gb_per_second", "did you mean 'host_link.bandwidth_gb_per_second'",
    ),
    "missing field": (
        ("memory_gib = 8\n", ""),
        "memory_gib", "add 'memory_gib = ...'",
    ),
    "missing nested field": (
        ("\nbandwidth_gb_per_second = 10\n", "\n"),
        "host_link.bandwidth_gb_per_second", "add 'bandwidth_gb_per_second = ...'",
    ),
    "negative price": (
        ("price_per_hour = 0.5", "price_per_hour = -1.0"),
        "price_per_hour", "at least 0",
    ),
    "efficiency above one": (
        ("compute_efficiency = 0.5", "compute_efficiency = 1.5"),
        "compute_efficiency", "at most 1",
    ),
    "number in quotes": (
        ("memory_gib = 8", 'memory_gib = "8"'),
        "memory_gib", "without quotes",
    ),
    "unknown dtype": (
        ('dtypes = ["float16"]', 'dtypes = ["flaot16"]'),
        "support.dtypes", "did you mean 'float16'",
    ),
    "unknown op key": (
        ('ops = ["aten.linear.default"]', 'ops = ["aten.linaer.default"]'),
        "support.ops", "namespace.name.overload",
    ),
    "limit on a non-existent argument": (
        ('argument = "weight"', 'argument = "wieght"'),
        "support.limits.argument", "use one of ['input', 'weight', 'bias']",
    ),
    "limit that bounds nothing": (
        ("max = 4096\n", ""),
        "support.limits", "add max, min or allowed",
    ),
    "peak_tflops without float32": (
        ("float32 = 1\n", ""),
        "peak_tflops.float32", "add the float32 peak",
    ),
    "invalid name": (
        ('name = "my-chip"', 'name = "My Chip"'),
        "name", "lowercase letters",
    ),
    "a limit of nan, which would switch it off": (
        ("max = 4096", "max = nan"),
        "support.limits.max", "finite number",
    ),
    "dimensions given as booleans": (
        ("dims = [0]", "dims = [true, false]"),
        "support.limits.dims", "dims = [2, 3]",
    ),
    "a dimension no tensor has": (
        ("dims = [0]", "dims = [2, 99999999999999999999]"),
        "support.limits.dims", "dims = [2, 3]",
    ),
    "the meta device, which runs nothing": (
        ('torch_device = "cpu"', 'torch_device = "meta"'),
        "torch_device", "use e.g. 'cpu' or 'cuda'",
    ),
    "a device torch does not know": (
        ('torch_device = "cpu"', 'torch_device = "toaster:0"'),
        "torch_device", "use e.g. 'cpu' or 'cuda'",
    ),
}


@pytest.mark.parametrize("change, field, fix", INVALID_SPECS.values(), ids=INVALID_SPECS.keys())
def test_invalid_spec_error_names_file_field_and_fix(tmp_path, change, field, fix):
    path = write_spec(tmp_path, spec_variant(*change))

    with pytest.raises(PartitionerError) as error:
        load_target(path)

    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert f"field '{field}'" in message
    assert "Fix: " in message
    assert fix in message.split("Fix: ", 1)[1]


def test_malformed_toml_error_names_file_and_line(tmp_path):
    path = write_spec(tmp_path, spec_variant("price_per_hour = 0.5", "price_per_hour = = 0.5"))

    with pytest.raises(PartitionerError) as error:
        load_target(path)

    message = str(error.value)
    assert message.startswith(f"{path}: not valid TOML")
    assert re.search(r"line 5\b", message)
    assert "Fix" in message


# --- links between targets --------------------------------------------------------------------


def test_direct_link_is_used_when_declared_by_either_side():
    targets = load_targets(["cuda-a100", "cuda-h100"])
    nvlink = Link(latency_seconds=pytest.approx(5e-6), bandwidth_bytes_per_second=300e9)

    # Only cuda-h100's spec declares the link; it serves both directions.
    assert "cuda-h100" not in targets["cuda-a100"].links
    assert targets.link("cuda-h100", "cuda-a100") == nvlink
    assert targets.link("cuda-a100", "cuda-h100") == nvlink


def test_without_direct_link_data_goes_through_host_memory():
    targets = load_targets(["npu-example", "cuda-h100"])
    npu_bandwidth, h100_bandwidth = 25e9, 55e9

    link = targets.link("npu-example", "cuda-h100")

    assert link.latency_seconds == pytest.approx(15e-6 + 10e-6)
    assert link.bandwidth_bytes_per_second == pytest.approx(1 / (1 / npu_bandwidth + 1 / h100_bandwidth))
    assert targets.link("cuda-h100", "npu-example") == link


def test_a_copy_between_a_device_and_the_host_cpu_crosses_the_devices_host_link_alone():
    targets = load_targets(["cpu-x86", "cuda-h100"])
    pcie = targets["cuda-h100"].host_link

    assert targets.link("cpu-x86", "cuda-h100") == pcie
    assert targets.link("cuda-h100", "cpu-x86") == pcie


def test_link_time_is_latency_plus_bytes_over_bandwidth():
    link = Link(latency_seconds=1e-5, bandwidth_bytes_per_second=1e9)

    assert link.seconds(2_000_000) == pytest.approx(1e-5 + 2e-3)


def test_moving_nothing_costs_nothing():
    link = Link(latency_seconds=1e-5, bandwidth_bytes_per_second=1e9)

    assert link.seconds(0) == 0.0


def test_link_round_trips_through_dict():
    link = Link(latency_seconds=1e-5, bandwidth_bytes_per_second=1e9)

    assert Link.from_dict(link.to_dict()) == link


# --- per-op-class roofline constants ------------------------------------------------------------

def test_an_op_class_table_overrides_only_the_fields_it_gives(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC + "\n[op_classes.matmul]\ncompute_efficiency = 0.25\n")

    target = load_target(path)

    matmul = target.constants_for("matmul")
    assert (matmul.compute_efficiency, matmul.memory_efficiency) == (0.25, 0.5)
    assert matmul.launch_overhead_seconds == pytest.approx(5e-6)
    assert target.constants_for("elementwise").compute_efficiency == 0.5


def test_a_dtype_table_of_an_op_class_overrides_the_class_for_that_dtype_and_gives_its_size_curve(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC + "\n[op_classes.matmul]\ncompute_efficiency = 0.25\n"
                      "compute_half_efficiency_mflop = 40\n[op_classes.matmul.bfloat16]\ncompute_efficiency = 0.8\n"
                      "memory_half_efficiency_mib = 2\n")

    target = load_target(path)

    bf16, fp32 = target.constants_for("matmul", "bfloat16"), target.constants_for("matmul", "float32")
    assert (bf16.compute_efficiency, bf16.compute_half_flops, bf16.memory_half_bytes) == (0.8, 40e6, 2 * 1024**2)
    assert (fp32.compute_efficiency, fp32.compute_half_flops, fp32.memory_half_bytes) == (0.25, 40e6, 0.0)


def test_a_dtype_table_must_name_a_torch_dtype(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC + "\n[op_classes.matmul.bfloat61]\ncompute_efficiency = 0.8\n")

    with pytest.raises(PartitionerError, match=r"'op_classes.matmul.bfloat61': 'bfloat61' is not a torch dtype"):
        load_target(path)


def test_view_overhead_is_read_in_microseconds_and_is_zero_when_left_out(tmp_path):
    assert load_target(write_spec(tmp_path, MINIMAL_SPEC)).view_overhead_seconds == 0.0
    with_overhead = MINIMAL_SPEC.replace("[peak_tflops]", "view_overhead_microseconds = 3\n\n[peak_tflops]", 1)

    assert load_target(write_spec(tmp_path, with_overhead)).view_overhead_seconds == pytest.approx(3e-6)


def test_an_unknown_op_class_names_the_field_and_a_close_class(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC + "\n[op_classes.matmull]\ncompute_efficiency = 0.25\n")

    with pytest.raises(PartitionerError, match=r"field 'op_classes.matmull': unknown op class. Fix: did you mean "
                                               r"'matmul'"):
        load_target(path)


def test_an_op_class_efficiency_above_one_is_refused(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC + "\n[op_classes.convolution]\nmemory_efficiency = 1.5\n")

    with pytest.raises(PartitionerError, match=r"field 'op_classes.convolution.memory_efficiency': 1.5 is above 1.0"):
        load_target(path)


@pytest.mark.parametrize("old, new, field, problem", [
    ("price_per_hour = 0.5", "price_per_hour = inf", "price_per_hour", "inf is not a finite number"),
    ("price_per_hour = 0.5", "price_per_hour = nan", "price_per_hour", "nan is not a finite number"),
    ("price_per_hour = 0.5", "price_per_hour = 1e300", "price_per_hour", "not a plausible figure"),
    ("memory_gib = 8", "memory_gib = 1e308", "memory_gib", "not a plausible figure"),
    ("memory_gib = 8", "memory_gib = 99999999999999999999", "memory_gib", "not a plausible figure"),
    ("memory_bandwidth_gb_per_second = 100", "memory_bandwidth_gb_per_second = nan",
     "memory_bandwidth_gb_per_second", "nan is not a finite number"),
    ("memory_bandwidth_gb_per_second = 100", "memory_bandwidth_gb_per_second = 1e-300",
     "memory_bandwidth_gb_per_second", "not a plausible figure"),
    ("launch_overhead_microseconds = 5", "launch_overhead_microseconds = nan", "launch_overhead_microseconds",
     "nan is not a finite number"),
    ("float16 = 4", "float16 = inf", "peak_tflops.float16", "inf is not a finite number"),
    ("[host_link]\nbandwidth_gb_per_second = 10", "[host_link]\nbandwidth_gb_per_second = 1e-300",
     "host_link.bandwidth_gb_per_second", "not a plausible figure"),
])
def test_a_number_no_device_has_is_refused_with_its_field(tmp_path, old, new, field, problem):
    path = write_spec(tmp_path, spec_variant(old, new))

    with pytest.raises(PartitionerError, match=re.escape(f"field '{field}': ")) as caught:
        load_target(path)

    assert problem in str(caught.value) and "Fix: " in str(caught.value)


@pytest.mark.parametrize("old, new, field", [
    ('kind = "npu"', 'kind = "toaster"', "kind"),
    ('onnx_execution_provider = "CPUExecutionProvider"', 'onnx_execution_provider = "ToasterExecutionProvider"',
     "onnx_execution_provider"),
])
def test_a_kind_or_execution_provider_nobody_knows_is_refused(tmp_path, old, new, field):
    with pytest.raises(PartitionerError, match=re.escape(f"field '{field}': ") + ".* is not one of "):
        load_target(write_spec(tmp_path, spec_variant(old, new)))


def test_a_link_to_a_target_nobody_names_is_refused(tmp_path):
    spec = MINIMAL_SPEC + "\n[links.cuda-h1000]\nbandwidth_gb_per_second = 50\nlatency_microseconds = 10\n"

    with pytest.raises(PartitionerError, match=r"field 'links.cuda-h1000': no target is named 'cuda-h1000'.*"
                                               r"Fix: did you mean 'cuda-h100'\?"):
        load_targets([write_spec(tmp_path, spec), "cuda-h100"])


def test_a_spec_file_named_like_an_installed_plug_in_target_is_refused_rather_than_shadowing_it(tmp_path):
    """examples/vendor_plugin, which the tests install, registers acme-npu."""
    path = write_spec(tmp_path, UNIVERSAL_SPEC.format(name="acme-npu", device="cpu", extra_support=""))

    with pytest.raises(PartitionerError, match="'acme-npu' is the name of a target of the installed plug-in "
                                               "partitioner-example-vendor .*Fix: give it a name of its own"):
        load_target(path)


@pytest.mark.parametrize("text", ["a = " + "[" * 100_000 + "]" * 100_000, "\udcff".encode("utf-8", "surrogatepass")],
                         ids=["nested 100,000 deep", "not UTF-8"])
def test_a_spec_file_toml_cannot_read_is_one_error_naming_it(tmp_path, text):
    path = tmp_path / "deep.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)

    with pytest.raises(PartitionerError, match=re.escape(f"{path} is not a target spec: ") + ".*Fix: "):
        load_target(path)
