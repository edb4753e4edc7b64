"""Models built in Python and filled from a state_dict file: the ``torchvision`` and
``entrypoint`` kinds.

``torchvision``: an architecture name, with a state_dict file (loaded with
``weights_only=True``), torchvision's own pretrained weights, or random weights.
``entrypoint``: a trusted ``package.module:factory`` returning an ``nn.Module``, optionally
with a state_dict file. Weights that do not fit are reported with the keys and shapes that
differ, and a better-fitting architecture of the same family is suggested.
"""

from __future__ import annotations

import difflib
import importlib
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch import nn

from core.errors import ModelError, first_line
from core.registry import BuiltModel, register_model_kind, weights_file

if TYPE_CHECKING:
    from core.specs import ModelSpec


def _load_torchvision(spec: ModelSpec) -> BuiltModel:
    arch = _checked_arch(spec.arch)
    if spec.pretrained:
        if spec.weights:
            raise ModelError(
                "Set either `weights` (a state_dict file) or `pretrained = true`, not both."
            )
        return _load_pretrained(arch)
    if not spec.weights:
        return BuiltModel(
            _build_torchvision(arch, spec.num_classes), f"torchvision {arch} (random weights)"
        )
    path = weights_file(spec.weights, "state_dict file")
    state = _read_state_dict(path)
    num_classes = spec.num_classes if spec.num_classes is not None else _head_size(arch, state)
    module = _skeleton(arch, num_classes) or _build_torchvision(arch, num_classes)
    _load_state(module, state, path, f"torchvision {arch}", arch)
    return BuiltModel(module, f"torchvision {arch} + {path.name}")


def _load_pretrained(arch: str) -> BuiltModel:
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except Exception as exc:
        raise ModelError(f"torchvision has no pretrained weights for {arch}.") from exc
    try:
        module = torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:
        raise ModelError(
            f"could not download torchvision's pretrained weights for {arch} (no network?): "
            f"put a state_dict file in `weights` instead ({first_line(exc)})."
        ) from exc
    preset = weights.transforms()
    return BuiltModel(
        module,
        f"torchvision {arch} ({weights})",
        preset.crop_size[0],
        tuple(preset.mean),
        tuple(preset.std),
    )


def _load_entrypoint(spec: ModelSpec) -> BuiltModel:
    target = spec.entrypoint.strip()
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelError(f"entrypoint must look like 'package.module:factory', got {target!r}.")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise ModelError(f"Cannot import entry point {target}: {first_line(exc)}.") from exc
    try:
        module = factory()
    except Exception as exc:
        raise ModelError(f"Entry point {target}() failed: {first_line(exc)}.") from exc
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"Entry point {target}() returned a {type(module).__name__}, not a torch.nn.Module."
        )
    description = f"entry point {target}"
    if spec.weights:
        path = weights_file(spec.weights, "state_dict file")
        _load_state(module, _read_state_dict(path), path, description)
        description += f" + {path.name}"
    return BuiltModel(module, description)


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
            f"Cannot build torchvision {arch} with {kwargs}: {first_line(exc)}."
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


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state_dict file (bare, or under 'state_dict'/'model'), 'module.' stripped."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"Cannot read {path} as a PyTorch state_dict ({first_line(exc)}). Save weights with "
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


register_model_kind("torchvision", _load_torchvision)
register_model_kind("entrypoint", _load_entrypoint)
