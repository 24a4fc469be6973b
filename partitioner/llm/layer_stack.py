"""A stack of identical decoder layers, captured once: a shallow twin of the model is exported and its op graphs
are grown to the model's depth.

torch.export traces every layer of every call, 0.3-0.5 s a layer and phase on this machine (a 70B decoder's
80 layers: 30-40 s a phase), and every layer after the first few traces to the same ops. So where a
transformers causal LM's layers are copies of one another (same modules, weights' shapes and settings, the
config's per-layer lists uniform), the model is captured with its first `KEPT_LAYERS` layers only (the module
list and the config cut to them for the capture, then put back) and each phase's op graph grown: the third layer
copied for every missing middle layer, wired as the third is to the second, its weights and cache named as the
next layers' are (`model.layers.17.mlp.up_proj.weight`, the cache tensors counted on), and the last layer
wired after the copies. The grown graph is the one a full capture gives, node for node, up to the copies' node
names (`linear_14_layer17`). Whatever does not prove alike in the shallow capture (a first layer unlike the
rest is fine; a second, third and last that differ are not) is captured in full instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Iterator

import torch

from partitioner.frontend.op_graph import OpGraph, OpNode
from partitioner.placement.blocks import block_signature, numbered_block

KEPT_LAYERS = 4
_TEMPLATE = 2  # the layer copied: the first layer may differ (it starts the residual stream), the middle ones not
_NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True, slots=True)
class LayerStack:
    """A model's stack of identical layers: the module list's path (`model.layers`) and how many layers it has."""

    container: str
    depth: int


@contextlib.contextmanager
def shallow_twin(model: torch.nn.Module) -> Iterator[LayerStack | None]:
    """Within the block, `model` has only its first `KEPT_LAYERS` layers when its stack of layers can be grown
    back from them (yields the stack), else it is left whole (yields None). Put back on leaving, also on error."""
    found = _identical_stack(model)
    if found is None:
        yield None
        return
    stack, owner, attribute, config, per_layer = found
    layers = getattr(owner, attribute)
    saved = {field: getattr(config, field) for field in ("num_hidden_layers", *per_layer)}
    try:
        setattr(owner, attribute, torch.nn.ModuleList(list(layers)[:KEPT_LAYERS]))
        config.num_hidden_layers = KEPT_LAYERS
        for field in per_layer:
            setattr(config, field, type(saved[field])(saved[field][:KEPT_LAYERS]))
        yield stack
    finally:
        setattr(owner, attribute, layers)
        for field, value in saved.items():
            setattr(config, field, value)


def _identical_stack(model: torch.nn.Module):
    """The stack of layers to cut, the module holding it, the config to cut and its per-layer lists, or None."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int) or depth < KEPT_LAYERS + 2:
        return None  # too shallow to gain from it
    stacks = [(name, module) for name, module in model.named_modules()
              if isinstance(module, torch.nn.ModuleList) and len(module) == depth]
    if len(stacks) != 1:
        return None
    name, layers = stacks[0]
    per_layer = [field for field, value in vars(config).items()
                 if isinstance(value, (list, tuple)) and len(value) == depth]
    if any(len(set(map(repr, getattr(config, field)))) > 1 for field in per_layer):
        return None  # layers the config sets apart (sliding and global attention, dense and MoE)
    if len({_module_signature(layer, index) for index, layer in enumerate(layers) if index > 0}) > 1:
        return None  # the first layer may differ (a dense MLP before MoE ones): it is captured as it is
    owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return LayerStack(name, depth), owner, name.rpartition(".")[2], config, per_layer


def _module_signature(layer: torch.nn.Module, index: int) -> tuple:
    """What two layers must share to trace alike: modules' classes and plain settings (its own index aside), and
    weights' shapes and dtypes."""
    def settings(module: torch.nn.Module) -> tuple:
        return tuple(sorted((key, value) for key, value in vars(module).items()
                            if not key.startswith("_") and isinstance(value, (bool, int, float, str, type(None)))
                            and not (isinstance(value, int) and "layer" in key and value in (index, index + 1))))

    return tuple((name, type(module).__qualname__, settings(module),
                  tuple((p_name, tuple(p.shape), p.dtype) for p_name, p in module.named_parameters(recurse=False)))
                 for name, module in layer.named_modules())


