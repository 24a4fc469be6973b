"""Tagging: which targets accept each node, and the reason every refusal gives."""

from __future__ import annotations

import pytest
import torch

from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode, TensorMeta
from partitioner.errors import PartitionerError
from partitioner.placement.tagging import compute_dtypes, refusal_reason, tag
from targets.loader import load_target, load_targets
from targets.spec import SupportRules
from tests.conftest import op_graph_of

HALF = torch.float16


@pytest.fixture(scope="module")
def targets():
    return load_targets(["npu-example", "dsp-example", "cuda-h100"])


def only_node(graph: OpGraph, op: str) -> OpNode:
    (node,) = [n for n in graph if n.op == op]
    return node


class Softmax(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


class Relu(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x)


class Views(torch.nn.Module):
    """Only re-views its input, then does one real op so the output is not an alias."""

    def forward(self, x):
        y = x.view(2, 3, 4, 5).reshape(2, 60, 1).transpose(1, 2).reshape(2, 60)
        first, second = torch.split(y, 30, dim=1)
        return torch.softmax(first, dim=-1) + second


UNSUPPORTED_ON_NPU = {
    "embedding": (torch.nn.Embedding(10, 8), torch.zeros(2, 3, dtype=torch.long), "aten.embedding.default"),
    "layer_norm": (torch.nn.LayerNorm(8), torch.randn(2, 8, dtype=HALF), "aten.layer_norm.default"),
    "softmax": (Softmax(), torch.randn(2, 8, dtype=HALF), "aten.softmax.int"),
}


@pytest.mark.parametrize("model, example, op", UNSUPPORTED_ON_NPU.values(), ids=UNSUPPORTED_ON_NPU.keys())
def test_op_not_in_support_list_is_refused_and_goes_to_fallback(targets, model, example, op):
    graph = op_graph_of(model.to(HALF), (example,))
    node = only_node(graph, op)

    tagging = tag(graph, targets)

    assert tagging.refusals[node.name]["npu-example"] == f"{op}: op not in support list"
    assert tagging.supported[node.name] == ("cuda-h100",)


def test_supported_op_in_supported_dtype_is_accepted(targets):
    graph = op_graph_of(torch.nn.Linear(8, 4).to(HALF), (torch.randn(2, 8, dtype=HALF),))
    node = only_node(graph, "aten.linear.default")

    tagging = tag(graph, targets)

    assert tagging.supported[node.name] == ("npu-example", "dsp-example", "cuda-h100")
    assert tagging.refusals[node.name] == {}


def test_unsupported_dtype_is_refused_with_the_dtype_named(targets):
    graph = op_graph_of(torch.nn.Linear(8, 4), (torch.randn(2, 8),))
    node = only_node(graph, "aten.linear.default")

    tagging = tag(graph, targets)

    reason = tagging.refusals[node.name]["npu-example"]
    assert reason.startswith("aten.linear.default: dtype float32 not supported")
    assert "float16" in reason  # says what the target does take
    assert tagging.supported[node.name] == ("cuda-h100",)


def test_cast_to_an_unsupported_dtype_is_refused(targets):
    class CastUp(torch.nn.Module):
        def forward(self, x):
            return (x + 1).to(torch.float32)

    graph = op_graph_of(CastUp(), (torch.randn(2, 8, dtype=HALF),))
    cast = only_node(graph, "aten.to.dtype")

    reason = refusal_reason(cast, targets["npu-example"].support)

    assert reason is not None and "dtype float32" in reason


def test_fallback_supports_every_node_and_never_has_refusals(targets):
    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.norm = torch.nn.LayerNorm(8)
            self.conv = torch.nn.Conv2d(8, 8, 5, groups=8)

        def forward(self, ids):
            x = self.norm(self.embed(ids))                      # ops no cheap target has
            x = self.conv(x.reshape(1, 8, 6, 6).float().half())  # grouped 5x5 conv
            return torch.softmax(x.float().reshape(1, 2, 2, 2, 2, 2), dim=-1)  # float32, rank 6

    graph = op_graph_of(Mixed().to(HALF), (torch.zeros(4, 9, dtype=torch.long),))

    tagging = tag(graph, targets)

    assert any(tagging.refusals.values()), "the model must exercise some refusals"
    for node in graph:
        assert "cuda-h100" in tagging.supported[node.name]
        assert "cuda-h100" not in tagging.refusals[node.name]


def test_refused_targets_are_exactly_those_missing_from_supported(targets):
    graph = op_graph_of(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)), (torch.randn(2, 8),))

    tagging = tag(graph, targets)

    for node in graph:
        refused = set(tagging.refusals[node.name])
        assert set(tagging.supported[node.name]) == set(targets.names) - refused


