"""The op graph: what the placement passes know about each node of a captured model.

`annotate` turns an ExportedProgram into an `OpGraph`: per node the op key,
tensor shapes and dtypes (from `node.meta["val"]`), FLOPs (see flops.py),
bytes moved and parameter bytes. Tied weights (one tensor under several names)
are one parameter, counted once. A program captured with a symbolic size (an
LLM's batch or prompt length) is annotated at any concrete value of it, so one
capture serves every size. It runs after capture and before tagging; nothing
downstream touches torch.fx again.
"""

from __future__ import annotations

import enum
import hashlib
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from partitioner.frontend.flops import count_flops
from partitioner.frontend.mutation import MutationFacts, is_view, mutation_facts, written_inputs

# Ops that only copy their tensor into a new layout: any device that holds the data can make the copy.
_COPY_OPS = frozenset({"aten.clone.default", "aten.contiguous.default", "aten._to_copy.default", "aten.copy.default"})
# Ops that gather rows of their first tensor argument (a table): they read the rows they gather, not the table.
_GATHER_OPS = frozenset({"aten.embedding.default", "aten.index_select.default", "aten.index.Tensor",
                         "aten.gather.default", "aten.take.default"})
_GROUPED_MM_OPS = frozenset({"aten._grouped_mm.default", "transformers.grouped_mm_fallback.default"})
# Set in a node's annotations (`torch.fx.traceback.annotate`, kept in node.meta["custom"]) on the ops of one
# shard of a mixture-of-experts layer's experts: the share of all experts it holds. Its grouped matmuls compute
# only the rows routed to those experts, that share of the rows on average (partitioner/llm/experts.py).
ROUTED_SHARE = "partitioner_routed_share"
# In-place writes of a few rows into a larger tensor (a KV cache's new token): they touch the rows they write.
_PARTIAL_WRITE_OPS = frozenset({"aten.index_copy_.default", "aten.index_put_.default", "aten.scatter_.src",
                                "aten.scatter_.value", "aten.masked_scatter_.default"})


class NodeKind(str, enum.Enum):
    """How a node is treated by costing and placement."""

    COMPUTE = "compute"          # real work (copies included: clone, a contiguous of a transposed tensor)
    VIEW = "view"                # metadata only (a view sharing its input's storage, eval dropout)
    BOOKKEEPING = "bookkeeping"  # getitem of a multi-output op, runtime asserts: sits with its input


