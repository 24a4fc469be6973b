"""Memory written in place and read again as memory: the nodes that must keep it together.

A write through a view (`key[..., :16] = k_nope`, captured as `copy_(slice(key), k_nope)`)
changes a value that later nodes read as `key`, not as the write's result. Torch sees
the change because they share memory; a copy to another device, an ONNX file or a Ray
worker does not. From the op graph this names, for each such memory, the node that
made it, the views its writes go through and the writes: placement keeps them on one
target (problem.py) and the split in one partition (split.py), so what crosses a
partition boundary is the memory as written.
"""

from __future__ import annotations

from dataclasses import dataclass

from partitioner.frontend.op_graph import NodeKind, OpGraph


# Kinds of node whose value lives in the memory of their first input: views, and items picked from a view that
# gives several (`split`); asserts too, which read nothing.
_ALIASING = (NodeKind.VIEW, NodeKind.BOOKKEEPING)


@dataclass(frozen=True, slots=True)
class SharedMemory:
    """Memory made by `owner` that `writers` write in place, through `views`, and later nodes read as memory."""

    owner: str
    views: tuple[str, ...]
    writers: tuple[str, ...]

    @property
    def members(self) -> tuple[str, ...]:
        return (self.owner, *self.views, *self.writers)


def memory_read_after_writes(graph: OpGraph) -> tuple[SharedMemory, ...]:
    """Each memory a node writes in place and a later node (or the model's output) reads other than through the
    write's own result, in graph order of the owners.

    A write whose effect is read only through its result (`weights /= total`, then `weights` unused) is plain
    dataflow and not listed: its readers get the written value wherever they run.
    """
    position = {node.name: index for index, node in enumerate(graph)}
    users = graph.users()
    writers: dict[str, list[str]] = {}
    for node in graph:
        if node.writes is not None:
            writers.setdefault(node.writes, []).append(node.name)
    shared = []
    for owner, written_by in writers.items():
        aliases = _aliases(graph, users, owner, owner)
        if not any(_read_as_memory(graph, users, aliases, _aliases(graph, users, w, owner), position[w], position)
                   for w in written_by):
            continue
        views = dict.fromkeys(v for w in written_by for v in _write_path(graph, w, owner) if v not in written_by)
        shared.append(SharedMemory(owner, tuple(views), tuple(written_by)))
    return tuple(sorted(shared, key=lambda memory: position[memory.owner]))


def _aliases(graph: OpGraph, users: dict[str, list[str]], start: str, owner: str) -> set[str]:
    """`start` and every node whose value lives in its memory: views of it (an item of a split counts), views of
    those, writes into them."""
    found, pending = {start}, [start]
    while pending:
        name = pending.pop()
        for user in users[name]:
            node = graph[user]
            if user not in found and node.inputs[0] == name and (node.kind in _ALIASING or node.writes == owner):
                found.add(user)
                pending.append(user)
    return found


def _read_as_memory(graph: OpGraph, users: dict[str, list[str]], aliases: set[str], written: set[str], after: int,
                    position: dict[str, int]) -> bool:
    """Whether the model returns one of the memory's `aliases` not derived from the write's result (`written`),
    or a node after the write at position `after`, itself no alias, reads one."""
    stale = aliases - written
    if any(name in stale for name in graph.outputs):
        return True
    return any(user not in aliases and position[user] > after for name in stale for user in users[name])


def _write_path(graph: OpGraph, writer: str, owner: str) -> list[str]:
    """The views (and earlier writes) between `owner` and what `writer` writes: `copy_(slice(key), ...)` gives
    [slice]. Empty where the written value is `owner` itself."""
    path = []
    name = graph[writer].inputs[0] if graph[writer].inputs else owner
    while name != owner:
        node = graph[name]
        if not node.inputs or not (node.kind in _ALIASING or node.writes == owner):
            return []  # not an alias of `owner`: the write goes into something else (a model input's memory)
        path.append(name)
        name = node.inputs[0]
    return path
