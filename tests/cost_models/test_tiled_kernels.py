"""Matmuls and convolutions are priced as the tiled kernels GPUs run: 128 x 128 output tiles (narrower for narrow
outputs) whose last ones may be part empty, run in waves over the compute units with the depth split where tiles
are fewer than units, each reaching its efficiency along depth / (depth + half). Hand-computed on the H100 spec:
132 units, 16-bit matmuls at 0.8 of 989 TFLOPS with half efficiency at a depth of 192, 6 us launch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cost_models.calibration import calibrate
from cost_models.kernel_shapes import KernelShape, kernel_shape, shape_efficiency, signature_kernel_shape
from cost_models.measured import op_signature
from cost_models.profile import DeviceIdentity, OpMeasurement, Profile
from cost_models.roofline import RooflineCostModel
from cost_models.tensor_parallel import shard_of
from partitioner.frontend.op_graph import NodeKind, OpNode, Sharding, TensorMeta
from targets.loader import load_target

H100 = load_target("cuda-h100")
PEAK, EFFICIENCY, HALF, LAUNCH = 989e12, 0.8, 192, 6e-6


def op(key: str, arguments: dict, output: tuple[int, ...], flops: int, dtype: str = "bfloat16") -> OpNode:
    tensors = tuple(value for value in arguments.values() if isinstance(value, TensorMeta))
    return OpNode(name="op", op=key, kind=NodeKind.COMPUTE, inputs=(), parameters=(), input_tensors=tensors,
                  output_tensors=(TensorMeta(output, dtype),), arguments=arguments, flops=flops, parameter_bytes=0)


def linear(tokens: int, features: int, out_features: int, dtype: str = "bfloat16") -> OpNode:
    return op("aten.linear.default", {"input": TensorMeta((1, tokens, features), dtype),
                                      "weight": TensorMeta((out_features, features), dtype), "bias": None},
              (1, tokens, out_features), 2 * tokens * features * out_features, dtype)


def conv2d(batch: int, channels: int, size: int, out_channels: int, kernel: int, stride: int, padding: int,
           groups: int = 1) -> OpNode:
    arguments = {"input": TensorMeta((batch, channels, size, size), "bfloat16"),
                 "weight": TensorMeta((out_channels, channels // groups, kernel, kernel), "bfloat16"),
                 "bias": None, "stride": [stride, stride], "padding": [padding, padding], "dilation": [1, 1],
                 "groups": groups}
    out = (size + 2 * padding - kernel) // stride + 1
    return op("aten.conv2d.default", arguments, (batch, out_channels, out, out),
              2 * batch * out * out * out_channels * channels // groups * kernel * kernel)


def predicted(node: OpNode, share: float) -> float:
    return LAUNCH + node.flops / (PEAK * EFFICIENCY * share)


def test_bert_bases_projection_has_fewer_tiles_than_units_and_splits_its_depth():
    node = linear(1024, 768, 768)  # BERT-base at 8 x 128 tokens
    # 8 x 6 = 48 tiles on 132 units: split in two (132 // 48), 96 blocks 384 deep.
    assert kernel_shape(node) == KernelShape(48, 768)
    share = 384 / (384 + HALF) * 96 / 132
    assert shape_efficiency(kernel_shape(node), H100, H100.constants_for("matmul", "bfloat16")) == \
        pytest.approx(share)
    assert RooflineCostModel().compute_seconds(node, H100) == pytest.approx(predicted(node, share))


def test_a_large_matmul_reaches_most_of_its_efficiency_less_its_last_waves_empty_units():
    node = linear(512, 4096, 11008)  # a Llama-2-7B MLP projection at 512 tokens
    # 4 x 86 = 344 tiles: three waves of 132 hold 396; 4,096 deep.
    share = 4096 / (4096 + HALF) * 344 / 396
    assert shape_efficiency(kernel_shape(node), H100, H100.constants_for("matmul", "bfloat16")) == \
        pytest.approx(share)
    assert RooflineCostModel().compute_seconds(node, H100) == pytest.approx(predicted(node, share))


def test_a_narrow_output_gets_a_narrower_tile_left_part_empty():
    node = linear(8, 4096, 4096)  # a decode step of 8 sequences
    # Rows: a tile of 16 (the narrowest), half of it real; 32 column tiles split four ways, 1,024 deep each.
    assert kernel_shape(node) == KernelShape(32, 4096, filled=0.5)
    share = 0.5 * 1024 / (1024 + HALF) * 128 / 132
    assert shape_efficiency(kernel_shape(node), H100, H100.constants_for("matmul", "bfloat16")) == \
        pytest.approx(share)


def test_a_convolution_is_an_implicit_gemm_over_its_output_positions():
    node = conv2d(8, 64, 56, 64, kernel=3, stride=1, padding=1)  # a ResNet-50 3x3 convolution at batch 8
    # Rows 8 x 56 x 56 = 25,088 (196 tiles), 64 output channels (one tile of 64), 64 x 9 = 576 deep.
    assert kernel_shape(node) == KernelShape(196, 576)
    share = 576 / (576 + HALF) * 196 / 264
    assert RooflineCostModel().compute_seconds(node, H100) == pytest.approx(
        LAUNCH + node.flops / (PEAK * H100.constants_for("convolution", "bfloat16").compute_efficiency * share))


def test_a_strided_convolutions_output_positions_follow_its_stride_and_padding():
    stem = conv2d(1, 3, 224, 64, kernel=7, stride=2, padding=3)  # ResNet's stem: 112 x 112 out
    assert kernel_shape(stem) == KernelShape(98, 3 * 49)  # 12,544 rows / 128
    same = dataclasses.replace(stem, arguments={**stem.arguments, "stride": [1, 1], "padding": "same"})
    assert kernel_shape(same) == KernelShape(224 * 224 // 128, 3 * 49)
    valid = dataclasses.replace(stem, arguments={**stem.arguments, "stride": [1, 1], "padding": "valid"})
    assert kernel_shape(valid) == KernelShape(372, 3 * 49, filled=218 * 218 / (372 * 128))  # 47,524 rows


def test_grouped_and_transposed_convolutions_and_matrix_vector_products_are_priced_by_their_flops_and_bytes():
    assert kernel_shape(conv2d(8, 64, 56, 64, kernel=3, stride=1, padding=1, groups=64)) is None
    transposed = op("aten.conv_transpose2d.input", {"input": TensorMeta((2, 16, 8, 8), "bfloat16"),
                                                      "weight": TensorMeta((16, 32, 3, 3), "bfloat16"),
                                                      "stride": [2, 2], "padding": [0, 0]}, (2, 32, 17, 17), 1)
    assert kernel_shape(transposed) is None
    mv = op("aten.mv.default", {"self": TensorMeta((64, 64), "bfloat16"), "vec": TensorMeta((64,), "bfloat16")},
            (64,), 2 * 64 * 64)
    assert kernel_shape(mv) is None
    vector = op("aten.matmul.default", {"self": TensorMeta((64, 64), "bfloat16"),
                                        "other": TensorMeta((64,), "bfloat16")}, (64,), 2 * 64 * 64)
    assert kernel_shape(vector) is None


@pytest.mark.parametrize("key, arguments, shape", [
    ("aten.mm.default", {"self": (256, 512), "mat2": (512, 384)}, KernelShape(2 * 3, 512)),
    ("aten.addmm.default", {"self": (384,), "mat1": (256, 512), "mat2": (512, 384)}, KernelShape(2 * 3, 512)),
    ("aten.bmm.default", {"self": (12, 128, 64), "mat2": (12, 64, 128)}, KernelShape(12, 64)),
    ("aten.baddbmm.default", {"self": (12, 128, 128), "batch1": (12, 128, 64), "batch2": (12, 64, 128)},
     KernelShape(12, 64)),
    ("aten.matmul.default", {"self": (2, 12, 128, 64), "other": (1, 12, 64, 128)}, KernelShape(24, 64)),
    ("aten.matmul.default", {"self": (2, 100, 64), "other": (64, 256)}, KernelShape(2 * 2, 64, 200 / 256)),
])
def test_each_matmul_ops_operands_give_its_rows_columns_and_depth(key, arguments, shape):
    node = op(key, {name: TensorMeta(sizes, "bfloat16") for name, sizes in arguments.items()}, (1,), 1)
    assert kernel_shape(node) == shape


def test_float32_matmuls_have_tiles_and_waves_but_no_depth_curve():
    node = linear(1024, 768, 768, dtype="float32")
    assert shape_efficiency(kernel_shape(node), H100, H100.constants_for("matmul", "float32")) == \
        pytest.approx(96 / 132)


def test_a_cpu_has_no_tile_grid_so_a_matmul_costs_as_its_flops_say():
    cpu = load_target("cpu-x86")
    assert shape_efficiency(kernel_shape(linear(8, 4096, 4096)), cpu, cpu.constants_for("matmul", "bfloat16")) == 1.0


def test_a_tensor_parallel_member_of_a_column_parallel_linear_has_its_share_of_the_columns():
    node = dataclasses.replace(linear(512, 4096, 4096), sharding=Sharding.COLUMNS)
    assert kernel_shape(shard_of(node, 4)) == KernelShape(4 * 8, 4096)  # 1,024 columns: 8 tiles
    rows = dataclasses.replace(linear(512, 4096, 4096), sharding=Sharding.ROWS)
    assert kernel_shape(shard_of(rows, 4)) == KernelShape(4 * 32, 1024)  # a quarter of the depth


def test_a_profile_records_a_matmuls_shape_and_reads_an_older_ones_from_its_signature():
    node = conv2d(1, 3, 224, 64, kernel=7, stride=2, padding=3)
    signature = op_signature(node)
    assert signature_kernel_shape(node.op, signature) == kernel_shape(node)
    recorded = OpMeasurement(40e-6, node.flops, node.bytes_read + node.bytes_written, "bfloat16", node.op,
                             shape=kernel_shape(node))
    identity = DeviceIdentity("cuda", "NVIDIA H100", torch.__version__, 1)
    assert Profile.from_dict(Profile(identity, {signature: recorded}).to_dict()).ops[signature] == recorded
    older = Profile(identity, {signature: dataclasses.replace(recorded, shape=None)}).to_dict()
    assert "kernel_shape" not in older["ops"][signature]
    assert Profile.from_dict(older).ops[signature].shape == kernel_shape(node)


def test_calibration_fits_a_matmuls_efficiency_through_its_tiles_and_keeps_each_dtypes_depth_curve():
    truth = dataclasses.replace(H100, op_classes={**H100.op_classes, "matmul.bfloat16": dataclasses.replace(
        H100.op_classes["matmul.bfloat16"], compute_efficiency=0.5)})
    measurements = {}
    for index, (tokens, features, out) in enumerate([(1024, 768, 768), (1024, 768, 3072), (512, 4096, 11008),
                                                     (512, 4096, 4096), (8, 4096, 4096), (2048, 1024, 1024),
                                                     (256, 2048, 512), (4096, 4096, 4096)]):
        node = linear(tokens, features, out)
        measurements[f"mm{index}"] = OpMeasurement(
            RooflineCostModel().compute_seconds(node, truth), node.flops, node.bytes_read + node.bytes_written,
            "bfloat16", node.op, shape=kernel_shape(node))
    profile = Profile(DeviceIdentity("cuda", "NVIDIA H100", torch.__version__, 1), measurements)

    fitted = calibrate(profile, H100).applied_to(H100)

    assert fitted.constants_for("matmul", "bfloat16").compute_efficiency == pytest.approx(0.5, rel=1e-3)
    assert fitted.constants_for("matmul", "bfloat16").compute_half_depth == HALF  # the spec's, not fitted
    assert fitted.constants_for("matmul", "float32").compute_half_depth == 0  # float32 keeps none