class Sharding(str, enum.Enum):
    """How an op runs on a tensor-parallel group of devices (frontend/sharding.py reads it off the model's plan);
    an op without one runs whole on every member."""

    SPLIT = "split"                # inside a split layer part: every tensor it touches is split by heads or width
    COLUMNS = "columns"            # a column-parallel matmul: the input whole, its weight and output split
    COLUMNS_GATHERED = "columns gathered"  # column-parallel, its output gathered whole (an LM head)
    ROWS = "rows"                  # a row-parallel matmul (or a vocabulary-split embedding): partial sums all-reduced

    @property
    def reads_input_whole(self) -> bool:
        return self in (Sharding.COLUMNS, Sharding.COLUMNS_GATHERED)

    @property
    def writes_output_whole(self) -> bool:
        return self is Sharding.ROWS


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Shape and dtype of one tensor; `shape` entries are None where symbolic."""

    shape: tuple[int | None, ...]
    dtype: str

    @property
    def is_static(self) -> bool:
        return all(size is not None for size in self.shape)

    @property
    def num_bytes(self) -> int:
        numel = 1
        for size in self.shape:
            numel *= size or 1
        return numel * _itemsize(self.dtype)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True, slots=True)
class OpNode:
    """One operator of the model with the facts tagging and costing need.

    `inputs` names the producing op nodes (model inputs and parameters are not
    op nodes); `parameters` names the parameters, buffers and in-place state
    (a KV cache given as an input) the node reads.
    `arguments` holds the op's arguments by schema name: tensors as `TensorMeta`,
    other values as they are. An in-place op `writes` the value of another op
    node (see `mutation.py`); `after` names nodes it must run after without
    reading their outputs. `unread_bytes` are input bytes it does not touch
    (the rows of an embedding table it does not gather, the rows of a cache it
    does not overwrite) and `unwritten_bytes` output bytes it leaves as they
    were (an in-place write of one token into a KV cache); `flops_known` is false
    when no count or formula knows its FLOPs (then `flops` is 0).
    """

    name: str
    op: str
    kind: NodeKind
    inputs: tuple[str, ...]
    parameters: tuple[str, ...]
    input_tensors: tuple[TensorMeta, ...]
    output_tensors: tuple[TensorMeta, ...]
    arguments: Mapping[str, Any]
    flops: int
    parameter_bytes: int
    module_path: str = ""
    writes: str | None = None
    after: tuple[str, ...] = ()
    unread_bytes: int = 0
    unwritten_bytes: int = 0
    flops_known: bool = True
    copies_only: bool = False  # a layout copy (clone, contiguous, a reshape that cannot view): any device makes it
    sharding: Sharding | None = None  # how it splits across a tensor-parallel group; None: whole on each member

    @property
    def bytes_read(self) -> int:
        return sum(t.num_bytes for t in self.input_tensors) - self.unread_bytes

    @property
    def costs_dispatch(self) -> bool:
        """Whether a view or bookkeeping node still costs eager PyTorch's dispatch of an op: it calls a torch
        operator (not a Python-level step such as `operator.getitem`) that returns a tensor (not an assert)."""
        return (self.kind is not NodeKind.COMPUTE and bool(self.output_tensors)
                and not self.op.startswith(("operator.", "builtins.", "python.")))

    @property
    def activation_bytes(self) -> int:
        """Bytes of activations it reads and writes, weights left out: its working set."""
        inputs = sum(t.num_bytes for t in self.input_tensors) - self.parameter_bytes
        return max(0, inputs) + self.bytes_written

    @property
    def bytes_written(self) -> int:
        return sum(t.num_bytes for t in self.output_tensors) - self.unwritten_bytes

    @property
    def output_bytes(self) -> int:
        """The size of what it produces: what a copy of its result to another device moves."""
        return sum(t.num_bytes for t in self.output_tensors)

    @property
    def compute_dtype(self) -> str:
        """The dtype whose peak throughput bounds this op: its first floating input, else its output."""
        for tensor in self.input_tensors + self.output_tensors:
            if getattr(torch, tensor.dtype).is_floating_point:
                return tensor.dtype
        tensors = self.output_tensors or self.input_tensors
        return tensors[0].dtype if tensors else "float32"


@dataclass(frozen=True, slots=True)
class OpGraph:
    """The op nodes of a model in topological order, plus its parameters.

    `parameter_bytes` maps each parameter or buffer name to its size;
    `outputs` names the op nodes whose values the model returns.
    """

    nodes: tuple[OpNode, ...]
    parameter_bytes: Mapping[str, int]
    outputs: tuple[str, ...]
    # Parameters some node writes in place (a buffer the model updates, a KV cache given as an input): state whose
    # every user must share one copy of it.
    written_state: frozenset[str] = frozenset()
    _index: Mapping[str, OpNode] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({node.name: node for node in self.nodes})

    def __getitem__(self, name: str) -> OpNode:
        return self._index[name]

    def __iter__(self) -> Iterator[OpNode]:
        return iter(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self.nodes)

    def users(self) -> dict[str, list[str]]:
        """For each node, the op nodes that read its output, in topological order."""
        users: dict[str, list[str]] = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for producer in node.inputs:
                users[producer].append(node.name)
        return users

    @property
    def total_flops(self) -> int:
        return sum(node.flops for node in self.nodes)

    def fingerprint(self) -> str:
        """A hash of ops, shapes and wiring: equal for the same model and inputs, different if either changed."""
        digest = hashlib.sha256()
        for node in self.nodes:
            digest.update(repr((node.name, node.op, node.inputs, node.after, node.parameters,
                                [t.to_dict() for t in node.output_tensors])).encode())
        return digest.hexdigest()[:16]


def annotate(program: ExportedProgram, sizes: Mapping[str, int] | None = None) -> OpGraph:
    """Describe every call node of `program` as an `OpNode`, in graph order.

    `sizes` gives a value to each symbolic size the program was captured with (by symbol name, e.g.
    `{"s52": 16}`), so shapes, FLOPs and bytes are those of that concrete call; without it symbolic
    sizes stay unknown (None in shapes).
    """
    values = _Values(sizes or {})
    parameter_names = _parameter_placeholders(program)
    parameter_bytes = {
        name: _tensor_meta(values.of(node)).num_bytes
        for node in program.graph.nodes
        if (name := parameter_names.get(node.name)) is not None
    }
    flop_cache: dict[Any, int | None] = {}
    mutations = mutation_facts(program.graph)
    nodes = tuple(
        _op_node(node, values, parameter_names, parameter_bytes, flop_cache,
                 mutations.get(node.name, MutationFacts()))
        for node in program.graph.nodes
        if node.op == "call_function"
    )
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    outputs = tuple(
        dict.fromkeys(n.name for n in output_node.all_input_nodes if n.op == "call_function")
    )
    written = frozenset(parameter_names[name] for name in written_inputs(program.graph) if name in parameter_names)
    return OpGraph(nodes, parameter_bytes, outputs, written)


class _Values:
    """Each node's recorded value (`node.meta["val"]`), with symbolic sizes replaced by the values bound to
    their symbols: tensors become meta tensors of the concrete shape and strides, SymInts ints."""

    def __init__(self, sizes: Mapping[str, int]):
        self.sizes = dict(sizes)
        self._cache: dict[torch.fx.Node, Any] = {}

    def of(self, node: torch.fx.Node) -> Any:
        if node not in self._cache:
            value = node.meta.get("val")
            self._cache[node] = self._concrete(value) if self.sizes else value
        return self._cache[node]

    def _concrete(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            shape, stride = tuple(value.shape), value.stride()
            if all(isinstance(s, int) for s in (*shape, *stride)):
                return value
            return torch.empty_strided(tuple(self._int(s) for s in shape), tuple(self._int(s) for s in stride),
                                       dtype=value.dtype, device="meta")
        if isinstance(value, torch.SymInt):
            return self._int(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self._concrete(v) for v in value)
        return value

    def _int(self, size: int | torch.SymInt) -> int | torch.SymInt:
        if isinstance(size, int):
            return size
        expression = size.node.expr
        bound = {symbol: self.sizes[symbol.name] for symbol in expression.free_symbols if symbol.name in self.sizes}
        if len(bound) < len(expression.free_symbols):
            return size  # a size this call leaves symbolic (unknown in the op graph)
        return int(expression.xreplace(bound))


def op_key(target: Any) -> str:
    """The stable name of an fx call target, e.g. `aten.linear.default` or `operator.getitem`."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", None) or "python"
    return f"{module.removeprefix('_')}.{getattr(target, '__name__', repr(target))}"


