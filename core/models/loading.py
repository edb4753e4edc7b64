"""Load a workspace's image classifier: ``load_model(spec)`` for every registered model kind.

``load_model(spec)`` turns a ``ModelSpec`` into a ``LoadedModel``: the module in eval mode
on its device, plus what the activation store needs: the last hidden layer, the
convolutional blocks a user can pick, the input transform and a fingerprint of the
weights. The kind's loader (core/registry.py) builds the module: the built-in kinds are
``torchvision`` and ``entrypoint`` (core/models/statedict.py), ``torchscript``
(core/models/torchscript.py) and the ``demo`` CNN (core/demo). Layers are found by core/models/layers.py.
Every problem the user can fix raises ``ModelError`` with a message saying what to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

import core.models.statedict  # noqa: F401  (registers the 'torchvision' and 'entrypoint' kinds)
from core.errors import ModelError, first_line
from core.models.layers import find_layers, is_patch_embedding, probe_forward
from core.models.torchscript import ScriptedModel
from core.registry import model_loader
from core.specs import ModelSpec, Triple


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
    linear_layers: list[str] = field(default_factory=list)

    @property
    def storable_layers(self) -> list[str]:
        """Every layer a store can hold: the conv blocks, then the hidden nn.Linear layers
        (which run after them in a CNN), each list in execution order."""
        return list(self.conv_layers) + [ly for ly in self.linear_layers if ly not in self.conv_layers]

    @property
    def only_patch_embedding(self) -> bool:
        """Whether the one conv block is a transformer's patch embedding (a ViT's
        ``conv_proj``): pages reading conv blocks then say that they see patches, not
        the network's later layers."""
        return len(self.conv_layers) == 1 and is_patch_embedding(
            dict(self.module.named_modules()).get(self.conv_layers[0])
        )


# --------------------------------------------------------------------------- loading


def load_model(
    spec: ModelSpec, device: str | torch.device | None = None, hosted: bool = False
) -> LoadedModel:
    """Build the model ``spec`` describes, check it with a dummy forward pass, find its layers.

    ``device`` None means CUDA when available, else CPU. ``hosted`` refuses entry points.
    """
    dev = _resolve_device(device)
    loader = model_loader(spec.kind)
    if spec.kind == "entrypoint" and hosted:
        raise ModelError(
            "Python entry-point models are disabled in hosted mode: use a registered workspace."
        )
    built = loader(spec)
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
        probe = probe_forward(module, input_size)
    except Exception as exc:
        raise ModelError(
            f"A test forward pass of one {input_size}x{input_size} RGB image through "
            f"{built.description} failed: {first_line(exc)}. Check input_size (the model may "
            "need another size) and that the model takes a (N, 3, H, W) image batch."
        ) from exc
    num_classes = _num_classes(probe.result, spec.num_classes)
    layers = find_layers(module, probe, spec.embedding_layer, spec.layers)
    return LoadedModel(
        module=module,
        description=built.description,
        num_classes=num_classes,
        input_size=input_size,
        mean=mean,
        std=std,
        embedding_layer=layers.embedding_layer,
        embedding_dim=layers.embedding_dim,
        conv_layers=layers.conv_layers,
        default_layers=layers.default_layers,
        weights_fingerprint=weights_fingerprint(module),
        device=dev,
        embedding_is_output=layers.embedding_is_output,
        linear_layers=layers.linear_layers,
    )


def _num_classes(result: Any, expected: int | None) -> int:
    if not isinstance(result, torch.Tensor) or result.dim() != 2:
        got = str(tuple(result.shape)) if isinstance(result, torch.Tensor) else type(result).__name__
        raise ModelError(
            f"The model returns {got} for a batch of one image: BiasLens needs logits of shape "
            "(batch, num_classes)."
        )
    found = int(result.shape[1])
    if expected is not None and expected != found:
        raise ModelError(f"The model outputs {found} classes but num_classes = {expected}.")
    return found


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


def _triple(values: Sequence[float], what: str) -> Triple:
    if len(values) != 3:
        raise ModelError(f"{what} needs 3 numbers (one per RGB channel), got {list(values)}.")
    return (float(values[0]), float(values[1]), float(values[2]))


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
