"""`split`: placed nodes become partitions on one target each, which contracted form a DAG in recorded order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioner.execution.split import Partition, memory_apart, split
from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode


def op(name: str, *inputs: str) -> OpNode:
    """An op node that reads the values of `inputs` (other op nodes); only the wiring matters to split."""
    return OpNode(name, "aten.relu.default", NodeKind.COMPUTE, inputs, (), (), (), {}, 0, 0)


def view(name: str, base: str) -> OpNode:
    """A view of `base` (a slice): it shares `base`'s memory."""
    return OpNode(name, "aten.slice.Tensor", NodeKind.VIEW, (base,), (), (), (), {}, 0, 0)


def write(name: str, into: str, source: str, owner: str, after: tuple[str, ...] = ()) -> OpNode:
    """`into.copy_(source)`, an in-place write into memory that `owner` made."""
    return OpNode(name, "aten.copy_.default", NodeKind.COMPUTE, (into, source), (), (), (), {}, 0, 0,
                  writes=owner, after=after)


def filled_buffer(second_reads: str = "first") -> OpGraph:
    """`buffer = first.new_empty(...)`, written through two slices (the second with `second`, computed on another
    target from `second_reads`), then read as `buffer`: DeepSeek-V3's attention builds its keys so."""
    return graph_of(op("first"), op("buffer", "first"), op("second", second_reads), view("slice_a", "buffer"),
                    write("copy_a", "slice_a", "first", "buffer"), view("slice_b", "buffer"),
                    write("copy_b", "slice_b", "second", "buffer", after=("copy_a",)),
                    OpNode("read", "aten.relu.default", NodeKind.COMPUTE, ("buffer",), (), (), (), {}, 0, 0,
                           after=("copy_a", "copy_b")))


FILLED_BUFFER_PLACEMENT = {"first": "cuda", "second": "npu", "buffer": "cuda", "slice_a": "cuda", "copy_a": "cuda",
                           "slice_b": "cuda", "copy_b": "cuda", "read": "npu"}


def graph_of(*nodes: OpNode, outputs: tuple[str, ...] | None = None) -> OpGraph:
    """An op graph of `nodes` (in topological order); by default the last node is the model's output."""
    return OpGraph(nodes, {}, outputs if outputs is not None else (nodes[-1].name,))


def layout(partitions: tuple[Partition, ...]) -> list[tuple[str, tuple[str, ...]]]:
    return [(p.target, p.nodes) for p in partitions]


def partition_dag(graph: OpGraph, partitions: tuple[Partition, ...]) -> nx.DiGraph:
    """The contracted graph: one vertex per partition index, an edge wherever a value crosses."""
    home = {name: p.index for p in partitions for name in p.nodes}
    dag = nx.DiGraph()
    dag.add_nodes_from(p.index for p in partitions)
    dag.add_edges_from((home[producer], home[node.name]) for node in graph for producer in node.inputs
                       if home[producer] != home[node.name])
    return dag


# --- known answers ---------------------------------------------------------------------------------------------------


def test_chain_on_one_target_is_one_partition():
    graph = graph_of(op("a"), op("b", "a"), op("c", "b"), op("d", "c"))

    partitions = split(graph, dict.fromkeys("abcd", "npu"))

    assert partitions == (Partition(0, "npu", ("a", "b", "c", "d"), inputs=(), outputs=("d",)),)


def test_chain_npu_cuda_npu_gives_three_partitions_in_order():
    graph = graph_of(op("a"), op("b", "a"), op("c", "b"), op("d", "c"), op("e", "d"))

    partitions = split(graph, {"a": "npu", "b": "npu", "c": "cuda", "d": "npu", "e": "npu"})

    assert layout(partitions) == [("npu", ("a", "b")), ("cuda", ("c",)), ("npu", ("d", "e"))]
    assert [p.index for p in partitions] == [0, 1, 2]
    assert [p.name for p in partitions] == ["000_npu", "001_cuda", "002_npu"]