def _parameter_placeholders(program: ExportedProgram) -> dict[str, str]:
    """Placeholder name -> parameter/buffer/constant name, for inputs that are weights, not data.

    Tied weights (the same tensor under several names, e.g. an embedding shared with the output head) all map
    to the first of their names, so their storage is counted and placed once.
    """
    weight_kinds = {InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR}
    weights = {**program.state_dict, **program.constants}
    state = set(program.graph_signature.user_inputs_to_mutate.values()) | written_inputs(program.graph)
    first_name: dict[int, str] = {}
    names = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind in weight_kinds and hasattr(spec.arg, "name"):
            name = spec.target or spec.arg.name
            tensor = weights.get(name)
            names[spec.arg.name] = first_name.setdefault(id(tensor), name) if tensor is not None else name
        elif spec.kind is InputKind.USER_INPUT and getattr(spec.arg, "name", None) in state:
            # State the model updates in place (a static KV cache): it lives on the device that uses it, as a
            # weight does, instead of being copied in with every call.
            names[spec.arg.name] = spec.arg.name
    return names


def _op_node(node: torch.fx.Node, values: _Values, parameter_names: Mapping[str, str],
             parameter_bytes: Mapping[str, int], flop_cache: dict[Any, int], mutation: MutationFacts) -> OpNode:
    key = op_key(node.target)
    inputs = tuple(dict.fromkeys(n.name for n in node.all_input_nodes if n.op == "call_function"))
    parameters = tuple(dict.fromkeys(
        parameter_names[root.name] for n in node.all_input_nodes if (root := _viewed(n)).name in parameter_names
    ))
    input_tensors = tuple(
        _tensor_meta(values.of(n)) for n in node.all_input_nodes if isinstance(values.of(n), torch.Tensor)
    )
    output_tensors = tuple(_tensor_meta(v) for v in _flatten_values(values.of(node)))
    kind = _node_kind(node, values, key, input_tensors, output_tensors)
    flops = _count_flops(node, values, flop_cache) if kind is NodeKind.COMPUTE else 0
    if flops and key in _GROUPED_MM_OPS:
        flops = round(flops * _routed_share(node))
    copies_only = kind is NodeKind.COMPUTE and (key in _COPY_OPS or _may_alias(node, input_tensors, output_tensors))
    untouched = _untouched_bytes(node, values, key)
    return OpNode(
        name=node.name,
        op=key,
        kind=kind,
        inputs=inputs,
        parameters=parameters,
        input_tensors=input_tensors,
        output_tensors=output_tensors,
        arguments=_named_arguments(node, values),
        flops=flops or 0,
        parameter_bytes=sum(parameter_bytes[p] for p in parameters),
        module_path=_module_path(node),
        writes=mutation.writes,
        after=mutation.after,
        unread_bytes=(_unread_table_bytes(node, values, key, output_tensors) + untouched
                      + _unrouted_expert_bytes(node, values, key)),
        unwritten_bytes=untouched,
        flops_known=flops is not None,
        copies_only=copies_only and bool(input_tensors) and all(o.dtype == input_tensors[0].dtype
                                                                for o in output_tensors),
    )


