"""In-place updates: which values a node writes, and the order that imposes on other nodes.

Captured graphs keep in-place ops (`relu_`, `add_`, writes through views such as
`h[:, 0] = 0`). Data edges alone do not order them against other readers of
the same memory, so `annotate` records, per node, the value it writes and the
nodes it must run after; `build_problem` keeps a writer on its value's target
and `split` orders partitions by these extra edges.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, slots=True)
class MutationFacts:
    """For one node: the op node whose memory it writes (None if none; for a model input or weight written in
    place, the first node that writes it, None for that node itself) and
    the nodes it must run after although it reads none of their outputs."""

    writes: str | None = None
    after: tuple[str, ...] = field(default=())


def mutation_facts(graph: torch.fx.Graph) -> dict[str, MutationFacts]:
    """Facts for every call node that writes memory or must be ordered against a write."""
    nodes = list(graph.nodes)
    position = {node: index for index, node in enumerate(nodes)}
    base = {node: _base(node) for node in nodes}
    aliases: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in nodes:
        aliases.setdefault(base[node], []).append(node)
    writes: dict[str, str | None] = {}
    after: dict[str, dict[str, None]] = {}
    first_writer: dict[torch.fx.Node, torch.fx.Node] = {}  # per input or weight written in place
    for writer in nodes:
        written = _written_argument(writer)
        if written is None:
            continue
        root = base[written]
        if root.op == "call_function":
            writes[writer.name] = root.name
        else:  # memory the model holds or is given (a buffer, a cache): its first writer stands for it
            owner = first_writer.setdefault(root, writer)
            writes[writer.name] = owner.name if owner is not writer else None
        readers = {user for alias in aliases[root] for user in alias.users
                   if user is not writer and base[user] is not root}
        readers |= {alias for alias in aliases[root] if alias is not writer and _written_argument(alias) is not None}
        for reader in readers:
            first, second = (reader, writer) if position[reader] < position[writer] else (writer, reader)
            after.setdefault(second.name, {})[first.name] = None
    names = set(writes) | set(after)
    return {name: MutationFacts(writes.get(name), tuple(after.get(name, ()))) for name in names}


def written_inputs(graph: torch.fx.Graph) -> set[str]:
    """Placeholders some node writes in place, directly or through a view: state kept across calls (a static KV
    cache) rather than data passed in."""
    return {root.name for node in graph.nodes if (written := _written_argument(node)) is not None
            and (root := _base(written)).op == "placeholder"}


def _written_argument(node: torch.fx.Node) -> torch.fx.Node | None:
    """The argument `node` writes in place, if it is an op with a mutable (`Tensor(a!)`) argument."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None:
        return None
    for position, argument in enumerate(schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            value = node.args[position] if position < len(node.args) else node.kwargs.get(argument.name)
            if isinstance(value, torch.fx.Node):
                return value
    return None


def _base(node: torch.fx.Node) -> torch.fx.Node:
    """The node that owns the memory `node`'s value lives in (following views, the items of ops that return
    several views, and in-place results)."""
    while node.op == "call_function":
        written = _written_argument(node)
        if written is not None:
            node = written
        elif is_view(node):
            node = node.args[0]
        elif _is_view_item(node):
            node = node.args[0].args[0]
        else:
            break
    return node


def _is_view_item(node: torch.fx.Node) -> bool:
    """Whether `node` picks one of the views an op returns of its first argument (`split`, `unbind`, `chunk`):
    a write into the item writes that argument's memory."""
    if node.target is not operator.getitem or not isinstance(node.args[0], torch.fx.Node):
        return False
    source = node.args[0]
    schema = getattr(source.target, "_schema", None)
    return (schema is not None and bool(source.args) and isinstance(source.args[0], torch.fx.Node)
            and any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns))


def is_view(node: torch.fx.Node) -> bool:
    """Whether `node` returns a view of its first argument (same storage, same dtype)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None or not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    aliases = any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
    source, result = node.args[0].meta.get("val"), node.meta.get("val")
    # `to.dtype` has an aliasing schema but copies when the dtype changes.
    same_dtype = isinstance(source, torch.Tensor) and isinstance(result, torch.Tensor) and source.dtype == result.dtype
    return aliases and same_dtype
