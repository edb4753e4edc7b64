"""The counterfactual check: does hiding the region a map points at correct the error?

A map is a claim about why the model answered as it did. The check tests the claim by
intervention: for each misclassified image and each map (occlusion, input-space saliency,
Grad-CAM, plain gradient...), the top ``area`` share of the image's pixels by that map is
replaced with a blurred copy of the image (``fill="blur"``, the occlusion maps' baseline) or
with the dataset's mean colour (``fill="mean"``, zero after normalisation, as
``MaskingExperiment`` masks), the model runs again, and the error counts as corrected when
the prediction becomes the true class. The same is done with random regions of the same
area (``n_random`` squares placed uniformly, per image): a map that found a cause corrects
clearly more errors than random regions do.

Shares of a map carry a 95% Wilson interval over the errors (each error corrected or not);
the random control's share is each image's corrected share over its placements, averaged
over the errors, with a 95% percentile bootstrap interval over the errors (a single error:
a Wilson interval over its placements).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.errors import DataError, ParameterError
from core.methods.explainer import Explainer
from core.methods.saliency.filters import eval_mode
from core.methods.saliency.occlusion import WINDOW_SHARE, blurred
from core.models.loading import LoadedModel
from core.scoring.stats import bootstrap_ci, wilson

FILLS = ("blur", "mean")
RANDOM = "random"  # the control's row in the results
COLUMNS = ["region", "errors", "corrected", "share", "low", "high"]
BATCH = 64  # masked images per model call


def top_region(saliency: np.ndarray, pixels: int) -> np.ndarray:
    """(S, S) bool: the ``pixels`` highest values of one map (ties broken by position,
    first in reading order)."""
    values = np.nan_to_num(np.asarray(saliency, dtype=np.float64), nan=-np.inf).reshape(-1)
    mask = np.zeros(values.size, dtype=bool)
    mask[np.argsort(-values, kind="stable")[:pixels]] = True
    return mask.reshape(np.shape(saliency))


def random_squares(side: int, pixels: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, S, S) bool: squares of about ``pixels`` pixels (the nearest whole side) at
    uniformly random places inside the image."""
    edge = min(side, max(1, round(math.sqrt(pixels))))
    masks = np.zeros((count, side, side), dtype=bool)
    for m, (top, left) in enumerate(rng.integers(0, side - edge + 1, size=(count, 2))):
        masks[m, top : top + edge, left : left + edge] = True
    return masks


