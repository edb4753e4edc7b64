"""The model's computation graph for the ActiVis page (Kahng et al., ActiVis, Sec. 4.3 A).

ActiVis draws a model as a bipartite graph: operator nodes (dark rectangles) and tensor
nodes (circles), data flowing from the input on the left to the output on the right; a
tensor the activation store holds can be clicked to open its activation panel. This module
builds that graph, UI-free, as plain data the page can chart.

Algorithm
---------
1. **Trace.** ``torch.fx`` records the forward pass symbolically with a tracer that keeps
   the standard leaf modules (and, with ``depth``, every module whose qualname has ``depth``
   or more components) as single ``call_module`` nodes. ``ShapeProp`` then runs the traced
   graph once on a zero image (``1x3xSxS``, the model's device, eval mode, no grad) to give
   every value its shape. The model itself is never changed; its train/eval flags are
   restored afterwards.
2. **Bipartite graph.** Every fx node except the placeholder, ``get_attr`` and ``output``
   becomes an op node followed by one tensor node, its output
   (``op -> tensor``); each node an op reads becomes an edge ``tensor -> op``. The
   placeholder is the ``input`` tensor; fx's ``output`` adds no op. To keep the graph
   readable, nodes whose value holds no tensor (size arithmetic such as ``x.shape[0]``,
   ``torch._assert``) are left out, as are ``get_attr`` nodes (parameters and buffers). An
   op returning a tuple gives one tensor node (no shape); its ``getitem`` ops follow it.
3. **Store layers.** A tensor's ``layer`` says under which name the activation store keeps
   it. A storable module's output is the output of its ``call_module`` node when it is a
   leaf of the trace; otherwise the last value computed inside it (per ``nn_module_stack``)
   that is read outside it. ``embedding`` is the input of module ``embedding_layer`` (or its
   output when ``embedding_is_output``) and ``logits`` the model's output. A tensor with
   several names is labelled with the first of: the storable names in the order given,
   ``embedding``, ``logits``; every name still resolves through ``ModelGraph.layers``.
4. **Fallback.** When tracing or shape propagation raises (data-dependent control flow,
   TorchScript, anything else), the graph is the module tree in execution order, recorded by
   forward hooks during one forward pass of the zero image: a chain ``input -> op -> tensor
   -> op ...`` without branches, skip connections or functional operations. If that forward
   fails too, the chain lists the leaf modules in definition order without shapes.
5. **Layout.** Left to right: a node's column ``x`` is its longest-path distance from the
   sources (the input is column 0); nodes the input does not feed (an op on a parameter,
   say) move right, next to their first use. Within each column, a few barycentre sweeps
   (each node moved to the mean row of its neighbours in the previous pass, downstream
   then upstream) reduce edge crossings; rows ``y`` are centred on 0. Each sweep is
   O(nodes + edges) plus a sort per column: resnet50 (351 nodes) lays out in milliseconds;
   the call's time is the trace and the shape pass (a forward of one image).

Ids are derived from module qualnames and fx node names, so the same model gives the same
ids and positions on every call.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import fx, nn

from core.errors import ModelError, first_line
from core.models.torchscript import ScriptedModel

OP = "op"
TENSOR = "tensor"
INPUT_ID = "t:input"
_SWEEPS = 4  # barycentre passes, alternating downstream / upstream


@dataclass(frozen=True)
class GraphNode:
    """One node of the bipartite graph: an operator or the tensor it produces."""

    id: str
    kind: str
    name: str
    op_type: str
    shape: tuple[int, ...] | None
    module: str
    layer: str | None
    group: str
    x: float
    y: float


@dataclass
class ModelGraph:
    """The computation graph: nodes, ``op -> tensor -> op`` edges and how it was built.

    ``layers`` maps every store name that was resolved (storable layers, ``embedding``,
    ``logits``) to its tensor's id, including names that lost the label tie to another.
    """

    nodes: list[GraphNode]
    edges: list[tuple[str, str]]
    traced: bool
    note: str
    layers: dict[str, str] = field(default_factory=dict)

    def _index(self) -> dict[str, Any]:
        """Lookup tables, built once (the graph is not meant to change after building)."""
        cache = self.__dict__.get("_cache")
        if cache is None:
            by_id = {n.id: n for n in self.nodes}
            preds: dict[str, list[str]] = {n.id: [] for n in self.nodes}
            succs: dict[str, list[str]] = {n.id: [] for n in self.nodes}
            for a, b in self.edges:
                succs[a].append(b)
                preds[b].append(a)
            names: dict[str, list[str]] = {}
            for layer, tid in self.layers.items():
                names.setdefault(tid, []).append(layer)
            order = {n.id: i for i, n in enumerate(self.nodes)}
            cache = {"by_id": by_id, "preds": preds, "succs": succs, "names": names, "order": order}
            self.__dict__["_cache"] = cache
        return cache

    def node(self, node_id: str) -> GraphNode:
        """The node with this id (KeyError if there is none)."""
        return self._index()["by_id"][node_id]

    def tensor_for_layer(self, layer: str) -> GraphNode | None:
        """The tensor the store calls ``layer`` (a storable name, "embedding", "logits")."""
        tid = self.layers.get(layer)
        if tid is None:
            tid = next((n.id for n in self.nodes if n.layer == layer), None)
        return None if tid is None else self.node(tid)

    def layer_names(self, node_id: str) -> list[str]:
        """Every store name resolved to this tensor (its label first), [] for others."""
        names = list(self._index()["names"].get(node_id, []))
        label = self.node(node_id).layer
        if label is not None and label not in names:
            names.insert(0, label)
        elif label is not None:
            names.remove(label)
            names.insert(0, label)
        return names

    def neighbours(self, node_id: str) -> tuple[list[GraphNode], list[GraphNode]]:
        """(upstream tensors, downstream tensors) one op away, in graph order.

        For a tensor: the tensors read by its producing op, and the tensors produced by the
        ops that read it. For an op: its input tensors and its output tensors.
        """
        idx = self._index()
        preds, succs, by_id = idx["preds"], idx["succs"], idx["by_id"]
        if by_id[node_id].kind == OP:
            ups, downs = preds[node_id], succs[node_id]
        else:
            ups = _unique(t for op in preds[node_id] for t in preds[op])
            downs = _unique(t for op in succs[node_id] for t in succs[op])
        key = idx["order"].__getitem__
        return [by_id[i] for i in sorted(ups, key=key)], [by_id[i] for i in sorted(downs, key=key)]

    def nearest_layer(self, node_id: str, among: Collection[str] | None = None) -> GraphNode | None:
        """The closest tensor (undirected graph distance) that the store holds.

        A tensor qualifies when it has a store name (and, with ``among``, one of its names
        is in ``among``). Ties go to the downstream tensor (larger ``x``), then to graph
        order. The node itself qualifies at distance 0. None when nothing qualifies.
        """
        idx = self._index()
        preds, succs, by_id, order = idx["preds"], idx["succs"], idx["by_id"], idx["order"]
        wanted = None if among is None else set(among)

        def qualifies(nid: str) -> bool:
            node = by_id[nid]
            if node.kind != TENSOR or node.layer is None:
                return False
            return wanted is None or any(n in wanted for n in self.layer_names(nid))

        seen = {node_id}
        frontier = [node_id]
        while frontier:
            hits = [n for n in frontier if qualifies(n)]
            if hits:
                best = min(hits, key=lambda n: (-by_id[n].x, order[n]))
                return by_id[best]
            nxt: list[str] = []
            for n in frontier:
                for m in (*preds[n], *succs[n]):
                    if m not in seen:
                        seen.add(m)
                        nxt.append(m)
            frontier = nxt
        return None

    def frame(self) -> pd.DataFrame:
        """One row per node, ready for charting: id, kind, name, op_type, shape text
        ("64×56×56"), layer ("" for none), group, x, y, per_channel."""
        return pd.DataFrame(
            {
                "id": [n.id for n in self.nodes],
                "kind": [n.kind for n in self.nodes],
                "name": [n.name for n in self.nodes],
                "op_type": [n.op_type for n in self.nodes],
                "shape": [shape_text(n.shape) for n in self.nodes],
                "layer": [n.layer or "" for n in self.nodes],
                "group": [n.group for n in self.nodes],
                "x": [float(n.x) for n in self.nodes],
                "y": [float(n.y) for n in self.nodes],
                "per_channel": [n.kind == TENSOR and is_per_channel(n.shape) for n in self.nodes],
            }
        )

    def edge_frame(self) -> pd.DataFrame:
        """One row per edge: source, target and the endpoints' positions x, y, x2, y2."""
        by_id = self._index()["by_id"]
        rows = [(a, b, by_id[a].x, by_id[a].y, by_id[b].x, by_id[b].y) for a, b in self.edges]
        return pd.DataFrame(rows, columns=["source", "target", "x", "y", "x2", "y2"]).astype(
            {"x": float, "y": float, "x2": float, "y2": float}
        )


