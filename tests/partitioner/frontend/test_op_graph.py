"""Annotate: what the op graph records about each node of a captured model."""

from __future__ import annotations

import pytest
import torch

from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode, TensorMeta, annotate
from tests.conftest import op_graph_of


def nodes_with_op(graph: OpGraph, op: str) -> list[OpNode]:
    return [node for node in graph if node.op == op]


def only_node(graph: OpGraph, op: str) -> OpNode:
    (node,) = nodes_with_op(graph, op)
    return node


class Block(torch.nn.Module):
    def __init__(self, features: int = 8):
        super().__init__()
        self.proj = torch.nn.Linear(features, 4)

    def forward(self, x):
        return torch.relu(self.proj(x))


@pytest.fixture(scope="module")
def block_graph() -> OpGraph:
    return op_graph_of(Block(), (torch.randn(2, 3, 8),))


def test_nodes_carry_aten_op_keys(block_graph):
    assert [node.op for node in block_graph] == ["aten.linear.default", "aten.relu.default"]


def test_shapes_and_dtypes_come_from_the_traced_values(block_graph):
    linear = only_node(block_graph, "aten.linear.default")

    assert linear.input_tensors == (
        TensorMeta((2, 3, 8), "float32"), TensorMeta((4, 8), "float32"), TensorMeta((4,), "float32"),
    )
    assert linear.output_tensors == (TensorMeta((2, 3, 4), "float32"),)


def test_half_precision_model_records_float16():
    graph = op_graph_of(Block().half(), (torch.randn(2, 3, 8, dtype=torch.float16),))

    assert {t.dtype for node in graph for t in node.input_tensors + node.output_tensors} == {"float16"}


def test_inputs_name_producing_ops_and_parameters_name_weights(block_graph):
    linear = only_node(block_graph, "aten.linear.default")
    relu = only_node(block_graph, "aten.relu.default")

    assert linear.inputs == ()  # the model input is not an op node
    assert linear.parameters == ("proj.weight", "proj.bias")
    assert linear.module_path == "proj"
    assert relu.inputs == (linear.name,)
    assert block_graph.users() == {linear.name: [relu.name], relu.name: []}


def test_graph_lists_every_parameter_with_its_size(block_graph):
    assert block_graph.parameter_bytes == {"proj.weight": 4 * 8 * 4, "proj.bias": 4 * 4}


def test_tensor_arguments_are_recorded_by_schema_name(block_graph):
    linear = only_node(block_graph, "aten.linear.default")

    assert linear.arguments["weight"] == TensorMeta((4, 8), "float32")


def test_view_ops_are_classified_as_views():
    class Views(torch.nn.Module):
        def forward(self, x):
            return x.view(2, 3, 4).reshape(2, 12, 1).transpose(1, 2) * 2

    graph = op_graph_of(Views(), (torch.randn(24),))

    for op in ("aten.view.default", "aten.transpose.int", "aten.reshape.default"):
        node = only_node(graph, op)
        assert node.kind is NodeKind.VIEW
        assert node.flops == 0
    assert only_node(graph, "aten.mul.Tensor").kind is NodeKind.COMPUTE


def test_ops_that_copy_their_tensor_are_compute_though_their_schema_may_alias():
    class Copies(torch.nn.Module):
        def forward(self, x):
            transposed = x.transpose(0, 1)
            return transposed.reshape(24).sum() + transposed.contiguous().sum() + x.clone()

    graph = op_graph_of(Copies(), (torch.randn(4, 6),))

    for op in ("aten.reshape.default", "aten.contiguous.default", "aten.clone.default"):
        node = only_node(graph, op)
        assert node.kind is NodeKind.COMPUTE, op
        assert node.bytes_read == node.bytes_written == 4 * 24, op
        assert node.copies_only, op
    assert only_node(graph, "aten.transpose.int").kind is NodeKind.VIEW


def test_an_embedding_reads_the_rows_it_gathers_not_its_table():
    table = torch.nn.Embedding(1000, 64)
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])

    lookup = only_node(op_graph_of(table, (tokens,)), "aten.embedding.default")

    assert lookup.bytes_read == tokens.numel() * 8 + tokens.numel() * 64 * 4
    assert lookup.parameter_bytes == 1000 * 64 * 4  # the whole table is still resident
    assert lookup.activation_bytes == tokens.numel() * 8 + tokens.numel() * 64 * 4


def test_tied_weights_are_one_parameter_counted_once():
    class TiedHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(100, 16)
            self.head = torch.nn.Linear(16, 100, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens):
            return self.head(torch.relu(self.embed(tokens)))

    graph = op_graph_of(TiedHead(), (torch.tensor([[1, 2, 3]]),))

    assert sum(graph.parameter_bytes.values()) == 100 * 16 * 4
    assert len({p for node in graph for p in node.parameters}) == 1