def loss_gradient_maps(model: LoadedModel, images: torch.Tensor, targets: Any) -> np.ndarray:
    """(B, S, S) |dL/dx| of each image's own cross-entropy with ``targets`` (its true class),
    maximum over the colour channels: the plain input gradient, the trivial saliency map."""
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=model.device)
    with eval_mode(model.module), torch.inference_mode(False), torch.enable_grad():
        x = images.to(model.device).float().detach().requires_grad_(True)
        loss = F.cross_entropy(model.module(x).float(), y, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
    return gradient.abs().amax(dim=1).cpu().numpy()


@dataclass(frozen=True, eq=False)
class CounterfactualResult:
    """``CounterfactualCheck.explain``'s result for a batch of images.

    ``table`` one row per map, then ``random``: region, errors (misclassified images
    checked), corrected (for random: the expected count), share, low, high (95%);
    ``errors`` (E,) the batch positions of the misclassified images; ``masks`` map name ->
    (E, S, S) bool, the region hidden per error; ``corrected`` map name -> (E,) bool, and
    ``random`` -> (E,) the share of placements that corrected each error; ``pixels`` the
    area hidden; ``notes``.
    """

    table: pd.DataFrame
    errors: np.ndarray
    masks: dict[str, np.ndarray]
    corrected: dict[str, np.ndarray]
    pixels: int
    notes: list[str] = field(default_factory=list)

    def lift(self) -> dict[str, float]:
        """Each map's share corrected minus the random control's."""
        shares = self.table.set_index("region")["share"]
        return {name: float(shares[name] - shares[RANDOM]) for name in self.masks}


class CounterfactualCheck(Explainer):
    """Hiding each map's top region against random regions of the same area.

    ``area``: the share of the image's pixels hidden (same for every map and the control);
    ``fill``: ``blur`` (a Gaussian blur of sigma ``blur_sigma`` pixels, None: a tenth of the
    side) or ``mean`` (the dataset's mean colour); ``n_random`` random squares per image;
    ``seed`` their placement.

    ``explain(model, images, targets, maps=)`` returns a ``CounterfactualResult``.
    """

    result_type = CounterfactualResult

    def __init__(
        self, *, area: float = 0.05, fill: str = "blur", blur_sigma: float | None = None, n_random: int = 10,
        seed: int = 0,
    ) -> None:
        self.area = area
        self.fill = fill
        self.blur_sigma = blur_sigma
        self.n_random = n_random
        self.seed = seed

    def explain(
        self, model: LoadedModel, images: torch.Tensor, targets: Any, *, maps: Mapping[str, np.ndarray]
    ) -> CounterfactualResult:
        """The check on ``images`` (B, 3, S, S), normalised as the model takes them, with
        true classes ``targets`` (B,); ``maps`` name -> (B, S, S) saliency maps (higher:
        more attributed), any scale."""
        side = model.input_size
        area, n_random = self._checked()
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, side, side):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"images must be a (B, 3, {side}, {side}) tensor of normalised images (the model's transform), got {got}.")
        y = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
        if y.shape != (len(images),) or (y.size and not np.issubdtype(y.dtype, np.integer)):
            raise DataError(f"targets must be {len(images)} class indices, one per image, got shape {y.shape}.")
        if y.size and (y.min() < 0 or y.max() >= model.num_classes):
            raise DataError(f"targets must be class indices in 0..{model.num_classes - 1}.")
        if not maps:
            raise DataError("No maps to check: give at least one (name -> (B, S, S) map).")
        checked = {}
        for name, values in maps.items():
            values = np.asarray(values, dtype=np.float64)
            if name == RANDOM or values.shape != (len(images), side, side):
                raise DataError(f"Map '{name}' must be a ({len(images)}, {side}, {side}) array (one map per image) "
                                f"named other than '{RANDOM}', got {values.shape}.")
            checked[name] = values
        pixels = max(1, round(area * side * side))
        sigma = side / WINDOW_SHARE if self.blur_sigma is None else float(self.blur_sigma)
        with eval_mode(model.module), torch.no_grad():
            x = images.float()
            before = self._predict(model, x)
            errors = np.flatnonzero(before != y)
            notes = []
            if len(errors) < len(x):
                notes.append(f"{len(x) - len(errors)} of the {len(x)} images are classified correctly: only the "
                             f"{len(errors)} errors are checked.")
            x, y = x[errors], y[errors]
            filler = blurred(x.to(model.device), sigma).cpu() if self.fill == "blur" else torch.zeros_like(x)
            masks = {name: np.stack([top_region(m, pixels) for m in values[errors]]) if len(errors) else
                     np.zeros((0, side, side), dtype=bool) for name, values in checked.items()}
            corrected = {name: self._predict(model, _hidden(x, filler, mask)) == y for name, mask in masks.items()}
            rng = np.random.default_rng(self.seed)
            placements = [random_squares(side, pixels, n_random, rng) for _ in range(len(errors))]
            shares = np.zeros(len(errors))
            step = max(1, BATCH // n_random)
            for i in range(0, len(errors), step):  # a few images at a time: n_random copies of each
                part = slice(i, i + step)
                hidden = _hidden(x[part].repeat_interleave(n_random, dim=0), filler[part].repeat_interleave(n_random, dim=0),
                                 np.concatenate(placements[part]))
                right = self._predict(model, hidden) == np.repeat(y[part], n_random)
                shares[part] = right.reshape(-1, n_random).mean(axis=1)
        rows = []
        for name, hit in corrected.items():
            share, low, high = wilson(int(hit.sum()), len(hit))
            rows.append({"region": name, "errors": len(hit), "corrected": float(hit.sum()), "share": share, "low": low,
                         "high": high})
        if len(shares) == 1:  # one error: its placements are independent draws, a Wilson interval over them
            mean, low, high = wilson(round(shares[0] * n_random), n_random)
        else:
            mean, low, high = bootstrap_ci(shares, seed=self.seed) if len(shares) else (float("nan"),) * 3
        rows.append({"region": RANDOM, "errors": len(shares), "corrected": float(shares.sum()), "share": mean, "low": low,
                     "high": high})
        return CounterfactualResult(
            table=pd.DataFrame(rows, columns=COLUMNS), errors=errors.astype(np.int64), masks=masks,
            corrected={**corrected, RANDOM: shares}, pixels=pixels, notes=notes,
        )

    def _checked(self) -> tuple[float, int]:
        area, n_random = self.area, self.n_random
        if isinstance(area, bool) or not isinstance(area, int | float) or not 0 < area < 1:
            raise ParameterError(f"area must be a share of the image in (0, 1), got {area!r}: e.g. 0.05 for 5% of the pixels.")
        if self.fill not in FILLS:
            raise ParameterError(f"fill must be one of {', '.join(FILLS)}, got {self.fill!r}.")
        sigma = self.blur_sigma
        if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma >= 0):
            raise ParameterError(f"blur_sigma must be a number of pixels >= 0 (None: a tenth of the side), got {sigma!r}.")
        if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
            raise ParameterError(f"n_random must be a whole number >= 1, got {n_random!r}: use e.g. 10 random regions per image.")
        return float(area), n_random

    @staticmethod
    def _predict(model: LoadedModel, x: torch.Tensor) -> np.ndarray:
        """The model's classes for ``x``, in batches of ``BATCH``."""
        if not len(x):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([
            model.module(x[i : i + BATCH].to(model.device)).float().argmax(dim=1).cpu().numpy() for i in range(0, len(x), BATCH)
        ])


def _hidden(x: torch.Tensor, filler: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
    """``x`` with the pixels of ``masks`` (B, S, S) taken from ``filler``."""
    keep = torch.as_tensor(masks, dtype=x.dtype)[:, None]
    return x * (1 - keep) + filler * keep