def is_per_channel(shape: tuple[int, ...] | None) -> bool:
    """True for (C,) and (C, H, W): tensors that give one value per channel once spatially
    pooled, as the activation panel shows them; False for tokens (T, D), scalars, None."""
    return shape is not None and len(shape) in (1, 3)


def shape_text(shape: tuple[int, ...] | None) -> str:
    """A shape as hover text: "64×56×56"; "scalar" for (); "" when unknown."""
    if shape is None:
        return ""
    return "×".join(str(d) for d in shape) if shape else "scalar"


def model_graph(
    model: nn.Module,
    input_size: int,
    storable: Sequence[str],
    embedding_layer: str,
    embedding_is_output: bool,
    depth: int | None = None,
) -> ModelGraph:
    """The computation graph of ``model`` for ``input_size`` square RGB images.

    Traced with torch.fx when possible (``traced=True``), else the module tree in execution
    order (``traced=False`` and ``note`` says why). ``depth`` collapses every module whose
    qualname has ``depth`` or more components into one op (None: full detail). Never raises
    for a model that cannot be traced; the model is left as it was.
    """
    states = [(m, m.training) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                raw = _traced(model, input_size, depth)
                traced, note = True, ""
            except Exception as exc:  # trace/shape errors of any kind: fall back
                raw, note = _fallback(model, input_size, depth, exc)
                traced = False
        nodes, edges, layers = _finish(raw, storable, embedding_layer, embedding_is_output)
        return ModelGraph(nodes=nodes, edges=edges, traced=traced, note=note, layers=layers)
    finally:
        _restore(model, was_training, states)


# --- raw graph ---------------------------------------------------------------------------


@dataclass
class _Raw:
    """A graph before layout and labels: nodes as dicts, plus what the labels need."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)
    # module qualname -> ids of the tensors computed inside it, in execution order
    inside: dict[str, list[str]] = field(default_factory=dict)
    # tensor id -> ids of the ops that read it
    readers: dict[str, list[str]] = field(default_factory=dict)
    # op id -> the module qualnames it runs inside (innermost last)
    op_stack: dict[str, list[str]] = field(default_factory=dict)
    # op id -> its output tensor id
    out_of: dict[str, str] = field(default_factory=dict)
    # module qualname -> ids of its op nodes when it is one op (leaf), in call order
    module_ops: dict[str, list[str]] = field(default_factory=dict)
    output: str | None = None

    def add_op(self, oid: str, name: str, op_type: str, module: str, stack: list[str]) -> None:
        self.nodes.append(
            {
                "id": oid,
                "kind": OP,
                "name": name,
                "op_type": op_type,
                "shape": None,
                "module": module,
                "group": _group(stack[-1] if stack else module),
            }
        )
        self.op_stack[oid] = stack
        if module:
            self.module_ops.setdefault(module, []).append(oid)

    def add_tensor(
        self,
        tid: str,
        name: str,
        op_type: str,
        shape: tuple[int, ...] | None,
        module: str,
        producer: str | None,
        stack: list[str],
    ) -> None:
        self.nodes.append(
            {
                "id": tid,
                "kind": TENSOR,
                "name": name,
                "op_type": op_type,
                "shape": shape,
                "module": module,
                "group": _group(stack[-1] if stack else module),
            }
        )
        if producer is not None:
            self.edges.append((producer, tid))
            self.out_of[producer] = tid
        for qual in stack:
            self.inside.setdefault(qual, []).append(tid)

    def read(self, tid: str, op: str) -> None:
        readers = self.readers.setdefault(tid, [])
        if op not in readers:
            readers.append(op)
            self.edges.append((tid, op))


def _group(qualname: str) -> str:
    return qualname.split(".")[0] if qualname else ""


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class _Tracer(fx.Tracer):
    """fx tracer that also keeps modules ``depth`` or more path components deep as leaves."""

    def __init__(self, depth: int | None) -> None:
        super().__init__()
        self.depth = depth

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if (
            self.depth is not None
            and module_qualified_name
            and len(module_qualified_name.split(".")) >= self.depth
        ):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _shape_of(value: Any) -> tuple[int, ...] | None:
    """Shape without the batch dimension of a tensor (or of fx TensorMetadata); else None."""
    shape = getattr(value, "shape", None)
    if not isinstance(shape, torch.Size | tuple) or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape[1:]) if len(shape) else ()


def _callable_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", None) or type(target).__name__


def _module_type(module: nn.Module) -> str:
    """The class name users know, also for TorchScript mirrors and script modules."""
    original = getattr(module, "original_name", None)
    return original if isinstance(original, str) and original else type(module).__name__


def _stack_names(node: fx.Node) -> list[str]:
    """The module qualnames an fx node runs inside, outermost first (from nn_module_stack).

    torch 2.14's symbolic_trace stores an ordered dict qualname -> (qualname, type); the
    value's first item is used (dynamo-style keys differ from the path)."""
    stack = node.meta.get("nn_module_stack") or {}
    names = []
    for key, value in stack.items():
        path = value[0] if isinstance(value, tuple) and value and isinstance(value[0], str) else key
        if path:
            names.append(path)
    return names


def _traced(model: nn.Module, input_size: int, depth: int | None) -> _Raw:
    """The raw bipartite graph from torch.fx tracing plus ShapeProp (raises on failure)."""
    from torch.fx.passes.shape_prop import ShapeProp

    if isinstance(model, torch.jit.ScriptModule) or _is_scripted(model):
        raise ModelError(
            f"{type(model).__name__} is a TorchScript model, which torch.fx cannot trace: "
            "load the model as a Python module (entrypoint or torchvision) to see its full graph"
        )
    tracer = _Tracer(depth)
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, 3, input_size, input_size, device=_device(model)))

    raw = _Raw()
    tensor_of: dict[fx.Node, str] = {}
    used_ids: set[str] = set()
    calls: dict[str, int] = {}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node in graph.nodes:
        if node.op == "placeholder":
            first = node is placeholders[0]
            tid = _fresh(INPUT_ID if first else f"t:{node.name}", used_ids)
            shape = _shape_of(node.meta.get("tensor_meta"))
            raw.add_tensor(tid, "input" if first else node.name, "input", shape, "", None, [])
            tensor_of[node] = tid
            continue
        if node.op == "output":
            raw.output = next((tensor_of[a] for a in _node_args(node) if a in tensor_of), None)
            continue
        if node.op == "get_attr" or "tensor_meta" not in node.meta:
            continue  # parameters, and bookkeeping on sizes (x.shape[0], asserts): no tensor
        stack = _stack_names(node)
        if node.op == "call_module":
            qual = str(node.target)
            calls[qual] = calls.get(qual, 0) + 1
            oid = f"op:{qual}" + (f"#{calls[qual]}" if calls[qual] > 1 else "")
            op_type = _module_type(gm.get_submodule(qual))
            name, module = qual, qual
            if not stack or stack[-1] != qual:
                stack = [*stack, qual]
        else:
            oid = f"op:{node.name}"
            op_type = _callable_name(node.target)
            name, module = node.name, ""
        oid = _fresh(oid, used_ids)
        raw.add_op(oid, name, op_type, module, stack)
        for arg in _node_args(node):
            if arg in tensor_of:
                raw.read(tensor_of[arg], oid)
        tid = _fresh(f"t:{node.name}", used_ids)
        shape = _shape_of(node.meta.get("tensor_meta"))
        raw.add_tensor(tid, node.name, op_type, shape, module, oid, stack)
        tensor_of[node] = tid
    return raw