def test_same_target_nodes_linked_around_a_cut_stay_apart_to_avoid_a_cycle():
    # a feeds c directly and through b on another target: {a, c} as one partition would both feed b and read it.
    graph = graph_of(op("a"), op("b", "a"), op("c", "a", "b"))

    partitions = split(graph, {"a": "npu", "b": "cuda", "c": "npu"})

    assert layout(partitions) == [("npu", ("a",)), ("cuda", ("b",)), ("npu", ("c",))]


def test_split_merges_what_it_can_around_a_cycle_trap_and_keeps_the_rest_apart():
    # a -> c -> d on npu is connected, but a -> b -> d leaves through cuda: a and d can never share a partition,
    # while c may join one of them.
    graph = graph_of(op("a"), op("b", "a"), op("c", "a"), op("d", "b", "c"))
    assignment = {"a": "npu", "b": "cuda", "c": "npu", "d": "npu"}

    partitions = split(graph, assignment)

    home = {name: p.index for p in partitions for name in p.nodes}
    assert len(partitions) == 3
    assert home["a"] != home["d"]
    assert home["c"] in (home["a"], home["d"])
    assert home["a"] < home["b"] < home["d"]
    assert nx.is_directed_acyclic_graph(partition_dag(graph, partitions))


def test_parallel_branches_on_one_target_after_a_cut_share_one_partition():
    # s on the NPU feeds two independent CUDA branches: nothing runs between them, so they run as one partition.
    graph = graph_of(op("s"), op("a", "s"), op("b", "s"), outputs=("a", "b"))

    partitions = split(graph, {"s": "npu", "a": "cuda", "b": "cuda"})

    assert layout(partitions) == [("npu", ("s",)), ("cuda", ("a", "b"))]


def test_partition_inputs_and_outputs_name_the_values_that_cross():
    # a -> b on npu, b feeds c on cuda and d on npu, c feeds d; the model returns d and a.
    graph = graph_of(op("a"), op("b", "a"), op("c", "b"), op("d", "b", "c"), outputs=("d", "a"))

    partitions = split(graph, {"a": "npu", "b": "npu", "c": "cuda", "d": "npu"})

    assert partitions == (
        Partition(0, "npu", ("a", "b"), inputs=(), outputs=("a", "b")),
        Partition(1, "cuda", ("c",), inputs=("b",), outputs=("c",)),
        Partition(2, "npu", ("d",), inputs=("b", "c"), outputs=("d",)),
    )


def test_value_read_twice_from_another_partition_is_listed_once():
    graph = graph_of(op("a"), op("b", "a"), op("c", "a", "b"))

    partitions = split(graph, {"a": "cuda", "b": "npu", "c": "npu"})

    assert layout(partitions) == [("cuda", ("a",)), ("npu", ("b", "c"))]
    assert partitions[1].inputs == ("a",)
    assert partitions[0].outputs == ("a",)


def test_node_that_reads_only_model_inputs_joins_a_partition_of_its_target():
    # `check` (e.g. a runtime assert on an input) touches no other op: it should not be a partition of its own.
    graph = graph_of(op("a"), op("b", "a"), op("check"), op("c", "b"), op("d", "c"))

    partitions = split(graph, {"a": "npu", "b": "npu", "check": "cuda", "c": "cuda", "d": "npu"})

    assert layout(partitions) == [("npu", ("a", "b")), ("cuda", ("check", "c")), ("npu", ("d",))]


def test_node_that_reads_only_model_inputs_joins_the_earliest_partition_it_can():
    graph = graph_of(op("a"), op("b", "a"), op("c", "b"), op("source"), outputs=("c", "source"))

    partitions = split(graph, {"a": "npu", "b": "cuda", "c": "npu", "source": "npu"})

    assert layout(partitions) == [("npu", ("a", "source")), ("cuda", ("b",)), ("npu", ("c",))]


def test_node_that_reads_only_model_inputs_stays_alone_when_joining_would_make_a_cycle():
    # `source` feeds cuda, whose result comes back to the only other npu partition.
    graph = graph_of(op("source"), op("b", "source"), op("c", "b"))

    partitions = split(graph, {"source": "npu", "b": "cuda", "c": "npu"})

    assert layout(partitions) == [("npu", ("source",)), ("cuda", ("b",)), ("npu", ("c",))]


