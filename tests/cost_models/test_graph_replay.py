"""A decode step replayed from a captured graph (CUDA graphs, as serving engines run one): an op costs its device
time plus the target's per-kernel figure in place of its eager launch overhead, a view costs nothing; a target
whose spec gives no such figure costs as it runs eagerly."""

from __future__ import annotations

import dataclasses

import pytest

from cost_models.graph_replay import GraphReplay
from cost_models.roofline import RooflineCostModel
from partitioner.errors import PartitionerError
from partitioner.frontend.op_graph import NodeKind
from targets.loader import BUILTIN_DIR, load_target
from tests.cost_models.test_roofline import op_node, round_target  # noqa: F401 (a fixture)

EAGER = RooflineCostModel()
REPLAYED = GraphReplay(EAGER)


@pytest.fixture
def replaying(round_target):  # noqa: F811 (the fixture imported above)
    """The round-figure target (10 us launch, 3 us a view) replaying graphs at 2 us a kernel."""
    return dataclasses.replace(round_target, view_overhead_seconds=3e-6, graph_kernel_seconds=2e-6)


def test_a_compute_bound_op_costs_its_flops_and_a_kernels_gap_not_its_launch(replaying):
    node = op_node(flops=8_000_000_000)
    compute_seconds = 8e9 / (4e12 * 0.5)  # 4 ms

    assert EAGER.compute_seconds(node, replaying) == pytest.approx(1e-5 + compute_seconds)
    assert REPLAYED.compute_seconds(node, replaying) == pytest.approx(2e-6 + compute_seconds)


def test_a_tiny_op_costs_the_kernel_figure_where_eagerly_it_costs_the_launch(replaying):
    node = dataclasses.replace(op_node(flops=0), input_tensors=(), output_tensors=())

    assert EAGER.compute_seconds(node, replaying) == pytest.approx(1e-5)
    assert REPLAYED.compute_seconds(node, replaying) == pytest.approx(2e-6)


@pytest.mark.parametrize("kind", [NodeKind.VIEW, NodeKind.BOOKKEEPING])
def test_a_view_leaves_nothing_in_a_replayed_graph(replaying, kind):
    node = op_node(flops=0, kind=kind)

    assert EAGER.compute_seconds(node, replaying) == pytest.approx(3e-6)
    assert REPLAYED.compute_seconds(node, replaying) == 0.0


def test_a_target_that_replays_no_graphs_costs_as_it_runs_eagerly(replaying):
    eager_only = dataclasses.replace(replaying, graph_kernel_seconds=None)
    for node in (op_node(flops=8_000_000_000), op_node(flops=0, kind=NodeKind.VIEW)):
        assert REPLAYED.compute_seconds(node, eager_only) == EAGER.compute_seconds(node, eager_only)


def test_a_measured_ops_time_loses_its_launch_overhead_and_says_it_was_measured(replaying):
    class Measured:
        name = "measured"

        def measured(self, node, target):
            return True

        def compute_seconds(self, node, target):
            return 50e-6  # measured eagerly, its launch included

        def link(self, targets, source, destination):
            raise NotImplementedError

    replayed = GraphReplay(Measured())

    assert replayed.compute_seconds(op_node(flops=0), replaying) == pytest.approx(50e-6 - 1e-5 + 2e-6)
    assert replayed.measured(op_node(flops=0), replaying) is True
    assert GraphReplay(EAGER).measured is None


def test_gpus_replay_decode_graphs_and_compiled_graph_accelerators_and_cpus_keep_their_own_figures():
    assert load_target("cuda-h100").graph_kernel_seconds == pytest.approx(1.5e-6)
    assert load_target("rocm-mi300x").graph_kernel_seconds == pytest.approx(2e-6)
    for name in ("trn2", "gaudi3", "npu-example", "cpu-x86"):
        assert load_target(name).graph_kernel_seconds is None


def test_a_negative_graph_kernel_figure_is_refused_naming_the_field(tmp_path):
    spec = (BUILTIN_DIR / "cuda-h100.toml").read_text().replace(
        "graph_kernel_microseconds = 1.5", "graph_kernel_microseconds = -1")
    (tmp_path / "bad.toml").write_text(spec)
    with pytest.raises(PartitionerError, match="graph_kernel_microseconds"):
        load_target(tmp_path / "bad.toml")
