"""Load a workspace's image classifier and find the layers BiasLens reads from it.

``load_model(spec)`` turns a ``ModelSpec`` (the built-in demo CNN, a torchvision
architecture with a state_dict file or torchvision's own weights, a TorchScript file, or a
trusted ``package.module:factory`` entry point) into a ``LoadedModel``: the module in eval
mode on its device, plus what the activation store needs: the last hidden layer, the
convolutional blocks a user can pick, the input transform and a fingerprint of the weights.
Every problem the user can fix raises ``ModelError`` with a message saying what to do.

Layers are found with one dummy forward pass that puts forward hooks on every module, so
layer names are those of ``module.named_modules()`` and their order is execution order.
TorchScript files are wrapped in ``ScriptedModel`` so that the same hooks work for them.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from core.errors import ModelError

Triple = tuple[float, float, float]

IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 224
MAX_DEFAULT_LAYERS = 6
_LISTED = 20  # names shown when an override names a module that does not exist
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class ModelSpec:
    """Where a model comes from and how to feed it (one ``model`` table of a workspace).

    kind: 'demo' | 'torchvision' | 'torchscript' | 'entrypoint'.
    arch: torchvision architecture name, e.g. 'resnet18'.
    weights: a state_dict file (torchvision, entrypoint), the TorchScript file
      (torchscript), or demo weights replacing the shipped ones (demo).
    pretrained: torchvision's own weights (downloaded, so the network must allow it).
    entrypoint: 'package.module:factory' returning an nn.Module (trusted local mode only).
    num_classes: expected number of outputs; inferred from the weights when None.
    input_size, mean, std: input preprocessing; defaults depend on the source.
    embedding_layer: module holding the last hidden layer (its input, or the pooled
      output of a conv block); found automatically when None.
    layers: conv blocks whose pooled activations the store keeps; evenly spread when None.
    """

    kind: str
    arch: str = ""
    weights: str = ""
    pretrained: bool = False
    entrypoint: str = ""
    num_classes: int | None = None
    input_size: int | None = None
    mean: Triple | None = None
    std: Triple | None = None
    embedding_layer: str | None = None
    layers: list[str] | None = None


@dataclass
class LoadedModel:
    """A model ready for extraction, with everything the store and the pages need to know.

    The embedding (last hidden layer) is the input of ``embedding_layer``, flattened per
    image, normally the final ``nn.Linear``. When ``embedding_is_output`` is True (models
    without any ``nn.Linear``, e.g. squeezenet's 1x1-conv head, or an override naming a
    conv block) it is instead the spatially mean-pooled output of that module.
    """

    module: nn.Module
    description: str
    num_classes: int
    input_size: int
    mean: Triple
    std: Triple
    embedding_layer: str
    embedding_dim: int
    conv_layers: list[str]
    default_layers: list[str]
    weights_fingerprint: str
    device: torch.device
    embedding_is_output: bool = False


class _Built(NamedTuple):
    """A freshly built module with its description and its source's input defaults."""

    module: nn.Module
    description: str
    input_size: int = DEFAULT_INPUT_SIZE
    mean: Triple = IMAGENET_MEAN
    std: Triple = IMAGENET_STD


# --------------------------------------------------------------------------- loading