def grown(graph: OpGraph, stack: LayerStack, state: frozenset[str]) -> tuple[OpGraph, frozenset[str]] | None:
    """`graph` (captured with `KEPT_LAYERS` layers of `stack`) grown to the stack's depth, and the phase's state
    named as grown; None where the shallow capture's layers do not prove alike."""
    blocks = _blocks(graph, stack.container)
    if blocks is None:
        return None
    second, template, last = blocks[1], blocks[_TEMPLATE], blocks[-1]
    if not block_signature(second, graph) == block_signature(template, graph) == block_signature(last, graph):
        return None
    wiring, last_wiring = _wiring(template, second), _wiring(last, template)
    if _settled(wiring) != _settled(last_wiring):
        return None
    renames = _renames(template, last, second, graph)
    if renames is None:
        return None  # a weight or cache named unlike the layer before and after
    copies = range(_TEMPLATE + 1, stack.depth - 1)
    copy_wiring = _common(wiring, last_wiring)
    names: dict[int, list[str]] = {_TEMPLATE: [node.name for node in template]}
    new_nodes: list[OpNode] = []
    for layer in copies:
        names[layer] = [f"{node.name}_layer{layer}" for node in template]
        new_nodes += [_copy(node, names[layer][position], copy_wiring[position], layer - _TEMPLATE, names[layer],
                            names[layer - 1], renames) for position, node in enumerate(template)]
    last_shift = stack.depth - KEPT_LAYERS
    names[stack.depth - 1] = [node.name for node in last]
    new_nodes += [_copy(node, node.name, last_wiring[position], last_shift, names[stack.depth - 1],
                        names[stack.depth - 2], renames) for position, node in enumerate(last)]
    rename_last = {old: _renamed(old, renames.shifts[old], last_shift) for old in renames.last_names}
    start = graph.nodes.index(last[0])
    layer_names = {node.name for block in blocks for node in block}

    def outside(node: OpNode) -> OpNode:
        """A node outside the layers that reads the last layer's cache (for its size, say) reads the model's last's."""
        if node.name in layer_names:
            return node
        return dataclasses.replace(node, parameters=tuple(rename_last.get(p, p) for p in node.parameters))

    nodes = (*map(outside, graph.nodes[:start]), *new_nodes, *map(outside, graph.nodes[start + len(last):]))
    if len({node.name for node in nodes}) != len(nodes):
        return None
    parameter_bytes = {rename_last.get(name, name): size for name, size in graph.parameter_bytes.items()}
    for layer in copies:
        for old in renames.template_names:
            parameter_bytes[_renamed(old, renames.shifts[old], layer - _TEMPLATE)] = graph.parameter_bytes[old]

    def grown_state(names: frozenset[str]) -> frozenset[str]:
        return frozenset({rename_last.get(name, name) for name in names}
                         | {_renamed(name, renames.shifts[name], layer - _TEMPLATE)
                            for name in renames.template_names if name in names for layer in copies})

    grown_graph = OpGraph(nodes, parameter_bytes, _grown_outputs(graph.outputs, names, last),
                          grown_state(graph.written_state))
    return grown_graph, grown_state(state)


def _grown_outputs(outputs: tuple[str, ...], names: dict[int, list[str]], last: tuple[OpNode, ...]
                   ) -> tuple[str, ...]:
    """The model's outputs with each copied layer's (the cache it writes, returned as torch.export returns
    mutated inputs) where a full capture has them: after the template layer's, before the last layer's."""
    template = {name: position for position, name in enumerate(names[_TEMPLATE])}
    last_names = {node.name for node in last}
    copied = [names[layer][template[name]] for layer in sorted(names)[1:-1] for name in outputs if name in template]
    first_of_last = next((i for i, name in enumerate(outputs) if name in last_names), len(outputs))
    return (*outputs[:first_of_last], *copied, *outputs[first_of_last:])


def _blocks(graph: OpGraph, container: str) -> list[tuple[OpNode, ...]] | None:
    """The nodes of each kept layer, each layer's nodes one run of the graph's order, or None."""
    positions: dict[int, list[int]] = {}
    for position, node in enumerate(graph.nodes):
        block = numbered_block(node.module_path)
        if block is not None and block.rpartition(".")[0] == container:
            positions.setdefault(int(block.rpartition(".")[2]), []).append(position)
    if sorted(positions) != list(range(KEPT_LAYERS)):
        return None
    if any(p[-1] - p[0] + 1 != len(p) for p in positions.values()):
        return None  # a layer's ops interleaved with others': no one place to put the copies
    return [tuple(graph.nodes[i] for i in positions[layer]) for layer in range(KEPT_LAYERS)]


Reference = tuple[str, object]  # ("own", position), ("previous", position) or ("shared", node name)
Wiring = tuple[tuple[tuple[Reference, ...], tuple[Reference, ...], Reference], ...]