def test_supported_targets_keep_the_target_set_priority_order():
    targets = load_targets(["dsp-example", "cuda-h100", "npu-example"])
    graph = op_graph_of(Relu(), (torch.randn(2, 8, dtype=HALF),))

    tagging = tag(graph, targets)

    assert tagging.supported[only_node(graph, "aten.relu.default").name] == (
        "dsp-example", "cuda-h100", "npu-example",
    )


def test_view_ops_are_supported_by_every_target(targets):
    # float32 and not in any cheap target's op list: only their view kind lets them through.
    graph = op_graph_of(Views(), (torch.randn(120),))
    views = [node for node in graph if node.kind is not NodeKind.COMPUTE]

    tagging = tag(graph, targets)

    assert {"aten.reshape.default", "aten.transpose.int", "aten.view.default"} <= {n.op for n in views}
    for node in views:
        assert tagging.supported[node.name] == targets.names
        assert tagging.refusals[node.name] == {}
    softmax = only_node(graph, "aten.softmax.int")
    assert tagging.supported[softmax.name] == ("cuda-h100",)


class GroupedConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)

    def forward(self, x):
        return self.conv(x)


def conv_graph(model: torch.nn.Module, in_channels: int) -> tuple[OpGraph, OpNode]:
    graph = op_graph_of(model.to(HALF), (torch.randn(1, in_channels, 16, 16, dtype=HALF),))
    return graph, only_node(graph, "aten.conv2d.default")


def test_grouped_conv_is_refused_by_dsp_with_the_group_limit_named(targets):
    graph, conv = conv_graph(GroupedConv(), 32)

    tagging = tag(graph, targets)

    assert "groups=32 > max 1" in tagging.refusals[conv.name]["dsp-example"]
    assert tagging.supported[conv.name] == ("npu-example", "cuda-h100")