def load_model(
    spec: ModelSpec, device: str | torch.device | None = None, hosted: bool = False
) -> LoadedModel:
    """Build the model ``spec`` describes, check it with a dummy forward pass, find its layers.

    ``device`` None means CUDA when available, else CPU. ``hosted`` refuses entry points.
    """
    dev = _resolve_device(device)
    loaders = {
        "demo": _load_demo,
        "torchvision": _load_torchvision,
        "torchscript": _load_torchscript,
        "entrypoint": _load_entrypoint,
    }
    if spec.kind not in loaders:
        raise ModelError(f"Unknown model kind {spec.kind!r}: use one of {', '.join(loaders)}.")
    if spec.kind == "entrypoint" and hosted:
        raise ModelError(
            "Python entry-point models are disabled in hosted mode: use a registered workspace."
        )
    built = loaders[spec.kind](spec)
    module = built.module
    if isinstance(module, torch.jit.ScriptModule):  # e.g. returned by an entry point
        module = ScriptedModel(module)
    module = module.to(dev).eval()
    input_size = built.input_size if spec.input_size is None else spec.input_size
    if not isinstance(input_size, int) or input_size < 1:
        raise ModelError(f"input_size must be a positive number of pixels, got {input_size!r}.")
    mean = _triple(spec.mean, "mean") if spec.mean is not None else tuple(built.mean)
    std = _triple(spec.std, "std") if spec.std is not None else tuple(built.std)
    if any(s <= 0 for s in std):
        raise ModelError(f"std must be positive, got {std}.")
    try:
        probe = _probe(module, input_size)
    except Exception as exc:
        raise ModelError(
            f"A test forward pass of one {input_size}x{input_size} RGB image through "
            f"{built.description} failed: {_first_line(exc)}. Check input_size (the model may "
            "need another size) and that the model takes a (N, 3, H, W) image batch."
        ) from exc
    num_classes = _num_classes(probe.result, spec.num_classes)
    conv_layers = _conv_blocks(module, probe)
    embedding_layer, embedding_dim, is_output = _embedding(module, probe, conv_layers, spec)
    if spec.layers is None:
        default_layers = _spread(conv_layers)
    else:
        default_layers = _checked_layers(module, probe, conv_layers, spec.layers)
    return LoadedModel(
        module=module,
        description=built.description,
        num_classes=num_classes,
        input_size=input_size,
        mean=mean,
        std=std,
        embedding_layer=embedding_layer,
        embedding_dim=embedding_dim,
        conv_layers=conv_layers,
        default_layers=default_layers,
        weights_fingerprint=weights_fingerprint(module),
        device=dev,
        embedding_is_output=is_output,
    )


def _load_demo(spec: ModelSpec) -> _Built:
    from core.demo import model as demo

    weights = Path(spec.weights) if spec.weights else None
    module = demo.load_demo_model(weights)
    name = f"demo CNN + {weights.name}" if weights else "demo CNN"
    return _Built(module, name, demo.INPUT_SIZE, tuple(demo.MEAN), tuple(demo.STD))


def _load_torchvision(spec: ModelSpec) -> _Built:
    arch = _checked_arch(spec.arch)
    if spec.pretrained:
        if spec.weights:
            raise ModelError(
                "Set either `weights` (a state_dict file) or `pretrained = true`, not both."
            )
        return _load_pretrained(arch)
    if not spec.weights:
        return _Built(
            _build_torchvision(arch, spec.num_classes), f"torchvision {arch} (random weights)"
        )
    path = _existing_file(spec.weights, "state_dict file")
    state = _read_state_dict(path)
    num_classes = spec.num_classes if spec.num_classes is not None else _head_size(arch, state)
    module = _skeleton(arch, num_classes) or _build_torchvision(arch, num_classes)
    _load_state(module, state, path, f"torchvision {arch}", arch)
    return _Built(module, f"torchvision {arch} + {path.name}")


def _load_pretrained(arch: str) -> _Built:
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except Exception as exc:
        raise ModelError(f"torchvision has no pretrained weights for {arch}.") from exc
    try:
        module = torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:
        raise ModelError(
            f"could not download torchvision's pretrained weights for {arch} (no network?): "
            f"put a state_dict file in `weights` instead ({_first_line(exc)})."
        ) from exc
    preset = weights.transforms()
    return _Built(
        module,
        f"torchvision {arch} ({weights})",
        preset.crop_size[0],
        tuple(preset.mean),
        tuple(preset.std),
    )


def _load_torchscript(spec: ModelSpec) -> _Built:
    path = _existing_file(spec.weights, "TorchScript file")
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export, but still loads these files
            warnings.simplefilter("ignore", FutureWarning)
            script = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(
            f"{path} is not a readable TorchScript file ({_first_line(exc)}). Save one with "
            "torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path); "
            "for a state_dict use kind = 'torchvision'."
        ) from exc
    return _Built(ScriptedModel(script), f"TorchScript {path.name}")


