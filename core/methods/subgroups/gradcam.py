"""Grad-CAM (Selvaraju et al., 2017) for VisCUIT's Grad-CAM window, computed with captum.

For a target class c and a convolutional block with output channels A^k, Grad-CAM weights
each channel by alpha_k^c, the mean over space of the class logit's gradient dy^c/dA^k,
sums the weighted channels, keeps the positive part, ReLU(sum_k alpha_k^c A^k), and
upsamples it to the input: where the block saw evidence for the class. ``GradCAM`` is a
per-image explainer (``core.methods.explainer``): ``explain(model, image, targets)`` returns
one map per requested class, scaled to [0, 1], and the softmax probabilities
(``GradCAMResult``); ``overlay`` blends a map onto the image with a jet-like colour map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from core.errors import InputError, ModelError, ParameterError
from core.methods.explainer import Explainer
from core.models.loading import LoadedModel, make_transform


@dataclass(frozen=True, eq=False)
class GradCAMResult:
    """``GradCAM.explain``'s result for one image.

    ``layer`` the block explained; ``targets`` the classes explained, in order; ``maps``
    (len(targets), S, S) Grad-CAM maps at the model's input resolution, in [0, 1] (each
    divided by its maximum; a map with no positive evidence stays all zero);
    ``probabilities`` (K,) softmax of the model's output for the image.
    """

    layer: str
    targets: list[int]
    maps: np.ndarray
    probabilities: np.ndarray


class GradCAM(Explainer):
    """Grad-CAM at one block of a model.

    ``layer``: the block's module name (None: the model's last convolutional block).

    ``explain(model, image, targets)`` returns a ``GradCAMResult``.
    """

    result_type = GradCAMResult

    def __init__(self, *, layer: str | None = None) -> None:
        self.layer = layer

    def explain(self, model: LoadedModel, images: Image.Image, targets: Sequence[int]) -> GradCAMResult:
        """Grad-CAM maps of one PIL image ``images`` for each class in ``targets``.

        The image goes through the model's own transform; every target is explained in one
        batched forward and backward pass. The model's parameters, mode and hooks are left as
        they were (only the input needs gradients).
        """
        if not model.conv_layers:
            raise ModelError(
                "Grad-CAM does not apply to a model without convolutional layers: it needs a "
                "block whose output is a spatial map. Use another view for this model."
            )
        layer = model.conv_layers[-1] if self.layer is None else self.layer
        probabilities, explained, maps = _grad_cam(model, images, layer, targets)
        return GradCAMResult(layer=layer, targets=explained, maps=maps, probabilities=probabilities)


def _grad_cam(
    model: LoadedModel, image: Image.Image, layer: str, targets: Sequence[int]
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """The softmax probabilities, the targets and their maps at the block ``layer``."""
    # captum is imported on first use: only Grad-CAM needs it
    from captum.attr import LayerAttribution, LayerGradCam

    modules = dict(model.module.named_modules())
    if not layer or layer not in modules:
        raise ModelError(
            f"Layer '{layer}' is not a module of the model: pick one of its convolutional "
            f"blocks ({', '.join(model.conv_layers)})."
        )
    targets = [int(t) for t in targets]
    wrong = [t for t in targets if not 0 <= t < model.num_classes]
    if wrong:
        raise ModelError(
            f"Class index {wrong[0]} does not exist: the model has {model.num_classes} "
            f"outputs (0..{model.num_classes - 1})."
        )
    size = model.input_size
    x = make_transform(size, model.mean, model.std)(image).unsqueeze(0).to(model.device)
    with torch.inference_mode():
        probabilities = torch.softmax(model.module(x).float(), dim=1)[0].cpu().numpy()
    if not targets:
        return probabilities, [], np.zeros((0, size, size), dtype=np.float32)
    with torch.inference_mode(False), torch.enable_grad():
        batch = x.repeat(len(targets), 1, 1, 1).requires_grad_(True)
        attribution = LayerGradCam(model.module, modules[layer]).attribute(
            batch, target=targets, relu_attributions=True
        )
    if isinstance(attribution, tuple):  # a block with several outputs: the first is used
        attribution = attribution[0]
    if attribution.dim() != 4:
        raise ModelError(
            f"Layer '{layer}' does not output a spatial map (its output has "
            f"{attribution.dim()} dimensions): pick a convolutional block "
            f"({', '.join(model.conv_layers)})."
        )
    upsampled = LayerAttribution.interpolate(attribution.detach(), (size, size), "bilinear")
    maps = upsampled[:, 0].float().clamp(min=0).cpu().numpy()
    peaks = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    maps = np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)
    return probabilities, targets, np.clip(maps, 0.0, 1.0)


def _jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colours (dark blue, cyan, yellow, dark red) of values in [0, 1], (..., 3)
    floats in [0, 1]: each channel is a clipped triangle over the value range."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # red, green, blue peaks
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (uint8 (H, W, 3) RGB, or (H, W) grey) blended with the jet colours of
    ``cam`` (values in [0, 1], any size: resized to the image bilinearly), as uint8 RGB."""
    if not 0 <= alpha <= 1:
        raise ParameterError(f"alpha must be in [0, 1], got {alpha}: use 0 for the image alone, 1 for the map alone.")
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InputError(
            f"image must be (H, W, 3) RGB or (H, W) grey, got {pixels.shape}: use an RGB or grey "
            "picture, such as core.models.loading.model_view returns."
        )
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise InputError(f"cam must be a 2-D map, got shape {cam.shape}: use one map, e.g. GradCAMResult.maps[0].")
    height, width = pixels.shape[:2]
    resized = np.asarray(
        Image.fromarray(cam).resize((width, height), Image.Resampling.BILINEAR)
    )
    blended = (1 - alpha) * pixels.astype(np.float32) + alpha * 255.0 * _jet(resized)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