def test_writes_into_memory_read_later_sit_in_the_partition_that_holds_the_memory():
    # copy_b waits for `second`, which waits for `first`: by device changes alone it would be a partition of its
    # own that hands nothing on, and `read` would read the buffer without it wherever partitions share no memory.
    partitions = split(filled_buffer(), FILLED_BUFFER_PLACEMENT)

    assert layout(partitions) == [("cuda", ("first",)), ("npu", ("second",)),
                                  ("cuda", ("buffer", "slice_a", "copy_a", "slice_b", "copy_b")), ("npu", ("read",))]
    assert all(p.outputs for p in partitions)
    assert memory_apart(filled_buffer(), partitions) is None


def test_memory_whose_written_value_is_computed_elsewhere_from_it_stays_apart_and_is_reported():
    # `second` reads the buffer on the NPU and is written back into it: no one partition can hold the buffer.
    graph = filled_buffer(second_reads="buffer")

    partitions = split(graph, FILLED_BUFFER_PLACEMENT)

    home = {name: p.index for p in partitions for name in p.nodes}
    assert home["buffer"] < home["second"] < home["copy_b"]
    assert memory_apart(graph, partitions) == ("buffer", "copy_b")


def test_split_leaves_the_assignment_unchanged():
    graph = graph_of(op("a"), op("b", "a"), op("c", "a", "b"))
    assignment = {"a": "npu", "b": "cuda", "c": "npu"}

    split(graph, assignment)

    assert assignment == {"a": "npu", "b": "cuda", "c": "npu"}


def test_split_gives_the_same_partitions_in_every_process():
    # Python randomises string hashing per process; partitions must not depend on set or dict-of-set order,
    # or the same model and placement would give a different plan file on each run.
    program = textwrap.dedent("""
        import random
        from partitioner.frontend.op_graph import NodeKind, OpGraph, OpNode
        from partitioner.execution.split import split

        for seed in range(300):
            rng = random.Random(seed)
            names = [f"n{i}" for i in range(rng.randint(2, 12))]
            inputs = [tuple(sorted(set(rng.sample(names[:i], rng.randint(0, min(i, 2)))))) for i in range(len(names))]
            nodes = tuple(OpNode(name, "aten.relu.default", NodeKind.COMPUTE, inputs[i], (), (), (), {}, 0, 0)
                          for i, name in enumerate(names))
            assignment = {name: rng.choice(["npu", "cuda"]) for name in names}
            print([(p.target, p.nodes) for p in split(OpGraph(nodes, {}, (names[-1],)), assignment)])
    """)
    root = Path(__file__).resolve().parents[3]

    def run(hash_seed: str) -> str:
        environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
        return subprocess.run([sys.executable, "-c", program], cwd=root, env=environment, capture_output=True,
                              text=True, check=True).stdout

    first = run("1")
    assert first.count("\n") == 300
    assert run("2") == first


def test_partition_round_trips_through_json():
    partition = Partition(2, "dsp-example", ("conv2d", "relu"), inputs=("linear",), outputs=("relu",))

    loaded = Partition.from_dict(json.loads(json.dumps(partition.to_dict())))

    assert loaded == partition
    assert loaded.name == "002_dsp-example"


# --- properties on random DAGs ---------------------------------------------------------------------------------------


@st.composite
def placed_graphs(draw) -> tuple[OpGraph, dict[str, str]]:
    """A random DAG of up to 14 ops, some reading only model inputs, each placed on one of up to 3 targets."""
    size = draw(st.integers(1, 14))
    nodes = []
    for i in range(size):
        earlier = [f"n{j}" for j in range(i)]
        inputs = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) if earlier else []
        nodes.append(op(f"n{i}", *sorted(inputs, key=lambda name: int(name[1:]))))
    names = [node.name for node in nodes]
    read = {producer for node in nodes for producer in node.inputs}
    extra_outputs = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    outputs = tuple(dict.fromkeys([name for name in names if name not in read] + extra_outputs))
    targets = draw(st.lists(st.sampled_from(["npu", "cuda", "dsp"]), min_size=1, max_size=3, unique=True))
    assignment = {name: draw(st.sampled_from(targets)) for name in names}
    return OpGraph(tuple(nodes), {}, outputs), assignment


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