def _load_entrypoint(spec: ModelSpec) -> _Built:
    target = spec.entrypoint.strip()
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelError(f"entrypoint must look like 'package.module:factory', got {target!r}.")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise ModelError(f"Cannot import entry point {target}: {_first_line(exc)}.") from exc
    try:
        module = factory()
    except Exception as exc:
        raise ModelError(f"Entry point {target}() failed: {_first_line(exc)}.") from exc
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"Entry point {target}() returned a {type(module).__name__}, not a torch.nn.Module."
        )
    description = f"entry point {target}"
    if spec.weights:
        path = _existing_file(spec.weights, "state_dict file")
        _load_state(module, _read_state_dict(path), path, description)
        description += f" + {path.name}"
    return _Built(module, description)


# --------------------------------------------------------------------------- state dicts


def _checked_arch(arch: str) -> str:
    names = torchvision.models.list_models(module=torchvision.models)  # classifiers only
    if arch in names:
        return arch
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"Unknown torchvision classification architecture {arch!r}.{hint}")


def _build_torchvision(arch: str, num_classes: int | None) -> nn.Module:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    except Exception as exc:
        raise ModelError(
            f"Cannot build torchvision {arch} with {kwargs}: {_first_line(exc)}."
        ) from exc


def _meta_model(arch: str, **kwargs: Any) -> nn.Module | None:
    """The architecture on the meta device (shapes only, no memory), or None if unsupported."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torchvision.models.get_model(arch, weights=None, **kwargs)
    except Exception:
        return None


def _skeleton(arch: str, num_classes: int | None) -> nn.Module | None:
    """The architecture on the meta device, to receive a full state_dict with ``assign``:
    this skips the random initialisation and the copy (seconds for large models). None
    when some buffer is not saved in state_dicts (it would stay on the meta device)."""
    skeleton = _meta_model(arch, **({} if num_classes is None else {"num_classes": num_classes}))
    if skeleton is None or set(dict(skeleton.named_buffers())) - set(skeleton.state_dict()):
        return None
    return skeleton


def _head_size(arch: str, state: dict[str, torch.Tensor]) -> int | None:
    """Number of classes of the file: the output size of the architecture's classifier head.

    The head is the last tensor whose first dimension is the default 1000 classes.
    """
    reference = _meta_model(arch) or _build_torchvision(arch, None)
    heads = [k for k, v in reference.state_dict().items() if v.dim() >= 1 and v.shape[0] == 1000]
    if heads and heads[-1] in state and state[heads[-1]].dim() >= 1:
        return int(state[heads[-1]].shape[0])
    return None


def _existing_file(path: str, what: str) -> Path:
    if not path:
        raise ModelError(f"No {what} given: set `weights` to its path.")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"{what[0].upper()}{what[1:]} not found: {file}.")
    return file


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state_dict file (bare, or under 'state_dict'/'model'), 'module.' stripped."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"Cannot read {path} as a PyTorch state_dict ({_first_line(exc)}). Save weights with "
            "torch.save(model.state_dict(), path); pickled whole models are refused for safety, "
            "and TorchScript files need kind = 'torchscript'."
        ) from exc
    if isinstance(content, dict):
        for key in ("state_dict", "model"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    state = (
        {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
        if isinstance(content, dict)
        else {}
    )
    if not state:
        raise ModelError(
            f"{path} holds a {type(content).__name__} without tensors, not a state_dict: "
            "save it with torch.save(model.state_dict(), path)."
        )
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_state(
    module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, arch: str = ""
) -> None:
    """Load ``state`` strictly, or raise a ModelError naming the keys and shapes that differ."""
    expected = module.state_dict()
    wrong = [
        f"{k}: file has {list(state[k].shape)}, model expects {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    missing = [f"missing {k}" for k in expected if k not in state]
    unexpected = [f"unexpected {k}" for k in state if k not in expected]
    problems = wrong + missing + unexpected
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        better = _suggest_arch(arch, state) if arch else None
        hint = (
            f" The file looks like a torchvision {better} state_dict: set arch = '{better}'."
            if better
            else ""
        )
        raise ModelError(
            f"The weights in {path.name} do not fit {what} ({len(wrong)} shape mismatches, "
            f"{len(missing)} missing and {len(unexpected)} unexpected keys): {shown}.{hint}"
        )
    if any(t.is_meta for t in expected.values()):  # a skeleton: adopt the file's tensors
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)
    else:
        module.load_state_dict(state)


def _suggest_arch(arch: str, state: dict[str, torch.Tensor]) -> str | None:
    """Another architecture of the same family (resnet18 -> resnet34...) the file fits exactly."""
    family = re.split(r"[^a-z]", arch)[0]
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    head = _head_size(arch, state)
    for name in torchvision.models.list_models(module=torchvision.models):
        if name == arch or not name.startswith(family):
            continue
        candidate = _meta_model(name, **({} if head is None else {"num_classes": head}))
        if (
            candidate is not None
            and {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == shapes
        ):
            return name
    return None


# --------------------------------------------------------------------------- layers


@dataclass
class _Probe:
    """What one dummy forward pass saw: module names in the order their forward finished,
    the shape of each module's first input and output tensor (first call), and the result."""

    order: list[str]
    inputs: dict[str, torch.Size]
    outputs: dict[str, torch.Size]
    result: Any


