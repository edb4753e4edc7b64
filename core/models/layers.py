"""Find the layers BiasLens reads from a model: its convolutional blocks and its last hidden layer.

Layers are found with one dummy forward pass (``probe_forward``) that puts forward hooks on
every module, so layer names are those of ``module.named_modules()`` and their order is
execution order. ``find_layers`` then picks the conv blocks a user can store, the ones
stored by default and the last hidden layer (the input of the final ``nn.Linear``), or
checks the workspace's overrides. TorchScript models work through ``ScriptedModel``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from core.errors import ModelError
from core.models.torchscript import ScriptedModel
from core.registry import DEFAULT_INPUT_SIZE

MAX_DEFAULT_LAYERS = 6
_LISTED = 20  # names shown when an override names a module that does not exist
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class Layers(NamedTuple):
    """What ``find_layers`` found: the pickable conv blocks (execution order), those stored
    by default, and the last hidden layer (module name, dimension, and whether it is the
    module's pooled output rather than its input)."""

    conv_layers: list[str]
    default_layers: list[str]
    embedding_layer: str
    embedding_dim: int
    embedding_is_output: bool
    linear_layers: list[str]


@dataclass
class Probe:
    """What one dummy forward pass saw: module names in the order their forward finished,
    the shape of each module's first input and output tensor (first call), and the result."""

    order: list[str]
    inputs: dict[str, torch.Size]
    outputs: dict[str, torch.Size]
    result: Any


def probe_forward(model: nn.Module, input_size: int) -> Probe:
    """Run one zero image (batch 1, eval mode, no grad) with forward hooks on every module."""
    seen = Probe([], {}, {}, None)
    done: set[str] = set()

    def recorder(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name in done:
                return
            done.add(name)
            seen.order.append(name)
            if args and isinstance(args[0], torch.Tensor):
                seen.inputs[name] = args[0].shape
            if isinstance(output, torch.Tensor):
                seen.outputs[name] = output.shape

        return record

    handles = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            seen.result = model(
                torch.zeros(1, 3, input_size, input_size, device=_module_device(model))
            )
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return seen


def find_layers(
    model: nn.Module,
    probe: Probe,
    embedding_layer: str | None = None,
    layers: list[str] | None = None,
) -> Layers:
    """The layers of a probed model. ``embedding_layer`` and ``layers`` are a workspace's
    overrides (checked, ModelError naming the modules available); None finds them: the
    input of the final nn.Linear, and at most MAX_DEFAULT_LAYERS blocks evenly spread."""
    conv_layers = _conv_blocks(model, probe)
    name, dim, is_output = _embedding(model, probe, conv_layers, embedding_layer)
    if layers is None:
        default_layers = _spread(conv_layers)
    else:
        default_layers = _checked_layers(model, probe, conv_layers, layers)
    return Layers(conv_layers, default_layers, name, dim, is_output, _hidden_linears(model, probe))


def _hidden_linears(model: nn.Module, probe: Probe) -> list[str]:
    """The executed nn.Linear layers with an (N, D) output, in execution order, except the
    final one (its output is the logits, which the store always keeps): a store can add them
    beside the conv blocks (ActiVis compares the hidden layers of an MLP head)."""
    modules = dict(model.named_modules())
    final = _final_linear(model, probe)
    return [
        n for n in probe.order
        if n != final and _is_a(modules[n], nn.Linear) and len(probe.outputs.get(n, ())) == 2
    ]


def find_final_linear(model: nn.Module, input_size: int = DEFAULT_INPUT_SIZE) -> str:
    """Name of the last ``nn.Linear`` executed in forward ('' if the model has none).

    Its input is the last hidden layer. Execution order comes from a dummy forward pass;
    if that fails, registration order is used instead.
    """
    try:
        probe = probe_forward(model, input_size)
    except Exception:
        probe = Probe([], {}, {}, None)
    return _final_linear(model, probe)


def list_conv_blocks(model: nn.Module, input_size: int = DEFAULT_INPUT_SIZE) -> list[str]:
    """Names of the convolutional block outputs a user can pick, in execution order.

    A block is a child of the model that contains a ``Conv2d``, together with the children
    that follow it up to the next such child (BN, ReLU, pooling): its name is the last of
    them with a (N, C, H, W) output, so vgg's flat ``features`` yields the ReLU or pool
    that ends each conv, resnet yields ``maxpool`` (the stem) and ``layer1..layer4``.
    Global (adaptive) pooling never extends a block. With fewer than 3 blocks, the
    top-level containers (Sequential/ModuleList/ModuleDict, e.g. mobilenet's or densenet's
    ``features``) are opened into their own blocks. A wrapper level, where one child holds
    every conv and is the only block (or none: its output is the logits), is looked through:
    that child's blocks are read as if it were the model, so ``inner.layer1``.. for a resnet
    inside ``self.inner``, or behind a normalisation layer in an nn.Sequential. A 1x1-conv
    classifier head (models without ``nn.Linear``) is not a block. Models without conv
    layers give [].
    """
    return _conv_blocks(model, probe_forward(model, input_size))


def _final_linear(model: nn.Module, probe: Probe) -> str:
    linears = [n for n, m in model.named_modules() if _is_a(m, nn.Linear)]
    executed = [n for n in probe.order if n in linears]
    return executed[-1] if executed else (linears[-1] if linears else "")


def _head_conv(model: nn.Module, probe: Probe) -> str:
    """The classifier conv of a model without nn.Linear: the last Conv2d executed, when its
    channels equal the number of outputs."""
    modules = dict(model.named_modules())
    if any(_is_a(m, nn.Linear) for m in modules.values()):
        return ""
    convs = [n for n in probe.order if _is_a(modules[n], nn.Conv2d) and n in probe.outputs]
    result = probe.result
    fits = isinstance(result, torch.Tensor) and result.dim() == 2
    return convs[-1] if convs and fits and probe.outputs[convs[-1]][1] == result.shape[1] else ""


def _conv_blocks(model: nn.Module, probe: Probe) -> list[str]:
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if _is_a(m, nn.Conv2d)]
    head = _head_conv(model, probe)

    def contains(name: str, inner: str) -> bool:
        """Whether module ``inner`` is ``name`` or nested in it (the root '' holds all)."""
        return not name or inner == name or inner.startswith(name + ".")

    def executed_children(parent: str) -> list[str]:
        """The direct children of ``parent`` that ran, in the order their forward finished."""
        depth = parent.count(".") + 1 if parent else 0
        return [n for n in probe.order if contains(parent, n) and n.count(".") == depth and n != parent]

    def blocks_of(parent: str) -> list[tuple[str, str]]:
        """(first child, block output) of each block among the executed children of parent."""
        children = executed_children(parent)
        blocks: list[tuple[str, str]] = []
        current: list[str] = []
        for name in children:
            four_d = len(probe.outputs.get(name, ())) == 4
            if any(contains(name, c) for c in convs):
                blocks += [(current[0], current[1])] if current else []
                current = [name, name] if four_d and not (head and contains(name, head)) else []
            elif current and four_d and not _is_adaptive_pool(modules[name]):
                current[1] = name
            elif current:
                blocks.append((current[0], current[1]))
                current = []
        return blocks + ([(current[0], current[1])] if current else [])

    def blocks_in(parent: str) -> list[str]:
        """Block outputs of the network rooted at ``parent`` (the model itself is '')."""
        children = [c for c in executed_children(parent) if any(contains(c, v) for v in convs)]
        top = blocks_of(parent)
        if len(children) == 1 and top in ([], [(children[0], children[0])]):
            # A wrapper level: one child holds every conv (a model inside a wrapper module,
            # or behind a normalisation layer in an nn.Sequential). Read the child's own
            # blocks when it has any, as if it were the model.
            inner = blocks_in(children[0]) if executed_children(children[0]) else []
            if inner:
                return inner
        if len(top) >= 3:
            return [out for _, out in top]
        names: list[str] = []
        for first, out in top:
            inner = [o for _, o in blocks_of(first)] if _is_container(modules[first]) else []
            names += inner + ([out] if out != first or not inner else [])
        return names

    return blocks_in("")


def _spread(names: Sequence[str], k: int = MAX_DEFAULT_LAYERS) -> list[str]:
    """At most k names evenly spread over ``names``, always including the first and last."""
    if len(names) <= k:
        return list(names)
    picks = sorted({round(i * (len(names) - 1) / (k - 1)) for i in range(k)})
    return [names[i] for i in picks]


def _embedding(
    model: nn.Module, probe: Probe, conv_layers: list[str], override: str | None
) -> tuple[str, int, bool]:
    """(module name, dimension, is-output) of the last hidden layer, default or override."""
    modules = dict(model.named_modules())
    name = override
    if name is not None:
        linears = [n for n in probe.order if _is_a(modules[n], nn.Linear)]
        _require_module(name, modules, linears + conv_layers, "embedding_layer")
        return _embedding_at(name, probe)
    name = _final_linear(model, probe)
    if name and name in probe.inputs:
        return name, _flat_size(probe.inputs[name]), False
    if conv_layers:  # no nn.Linear: pool the output of the last block before the head
        return conv_layers[-1], int(probe.outputs[conv_layers[-1]][1]), True
    scripted = (
        " In a TorchScript file only submodules that still exist (not frozen) and take and "
        "return one tensor can be observed."
        if isinstance(model, ScriptedModel)
        else ""
    )
    raise ModelError(
        "Cannot find the last hidden layer: no nn.Linear or convolutional block ran in a test "
        "forward pass. Set embedding_layer to the module whose input is the last hidden layer."
        + scripted
    )


def _embedding_at(name: str, probe: Probe) -> tuple[str, int, bool]:
    """Override: a module with a (N, D) input (its input is used) or a (N, C, H, W) output
    (its output is mean-pooled)."""
    source, result = probe.inputs.get(name), probe.outputs.get(name)
    if source is not None and len(source) == 2:
        return name, int(source[1]), False
    if result is not None and len(result) == 4:
        return name, int(result[1]), True
    raise ModelError(
        f"embedding_layer '{name}' cannot hold the last hidden layer: in a test forward pass its "
        f"input was {_shape(source)} and its output {_shape(result)}. Name the final nn.Linear "
        "(its (N, D) input is used) or a conv block (its (N, C, H, W) output is pooled)."
    )


def _checked_layers(
    model: nn.Module, probe: Probe, conv_layers: list[str], layers: list[str]
) -> list[str]:
    modules = dict(model.named_modules())
    for name in layers:
        _require_module(name, modules, conv_layers, "layer")
        if len(probe.outputs.get(name, ())) != 4:
            raise ModelError(
                f"layer '{name}' gave {_shape(probe.outputs.get(name))} in a test forward pass, not a "
                f"(N, C, H, W) activation map: pick conv blocks, e.g. {_listing(conv_layers)}."
            )
    return list(layers)


def _require_module(
    name: str, modules: dict[str, nn.Module], candidates: list[str], what: str
) -> None:
    if name not in modules:
        names = candidates or [n for n in modules if n]
        raise ModelError(
            f"{what} '{name}' is not a module of this model. Available: {_listing(names)}."
        )


def _module_device(model: nn.Module) -> torch.device:
    for tensor in model.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            return tensor.device
    return torch.device("cpu")


def _is_a(module: nn.Module, cls: type[nn.Module]) -> bool:
    """isinstance, also for TorchScript mirrors (which keep the original class name)."""
    return isinstance(module, cls) or getattr(module, "original_name", None) == cls.__name__


def is_patch_embedding(module: nn.Module | None) -> bool:
    """Whether ``module`` is a Conv2d that cuts the image into non-overlapping patches
    (kernel = stride > 1), as a vision transformer's patch embedding does."""
    if not isinstance(module, nn.Conv2d):
        return False
    return module.kernel_size == module.stride and max(module.kernel_size) > 1


def _is_container(module: nn.Module) -> bool:
    return type(module) in _CONTAINERS or getattr(module, "original_name", None) in {
        c.__name__ for c in _CONTAINERS
    }


def _is_adaptive_pool(module: nn.Module) -> bool:
    return _is_a(module, nn.AdaptiveAvgPool2d) or _is_a(module, nn.AdaptiveMaxPool2d)


def _flat_size(shape: torch.Size) -> int:
    size = 1
    for dim in shape[1:]:
        size *= int(dim)
    return size


def _shape(shape: torch.Size | None) -> str:
    return "nothing (it did not run)" if shape is None else str(tuple(shape))


def _listing(names: Sequence[str]) -> str:
    more = f" ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else ""
    return (", ".join(names[:_LISTED]) or "none") + more