def _unread_table_bytes(node: torch.fx.Node, values: _Values, key: str, outputs: tuple[TensorMeta, ...]) -> int:
    """For a gather (embedding, index_select, ...), the table bytes it does not read: all but the rows it
    gathers, which are as many bytes as its output."""
    if key not in _GATHER_OPS or not node.args or not isinstance(node.args[0], torch.fx.Node):
        return 0
    if not outputs or not all(t.is_static for t in outputs):  # a data-dependent gather (a mask) may read it all
        return 0
    table = _tensor_meta(values.of(node.args[0])).num_bytes
    return max(0, table - sum(t.num_bytes for t in outputs))


def _viewed(node: torch.fx.Node) -> torch.fx.Node:
    """The tensor a chain of views reads (a weight behind `transpose`): an op reading a view of a weight
    needs that weight resident, and its working set is its activations alone."""
    while node.op == "call_function" and is_view(node):
        node = node.args[0]
    return node


def _routed_share(node: torch.fx.Node) -> float:
    """The share of a grouped matmul's rows it computes: 1, or a shard's share of the experts."""
    return float((node.meta.get("custom") or {}).get(ROUTED_SHARE, 1.0))


def _unrouted_expert_bytes(node: torch.fx.Node, values: _Values, key: str) -> int:
    """For a grouped matmul of routed tokens (S, K) by expert weights (E, K, N), the expected bytes of the experts
    no token reaches: with S token-expert rows spread evenly over all E / share experts of the layer (a shard holds
    that share of them), an expert gets none with probability (1 - share/E)^S. At decode batch sizes most experts
    sit idle and their weights are not read; at prefill lengths all are."""
    if key not in _GROUPED_MM_OPS or len(node.args) < 2 or not all(isinstance(a, torch.fx.Node) for a in node.args[:2]):
        return 0
    tokens, weights = (values.of(a) for a in node.args[:2])
    if not (isinstance(tokens, torch.Tensor) and isinstance(weights, torch.Tensor)) or tokens.dim() != 2 \
            or weights.dim() != 3 or not isinstance(tokens.shape[0], int):
        return 0
    experts = weights.shape[0] / _routed_share(node)
    if experts < 2:
        return 0
    return round(_tensor_meta(weights).num_bytes * (1 - 1 / experts) ** tokens.shape[0])


