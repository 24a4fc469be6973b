"""The roofline cost model: launch overhead plus the slower of compute and memory traffic."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cost_models.roofline import RooflineCostModel
from partitioner.frontend.op_graph import NodeKind, OpNode, TensorMeta
from targets.loader import load_target, load_targets
from targets.spec import RooflineConstants
from tests.conftest import op_graph_of

MODEL = RooflineCostModel()


@pytest.fixture(scope="module")
def round_target():
    """A target with round figures so expected times can be worked out by hand."""
    return dataclasses.replace(
        load_target("cuda-h100"),
        peak_flops_per_second={"float32": 1e12, "float16": 4e12},
        compute_efficiency=0.5,          # 2e12 FLOP/s usable at float16, 0.5e12 at float32
        memory_bandwidth_bytes_per_second=1e11,
        memory_efficiency=0.5,           # 5e10 B/s usable
        launch_overhead_seconds=1e-5,
        op_classes={},                   # every class at the figures above, no kernel-shape curves
    )


def op_node(flops: int, dtype: str = "float16", kind: NodeKind = NodeKind.COMPUTE) -> OpNode:
    """A node that reads and writes one 1000x1000 tensor: 2e6 bytes each way at 16 bits."""
    tensor = TensorMeta((1000, 1000), dtype)
    return OpNode(name="node", op="aten.mm.default", kind=kind, inputs=(), parameters=(),
                  input_tensors=(tensor,), output_tensors=(tensor,), arguments={}, flops=flops,
                  parameter_bytes=0)


def test_compute_bound_op_takes_overhead_plus_flops_over_derated_peak(round_target):
    node = op_node(flops=8_000_000_000)
    compute_seconds = 8e9 / (4e12 * 0.5)           # 4 ms
    memory_seconds = (2e6 + 2e6) / (1e11 * 0.5)    # 80 us
    assert compute_seconds > memory_seconds

    assert MODEL.compute_seconds(node, round_target) == pytest.approx(1e-5 + compute_seconds)


def test_memory_bound_op_takes_overhead_plus_bytes_over_derated_bandwidth(round_target):
    node = op_node(flops=1_000_000)
    compute_seconds = 1e6 / (4e12 * 0.5)           # 0.5 us
    memory_seconds = (2e6 + 2e6) / (1e11 * 0.5)    # 80 us
    assert memory_seconds > compute_seconds

    assert MODEL.compute_seconds(node, round_target) == pytest.approx(1e-5 + memory_seconds)


def test_op_with_no_work_still_pays_launch_overhead(round_target):
    empty = dataclasses.replace(op_node(flops=0), input_tensors=(), output_tensors=())

    assert MODEL.compute_seconds(empty, round_target) == pytest.approx(1e-5)


@pytest.mark.parametrize("kind", [NodeKind.VIEW, NodeKind.BOOKKEEPING])
def test_views_and_bookkeeping_ops_take_the_targets_view_overhead_whatever_their_size(round_target, kind):
    node = op_node(flops=8_000_000_000, kind=kind)
    dispatching = dataclasses.replace(round_target, view_overhead_seconds=3e-6)

    assert MODEL.compute_seconds(node, dataclasses.replace(round_target, view_overhead_seconds=0.0)) == 0.0
    assert MODEL.compute_seconds(node, dispatching) == pytest.approx(3e-6)


def test_a_runtime_assert_returns_no_tensor_and_costs_nothing(round_target):
    check = dataclasses.replace(op_node(flops=0, kind=NodeKind.BOOKKEEPING), op="aten._assert_tensor_metadata.default",
                                output_tensors=())

    assert MODEL.compute_seconds(check, round_target) == 0.0


def test_a_python_getitem_takes_no_view_overhead(round_target):
    getitem = dataclasses.replace(op_node(flops=0, kind=NodeKind.BOOKKEEPING), op="operator.getitem")

    assert MODEL.compute_seconds(getitem, dataclasses.replace(round_target, view_overhead_seconds=3e-6)) == 0.0


def test_a_small_op_reaches_a_smaller_share_of_peak_along_its_classes_curve(round_target):
    half = 4e9  # FLOPs at which the matmul class reaches half its efficiency
    curved = dataclasses.replace(round_target, op_classes={
        "matmul": RooflineConstants(0.5, 0.5, 1e-5, compute_half_flops=half)})
    large, small = op_node(flops=400_000_000_000), op_node(flops=4_000_000_000)

    def efficiency(node):
        return node.flops / (4e12 * (MODEL.compute_seconds(node, curved) - 1e-5))

    assert efficiency(small) == pytest.approx(0.25)
    assert efficiency(large) == pytest.approx(0.5 * 100 / 101)


def test_a_dtypes_own_class_table_wins_over_the_classes(round_target):
    tables = dataclasses.replace(round_target, op_classes={"matmul": RooflineConstants(0.5, 0.5, 1e-5),
                                                           "matmul.float16": RooflineConstants(0.25, 0.5, 1e-5)})

    assert MODEL.compute_seconds(op_node(flops=8_000_000_000), tables) == pytest.approx(1e-5 + 8e9 / (4e12 * 0.25))
    assert MODEL.compute_seconds(op_node(flops=8_000_000_000, dtype="float32"), tables) == pytest.approx(
        1e-5 + 8e9 / (1e12 * 0.5))


def test_dtype_without_a_listed_peak_runs_at_the_float32_peak(round_target):
    node = op_node(flops=8_000_000_000, dtype="bfloat16")  # round_target lists no bfloat16 peak

    assert MODEL.compute_seconds(node, round_target) == pytest.approx(1e-5 + 8e9 / (1e12 * 0.5))


def test_builtin_spec_without_bfloat16_peak_uses_its_float32_peak():
    dsp = load_target("dsp-example")

    assert "bfloat16" not in dsp.peak_flops_per_second
    assert dsp.peak_for("bfloat16") == dsp.peak_flops_per_second["float32"] == pytest.approx(10e12)
    assert dsp.peak_for("float16") == pytest.approx(175e12)


def test_faster_target_gives_lower_compute_time():
    node = op_node(flops=8_000_000_000)

    assert MODEL.compute_seconds(node, load_target("cuda-h100")) < MODEL.compute_seconds(
        node, load_target("cuda-l4")
    )


def test_link_comes_from_the_target_set():
    targets = load_targets(["npu-example", "cuda-h100"])

    assert MODEL.link(targets, "npu-example", "cuda-h100") == targets.link("npu-example", "cuda-h100")


# --- the figures the roofline reads, as annotated on a captured linear layer ------------------

BATCH, SEQUENCE, IN_FEATURES, OUT_FEATURES = 2, 3, 5, 7


@pytest.fixture(scope="module")
def linear_node() -> OpNode:
    graph = op_graph_of(torch.nn.Linear(IN_FEATURES, OUT_FEATURES),
                        (torch.randn(BATCH, SEQUENCE, IN_FEATURES),))
    (node,) = [n for n in graph if n.op == "aten.linear.default"]
    return node


def test_linear_flops_are_two_times_m_n_k(linear_node):
    rows = BATCH * SEQUENCE

    assert linear_node.flops == 2 * rows * OUT_FEATURES * IN_FEATURES


def test_linear_reads_input_weight_and_bias_and_writes_its_output(linear_node):
    float32_bytes = 4
    input_bytes = BATCH * SEQUENCE * IN_FEATURES * float32_bytes
    weight_bytes = OUT_FEATURES * IN_FEATURES * float32_bytes
    bias_bytes = OUT_FEATURES * float32_bytes

    assert linear_node.bytes_read == input_bytes + weight_bytes + bias_bytes
    assert linear_node.bytes_written == BATCH * SEQUENCE * OUT_FEATURES * float32_bytes


def test_linear_parameter_bytes_are_weight_plus_bias(linear_node):
    assert linear_node.parameters == ("weight", "bias")
    assert linear_node.parameter_bytes == (OUT_FEATURES * IN_FEATURES + OUT_FEATURES) * 4


def test_tensor_bytes_follow_the_dtype_size():
    assert TensorMeta((3, 4), "float32").num_bytes == 48
    assert TensorMeta((3, 4), "float16").num_bytes == 24
    assert TensorMeta((3, 4), "int8").num_bytes == 12
    assert TensorMeta((), "float32").num_bytes == 4


def test_an_op_class_with_its_own_efficiency_is_costed_with_it():
    target = load_target("cpu-x86")
    slow_matmuls = dataclasses.replace(target, op_classes={"matmul": RooflineConstants(target.compute_efficiency / 2,
                                                                           target.memory_efficiency,
                                                                           target.launch_overhead_seconds)})
    big = TensorMeta((4096, 4096), "float32")
    matmul = OpNode(name="mm", op="aten.mm.default", kind=NodeKind.COMPUTE, inputs=(), parameters=(),
                    input_tensors=(big, big), output_tensors=(big,), arguments={}, flops=2 * 4096**3,
                    parameter_bytes=0)
    model = RooflineCostModel()

    busy = model.compute_seconds(matmul, target) - target.launch_overhead_seconds
    slow_busy = model.compute_seconds(matmul, slow_matmuls) - target.launch_overhead_seconds
    assert slow_busy == pytest.approx(2 * busy)
