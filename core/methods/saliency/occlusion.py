"""Occlusion maps (Zeiler and Fergus, 2014), computed with captum: where hiding the image changes the score.

A window slides over the image; at each place the pixels under it are replaced by the same
pixels of a heavily blurred copy of the image, and the drop in a class's softmax probability
is credited to every pixel under the window (captum's ``Occlusion`` averages the drops of
the windows that cover a pixel). For the predicted class of an error, a high value means
"this region supports the wrong answer": hiding it lowers it.

Why a blur and not a constant patch: a uniform square is itself a shape the model may read
(the demo's spurious marker *is* a uniform square), so a grey or black patch can add
evidence instead of removing it; the blur keeps the image's own local colours and only
removes the detail (edges, small marks) inside the window. Its sigma is the window's side.

The window and stride follow the input size (``occlusion_geometry``): a window of a tenth
of the side and a stride of half the window, widened until the number of window places fits
``max_evaluations`` model passes (the pages derive that budget from the model's cost, so a
big model gets a coarser grid rather than a slow dialog). Every class asked for is read from
the same passes: the forward function returns their probabilities together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import DataError, ModelError, ParameterError
from core.methods.explainer import Explainer
from core.methods.saliency.filters import eval_mode
from core.models.loading import LoadedModel

WINDOW_SHARE = 10  # the default window is a tenth of the image side
PIXELS_PER_EVAL = 1 << 21  # input pixels per model call (window places x images): memory stays small at any size
MAX_ROWS_PER_EVAL = 512  # and at most this many inputs per call
IMAGES_PER_CALL = 8  # images occluded together (one captum call, their places batched)

Progress = Callable[[int, int, str], None]


def window_positions(side: int, window: int, stride: int) -> int:
    """How many places a window of ``window`` pixels takes along a side of ``side`` pixels
    with steps of ``stride`` (captum's count: the last place may hang over the edge)."""
    return math.ceil((side - window) / stride) + 1


def occlusion_geometry(side: int, max_evaluations: int = 256) -> tuple[int, int]:
    """(window, stride) in pixels for a square input of ``side`` pixels.

    The window is a tenth of the side (at least 1 pixel) and the stride half of it; while
    the grid needs more than ``max_evaluations`` model passes the stride grows up to the
    window, then the window grows (with stride = window)."""
    if isinstance(side, bool) or not isinstance(side, int | np.integer) or side < 1:
        raise ParameterError(f"The input side must be a whole number of pixels >= 1, got {side!r}.")
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int | np.integer) or max_evaluations < 1:
        raise ParameterError(f"max_evaluations must be a whole number >= 1, got {max_evaluations!r}: allow at least one pass.")
    window = max(1, math.ceil(side / WINDOW_SHARE))
    stride = max(1, math.ceil(window / 2))
    while window_positions(side, window, stride) ** 2 > max_evaluations and stride < window:
        stride += 1
    while window_positions(side, window, stride) ** 2 > max_evaluations and window < side:
        window += 1
        stride = window
    return window, stride


def blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (B, C, H, W) blurred by a Gaussian of ``sigma`` pixels, separably, with the edge
    pixels repeated outward (so a corner stays its own colour); sigma 0 returns ``x``."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    rows = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    cols = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(F.conv2d(padded, rows, groups=channels), cols, groups=channels)


def positive_maps(attributions: np.ndarray) -> np.ndarray:
    """Each (S, S) map's positive part divided by its maximum, in [0, 1] (a map with no
    positive value stays all zero): the shares shown and averaged over a group."""
    values = np.clip(np.asarray(attributions, dtype=np.float64), 0.0, None)
    peaks = values.reshape(*values.shape[:-2], -1).max(axis=-1)[..., None, None]
    return np.divide(values, peaks, out=np.zeros_like(values), where=peaks > 0).astype(np.float32)


@dataclass(frozen=True, eq=False)
class OcclusionResult:
    """``OcclusionMap.explain``'s result for a batch of images.

    ``window`` and ``stride`` the geometry used (pixels at the model's input size);
    ``blur_sigma`` the baseline's blur; ``targets`` (B, T) the classes explained per image;
    ``attributions`` (B, T, S, S) the drop in each class's softmax probability when the
    pixel is blurred, averaged over the windows covering it (negative: hiding it raises the
    class); ``probabilities`` (B, K) the softmax of the unchanged images.
    """

    window: int
    stride: int
    blur_sigma: float
    targets: np.ndarray
    attributions: np.ndarray
    probabilities: np.ndarray

    @property
    def maps(self) -> np.ndarray:
        """(B, T, S, S) positive part of each map scaled to [0, 1] (``positive_maps``)."""
        return positive_maps(self.attributions)

    def mean_map(self, column: int = 0, rows: np.ndarray | None = None) -> np.ndarray:
        """(S, S) mean of the scaled maps of target column ``column`` (0: the first class
        asked per image) over ``rows`` of the batch (None: all). The images are averaged
        as they come (the dataset's own alignment; no registration)."""
        maps = self.maps[:, column] if rows is None else self.maps[np.asarray(rows, dtype=np.int64), column]
        if not len(maps):
            raise DataError("No images to average: the group has no image with an occlusion map.")
        return maps.mean(axis=0)


