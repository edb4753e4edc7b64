"""TorchScript files as models: the ``torchscript`` kind and the shim that lets hooks see
inside a loaded script.

``ScriptedModel`` wraps a ``torch.jit.load``-ed module (scripted or traced) so that forward
hooks and pre-hooks on its submodules work, as the layer discovery and the activation store
need. It relies on private torch JIT APIs (graph rewriting); see its docstring.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core.errors import ModelError, first_line
from core.registry import BuiltModel, register_model_kind, weights_file

if TYPE_CHECKING:
    from core.specs import ModelSpec


class ScriptedModel(nn.Module):
    """A loaded TorchScript module whose submodules accept forward hooks and pre-hooks.

    Finding (torch 2.14.1): ``register_forward_hook`` and ``register_forward_pre_hook``
    raise "not supported on ScriptModules" on every module of a ``torch.jit.load``-ed
    file (scripted or traced), so hooks cannot even be registered. Alternative used here:
    every submodule is mirrored by a plain ``nn.Module`` of the same name (sharing the
    script's parameters and buffers, so ``state_dict``, ``.to()`` and gradients act on the
    script itself). When some mirrors carry hooks, ``forward`` runs a copy of the script's
    inlined graph that also returns the input and output of each hooked module, located
    through the module hierarchy TorchScript records on every graph node; it then calls
    each hooked mirror with that input, which returns the recorded output, so the hooks
    fire in execution order and see the real tensors (gradients flow through them).
    Tested on scripted and traced resnet, vgg, densenet, mobilenet, efficientnet,
    convnext, regnet, shufflenet, squeezenet and ViT files.

    Limits: a submodule can be observed only if it ran once, outside an if/loop of the
    graph, with one tensor in and one tensor out; hooks on other modules do not fire, as
    for modules that never run (nothing fires if the JIT refuses the rewritten graph).
    Values returned by hooks are ignored. Frozen files (``torch.jit.freeze``) have no
    submodules left, so only the final output is visible; ``load_model`` then raises a
    ModelError saying so.
    """

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        object.__setattr__(self, "_script", script)  # not a child: the mirrors replace it
        _mirror(self, script)
        self._taps: dict[tuple[str, ...], tuple[Any, list[str]]] = {}

    def train(self, mode: bool = True) -> ScriptedModel:
        """Set training mode on the mirrors and on the script itself."""
        self._script.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> Any:
        """The script's output; hooked submodules see their input and output on the way."""
        hooked = tuple(
            n for n, m in self.named_modules() if n and (m._forward_hooks or m._forward_pre_hooks)
        )
        if hooked not in self._taps:
            try:
                self._taps[hooked] = _tap_function(self._script, hooked) if hooked else (None, [])
            except RuntimeError:  # a graph the JIT cannot rewrite: nothing is observable
                self._taps[hooked] = (None, [])
        function, observed = self._taps[hooked]
        if function is None:
            return self._script(x)
        output, *values = function(self._script._c, x)
        for i, name in enumerate(observed):
            mirror = self.get_submodule(name)
            mirror.tapped = values[2 * i + 1]
            try:
                mirror(values[2 * i])
            finally:
                mirror.tapped = None
        return output


class _ScriptMirror(nn.Module):
    """Stands for one submodule of a ScriptModule; returns the output the graph recorded."""

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        object.__setattr__(self, "_script", script)
        self.tapped: torch.Tensor | None = None
        _mirror(self, script)

    def forward(self, *args: Any) -> Any:
        return self.tapped if self.tapped is not None else self._script(*args)


def _mirror(target: nn.Module, script: torch.jit.ScriptModule) -> None:
    """Share ``script``'s parameter and buffer tables with ``target``, mirror its children."""
    target._parameters = script._parameters
    target._buffers = script._buffers
    target.original_name = script.original_name
    for name, child in script.named_children():
        target.add_module(name, _ScriptMirror(child))


_TENSOR = torch._C.TensorType.get()


def _tap_function(script: torch.jit.ScriptModule, names: Sequence[str]) -> tuple[Any, list[str]]:
    """A graph function returning (output, input_1, output_1, ...) for the observable
    modules among ``names``, and those names in the order their outputs are computed."""
    graph = script.inlined_graph
    torch._C._jit_pass_remove_mutation(graph)  # relu_(x) -> relu(x) where aliasing allows
    nodes = list(graph.nodes())
    scopes = _node_scopes(nodes)
    inputs, outputs = _boundary_values(nodes, scopes)
    position = {node: i for i, node in enumerate(nodes)}

    def key(name: str) -> tuple[str, ...]:
        return tuple(name.split("."))

    observed = [n for n in names if len(inputs[key(n)]) == 1 and len(outputs[key(n)]) == 1]
    if not observed:
        return None, []
    observed.sort(key=lambda n: (position[_top(_only(outputs[key(n)]).node())], -n.count(".")))
    copies: dict[int, Any] = {}
    for name in observed:
        for value in (_only(inputs[key(name)]), _only(outputs[key(name)])):
            graph.registerOutput(_unmutated(graph, value, position, copies))
    graph.makeMultiOutputIntoTuple()
    return torch._C._create_function_from_graph("forward_with_taps", graph), observed


