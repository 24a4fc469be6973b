"""An attention is priced as the fused kernel it is: its efficiency grows with the keys each block streams, and
its blocks (128 queries of one batch and head each) run in waves over the device's compute units, splitting the
keys where there are fewer blocks than units. Hand-computed on the H100 spec (132 units, half efficiency at 256
keys, 0.35 of 989 TFLOPS in bfloat16, 6 us launch)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cost_models.calibration import calibrate
from cost_models.measured import op_signature
from cost_models.kernel_shapes import KernelShape, kernel_shape, shape_efficiency
from cost_models.profile import DeviceIdentity, OpMeasurement, Profile
from cost_models.roofline import RooflineCostModel
from cost_models.tensor_parallel import shard_of
from partitioner.errors import PartitionerError
from partitioner.frontend.op_graph import NodeKind, OpNode, Sharding, TensorMeta
from targets.loader import BUILTIN_DIR, load_target

H100 = load_target("cuda-h100")
SDPA = "aten.scaled_dot_product_attention.default"


def attention(batch: int, heads: int, queries: int, keys: int, dim: int, dtype: str = "bfloat16") -> OpNode:
    query, key = TensorMeta((batch, heads, queries, dim), dtype), TensorMeta((batch, heads, keys, dim), dtype)
    return OpNode(name="sdpa", op=SDPA, kind=NodeKind.COMPUTE, inputs=(), parameters=(),
                  input_tensors=(query, key, key), output_tensors=(query,),
                  arguments={"query": query, "key": key, "value": key},
                  flops=4 * batch * heads * queries * keys * dim, parameter_bytes=0)


def test_a_short_attention_with_fewer_blocks_than_units_reaches_a_quarter_of_its_efficiency():
    node = attention(8, 12, 128, 128, 64)  # BERT-base at 8 x 128
    # 96 blocks on 132 units, one tile of keys each (nothing to split): 128 / (128 + 256) x 96 / 132.
    share = 128 / 384 * 96 / 132
    assert shape_efficiency(kernel_shape(node), H100, H100.constants_for("attention", "bfloat16")) == \
        pytest.approx(share)
    flops = 4 * 8 * 12 * 128 * 128 * 64  # 403 MFLOP
    assert RooflineCostModel().compute_seconds(node, H100) == pytest.approx(6e-6 + flops / (989e12 * 0.35 * share))


def test_a_long_attention_reaches_most_of_its_efficiency_less_its_last_waves_empty_units():
    node = attention(1, 32, 2048, 2048, 128)  # a 7B model's prefill of 2,048 tokens
    # 32 heads x 16 query tiles = 512 blocks: four waves of 132 hold 528. Keys 2048 / (2048 + 256).
    share = 2048 / 2304 * 512 / 528
    assert shape_efficiency(kernel_shape(node), H100, H100.constants_for("attention", "bfloat16")) == \
        pytest.approx(share)
    flops = 4 * 32 * 2048 * 2048 * 128
    assert RooflineCostModel().compute_seconds(node, H100) == pytest.approx(6e-6 + flops / (989e12 * 0.35 * share))


def test_a_decode_steps_attention_splits_its_keys_until_the_units_are_full():
    shape = kernel_shape(attention(2, 8, 1, 4096, 128))
    # 16 blocks on 132 units: 8 splits (132 // 16) of 512 keys each, 128 blocks.
    assert (shape.tiles, shape.depth) == (16, 4096)
    assert shape_efficiency(shape, H100, H100.constants_for("attention")) == pytest.approx(512 / 768 * 128 / 132)


def test_without_compute_units_or_a_keys_curve_an_attention_costs_as_its_flops_say():
    shape = KernelShape(tiles=96, depth=128)
    cpu = load_target("cpu-x86")
    assert shape_efficiency(shape, cpu, cpu.constants_for("attention")) == 1.0
    flat = dataclasses.replace(H100.constants_for("attention"), compute_half_depth=0.0)
    assert shape_efficiency(shape, H100, flat) == pytest.approx(96 / 132)
    assert shape_efficiency(None, H100, H100.constants_for("attention")) == 1.0


def test_an_attention_with_a_symbolic_size_or_a_matmul_without_its_operands_has_no_shape():
    matmul = dataclasses.replace(attention(1, 1, 4, 4, 8), op="aten.mm.default", arguments={})
    assert kernel_shape(matmul) is None
    symbolic = TensorMeta((None, 8, 16, 64), "bfloat16")
    assert kernel_shape(dataclasses.replace(attention(1, 8, 16, 16, 64),
                                               arguments={"query": symbolic, "key": symbolic})) is None


def test_calibration_fits_attentions_efficiency_through_their_shapes_and_keeps_the_keys_curve():
    shapes = [(8, 12, 128, 128, 64), (8, 12, 197, 197, 64), (1, 32, 512, 512, 128), (1, 32, 1024, 1024, 128),
              (2, 32, 2048, 2048, 128), (4, 16, 256, 256, 64), (1, 64, 4096, 4096, 128), (8, 32, 512, 512, 128)]
    truth = dataclasses.replace(H100, op_classes={**H100.op_classes, "attention.bfloat16": dataclasses.replace(
        H100.op_classes["attention.bfloat16"], compute_efficiency=0.2)})
    measurements = {}
    for index, shape in enumerate(shapes):
        node = attention(*shape)
        measurements[f"sdpa{index}"] = OpMeasurement(
            RooflineCostModel().compute_seconds(node, truth), node.flops, node.bytes_read + node.bytes_written,
            "bfloat16", SDPA, shape=kernel_shape(node))
    profile = Profile(DeviceIdentity("cuda", "NVIDIA H100", torch.__version__, 1), measurements)

    fitted = calibrate(profile, H100).applied_to(H100).constants_for("attention", "bfloat16")

    # Times made by the structure at 0.2 are explained by it at 0.2 (a flat fit could not have matched both 128
    # and 4,096 keys), and the curve stays the spec's.
    assert fitted.compute_efficiency == pytest.approx(0.2, rel=0.03)
    assert fitted.compute_half_depth == 256


def test_compute_units_must_be_a_whole_number(tmp_path):
    spec = (BUILTIN_DIR / "cuda-h100.toml").read_text().replace("compute_units = 132", "compute_units = 13.5")
    (tmp_path / "bad.toml").write_text(spec)
    with pytest.raises(PartitionerError, match="compute_units.*not a whole number"):
        load_target(tmp_path / "bad.toml")


def test_a_profile_written_before_shapes_were_recorded_reads_an_attentions_shape_from_its_signature():
    node = attention(8, 12, 128, 128, 64)
    measurement = OpMeasurement(50e-6, node.flops, node.bytes_read + node.bytes_written, "bfloat16", SDPA)
    old = Profile(DeviceIdentity("cuda", "NVIDIA H100", torch.__version__, 1), {op_signature(node): measurement})
    assert "kernel_shape" not in old.to_dict()["ops"][op_signature(node)]

    read = Profile.from_dict(old.to_dict())

    assert read.ops[op_signature(node)].shape == KernelShape(96, 128)


def test_a_tensor_parallel_member_runs_its_share_of_the_heads_and_its_blocks_are_fewer():
    node = dataclasses.replace(attention(1, 64, 512, 512, 128), sharding=Sharding.SPLIT)

    member = kernel_shape(shard_of(node, 4))

    assert member == KernelShape(16 * 4, 512)  # 16 heads x 4 query tiles
    # 16 heads x 4 query tiles = 64 blocks on 132 units: two splits of the keys, 256 each.
    assert shape_efficiency(member, H100, H100.constants_for("attention")) == pytest.approx(256 / 512 * 128 / 132)


def test_an_attention_with_a_size_of_zero_or_an_op_of_another_class_has_no_shape():
    assert kernel_shape(attention(0, 8, 16, 16, 64)) is None
    elementwise = dataclasses.replace(attention(1, 8, 16, 16, 64), op="aten.add.Tensor")
    assert kernel_shape(elementwise) is None


@pytest.mark.parametrize("table, field, problem", [
    ("reduction", "compute_half_efficiency_keys", "only an attention streams keys"),
    ("reduction", "compute_half_efficiency_depth", r"only a tiled kernel \(matmul, convolution, attention\)"),
])
def test_a_depth_curve_outside_the_tiled_classes_is_refused_naming_the_field(tmp_path, table, field, problem):
    spec = (BUILTIN_DIR / "cuda-h100.toml").read_text() + f"\n[op_classes.{table}]\n{field} = 9\n"
    (tmp_path / "bad.toml").write_text(spec)
    with pytest.raises(PartitionerError, match=rf"op_classes.{table}.{field}.*{problem}"):
        load_target(tmp_path / "bad.toml")


def test_an_attentions_keys_curve_may_still_be_written_under_its_older_name(tmp_path):
    spec = (BUILTIN_DIR / "cuda-h100.toml").read_text().replace(
        "[op_classes.attention]\n", "[op_classes.attention]\ncompute_half_efficiency_keys = 300\n").replace(
        "compute_half_efficiency_depth = 256\n", "").replace('name = "cuda-h100"', 'name = "old-h100"')
    (tmp_path / "old.toml").write_text(spec)
    assert load_target(tmp_path / "old.toml").constants_for("attention", "bfloat16").compute_half_depth == 300


def test_a_profile_of_an_earlier_version_gives_an_attentions_shape_as_heads_queries_and_keys():
    node = attention(8, 12, 128, 128, 64)
    recorded = OpMeasurement(50e-6, node.flops, node.bytes_read + node.bytes_written, "bfloat16", SDPA).to_dict()
    old = {**recorded, "attention": [96, 128, 128]}  # what profiles wrote before kernel shapes

    assert OpMeasurement.from_dict(old).shape == KernelShape(96, 128)