def _probe(model: nn.Module, input_size: int) -> _Probe:
    """Run one zero image (batch 1, eval mode, no grad) with forward hooks on every module."""
    seen = _Probe([], {}, {}, None)
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


def find_final_linear(model: nn.Module, input_size: int = DEFAULT_INPUT_SIZE) -> str:
    """Name of the last ``nn.Linear`` executed in forward ('' if the model has none).

    Its input is the last hidden layer. Execution order comes from a dummy forward pass;
    if that fails, registration order is used instead.
    """
    try:
        probe = _probe(model, input_size)
    except Exception:
        probe = _Probe([], {}, {}, None)
    return _final_linear(model, probe)


def list_conv_blocks(model: nn.Module, input_size: int = DEFAULT_INPUT_SIZE) -> list[str]:
    """Names of the convolutional block outputs a user can pick, in execution order.

    A block is a child of the model that contains a ``Conv2d``, together with the children
    that follow it up to the next such child (BN, ReLU, pooling): its name is the last of
    them with a (N, C, H, W) output, so vgg's flat ``features`` yields the ReLU or pool
    that ends each conv, resnet yields ``maxpool`` (the stem) and ``layer1..layer4``.
    Global (adaptive) pooling never extends a block. With fewer than 3 blocks, the
    top-level containers (Sequential/ModuleList/ModuleDict, e.g. mobilenet's or densenet's
    ``features``) are opened into their own blocks. A 1x1-conv classifier head (models
    without ``nn.Linear``) is not a block. Models without conv layers give [].
    """
    return _conv_blocks(model, _probe(model, input_size))


def _final_linear(model: nn.Module, probe: _Probe) -> str:
    linears = [n for n, m in model.named_modules() if _is_a(m, nn.Linear)]
    executed = [n for n in probe.order if n in linears]
    return executed[-1] if executed else (linears[-1] if linears else "")


def _head_conv(model: nn.Module, probe: _Probe) -> str:
    """The classifier conv of a model without nn.Linear: the last Conv2d executed, when its
    channels equal the number of outputs."""
    modules = dict(model.named_modules())
    if any(_is_a(m, nn.Linear) for m in modules.values()):
        return ""
    convs = [n for n in probe.order if _is_a(modules[n], nn.Conv2d) and n in probe.outputs]
    result = probe.result
    fits = isinstance(result, torch.Tensor) and result.dim() == 2
    return convs[-1] if convs and fits and probe.outputs[convs[-1]][1] == result.shape[1] else ""