def _is_scripted(model: nn.Module) -> bool:
    return isinstance(model, ScriptedModel)


def _node_args(node: fx.Node) -> list[fx.Node]:
    """The fx nodes among a node's args and kwargs (nested in tuples, lists, dicts)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return _unique_nodes(found)


def _unique_nodes(nodes: list[fx.Node]) -> list[fx.Node]:
    seen: set[fx.Node] = set()
    out = []
    for n in nodes:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _fresh(candidate: str, used: set[str]) -> str:
    """``candidate``, or it with a ``~k`` suffix when already taken (ids must be unique)."""
    out, k = candidate, 2
    while out in used:
        out, k = f"{candidate}~{k}", k + 1
    used.add(out)
    return out


# --- fallback: the module tree in execution order ------------------------------------------


def _chosen_modules(model: nn.Module, depth: int | None) -> list[tuple[str, nn.Module]]:
    """The modules shown as ops: leaves, or at ``depth`` components, none inside another."""
    chosen: list[tuple[str, nn.Module]] = []
    prefixes: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in prefixes):
            continue
        is_leaf = not any(True for _ in module.children())
        if is_leaf or (depth is not None and len(name.split(".")) >= depth):
            chosen.append((name, module))
            prefixes.append(name)
    if not chosen:
        chosen.append(("", model))
    return chosen


def _fallback(
    model: nn.Module, input_size: int, depth: int | None, error: BaseException
) -> tuple[_Raw, str]:
    """The module-tree chain and the note explaining it, after tracing raised ``error``."""
    why = f"torch.fx could not trace this model ({first_line(error)})"
    try:
        chosen = _chosen_modules(model, depth)
    except Exception:
        chosen = []
    records: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []
    output_shape: tuple[int, ...] | None = None
    ran_error: BaseException | None = None
    handles = []
    try:
        for name, module in chosen:
            if module is model:
                continue
            handles.append(module.register_forward_hook(_recorder(records, name, module)))
        with torch.no_grad():
            out = model(torch.zeros(1, 3, input_size, input_size, device=_device(model)))
        output_shape = _shape_of(out)
        if chosen == [("", model)]:
            records.append(("", model, output_shape))
    except Exception as exc:
        ran_error = exc
        records = []
    finally:
        for handle in handles:
            handle.remove()

    if records:
        note = (
            f"{why}. Showing the module tree in execution order instead: branches, skip "
            "connections and functional operations (additions, flatten calls...) are not shown."
        )
        skipped = len({n for n, _ in chosen} - {n for n, _, _ in records})
        if skipped:
            note += f" {skipped} module(s) did not run observably and are left out."
        return _chain(records, output_shape, (3, input_size, input_size)), note
    if ran_error is not None:
        ran = f"running it with hooks failed too ({first_line(ran_error)})"
    else:
        ran = "no module reported its output during a forward pass"
    note = (
        f"{why}, and {ran}. Showing the leaf modules in definition order, without shapes, "
        "branches or skip connections."
    )
    return _chain([(n, m, None) for n, m in chosen], None, None), note


def _recorder(
    records: list[tuple[str, nn.Module, tuple[int, ...] | None]], name: str, module: nn.Module
) -> Callable[..., None]:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        records.append((name, module, _shape_of(output)))

    return hook


def _chain(
    records: list[tuple[str, nn.Module, tuple[int, ...] | None]],
    output_shape: tuple[int, ...] | None,
    input_shape: tuple[int, ...] | None,
) -> _Raw:
    """``input -> op -> tensor -> op -> ...`` for the recorded module calls; shapes known
    only when ``input_shape`` is given (the forward pass ran)."""
    raw = _Raw()
    used: set[str] = set()
    raw.add_tensor(INPUT_ID, "input", "input", input_shape, "", None, [])
    used.add(INPUT_ID)
    previous = INPUT_ID
    calls: dict[str, int] = {}
    for qual, module, shape in records:
        label = qual or _module_type(module)
        calls[label] = calls.get(label, 0) + 1
        k = calls[label]
        oid = _fresh(f"op:{label}" + (f"#{k}" if k > 1 else ""), used)
        base = label.replace(".", "_") + (f"_{k - 1}" if k > 1 else "")
        tid = _fresh(f"t:{base}", used)
        stack = _prefixes(qual)
        op_type = _module_type(module)
        raw.add_op(oid, label, op_type, qual, stack)
        raw.read(previous, oid)
        raw.add_tensor(tid, base, op_type, shape, qual, oid, stack)
        previous = tid
    if input_shape is not None and records and output_shape != records[-1][2]:
        # the forward did more after the last module (a functional head, say): show its output
        raw.add_op("op:output", "output", "output", "", [])
        raw.read(previous, "op:output")
        raw.add_tensor("t:output", "output", "output", output_shape, "", "op:output", [])
        previous = "t:output"
    raw.output = previous if records else None
    return raw


def _prefixes(qual: str) -> list[str]:
    """ "a.b.c" -> ["a", "a.b", "a.b.c"] (the modules a call runs inside)."""
    parts = qual.split(".") if qual else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


# --- labels and layout ---------------------------------------------------------------------


def _module_output(raw: _Raw, qual: str) -> str | None:
    """The tensor that is module ``qual``'s output: its (last) op's output when it is one op,
    else the last tensor computed inside it that is read outside it (or the last one)."""
    ops = raw.module_ops.get(qual)
    if ops:
        return raw.out_of.get(ops[-1])
    inside = raw.inside.get(qual)
    if not inside:
        return None
    leaving = [
        t
        for t in inside
        if t == raw.output
        or any(qual not in raw.op_stack.get(op, ()) for op in raw.readers.get(t, ()))
    ]
    return (leaving or inside)[-1]


def _module_input(raw: _Raw, qual: str) -> str | None:
    """The tensor that module ``qual`` reads: the first input of its first op from outside."""
    ops = raw.module_ops.get(qual)
    if not ops:
        ops = [op for op, stack in raw.op_stack.items() if qual in stack]
    if not ops:
        return None
    inside = set(raw.inside.get(qual, ()))
    sources = [a for a, b in raw.edges if b == ops[0] and a not in inside]
    return sources[0] if sources else None


def _finish(
    raw: _Raw, storable: Sequence[str], embedding_layer: str, embedding_is_output: bool
) -> tuple[list[GraphNode], list[tuple[str, str]], dict[str, str]]:
    """Resolve store names to tensors, lay the graph out and build the final nodes."""
    layers: dict[str, str] = {}
    for name in storable:
        tid = _module_output(raw, name)
        if tid is not None:
            layers.setdefault(name, tid)
    if embedding_layer:
        resolve = _module_output if embedding_is_output else _module_input
        tid = resolve(raw, embedding_layer)
        if tid is not None:
            layers["embedding"] = tid
    if raw.output is not None:
        layers["logits"] = raw.output
    label: dict[str, str] = {}
    for name, tid in layers.items():  # insertion order: storable, embedding, logits
        label.setdefault(tid, name)

    ids = [n["id"] for n in raw.nodes]
    xs, ys = _layout(ids, raw.edges)
    nodes = [
        GraphNode(
            id=n["id"],
            kind=n["kind"],
            name=n["name"],
            op_type=n["op_type"],
            shape=n["shape"],
            module=n["module"],
            layer=label.get(n["id"]) if n["kind"] == TENSOR else None,
            group=n["group"],
            x=xs[n["id"]],
            y=ys[n["id"]],
        )
        for n in raw.nodes
    ]
    return nodes, list(raw.edges), layers


def _layout(
    ids: list[str], edges: list[tuple[str, str]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Columns by longest path from the sources; rows by barycentre sweeps, centred on 0."""
    preds: dict[str, list[str]] = {i: [] for i in ids}
    succs: dict[str, list[str]] = {i: [] for i in ids}
    for a, b in edges:
        succs[a].append(b)
        preds[b].append(a)
    order = _topological(ids, preds, succs)
    col: dict[str, int] = {}
    for i in order:
        col[i] = max((col[p] + 1 for p in preds[i]), default=0)
    # what the input does not feed (ops on parameters, constants) sits just left of its use
    fed = _reachable(INPUT_ID, succs) if INPUT_ID in succs else set(ids)
    for i in reversed(order):
        if i not in fed and succs[i]:
            col[i] = min(col[s] for s in succs[i]) - 1
    columns: dict[int, list[str]] = {}
    for i in order:
        columns.setdefault(col[i], []).append(i)
    y: dict[str, float] = {}
    for members in columns.values():
        _centre(members, y)
    keys = sorted(columns)
    for sweep in range(_SWEEPS):
        downstream = sweep % 2 == 0
        for c in keys if downstream else reversed(keys):
            members = columns[c]
            if len(members) < 2:
                continue
            links = preds if downstream else succs
            bary = {
                m: (sum(y[n] for n in links[m]) / len(links[m]) if links[m] else y[m])
                for m in members
            }
            members.sort(key=lambda m: (bary[m], y[m]))
            _centre(members, y)
    return {i: float(col[i]) for i in ids}, y