def _untouched_bytes(node: torch.fx.Node, values: _Values, key: str) -> int:
    """For an in-place write of a few rows into a larger tensor, the bytes of that tensor it neither reads nor
    writes: all of it but as many bytes as the rows it writes (its other floating-point inputs)."""
    if key not in _PARTIAL_WRITE_OPS or not node.args or not isinstance(node.args[0], torch.fx.Node):
        return 0
    target = _tensor_meta(values.of(node.args[0]))
    written = sum(_tensor_meta(values.of(n)).num_bytes for n in node.all_input_nodes[1:]
                  if isinstance(values.of(n), torch.Tensor) and values.of(n).is_floating_point())
    return max(0, target.num_bytes - written)


def _node_kind(node: torch.fx.Node, values: _Values, key: str, inputs: tuple[TensorMeta, ...],
               outputs: tuple[TensorMeta, ...]) -> NodeKind:
    if node.target is operator.getitem or not outputs:
        return NodeKind.BOOKKEEPING
    if key == "aten.dropout.default" and not node.args[2]:
        return NodeKind.VIEW
    if _changes_metadata_only(node):
        return NodeKind.VIEW
    # Aliasing schemas also cover casts such as `to.dtype`, which do real work when the dtype changes, and ops
    # that may copy (`reshape` of a transposed tensor, `contiguous`): a view is one whose output shares storage.
    return NodeKind.VIEW if _may_alias(node, inputs, outputs) and _shares_storage(node, values) else NodeKind.COMPUTE


def _changes_metadata_only(node: torch.fx.Node) -> bool:
    """Whether the op is the in-place form of a view op (`detach_`, `squeeze_`, `t_`): it rewrites its input's
    metadata, not its data, so it moves and computes nothing, as the view does. (torch.export writes
    `torch.tensor(...)` in a forward as `lift_fresh_copy` then `detach_`.)"""
    schema = getattr(node.target, "_schema", None)
    name = schema.name.removeprefix("aten::") if schema is not None and schema.name.startswith("aten::") else ""
    if not name.endswith("_") or name.endswith("__"):
        return False
    twin = getattr(getattr(torch.ops.aten, name[:-1], None), "default", None)
    returns = getattr(getattr(twin, "_schema", None), "returns", ())
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _may_alias(node: torch.fx.Node, inputs: tuple[TensorMeta, ...], outputs: tuple[TensorMeta, ...]) -> bool:
    """Whether the op's schema lets it return a view of its input, in the input's dtype."""
    schema = getattr(node.target, "_schema", None)
    aliases_input = schema is not None and any(
        r.alias_info is not None and not r.alias_info.is_write for r in schema.returns
    )
    return aliases_input and bool(inputs) and all(o.dtype == inputs[0].dtype for o in outputs)