def _node_scopes(nodes: list[Any]) -> dict[Any, tuple[str, ...]]:
    """Module path of each top-level node, e.g. ('layer1', '0', 'conv1').

    Nodes without a recorded hierarchy (code inlined from functions such as
    F.batch_norm's checks) get the common path of the nearest known nodes around them.
    """
    known = []
    for node in nodes:
        text = node.getModuleHierarchy()
        path = tuple(
            n
            for n in re.findall(r"([^.()]+)\([^()]*\)", text)
            if n not in ("SELF", "UNKNOWN_INSTANCE")
        )
        known.append(path or None)
    before, after = [()] * len(nodes), [()] * len(nodes)
    for i in range(1, len(nodes)):
        before[i] = known[i - 1] if known[i - 1] is not None else before[i - 1]
    for i in range(len(nodes) - 2, -1, -1):
        after[i] = known[i + 1] if known[i + 1] is not None else after[i + 1]
    return {
        node: known[i] if known[i] is not None else _common(before[i], after[i])
        for i, node in enumerate(nodes)
    }


def _boundary_values(
    nodes: list[Any], scopes: dict[Any, tuple[str, ...]]
) -> tuple[dict[tuple[str, ...], dict[int, Any]], dict[tuple[str, ...], dict[int, Any]]]:
    """Tensors entering and leaving each module scope (parameters and constants excluded).

    A tensor leaves a scope when a node outside it that produces a tensor (or the graph's
    return) uses it; uses by shape checks and other non-tensor code do not count.
    """
    inputs: dict[tuple[str, ...], dict[int, Any]] = defaultdict(dict)
    outputs: dict[tuple[str, ...], dict[int, Any]] = defaultdict(dict)
    for node in nodes:
        scope = scopes[node]
        for value in node.outputs():
            if not _is_activation(value):
                continue
            for use in value.uses():
                user = _top(use.user)
                if user.kind() == "prim::Return" or any(
                    _holds_tensor(o.type()) for o in user.outputs()
                ):
                    _mark(outputs, scope, scopes.get(user, ()), value)
        for value in _used_values(node):
            source = _top(value.node())
            if source is not node and _is_activation(value):
                _mark(inputs, scope, scopes.get(source, ()), value)
    return inputs, outputs


def _mark(
    table: dict[tuple[str, ...], dict[int, Any]],
    inner: tuple[str, ...],
    outer: tuple[str, ...],
    value: Any,
) -> None:
    """Record ``value`` as crossing the boundary of each scope on ``inner`` not enclosing ``outer``."""
    for depth in range(len(_common(inner, outer)) + 1, len(inner) + 1):
        table[inner[:depth]][value.unique()] = value


def _unmutated(graph: Any, value: Any, position: dict[Any, int], copies: dict[int, Any]) -> Any:
    """``value``, or a clone taken before its first use when an in-place op the JIT could not
    remove changes it later, so taps see the value as produced (gradients do not flow
    back through such a clone)."""
    if value.unique() in copies:
        return copies[value.unique()]
    uses = list(value.uses())
    copy = value
    if any(u.offset == 0 and re.search(r"::\w*[^_]_$", u.user.kind()) for u in uses):
        first = min((_top(u.user) for u in uses), key=lambda n: position.get(n, len(position)))
        with graph.insert_point_guard(first):
            clone = graph.insertNode(
                graph.create("aten::clone", [value, graph.insertConstant(None)])
            )
        clone.output().setType(value.type())
        copy = clone.output()
    copies[value.unique()] = copy
    return copy


def _top(node: Any) -> Any:
    """The top-level graph node enclosing ``node`` (itself when it is top-level)."""
    while node.owningBlock().owningNode() is not None:
        node = node.owningBlock().owningNode()
    return node


def _used_values(node: Any) -> Iterator[Any]:
    """Values used by ``node`` and by the nodes and block returns nested in it."""
    yield from node.inputs()
    for block in node.blocks():
        for inner in block.nodes():
            yield from _used_values(inner)
        yield from block.outputs()


def _is_activation(value: Any) -> bool:
    return value.type().isSubtypeOf(_TENSOR) and value.node().kind() not in (
        "prim::GetAttr",
        "prim::Constant",
    )


def _holds_tensor(kind: Any) -> bool:
    return kind.isSubtypeOf(_TENSOR) or any(_holds_tensor(t) for t in kind.containedTypes())


def _only(values: dict[int, Any]) -> Any:
    return next(iter(values.values()))


def _common(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


# --------------------------------------------------------------------------- the kind


def _load_torchscript(spec: ModelSpec) -> BuiltModel:
    path = weights_file(spec.weights, "TorchScript file")
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export, but still loads these files
            warnings.simplefilter("ignore", FutureWarning)
            script = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(
            f"{path} is not a readable TorchScript file ({first_line(exc)}). Save one with "
            "torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path); "
            "for a state_dict use kind = 'torchvision'."
        ) from exc
    return BuiltModel(ScriptedModel(script), f"TorchScript {path.name}")


register_model_kind("torchscript", _load_torchscript)