@PROPERTY_SETTINGS
@given(placed_graphs())
def test_every_node_lies_in_exactly_one_partition_on_its_own_target(placed):
    graph, assignment = placed

    partitions = split(graph, assignment)

    placed_nodes = [name for p in partitions for name in p.nodes]
    assert sorted(placed_nodes) == sorted(node.name for node in graph)
    position = {node.name: i for i, node in enumerate(graph)}
    for partition in partitions:
        assert partition.nodes, "a partition with no nodes"
        assert {assignment[name] for name in partition.nodes} == {partition.target}
        assert sorted(partition.nodes, key=position.get) == list(partition.nodes)


@PROPERTY_SETTINGS
@given(placed_graphs())
def test_every_value_flows_to_the_same_or_a_later_partition(placed):
    graph, assignment = placed

    partitions = split(graph, assignment)

    assert [p.index for p in partitions] == list(range(len(partitions)))
    home = {name: p.index for p in partitions for name in p.nodes}
    for node in graph:
        for producer in node.inputs:
            assert home[producer] <= home[node.name], f"{producer} -> {node.name} goes backwards"


@PROPERTY_SETTINGS
@given(placed_graphs())
def test_inputs_and_outputs_list_exactly_the_values_that_cross_a_partition_boundary(placed):
    graph, assignment = placed

    partitions = split(graph, assignment)

    home = {name: p.index for p in partitions for name in p.nodes}
    users = graph.users()
    for partition in partitions:
        read_from_elsewhere = {producer for name in partition.nodes for producer in graph[name].inputs
                               if home[producer] != partition.index}
        needed_elsewhere = {name for name in partition.nodes
                            if name in graph.outputs or any(home[user] != partition.index for user in users[name])}
        assert set(partition.inputs) == read_from_elsewhere and len(partition.inputs) == len(read_from_elsewhere)
        assert set(partition.outputs) == needed_elsewhere and len(partition.outputs) == len(needed_elsewhere)


@PROPERTY_SETTINGS
@given(placed_graphs())
def test_partitions_on_one_target_next_in_run_order_could_not_merge_without_a_cycle(placed):
    # Whatever runs between them on one device, two partitions of a target that nothing elsewhere separates
    # run back to back: they are one partition.
    graph, assignment = placed

    partitions = split(graph, assignment)

    dag = partition_dag(graph, partitions)
    last_on: dict[str, int] = {}
    for partition in partitions:
        earlier = last_on.get(partition.target)
        if earlier is not None:
            merged = nx.contracted_nodes(dag, earlier, partition.index, self_loops=False)
            assert not nx.is_directed_acyclic_graph(merged), f"{partition.name} could merge into {earlier}"
        last_on[partition.target] = partition.index


@PROPERTY_SETTINGS
@given(placed_graphs())
def test_neighbouring_partitions_on_one_target_could_not_merge_without_a_cycle(placed):
    graph, assignment = placed

    partitions = split(graph, assignment)

    dag = partition_dag(graph, partitions)
    for a, b in dag.edges:
        if partitions[a].target == partitions[b].target:
            merged = nx.contracted_nodes(dag, a, b, self_loops=False)
            assert not nx.is_directed_acyclic_graph(merged), f"{partitions[a].name} could merge into {b}"


@PROPERTY_SETTINGS
@given(placed_graphs())
def test_partition_that_reads_only_model_inputs_feeds_every_other_partition_of_its_target(placed):
    # Otherwise it could have joined one of them instead of standing alone.
    graph, assignment = placed

    partitions = split(graph, assignment)

    dag = partition_dag(graph, partitions)
    for partition in partitions:
        if partition.inputs:
            continue
        for other in partitions:
            if other.index != partition.index and other.target == partition.target:
                assert nx.has_path(dag, partition.index, other.index), f"{partition.name} could join {other.name}"