class Cast(torch.nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return (x + 1).to(self.dtype)


def test_cast_that_changes_dtype_is_compute():
    graph = op_graph_of(Cast(torch.float32), (torch.randn(4, dtype=torch.float16),))

    cast = only_node(graph, "aten.to.dtype")

    assert cast.kind is NodeKind.COMPUTE
    assert cast.output_tensors == (TensorMeta((4,), "float32"),)


def test_cast_to_the_same_dtype_is_a_view():
    graph = op_graph_of(Cast(torch.float16), (torch.randn(4, dtype=torch.float16),))

    assert only_node(graph, "aten.to.dtype").kind is NodeKind.VIEW


def test_dropout_in_eval_mode_is_a_view():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.ReLU()).eval()

    graph = op_graph_of(model, (torch.randn(4),))

    assert only_node(graph, "aten.dropout.default").kind is NodeKind.VIEW


def test_the_in_place_form_of_a_view_op_is_a_view_so_no_target_refuses_it():
    class MakesAConstant(torch.nn.Module):
        def forward(self, x):  # torch.export writes the constant as lift_fresh_copy, then detach_ (as Mistral's does)
            return torch.cat([x, torch.tensor([1.0, 2.0])])

    graph = op_graph_of(MakesAConstant(), (torch.randn(2),))

    assert only_node(graph, "aten.detach_.default").kind is NodeKind.VIEW


def test_getitem_of_multi_output_op_is_bookkeeping():
    class TopK(torch.nn.Module):
        def forward(self, x):
            values, indices = torch.topk(x, 2)
            return values * 2, indices

    graph = op_graph_of(TopK(), (torch.randn(3, 5),))
    topk = only_node(graph, "aten.topk.default")
    getitems = nodes_with_op(graph, "operator.getitem")

    assert topk.kind is NodeKind.COMPUTE
    assert topk.output_tensors == (TensorMeta((3, 2), "float32"), TensorMeta((3, 2), "int64"))
    assert len(getitems) == 2
    for getitem in getitems:
        assert getitem.kind is NodeKind.BOOKKEEPING
        assert getitem.inputs == (topk.name,)
        assert getitem.flops == 0


def test_outputs_name_the_returned_op_nodes():
    class TwoOutputs(torch.nn.Module):
        def forward(self, x):
            doubled = x * 2
            return torch.relu(doubled), torch.sigmoid(doubled)

    graph = op_graph_of(TwoOutputs(), (torch.randn(4),))

    relu = only_node(graph, "aten.relu.default")
    sigmoid = only_node(graph, "aten.sigmoid.default")
    assert graph.outputs == (relu.name, sigmoid.name)


def test_fingerprint_is_stable_for_the_same_model_and_inputs():
    first = op_graph_of(Block(), (torch.randn(2, 3, 8),))
    second = op_graph_of(Block(), (torch.randn(2, 3, 8),))

    assert first.fingerprint() == second.fingerprint()


def test_fingerprint_changes_when_input_shape_changes(block_graph):
    longer = op_graph_of(Block(), (torch.randn(2, 5, 8),))

    assert longer.fingerprint() != block_graph.fingerprint()


def test_fingerprint_changes_when_the_model_changes(block_graph):
    class BlockWithTanh(Block):
        def forward(self, x):
            return torch.tanh(self.proj(x))

    assert op_graph_of(BlockWithTanh(), (torch.randn(2, 3, 8),)).fingerprint() != block_graph.fingerprint()


def test_meta_device_model_is_annotated_without_allocating_weights():
    # 2**36 float16 weights are 128 GiB: annotating must not allocate them.
    features = 1 << 18
    with torch.device("meta"):
        model = torch.nn.Linear(features, features, dtype=torch.float16)
        example = torch.empty(2, features, dtype=torch.float16)

    graph = op_graph_of(model, (example,))

    linear = only_node(graph, "aten.linear.default")
    assert linear.flops == 2 * 2 * features * features
    assert linear.parameter_bytes == (features * features + features) * 2
    assert graph.total_flops == linear.flops
    assert all(parameter.is_meta for parameter in model.parameters())


def test_views_of_a_loaded_pt2_file_are_still_views(tmp_path):
    class Views(torch.nn.Module):
        def forward(self, x):
            return x.view(2, 12).transpose(0, 1).unsqueeze(0) * 2

    program = torch.export.export(Views(), (torch.randn(24),))
    torch.export.save(program, tmp_path / "views.pt2")

    graph = annotate(torch.export.load(tmp_path / "views.pt2"))

    for op in ("aten.view.default", "aten.transpose.int", "aten.unsqueeze.default"):
        assert only_node(graph, op).kind is NodeKind.VIEW, op