class OcclusionMap(Explainer):
    """Occlusion attribution with captum's ``Occlusion``, blurred-image baseline.

    ``window``, ``stride``: pixels (None: ``occlusion_geometry`` of the input side and
    ``max_evaluations``); ``blur_sigma``: the baseline's blur in pixels (None: the window);
    ``max_evaluations``: the most window places (model passes per image) the derived grid
    may take.

    ``explain(model, images, targets, progress=)`` returns an ``OcclusionResult``.
    """

    result_type = OcclusionResult

    def __init__(
        self, *, window: int | None = None, stride: int | None = None, blur_sigma: float | None = None,
        max_evaluations: int = 256,
    ) -> None:
        self.window = window
        self.stride = stride
        self.blur_sigma = blur_sigma
        self.max_evaluations = max_evaluations

    def geometry(self, side: int) -> tuple[int, int]:
        """(window, stride) used on inputs of ``side`` pixels."""
        derived_window, derived_stride = occlusion_geometry(side, self.max_evaluations)
        window = derived_window if self.window is None else _pixels(self.window, "window", side)
        if self.stride is not None:
            return window, _pixels(self.stride, "stride", side)
        return window, derived_stride if self.window is None else max(1, math.ceil(window / 2))

    def explain(
        self, model: LoadedModel, images: torch.Tensor, targets: Any, *, progress: Progress | None = None
    ) -> OcclusionResult:
        """Occlusion maps of ``images`` (B, 3, S, S), normalised as the model takes them,
        for ``targets``: (B,) one class per image or (B, T) several (e.g. predicted and
        true); ``progress(done, total, message)`` is called after each image."""
        side = model.input_size
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, side, side):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"images must be a (B, 3, {side}, {side}) tensor of normalised images (the model's transform), got {got}.")
        if not len(images):
            raise DataError("No images to occlude: pass at least one.")
        classes = _targets(targets, len(images), model.num_classes)
        window, stride = self.geometry(side)
        sigma = float(window) if self.blur_sigma is None else _sigma(self.blur_sigma)
        module = model.module
        with eval_mode(module), torch.no_grad():
            x = images.float()
            probabilities = np.zeros((len(x), model.num_classes), dtype=np.float32)
            maps = np.zeros((len(x), classes.shape[1], side, side), dtype=np.float32)
            for start in range(0, len(x), IMAGES_PER_CALL):
                chunk = x[start : start + IMAGES_PER_CALL].to(model.device)
                probabilities[start : start + len(chunk)] = torch.softmax(module(chunk).float(), dim=1).cpu().numpy()
                maps[start : start + len(chunk)] = _occluded(module, chunk, classes[start : start + len(chunk)],
                                                             window, stride, sigma)
                if progress is not None:
                    progress(start + len(chunk), len(x), "Occlusion")
        return OcclusionResult(window=window, stride=stride, blur_sigma=sigma, targets=classes, attributions=maps,
                               probabilities=probabilities)


def _occluded(module: torch.nn.Module, x: torch.Tensor, classes: np.ndarray, window: int, stride: int,
              sigma: float) -> np.ndarray:
    """(B, T, S, S) occlusion attributions of a few images in one captum call.

    captum stacks the occluded copies place by place (row r of a forward batch is image
    r mod B) and returns the flattened (B x T) outputs image by image."""
    from captum.attr import Occlusion  # imported on first use, as Grad-CAM does

    n, side = len(x), x.shape[-1]
    wanted = torch.as_tensor(classes, device=x.device)

    def scores(batch: torch.Tensor) -> torch.Tensor:
        image = torch.arange(len(batch), device=batch.device) % n
        return torch.softmax(module(batch).float(), dim=1).gather(1, wanted[image])

    try:
        attribution = Occlusion(scores).attribute(
            x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=blurred(x, sigma),
            target=None, perturbations_per_eval=max(1, min(MAX_ROWS_PER_EVAL, PIXELS_PER_EVAL // (side * side)) // n),
        )
    except RuntimeError as exc:
        raise ModelError(f"The model failed on an occluded image ({exc}): check that it accepts batches of "
                         f"{side} px images.") from exc
    return attribution[:, 0].float().cpu().numpy().reshape(n, classes.shape[1], side, side)


def _pixels(value: Any, name: str, side: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= side:
        raise ParameterError(f"{name} must be a whole number of pixels in 1..{side} (the input side), got {value!r}.")
    return int(value)


def _sigma(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) or not np.isfinite(value) or value < 0:
        raise ParameterError(f"blur_sigma must be a finite number of pixels >= 0 (None: the window), got {value!r}.")
    return float(value)


def _targets(targets: Any, n: int, num_classes: int) -> np.ndarray:
    """(B, T) class indices from (B,) or (B, T) targets, checked."""
    values = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or len(values) != n or values.shape[1] < 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise DataError(f"targets must be {n} class indices, one per image, or ({n}, T) of them; got shape {values.shape}.")
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise DataError(f"targets must be class indices in 0..{num_classes - 1}.")
    return values.astype(np.int64)