def _conv_blocks(model: nn.Module, probe: _Probe) -> list[str]:
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if _is_a(m, nn.Conv2d)]
    head = _head_conv(model, probe)

    def contains(name: str, inner: str) -> bool:
        """Whether module ``inner`` is ``name`` or nested in it (the root '' holds all)."""
        return not name or inner == name or inner.startswith(name + ".")

    def blocks_of(parent: str) -> list[tuple[str, str]]:
        """(first child, block output) of each block among the executed children of parent."""
        depth = parent.count(".") + 1 if parent else 0
        children = [
            n for n in probe.order if contains(parent, n) and n.count(".") == depth and n != parent
        ]
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

    top = blocks_of("")
    if len(top) >= 3:
        return [out for _, out in top]
    names: list[str] = []
    for first, out in top:
        inner = [o for _, o in blocks_of(first)] if _is_container(modules[first]) else []
        names += inner + ([out] if out != first or not inner else [])
    return names


def _spread(names: Sequence[str], k: int = MAX_DEFAULT_LAYERS) -> list[str]:
    """At most k names evenly spread over ``names``, always including the first and last."""
    if len(names) <= k:
        return list(names)
    picks = sorted({round(i * (len(names) - 1) / (k - 1)) for i in range(k)})
    return [names[i] for i in picks]


def _embedding(
    model: nn.Module, probe: _Probe, conv_layers: list[str], spec: ModelSpec
) -> tuple[str, int, bool]:
    """(module name, dimension, is-output) of the last hidden layer, default or override."""
    modules = dict(model.named_modules())
    name = spec.embedding_layer
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


def _embedding_at(name: str, probe: _Probe) -> tuple[str, int, bool]:
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
    model: nn.Module, probe: _Probe, conv_layers: list[str], layers: list[str]
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


def _num_classes(result: Any, expected: int | None) -> int:
    if not isinstance(result, torch.Tensor) or result.dim() != 2:
        got = _shape(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise ModelError(
            f"The model returns {got} for a batch of one image: BiasLens needs logits of shape "
            "(batch, num_classes)."
        )
    found = int(result.shape[1])
    if expected is not None and expected != found:
        raise ModelError(f"The model outputs {found} classes but num_classes = {expected}.")
    return found


# --------------------------------------------------------------------------- transform, fingerprint


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def make_transform(
    input_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised (3, input_size, input_size) tensor: resize the shorter side,
    centre-crop to a square, scale to [0, 1], normalise with mean/std."""
    return transforms.Compose(
        [
            transforms.Lambda(_to_rgb),
            transforms.Resize(input_size),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize(list(mean), list(std)),
        ]
    )


def model_view(model: LoadedModel, image: Image.Image) -> np.ndarray:
    """uint8 RGB (S, S, 3): the image exactly as the model sees it (resized, centre-cropped),
    so that maps at the input resolution (Grad-CAM, patch boxes) line up with it."""
    pixels = make_transform(model.input_size, model.mean, model.std)(image)
    mean = torch.tensor(model.mean).view(3, 1, 1)
    std = torch.tensor(model.std).view(3, 1, 1)
    return ((pixels * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of every state_dict entry's name, dtype, shape and bytes (buffers included)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        else:
            digest.update(f"{name}|{value!r}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- TorchScript


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


# --------------------------------------------------------------------------- small helpers


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"Unknown device {device!r}: use 'cpu' or 'cuda'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("Device 'cuda' was requested but CUDA is not available here: use 'cpu'.")
    return resolved


def _module_device(model: nn.Module) -> torch.device:
    for tensor in model.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            return tensor.device
    return torch.device("cpu")


def _is_a(module: nn.Module, cls: type[nn.Module]) -> bool:
    """isinstance, also for TorchScript mirrors (which keep the original class name)."""
    return isinstance(module, cls) or getattr(module, "original_name", None) == cls.__name__


def _is_container(module: nn.Module) -> bool:
    return type(module) in _CONTAINERS or getattr(module, "original_name", None) in {
        c.__name__ for c in _CONTAINERS
    }


def _is_adaptive_pool(module: nn.Module) -> bool:
    return _is_a(module, nn.AdaptiveAvgPool2d) or _is_a(module, nn.AdaptiveMaxPool2d)


def _triple(values: Sequence[float], what: str) -> Triple:
    if len(values) != 3:
        raise ModelError(f"{what} needs 3 numbers (one per RGB channel), got {list(values)}.")
    return (float(values[0]), float(values[1]), float(values[2]))


def _common(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


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


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's can run for a paragraph)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).split(". ")[0][:200]