def _reachable(start: str, succs: dict[str, list[str]]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for s in succs[stack.pop()]:
            if s not in seen:
                seen.add(s)
                stack.append(s)
    return seen


def _centre(members: list[str], y: dict[str, float]) -> None:
    offset = (len(members) - 1) / 2
    for rank, m in enumerate(members):
        y[m] = float(rank - offset)


def _topological(
    ids: list[str], preds: dict[str, list[str]], succs: dict[str, list[str]]
) -> list[str]:
    """Kahn's order, ties by position in ``ids``; nodes on a cycle (none expected) last."""
    position = {i: k for k, i in enumerate(ids)}
    missing = {i: len(preds[i]) for i in ids}
    ready = deque(i for i in ids if missing[i] == 0)
    out: list[str] = []
    while ready:
        i = ready.popleft()
        out.append(i)
        for s in succs[i]:
            missing[s] -= 1
            if missing[s] == 0:
                ready.append(s)
    if len(out) < len(ids):
        done = set(out)
        out.extend(sorted((i for i in ids if i not in done), key=position.__getitem__))
        # a node on a cycle gets its column from its already-placed predecessors only
        for i in out[len(done) :]:
            preds[i] = [p for p in preds[i] if p in done]
            done.add(i)
    return out


def _restore(model: nn.Module, was_training: bool, states: list[tuple[nn.Module, bool]]) -> None:
    """Put every module's train/eval flag back as it was before the call."""
    try:
        model.train(was_training)
        for module, training in states:
            if module.training != training:
                module.training = training
    except Exception:  # pragma: no cover - a script module refusing the flag: leave it
        pass