def _wiring(block: tuple[OpNode, ...], previous: tuple[OpNode, ...]) -> Wiring:
    """How each node of `block` reads (its inputs, the nodes it runs after, the value it writes): its own block's
    nodes and the previous block's by position, any other node by name (the same one for every layer)."""
    own = {node.name: position for position, node in enumerate(block)}
    before = {node.name: position for position, node in enumerate(previous)}

    def reference(name: str | None) -> Reference:
        if name in own:
            return ("own", own[name])
        if name in before:
            return ("previous", before[name])
        return ("shared", name)

    return tuple((tuple(map(reference, node.inputs)), tuple(map(reference, node.after)), reference(node.writes))
                 for node in block)


def _settled(wiring: Wiring) -> Wiring:
    """`wiring` without the orders on nodes outside the layers (torch.export reads a batch size off one layer's
    cache, which layer varying with the depth, and that layer's cache write then runs after the read), and with
    the orders as sets (which comes first among the nodes a write waits for is no fact of the model)."""
    return tuple((inputs, tuple(sorted(r for r in after if r[0] != "shared")), writes)
                 for inputs, after, writes in wiring)


def _common(wiring: Wiring, other: Wiring) -> Wiring:
    """`wiring` keeping only the orders on outside nodes that `other` shares, position for position."""
    return tuple((inputs, tuple(r for r in after if r[0] != "shared" or r in other_after), writes)
                 for (inputs, after, writes), (_, other_after, _) in zip(wiring, other))


@dataclass(frozen=True, slots=True)
class _Renames:
    """How a layer's weights, state and module paths are named: for each name of the template (or last) layer,
    the step each of its numbers takes from one layer to the next."""

    shifts: dict[str, tuple[int, ...]]
    template_names: tuple[str, ...]  # the template layer's own weights and state (copied with each layer)
    last_names: tuple[str, ...]      # the last layer's own (renamed to the model's last layer)


def _renames(template: tuple[OpNode, ...], last: tuple[OpNode, ...], second: tuple[OpNode, ...],
             graph: OpGraph) -> _Renames | None:
    """Each own name's steps per layer, read off the same position in the second, template and last layers (the
    third minus the second, checked against the last minus the third: names must step alike), or None."""
    shifts: dict[str, tuple[int, ...]] = {}
    template_names, last_names = [], []
    for a, b, c in zip(second, template, last):
        if len(a.parameters) != len(b.parameters) or len(b.parameters) != len(c.parameters):
            return None
        for pa, pb, pc in (*zip(a.parameters, b.parameters, c.parameters), (a.module_path, b.module_path,
                                                                              c.module_path)):
            if pa == pb == pc:
                continue  # shared by every layer (the rotary table, a cache read for its size)
            steps, steps_after = _steps(pa, pb), _steps(pb, pc)
            if steps is None or steps != steps_after or not any(steps):
                return None
            shifts[pb], shifts[pc] = steps, steps
            if pb in graph.parameter_bytes:
                template_names.append(pb)
                last_names.append(pc)
    return _Renames(shifts, tuple(dict.fromkeys(template_names)), tuple(dict.fromkeys(last_names)))


def _steps(earlier: str, later: str) -> tuple[int, ...] | None:
    """How much each number in a name grows from `earlier` to `later`, or None where the names differ otherwise."""
    a, b = _NUMBER.split(earlier), _NUMBER.split(later)
    if len(a) != len(b) or a[0::2] != b[0::2]:
        return None
    return tuple(int(y) - int(x) for x, y in zip(a[1::2], b[1::2]))


def _renamed(name: str, steps: tuple[int, ...], layers: int) -> str:
    """`name` as the layer `layers` after its own names it."""
    parts = _NUMBER.split(name)
    for i, step in enumerate(steps):
        parts[2 * i + 1] = str(int(parts[2 * i + 1]) + step * layers)
    return "".join(parts)


def _copy(node: OpNode, name: str, wiring: tuple, layers: int, own: list[str], previous: list[str],
          renames: _Renames) -> OpNode:
    """`node` (of the template or the last layer) as `name` in the layer `layers` later: wired by `wiring` to its
    own layer's and the previous layer's nodes (`own`, `previous`: their names by position), its weights, state
    and module renamed."""
    inputs, after, writes = wiring

    def resolve(reference: Reference) -> str | None:
        kind, value = reference
        return own[value] if kind == "own" else previous[value] if kind == "previous" else value

    def rename(name: str) -> str:
        return _renamed(name, renames.shifts[name], layers) if name in renames.shifts else name

    return dataclasses.replace(
        node, name=name, inputs=tuple(map(resolve, inputs)), after=tuple(map(resolve, after)), writes=resolve(writes),
        parameters=tuple(map(rename, node.parameters)), module_path=rename(node.module_path))