@pytest.mark.parametrize(
    "kernel, dsp_accepts, npu_accepts",
    [(3, True, True), (5, False, True), (9, False, False)],
)
def test_conv_kernel_size_limits_differ_per_target(kernel, dsp_accepts, npu_accepts):
    _, conv = conv_graph(torch.nn.Conv2d(4, 8, kernel, padding=kernel // 2), 4)

    dsp_reason = refusal_reason(conv, load_target("dsp-example").support)
    npu_reason = refusal_reason(conv, load_target("npu-example").support)

    assert (dsp_reason is None) == dsp_accepts
    assert (npu_reason is None) == npu_accepts
    if not dsp_accepts:
        assert dsp_reason == f"aten.conv2d.default: weight={kernel} > max 3"
    if not npu_accepts:
        assert npu_reason == f"aten.conv2d.default: weight={kernel} > max 7"


@pytest.mark.parametrize("rank, dsp_accepts", [(4, True), (5, False)])
def test_rank_limit_refuses_tensors_of_higher_rank(rank, dsp_accepts):
    graph = op_graph_of(Relu(), (torch.randn((2,) * rank, dtype=HALF),))
    relu = only_node(graph, "aten.relu.default")

    reason = refusal_reason(relu, load_target("dsp-example").support)

    assert reason == (None if dsp_accepts else "aten.relu.default: rank 5 > max 4")
    assert refusal_reason(relu, load_target("npu-example").support) is None  # npu allows rank 5


def test_dynamic_shape_is_refused_by_static_shape_target():
    def relu_node(shape):
        tensor = TensorMeta(shape, "float16")
        return OpNode(name="relu", op="aten.relu.default", kind=NodeKind.COMPUTE, inputs=(), parameters=(),
                      input_tensors=(tensor,), output_tensors=(tensor,), arguments={}, flops=0,
                      parameter_bytes=0)

    dsp = load_target("dsp-example").support

    assert refusal_reason(relu_node((None, 8)), dsp) == (
        "aten.relu.default: dynamic shape, target takes static shapes only"
    )
    assert refusal_reason(relu_node((4, 8)), dsp) is None


def test_tagging_does_not_change_the_graph(targets):
    graph = op_graph_of(torch.nn.Linear(8, 4), (torch.randn(2, 8),))
    before = (graph.fingerprint(), graph.nodes)

    tag(graph, targets)

    assert (graph.fingerprint(), graph.nodes) == before


def test_a_layout_copy_runs_on_any_target_whose_dtypes_allow_it(targets):
    class Copies(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x.transpose(0, 1).contiguous())

    graph = op_graph_of(Copies(), (torch.randn(4, 6, dtype=torch.float16),))
    copy = next(node for node in graph if node.op == "aten.contiguous.default")

    assert copy.copies_only
    assert "npu-example" in tag(graph, targets).supported[copy.name]  # not in its op list, still a copy it can make


# --- what an op computes in: masks and indices are not compute dtypes; vendors list dtypes per op --------------------


def test_a_bool_attention_mask_does_not_make_attention_a_bool_op():
    class MaskedAttention(torch.nn.Module):
        def forward(self, q, mask):
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    q = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16)
    graph = op_graph_of(MaskedAttention(), (q, torch.ones(4, 4, dtype=torch.bool).tril()))
    attention = only_node(graph, "aten.scaled_dot_product_attention.default")
    rules = SupportRules(ops=frozenset({attention.op}), dtypes=frozenset({"bfloat16"}))

    assert {t.dtype for t in attention.input_tensors} == {"bfloat16", "bool"}
    assert refusal_reason(attention, rules) is None


def test_integer_indices_beside_float_weights_are_not_what_a_gather_computes_in():
    graph = op_graph_of(torch.nn.Embedding(10, 8).to(HALF), (torch.zeros(2, 3, dtype=torch.long),))
    embedding = only_node(graph, "aten.embedding.default")

    assert compute_dtypes(embedding.input_tensors + embedding.output_tensors) == {"float16"}
    assert refusal_reason(embedding, SupportRules(ops=frozenset({embedding.op}), dtypes=frozenset({"float16"}))) is None


def test_an_op_with_no_floating_point_tensor_computes_in_its_integers():
    class IntegerAdd(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    graph = op_graph_of(IntegerAdd(), (torch.ones(4, dtype=torch.int8), torch.ones(4, dtype=torch.int8)))
    add = only_node(graph, "aten.add.Tensor")

    assert refusal_reason(add, SupportRules(ops=None, dtypes=frozenset({"int8"}))) is None
    assert refusal_reason(add, SupportRules(ops=None, dtypes=frozenset({"bfloat16"}))) == (
        "aten.add.Tensor: dtype int8 not supported (supports bfloat16)")


NORM_CHIP = '''
name = "norm-chip"
kind = "npu"
description = "a chip whose vector units reduce in float32"
torch_device = "cpu"
onnx_execution_provider = "CPUExecutionProvider"
price_per_hour = 1.0
memory_gib = 16
memory_bandwidth_gb_per_second = 800
launch_overhead_microseconds = 10
compute_efficiency = 0.5
memory_efficiency = 0.7
[peak_tflops]
float32 = 10
bfloat16 = 100
[host_link]
bandwidth_gb_per_second = 25
latency_microseconds = 10
[support]
ops = ["aten.linear.default", "aten.mean.dim", "aten.pow.Tensor_Scalar"]
dtypes = ["bfloat16"]
[support.op_dtypes]
# Its vector units reduce in float32, as transformers' RMSNorm does after its upcast; its matrix units take bf16.
"aten.mean.dim" = ["float32", "bfloat16"]
"aten.pow.Tensor_Scalar" = ["float32", "bfloat16"]
'''


def test_per_op_dtypes_let_a_norm_reduce_in_float32_where_matmuls_may_not(tmp_path):
    class UpcastNorm(torch.nn.Module):
        def forward(self, x):
            return x.float().pow(2).mean(-1, keepdim=True), torch.nn.functional.linear(x.float(), x.float())

    (tmp_path / "norm-chip.toml").write_text(NORM_CHIP)
    rules = load_target(tmp_path / "norm-chip.toml").support
    graph = op_graph_of(UpcastNorm(), (torch.randn(4, 8, dtype=torch.bfloat16),))

    assert refusal_reason(only_node(graph, "aten.mean.dim"), rules) is None
    assert refusal_reason(only_node(graph, "aten.pow.Tensor_Scalar"), rules) is None
    assert refusal_reason(only_node(graph, "aten.linear.default"), rules) == (
        "aten.linear.default: dtype float32 not supported (supports bfloat16)")


@pytest.mark.parametrize("line, problem", [
    ('"aten.softmax.int" = ["float32"]', "not in support.ops"),
    ('"aten.mean.dim" = ["float33"]', "'float33' is not a torch dtype"),
    ('"aten.mean.dim" = []', "expected a list of dtypes"),
])
def test_per_op_dtypes_that_cannot_apply_name_the_field(tmp_path, line, problem):
    spec = NORM_CHIP.split("[support.op_dtypes]")[0] + "[support.op_dtypes]\n" + line + "\n"
    (tmp_path / "norm-chip.toml").write_text(spec)

    with pytest.raises(PartitionerError, match=r"field 'support\.op_dtypes\.\"aten\.[a-z_.]+\"': .*" + problem):
        load_target(tmp_path / "norm-chip.toml")
