"""Split: group placed nodes into partitions that, contracted, form a DAG.

A partition is a region of nodes on one target: connected, or several regions
that nothing run elsewhere separates (they run back to back). Runs after `solve`
and before the runtime or export: both build one submodule per partition and
run them in the order recorded here. Pure data in, pure data out (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import networkx as nx

from partitioner.errors import PartitionerError
from partitioner.fields import text, texts, whole
from partitioner.frontend.op_graph import OpGraph, OpNode
from partitioner.frontend.written_memory import SharedMemory, memory_read_after_writes


@dataclass(frozen=True, slots=True)
class Partition:
    """One submodule of the split model: its nodes (graph order) on one target.

    `inputs` are the op nodes of other partitions whose values it reads;
    `outputs` are its nodes whose values other partitions or the model's
    outputs read. Model inputs and weights are not listed.
    """

    index: int
    target: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.index:03d}_{self.target}"

    def to_dict(self) -> dict:
        return {"index": self.index, "target": self.target, "nodes": list(self.nodes), "inputs": list(self.inputs),
                "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Partition:
        return cls(whole(data, "index"), text(data, "target"), texts(data, "nodes"), texts(data, "inputs"),
                   texts(data, "outputs"))


def split(graph: OpGraph, assignment: Mapping[str, str]) -> tuple[Partition, ...]:
    """Partitions of `graph` under `assignment`, in a topological order of their DAG.

    Nodes are first grouped by target and by "how many device changes lie
    upstream", which can never form a cycle; neighbouring groups on the same
    target are then merged wherever that keeps the DAG.
    """
    _check_writes_stay_home(graph, assignment)
    groups = _acyclic_groups(graph, assignment)
    dag = _contracted(graph, groups)
    first_node = {}
    for index, node in enumerate(graph):
        first_node.setdefault(_find(groups, node.name), index)
    _merge_neighbours(dag, groups, assignment, first_node)
    members: dict[str, list[str]] = {}
    for node in graph:  # graph order, so each member list starts with its earliest node
        members.setdefault(_find(groups, node.name), []).append(node.name)
    position = {node.name: i for i, node in enumerate(graph)}
    order = nx.lexicographical_topological_sort(dag, key=lambda group: position[members[group][0]])
    partitions = _describe(graph, [members[g] for g in order], assignment)
    _check_acyclic(graph, partitions)
    return partitions


def _acyclic_groups(graph: OpGraph, assignment: Mapping[str, str]) -> dict[str, str]:
    """Union-find parents: nodes joined when on one target at the same device-change depth, and each memory that
    later nodes read after in-place writes (written_memory.py) kept whole wherever the placement lets it.

    Every edge between groups then strictly increases the depth, so the groups form a DAG.
    """
    position = {node.name: index for index, node in enumerate(graph)}
    memories = [m for m in memory_read_after_writes(graph) if _can_keep_whole(graph, assignment, m, position)]
    depth, memories = _depths(graph, assignment, memories)
    parents = {node.name: node.name for node in graph}
    for node in graph:
        for producer in node.inputs:
            if assignment[producer] == assignment[node.name] and depth[producer] == depth[node.name]:
                _union(parents, producer, node.name)
    for memory in memories:
        for member in memory.members:
            _union(parents, member, memory.owner)
    return parents


def _depths(graph: OpGraph, assignment: Mapping[str, str],
            memories: list[SharedMemory]) -> tuple[dict[str, int], list[SharedMemory]]:
    """How many device changes lie upstream of each node, with the members of each memory raised to the deepest
    of them so that they can form one group; and the memories so kept.

    Raising a memory's owner raises what follows it, so this repeats until nothing moves. Memories that each
    could be kept may still, together, keep raising one another; then none is kept (export says so).
    """
    depth = {node.name: 0 for node in graph}
    closing = {memory.writers[-1]: memory for memory in memories}
    for _ in range(len(memories) + 2):
        changed = False
        for node in graph:
            deepest = max((depth[u] + (assignment[u] != assignment[node.name]) for u in _predecessors(node)),
                          default=0)
            if deepest > depth[node.name]:
                depth[node.name], changed = deepest, True
            memory = closing.get(node.name)
            if memory is not None:
                tied = max(depth[m] for m in memory.members)
                changed |= any(depth[m] != tied for m in memory.members)
                depth.update(dict.fromkeys(memory.members, tied))
        if not changed:
            return depth, memories
    return _depths(graph, assignment, []) if memories else (depth, [])


def _can_keep_whole(graph: OpGraph, assignment: Mapping[str, str], memory: SharedMemory,
                    position: Mapping[str, int]) -> bool:
    """Whether one partition can hold `memory`: its members share a target and no path from one to another
    leaves that target (a value computed elsewhere from the memory and written back into it)."""
    target = assignment[memory.owner]
    if any(assignment[m] != target for m in memory.members):
        return False
    members = set(memory.members)
    last = max(position[m] for m in members)
    successors: dict[str, list[str]] = {}
    for node in graph.nodes[position[memory.owner]:last + 1]:
        for producer in _predecessors(node):
            successors.setdefault(producer, []).append(node.name)
    seen, pending = set(), [(m, False) for m in members]
    while pending:
        name, left = pending.pop()
        for successor in successors.get(name, ()):
            away = left or assignment[successor] != target
            if successor in members and away:
                return False
            if (successor, away) not in seen and successor not in members:
                seen.add((successor, away))
                pending.append((successor, away))
    return True


def _contracted(graph: OpGraph, groups: dict[str, str]) -> nx.DiGraph:
    dag = nx.DiGraph()
    # In graph order, not set order: merges try groups in node order, and string hashing differs per process.
    dag.add_nodes_from(dict.fromkeys(_find(groups, node.name) for node in graph))
    for node in graph:
        for producer in _predecessors(node):
            a, b = _find(groups, producer), _find(groups, node.name)
            if a != b:
                dag.add_edge(a, b)
    return dag


def _predecessors(node: OpNode) -> tuple[str, ...]:
    """The nodes that must run before `node`: those it reads, and those an in-place write orders it after."""
    return node.inputs + node.after


def _merge_neighbours(dag: nx.DiGraph, groups: dict[str, str], assignment: Mapping[str, str],
                      position: Mapping[str, int]) -> None:
    """Merge groups on one target while the DAG allows it.

    Along an edge A -> B, A merges into B when no other path leads from A to B.
    A group that reads only model inputs (e.g. a runtime check of an input)
    merges into the first group on its target that it has no path to. Then, in
    run order, each group merges into the last earlier group on its target that
    no path through other groups separates from it (parallel branches after a
    cut): partitions on one target that the DAG lets run together become one.
    """
    changed = True
    while changed:
        changed = False
        for a, b in list(dag.edges):
            if dag.has_edge(a, b) and assignment[a] == assignment[b] and _merge_if_acyclic(dag, groups, a, b):
                changed = True
    for a in [g for g in dag.nodes if dag.in_degree(g) == 0]:
        for b in list(dag.nodes):
            if b != a and assignment[a] == assignment[b] and _merge_if_acyclic(dag, groups, a, b):
                break
    last_on: dict[str, str] = {}
    for group in list(nx.lexicographical_topological_sort(dag, key=lambda g: position[g])):
        target = assignment[group]
        earlier = last_on.get(target)
        if earlier is not None and _merge_if_acyclic(dag, groups, group, earlier):
            continue
        last_on[target] = group


def _merge_if_acyclic(dag: nx.DiGraph, groups: dict[str, str], a: str, b: str) -> bool:
    """Contract group `a` into group `b` unless a path through other groups leads from one to the other."""
    direct = [(u, v) for u, v in ((a, b), (b, a)) if dag.has_edge(u, v)]
    dag.remove_edges_from(direct)
    if nx.has_path(dag, a, b) or nx.has_path(dag, b, a):
        dag.add_edges_from(direct)
        return False
    nx.contracted_nodes(dag, b, a, self_loops=False, copy=False)
    _union(groups, a, b)
    return True


def _describe(graph: OpGraph, node_lists: list[list[str]], assignment: Mapping[str, str]) -> tuple[Partition, ...]:
    home = {name: index for index, names in enumerate(node_lists) for name in names}
    users = graph.users()
    model_outputs = set(graph.outputs)
    partitions = []
    for index, names in enumerate(node_lists):
        inputs = dict.fromkeys(u for n in names for u in graph[n].inputs if home[u] != index)
        outputs = [n for n in names if n in model_outputs or any(home[user] != index for user in users[n])]
        partitions.append(Partition(index, assignment[names[0]], tuple(names), tuple(inputs), tuple(outputs)))
    return tuple(partitions)


def memory_apart(graph: OpGraph, partitions: tuple[Partition, ...]) -> tuple[str, str] | None:
    """(owner, member) of a memory that later nodes read after in-place writes (written_memory.py) where the
    member (a write, or a view one goes through) sits in another partition than the owner; None if there is none.

    Only partitions that share memory (one torch device) see such a write; ONNX files and Ray workers do not.
    `split` keeps these memories whole where the placement lets it; older plans may not.
    """
    home = {name: p.index for p in partitions for name in p.nodes}
    for memory in memory_read_after_writes(graph):
        apart = next((m for m in memory.members if home[m] != home[memory.owner]), None)
        if apart is not None:
            return memory.owner, apart
    return None


def memory_kept_whole(graph: OpGraph, partitions: tuple[Partition, ...], runner: str) -> None:
    """Refuse, for a `runner` whose partitions share no memory (ONNX files, Ray workers), a plan that splits a
    memory written in place from its readers (`memory_apart`): run there, the write would be lost."""
    apart = memory_apart(graph, partitions)
    if apart is None:
        return
    owner, member = apart
    home = {name: p for p in partitions for name in p.nodes}
    what = "writes in place into" if graph[member].writes is not None else "is a view that writes go through into"
    raise PartitionerError(
        f"{member} in partition {home[member].name} {what} memory that {owner} made in partition "
        f"{home[owner].name}, and later nodes read that memory: {runner} share no memory, so the write would be "
        "lost. Fix: compile the plan again with this version of partitioner, which keeps such writes with their "
        f"memory; if the plan still splits them, pin the ops between {owner} and {member} to "
        f"{home[owner].target} (--pin).")


def _check_acyclic(graph: OpGraph, partitions: tuple[Partition, ...]) -> None:
    """Postcondition: every value flows, and every in-place write is ordered, from an earlier partition to a later one."""
    home = {name: p.index for p in partitions for name in p.nodes}
    for node in graph:
        for producer in _predecessors(node):
            assert home[producer] <= home[node.name], f"{producer} -> {node.name} goes backwards between partitions"


def _check_writes_stay_home(graph: OpGraph, assignment: Mapping[str, str]) -> None:
    """Precondition: an in-place op sits with the value it writes (placement guarantees it)."""
    for node in graph:
        if node.writes is not None:
            assert assignment[node.name] == assignment[node.writes], (
                f"{node.name} writes {node.writes} in place but is placed on another target"
            )


def _find(parents: dict[str, str], name: str) -> str:
    while parents[name] != name:
        parents[name] = parents[parents[name]]
        name = parents[name]
    return name


def _union(parents: dict[str, str], a: str, b: str) -> None:
    """Join the sets of `a` and `b` under the root of `b`."""
    root_a, root_b = _find(parents, a), _find(parents, b)
    if root_a != root_b:
        parents[root_a] = root_b