def _shares_storage(node: torch.fx.Node, values: _Values) -> bool:
    """Whether the node's output lives in the storage of one of its inputs, found by running the op on meta
    tensors of the recorded shapes and strides (the recorded fake values of a loaded .pt2 file share nothing);
    true where unknowable."""
    inputs: list[torch.Tensor] = []

    def meta_of(value: Any) -> Any:
        if not isinstance(value, torch.fx.Node):
            return value
        val = values.of(value)
        if isinstance(val, int):
            return val
        if not isinstance(val, torch.Tensor) or any(not isinstance(s, int) for s in (*val.shape, *val.stride())):
            raise ValueError("no static tensor")
        inputs.append(torch.empty_strided(tuple(val.shape), tuple(val.stride()), dtype=val.dtype, device="meta"))
        return inputs[-1]

    try:
        args = torch.fx.node.map_aggregate(node.args, meta_of)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, meta_of)
        output = node.target(*args, **kwargs)
        storages = {t.untyped_storage()._cdata for t in inputs}
        return not isinstance(output, torch.Tensor) or output.untyped_storage()._cdata in storages
    except Exception:  # noqa: BLE001 - symbolic shapes, no meta kernel: keep the schema's word
        return True


def _named_arguments(node: torch.fx.Node, values: _Values) -> dict[str, Any]:
    """The node's arguments by schema name, with tensors replaced by their `TensorMeta`."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    named: dict[str, Any] = {}
    for position, argument in enumerate(schema.arguments):
        if position < len(node.args) and not argument.kwarg_only:
            value = node.args[position]
        elif argument.name in node.kwargs:
            value = node.kwargs[argument.name]
        elif argument.has_default_value():
            value = argument.default_value
        else:
            continue
        named[argument.name] = torch.fx.node.map_aggregate(
            value, lambda v: _argument(values.of(v)) if isinstance(v, torch.fx.Node) else v
        )
    return named


def _argument(value: Any) -> Any:
    """An argument produced by another node: a size it computed (concrete), else its tensor's `TensorMeta`."""
    return value if isinstance(value, int) else _tensor_meta(value)


def _count_flops(node: torch.fx.Node, values: _Values, cache: dict[Any, int | None]) -> int | None:
    """FLOPs of one node on meta tensors (None: unknown), once per distinct call."""
    args = torch.fx.node.map_aggregate(node.args, lambda v: _as_meta_tensor(v, values))
    kwargs = torch.fx.node.map_aggregate(node.kwargs, lambda v: _as_meta_tensor(v, values))
    signature = (node.target, repr(torch.fx.node.map_aggregate((args, kwargs), _call_key)))
    if signature not in cache:
        cache[signature] = count_flops(node.target, args, kwargs)
    return cache[signature]


def _call_key(value: Any) -> Any:
    """What decides an argument's FLOPs: a tensor's shape and dtype (its repr is slow and says no more)."""
    return (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else value


def _as_meta_tensor(value: Any, values: _Values) -> Any:
    if not isinstance(value, torch.fx.Node):
        return value
    val = values.of(value)
    if isinstance(val, torch.Tensor):
        shape = [int(s) if isinstance(s, int) else 1 for s in val.shape]
        return torch.empty(shape, dtype=val.dtype, device="meta")
    return val


def _flatten_values(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flatten_values(item)]
    return []


def _tensor_meta(value: Any) -> TensorMeta:
    if not isinstance(value, torch.Tensor):
        return TensorMeta((), "float32")
    shape = tuple(s if isinstance(s, int) else None for s in value.shape)
    return TensorMeta(shape, str(value.dtype).removeprefix("torch."))


_SLICE_STEP = re.compile(r"\.slice\([^)]*\)")


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    # A model that iterates over a slice of a ModuleList (transformers' `self.layers[:n]`) records the slice as a
    # module of its own; the path names the layer as the model's own attributes do.
    return _SLICE_STEP.sub("", path.removeprefix("L['self']."))


def _itemsize(dtype: str) -> int:
    return getattr(torch, dtype).itemsize
