"""Parameter-space saliency (Levin et al., "Where do models go wrong?"), the image-level parts.

The per-image filter profiles s(x) (eq. 1) and their standardisation z = (s - mu) / sigma
(eq. 2) live in ``core.methods.saliency.filters``. This module builds the paper's analyses on top of them,
each a per-image explainer (``core.methods.explainer``): parameters in ``__init__``, one
``explain(model, images, targets, **context)`` call that returns a frozen result
(``FilterSaliencyResult``, ``FilterTurnOffResult``, ``FineTuneResult``, ``MaskingResult``):

- ``FilterSaliency``: an image's profile, its top-k filters by z, and the input-space
  saliency map M_F = |d/dx D_C(z(x), s'_F)| (eq. 3-4), post-processed as in the authors'
  code (``postprocess``).
- ``FilterTurnOff``: zeroing the k most salient filters (by |z|), k random ones or the k
  least salient ones, k = 0..max_k cumulatively (paper Fig. 3).
- ``FineTuneCheck``: one normalised gradient step on a single misclassified image that
  updates only k filters, and its effect on the image and its saliency-space neighbours
  (paper Fig. 6).
- ``MaskingExperiment``: masking the most salient pixels (or, as a control, the least
  salient ones) and the change in the output and in the top filters' saliency (Fig. 7).

None of them changes the model: modified weights are new tensors passed through
``torch.func.functional_call`` (TorchScript modules, which it cannot run, get a throwaway
``copy.deepcopy``), and the input map's double backward only reads the parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn

from core.errors import DataError, InputError, ModelError, ParameterError
from core.methods.explainer import Explainer
from core.methods.saliency.filters import (
    METHODS,
    FilterIndex,
    eval_mode,
    filter_profiles,
    math_attention,
    standardise,
    twice_differentiable,
)
from core.models.loading import LoadedModel, make_transform, model_view
from core.models.torchscript import ScriptedModel
from core.scoring.stats import bootstrap_ci

ORDERS = ("salient", "random", "least")
VARIANTS = ("salient", "random", "least")
TOUR_MARGIN = 0.25  # the confidence margin of the error the Filter saliency page opens on
MASK_BYTES = 256 << 20  # masked weight sets evaluated at once by FilterTurnOff (256 MiB)


def tour_error(meta: pd.DataFrame, margin: float = TOUR_MARGIN) -> int | None:
    """The store row of the misclassified image to open on (None without errors): the one
    whose predicted class leads its true class (``confidence - p_true``) by the margin
    closest to ``margin``, ties broken by the higher loss. The highest-loss errors are
    often 100% confident, and turning filters off, masking or one fine-tuning step rarely
    move them; an error with a moderate margin shows what the experiments can do."""
    wrong = meta.loc[~meta["correct"].to_numpy(dtype=bool)]
    if wrong.empty:
        return None
    gap = np.abs((wrong["confidence"] - wrong["p_true"]).to_numpy(dtype=np.float64) - margin)
    order = np.lexsort((-wrong["loss"].to_numpy(dtype=np.float64), gap))
    return int(wrong["row"].to_numpy()[order[0]])


# --------------------------------------------------------------------------- validation


def _check_index(module: nn.Module, index: FilterIndex) -> None:
    """Raise ModelError unless every layer of ``index`` is a conv of ``module`` of that shape."""
    modules = dict(module.named_modules())
    for layer, count, size in zip(index.layers, index.counts, index.sizes, strict=True):
        weight = getattr(modules.get(layer), "weight", None)
        if (
            not isinstance(weight, torch.Tensor)
            or weight.dim() != 4
            or weight.shape[0] != count
            or weight[0].numel() != size
        ):
            raise ModelError(
                f"The filter index does not match this model (layer '{layer}'): recompute it "
                "with core.methods.saliency.filters.conv_filters(model.module) and the profiles with it."
            )


def _check_stats(mu: np.ndarray, sigma: np.ndarray, index: FilterIndex) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    n = index.n_filters
    if mu.shape != (n,) or sigma.shape != (n,):
        raise DataError(
            f"mu and sigma must hold one value per filter ({n}), got shapes {mu.shape} and "
            f"{sigma.shape}: compute them with core.methods.saliency.filters.ProfileStats over the same index."
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()) or (sigma <= 0).any():
        raise DataError(
            "mu and sigma must be finite and sigma positive: take them from "
            "core.methods.saliency.filters.ProfileStats (which clamps sigma), over at least two images."
        )
    return mu, sigma


def _check_label(label: Any, num_classes: int, what: str = "label") -> int:
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < num_classes:
        raise DataError(f"The {what} must be a class index in 0..{num_classes - 1}, got {label!r}.")
    return int(label)


def _check_labels(labels: Any, n: int, num_classes: int, what: str = "labels") -> torch.Tensor:
    values = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if values.shape != (n,) or (n and not np.issubdtype(values.dtype, np.integer)):
        raise DataError(f"Need {n} integer {what} (one per image), got shape {values.shape}.")
    if n and (values.min() < 0 or values.max() >= num_classes):
        raise DataError(f"The {what} must be class indices in 0..{num_classes - 1}.")
    return torch.as_tensor(values.astype(np.int64))


def _check_images(x: Any, size: int, what: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(
            f"{what} must be a (B, 3, {size}, {size}) tensor of normalised images (the model's "
            f"transform), got {got}."
        )
    return x


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DataError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


def _check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DataError(f"{name} must be a finite number {bound}, got {value!r}.")
    return float(value)


# --------------------------------------------------------------------------- running with other weights


def _script_of(module: nn.Module) -> torch.jit.ScriptModule | None:
    """The TorchScript module behind ``module`` (``functional_call`` cannot swap its weights)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module
    if isinstance(module, ScriptedModel):
        return module._script  # its mirrors share the script's tensors, but the script runs
    return None


class _Weights:
    """Runs a module with some conv weights replaced by new tensors, never touching it.

    Plain modules go through ``torch.func.functional_call``; a TorchScript module is
    deep-copied once and the copy's weights are overwritten (the copy is discarded).
    ``originals`` are detached views of the model's conv weights (``name -> tensor``).
    """

    def __init__(self, module: nn.Module, index: FilterIndex) -> None:
        self.module = module
        self.names = [f"{layer}.weight" for layer in index.layers]
        modules = dict(module.named_modules())
        self.originals = {f"{layer}.weight": modules[layer].weight.detach() for layer in index.layers}
        script = _script_of(module)
        self.copy: nn.Module | None = None
        if script is not None:
            self.copy = copy.deepcopy(script).eval()
            params = dict(self.copy.named_parameters())
            missing = [n for n in self.names if n not in params]
            if missing:
                raise ModelError(
                    f"Cannot find the weights {', '.join(missing[:3])} in the TorchScript file: "
                    "this check needs the conv weights as named parameters."
                )
            self.params = {n: params[n] for n in self.names}

    def logits(self, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of ``x`` with the conv weights ``weights`` (the others unchanged)."""
        if self.copy is None:
            from torch.func import functional_call

            return functional_call(self.module, weights, (x,)).float()
        with torch.no_grad():
            for name in self.names:
                self.params[name].copy_(weights.get(name, self.originals[name]))
        return self.copy(x).float()

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """dL/dW of the mean cross-entropy of ``(x, y)`` for every conv weight, at the originals."""
        with torch.inference_mode(False), torch.enable_grad():
            if self.copy is None:
                leaves = {n: w.clone().requires_grad_(True) for n, w in self.originals.items()}
                loss = F.cross_entropy(self.logits(x, leaves), y)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            else:
                with torch.no_grad():
                    for name in self.names:
                        self.params[name].copy_(self.originals[name])
                leaves = self.params
                for w in leaves.values():
                    w.requires_grad_(True)
                loss = F.cross_entropy(self.copy(x).float(), y)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return {
            n: torch.zeros_like(self.originals[n]) if g is None else g.detach()
            for n, g in zip(self.names, grads, strict=True)
        }

    def masked_logits(self, x: torch.Tensor, keep: torch.Tensor, index: FilterIndex) -> torch.Tensor:
        """(M, K) logits of the single image ``x`` (1, 3, S, S) under M filter masks.

        ``keep`` (M, F) is 1 for a filter kept and 0 for one turned off (W[f] = 0). Plain
        modules evaluate the masks in vmapped chunks; TorchScript copies one at a time.
        """
        bounds = np.concatenate([[0], np.cumsum(index.counts)])
        sizes = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

        def weights_for(mask: torch.Tensor) -> dict[str, torch.Tensor]:
            return {
                name: self.originals[name] * mask[part].to(self.originals[name].dtype).view(-1, 1, 1, 1)
                for name, part in zip(self.names, sizes, strict=True)
            }

        if self.copy is not None:
            return torch.cat([self.logits(x, weights_for(m)) for m in keep])
        from torch.func import vmap

        chunk = max(1, MASK_BYTES // max(4 * index.n_weights, 1))
        try:
            with math_attention():  # a fused attention kernel has no vmap rule (a slow fallback)
                return torch.cat(
                    [vmap(lambda m: self.logits(x, weights_for(m))[0])(keep[i : i + chunk]) for i in range(0, len(keep), chunk)]
                )
        except RuntimeError:  # an op vmap cannot batch: one mask at a time
            return torch.cat([self.logits(x, weights_for(m)) for m in keep])


def _with_weights(model: LoadedModel, index: FilterIndex) -> _Weights:
    _check_index(model.module, index)
    return _Weights(model.module, index)


def _softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1).detach().cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------- input-space saliency


def postprocess(gradient: np.ndarray, low: float = 90.0, high: float = 99.0, blur_sigma: float = 1.0) -> np.ndarray:
    """(S, S) map in [0, 1] from an input gradient (3, S, S), as in the authors' code.

    Signed maximum over the colour channels, then its absolute value; values above the
    ``high`` percentile are clipped to it and values below the ``low`` percentile raised to
    it (so only the top pixels stand out); min-max scaled to [0, 1]; a Gaussian blur of
    ``blur_sigma`` pixels (0: none), after which the map is min-max scaled again so that
    it spans [0, 1] and a masking threshold keeps its meaning (the authors blurred only the
    colour overlay). A constant gradient gives an all-zero map.
    """
    grad = np.asarray(gradient, dtype=np.float64)
    if grad.ndim != 3:
        raise InputError(
            f"gradient must be (channels, S, S), got shape {grad.shape}: use one image's input gradient, "
            "without the batch dimension."
        )
    if not 0 <= low <= high <= 100:
        raise ParameterError(f"Need 0 <= low <= high <= 100 percentiles, got {low} and {high}: pick two such percentiles.")
    grad = np.abs(grad.max(axis=0))  # signed max over channels, then |.|
    grad = np.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    floor, ceiling = np.percentile(grad, [low, high])
    grad = np.clip(grad, floor, ceiling)
    span = grad.max() - grad.min()
    scaled = (grad - grad.min()) / span if span > 0 else np.zeros_like(grad)
    if blur_sigma > 0:
        scaled = gaussian_filter(scaled, sigma=blur_sigma, mode="nearest")
        span = scaled.max() - scaled.min()
        scaled = (scaled - scaled.min()) / span if span > 0 else np.zeros_like(scaled)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _input_gradient(
    model: LoadedModel, x: torch.Tensor, y: torch.Tensor, index: FilterIndex,
    mu: np.ndarray, sigma: np.ndarray, top: np.ndarray, boost: float,
) -> np.ndarray:
    """(3, S, S): d/dx of the cosine distance D_C(z(x), s'_F) (eq. 4, before |.|).

    z(x) is rebuilt inside the graph (create_graph=True) so it can be differentiated again
    with respect to the input; s'_F (eq. 3) is the detached z with the top filters times
    ``boost``. The conv weights need ``requires_grad`` for the first backward: it is set for
    the call and restored after; ``autograd.grad`` never writes ``.grad``. The model runs
    ``twice_differentiable``: a ViT's fused attention kernels and MobileNetV3's hardsigmoid
    have no double backward.
    """
    modules = dict(model.module.named_modules())
    weights = [modules[layer].weight for layer in index.layers]
    flags = [w.requires_grad for w in weights]
    mu_t = torch.as_tensor(mu, dtype=torch.float32, device=x.device)
    sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    try:
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(model.module), twice_differentiable():
            for w in weights:
                w.requires_grad_(True)
            xi = x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model.module(xi).float(), y)
            grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
            # eq. 1: mean |dL/dW[f]| per filter, layers in profile order
            s = torch.cat(
                [
                    (torch.zeros(w.shape[0], device=x.device) if g is None else g.abs().flatten(1).mean(dim=1).float())
                    for g, w in zip(grads, weights, strict=True)
                ]
            )
            z = (s - mu_t) / sigma_t  # eq. 2
            boosted = z.detach().clone()
            boosted[torch.as_tensor(top, device=x.device)] *= boost  # s'_F, eq. 3
            distance = 1.0 - F.cosine_similarity(z[None], boosted[None])[0]  # D_C
            if not distance.requires_grad:
                return np.zeros(tuple(x.shape[1:]), dtype=np.float32)
            (gradient,) = torch.autograd.grad(distance, xi, allow_unused=True)
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
    if gradient is None:
        return np.zeros(tuple(x.shape[1:]), dtype=np.float32)
    return gradient[0].detach().float().cpu().numpy()


@dataclass(frozen=True, eq=False)
class FilterSaliencyResult:
    """``FilterSaliency.explain``'s result for one image.

    ``index`` the filter index used; ``profile`` (F,) s(x) (eq. 1); ``z`` (F,) (eq. 2);
    ``top`` the k columns of highest z, descending; ``top_filters`` a dict per top filter
    (column, layer, filter, z); ``probabilities`` (K,) softmax; ``prediction``;
    ``raw_map`` (S, S) |max over channels of dD_C/dx| (eq. 4); ``map`` (S, S) in [0, 1];
    ``view`` uint8 (S, S, 3) the image as the model sees it; ``notes`` list of str.
    """

    index: FilterIndex
    profile: np.ndarray
    z: np.ndarray
    top: np.ndarray
    top_filters: list[dict[str, Any]]
    probabilities: np.ndarray
    prediction: int
    raw_map: np.ndarray
    map: np.ndarray
    view: np.ndarray
    notes: list[str] = field(default_factory=list)


class FilterSaliency(Explainer):
    """One image's filter saliency profile, its top filters and its input-space map.

    ``k``: the filters boosted (the paper's F, authors' default 10); more than the model
    has is clamped, with a note. ``boost``: the factor of eq. 3 (100). ``low_percentile``,
    ``high_percentile``, ``blur_sigma``: the map's post-processing (``postprocess``).
    ``method``: how ``core.methods.saliency.filters.filter_profiles`` computes the profile.

    ``explain(model, image, label, mu=, sigma=, index=)`` returns a ``FilterSaliencyResult``.
    """

    result_type = FilterSaliencyResult

    def __init__(
        self,
        *,
        k: int = 10,
        boost: float = 100.0,
        low_percentile: float = 90.0,
        high_percentile: float = 99.0,
        blur_sigma: float = 1.0,
        method: str = "auto",
    ) -> None:
        self.k = k
        self.boost = boost
        self.low_percentile = low_percentile
        self.high_percentile = high_percentile
        self.blur_sigma = blur_sigma
        self.method = method

    def explain(
        self, model: LoadedModel, images: Image.Image, targets: int, *,
        mu: np.ndarray, sigma: np.ndarray, index: FilterIndex,
    ) -> FilterSaliencyResult:
        """Profile, top-k filters and input map of one PIL image ``images`` with true class
        ``targets`` (an int), standardised with the reference ``mu`` and ``sigma`` (F,) of
        the filters of ``index`` (``core.methods.saliency.filters.ProfileStats``)."""
        image, label = images, targets
        k = _check_count(self.k, "k", 1)
        boost = _check_positive(self.boost, "boost")
        blur = _check_positive(self.blur_sigma, "blur_sigma", allow_zero=True)
        low, high = self.low_percentile, self.high_percentile
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or not 0 <= low <= high <= 100:
            raise DataError(f"Need 0 <= low_percentile <= high_percentile <= 100, got {low!r} and {high!r}.")
        if self.method not in METHODS:
            raise DataError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}.")
        if not isinstance(image, Image.Image):
            raise DataError(f"The image must be one PIL image, got {type(image).__name__}.")
        label = _check_label(label, model.num_classes)
        _check_index(model.module, index)
        mu, sigma = _check_stats(mu, sigma, index)
        notes: list[str] = []
        n = index.n_filters
        if k > n:
            notes.append(f"k = {k} is more than the model's {n} filters: all {n} are used.")
            k = n
        x = make_transform(model.input_size, model.mean, model.std)(image).unsqueeze(0).to(model.device)
        y = torch.tensor([label], device=model.device)
        with eval_mode(model.module):
            with torch.inference_mode():
                probabilities = _softmax(model.module(x))[0]
            profile = filter_profiles(model.module, x, y, index, method=self.method)[0].cpu().numpy()
        z = standardise(profile[None], mu, sigma)[0]
        top = np.argsort(-z, kind="stable")[:k]
        gradient = _input_gradient(model, x, y, index, mu, sigma, top, boost)
        return FilterSaliencyResult(
            index=index,
            profile=profile.astype(np.float32),
            z=z,
            top=top.astype(np.int64),
            top_filters=[
                {"column": int(c), "layer": index.name(int(c))[0], "filter": index.name(int(c))[1], "z": float(z[c])}
                for c in top
            ],
            probabilities=probabilities,
            prediction=int(np.argmax(probabilities)),
            raw_map=np.abs(gradient.max(axis=0)).astype(np.float32),
            map=postprocess(gradient, low, high, blur),
            view=model_view(model, image),
            notes=notes,
        )


# --------------------------------------------------------------------------- turning filters off


def _ci_columns(values: np.ndarray, name: str, seed: int) -> dict[str, float]:
    mean, low, high = bootstrap_ci(values, n_resamples=1000, seed=seed)
    return {name: mean, f"{name}_low": low, f"{name}_high": high}


@dataclass(frozen=True, eq=False)
class FilterTurnOffResult:
    """``FilterTurnOff.explain``'s result for a batch of images.

    ``curves`` DataFrame (image, order, k, true_confidence, wrong_confidence, correct): the
    softmax of the true class and of the class the unchanged model predicted, and whether
    the prediction is now the true class (for ``random``, the mean over the random orders,
    so a share); ``predictions`` (B,) the unchanged model's classes; ``max_k`` the k
    reached; ``notes`` list of str; ``seed`` the explainer's seed (``summary``'s resamples).
    """

    curves: pd.DataFrame
    predictions: np.ndarray
    max_k: int
    notes: list[str] = field(default_factory=list)
    seed: int = 0

    def summary(self) -> pd.DataFrame:
        """Per (order, k): images n, mean true and wrong confidence and share corrected, each
        with a 95% percentile bootstrap interval over images (1000 resamples, ``seed``)."""
        return curves_summary(self.curves, seed=self.seed)


class FilterTurnOff(Explainer):
    """Turning the most salient filters off, against random and least salient ones (Fig. 3).

    For each image, filters are zeroed cumulatively, k = 0..``max_k``, in three orders:
    ``salient`` (descending |z|, as the authors' pruning), ``random`` (``n_random`` seeded
    random orders, averaged per image) and ``least`` (ascending |z|). A filter is turned
    off by W[f] = 0 in new weight tensors (any conv bias or BN after it is kept).

    ``explain(model, x, labels, z=, index=)`` returns a ``FilterTurnOffResult``.
    """

    result_type = FilterTurnOffResult

    def __init__(self, *, max_k: int = 30, n_random: int = 5, seed: int = 0) -> None:
        self.max_k = max_k
        self.n_random = n_random
        self.seed = seed

    def explain(
        self, model: LoadedModel, images: torch.Tensor, targets: Any, *, z: np.ndarray, index: FilterIndex
    ) -> FilterTurnOffResult:
        """Confidence curves of the batch ``images`` (B, 3, S, S), normalised as the model
        takes them, with true classes ``targets`` (B,) and standardised profiles ``z`` (B, F)
        over the filters of ``index``."""
        max_k = _check_count(self.max_k, "max_k", 0)
        n_random = _check_count(self.n_random, "n_random", 1)
        x = _check_images(images, model.input_size, "images")
        y = _check_labels(targets, len(x), model.num_classes, "targets")
        z = np.asarray(z, dtype=np.float64)
        n = index.n_filters
        if z.shape != (len(x), n):
            raise DataError(f"z must be (images, filters) = ({len(x)}, {n}), got {z.shape}.")
        if len(x) == 0:
            raise DataError("No images to turn filters off for: pass at least one.")
        notes: list[str] = []
        if max_k > n:
            notes.append(f"max_k = {max_k} is more than the model's {n} filters: stopped at {n}.")
            max_k = n
        runner = _with_weights(model, index)
        rng = np.random.default_rng(self.seed)
        x = x.to(model.device)
        rows = []
        with eval_mode(model.module), torch.inference_mode():
            predictions = model.module(x).float().argmax(dim=1).cpu().numpy()
            if runner.copy is not None:
                runner.copy.eval()
            ks = np.arange(max_k + 1)
            for i in range(len(x)):
                magnitude = np.abs(z[i])
                orders = [np.argsort(-magnitude, kind="stable")]
                orders += [rng.permutation(n) for _ in range(n_random)]
                orders.append(np.argsort(magnitude, kind="stable"))
                keep = np.ones((len(orders), max_k + 1, n), dtype=np.float32)
                for o, order in enumerate(orders):
                    for k in ks[1:]:
                        keep[o, k, order[:k]] = 0.0  # prefix of the order turned off
                keep_t = torch.as_tensor(keep.reshape(-1, n), device=x.device)
                probs = _softmax(runner.masked_logits(x[i : i + 1], keep_t, index))
                probs = probs.reshape(len(orders), max_k + 1, -1)
                true = probs[:, :, int(y[i])]
                wrong = probs[:, :, int(predictions[i])]
                correct = (probs.argmax(axis=2) == int(y[i])).astype(np.float64)
                groups = {"salient": [0], "random": list(range(1, 1 + n_random)), "least": [len(orders) - 1]}
                for order, members in groups.items():
                    for k in ks:
                        rows.append(
                            {
                                "image": i, "order": order, "k": int(k),
                                "true_confidence": float(true[members, k].mean()),
                                "wrong_confidence": float(wrong[members, k].mean()),
                                "correct": float(correct[members, k].mean()),
                            }
                        )
        if (predictions == y.numpy()).any():
            notes.append(
                f"{int((predictions == y.numpy()).sum())} of the {len(x)} images are already "
                "classified correctly: their 'wrong' class is the true one."
            )
        return FilterTurnOffResult(
            curves=pd.DataFrame(rows, columns=["image", "order", "k", "true_confidence", "wrong_confidence", "correct"]),
            predictions=predictions.astype(np.int64),
            max_k=max_k,
            notes=notes,
            seed=self.seed,
        )


def curves_summary(curves: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """``FilterTurnOffResult.summary`` for any curves frame (image, order, k, true_confidence,
    wrong_confidence, correct): one row per (order, k) with bootstrap intervals over images."""
    rows = []
    rank = {name: i for i, name in enumerate(ORDERS)}
    keys = sorted(curves[["order", "k"]].drop_duplicates().itertuples(index=False), key=lambda t: (rank.get(t[0], 99), t[1]))
    for order, k in keys:
        group = curves[(curves["order"] == order) & (curves["k"] == k)]
        row: dict[str, Any] = {"order": order, "k": int(k), "n": len(group)}
        row.update(_ci_columns(group["true_confidence"].to_numpy(), "true_confidence", seed))
        row.update(_ci_columns(group["wrong_confidence"].to_numpy(), "wrong_confidence", seed))
        row.update(_ci_columns(group["correct"].to_numpy(), "corrected", seed))
        rows.append(row)
    columns = ["order", "k", "n"] + [
        f"{m}{s}" for m in ("true_confidence", "wrong_confidence", "corrected") for s in ("", "_low", "_high")
    ]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- fine-tuning check


FINE_TUNE_METRICS = (
    "image_corrected",
    "image_true_confidence_change",
    "neighbours_corrected_share",
    "neighbours_true_confidence_change",
)


@dataclass(frozen=True, eq=False)
class FineTuneResult:
    """``FineTuneCheck.explain``'s result for one image.

    ``results`` DataFrame, one row per variant: image_corrected (share for random),
    image_true_confidence_change, neighbours_corrected_share (of the neighbours the
    unchanged model got wrong, the share now right; NaN without any), and
    neighbours_true_confidence_change (mean over the neighbours); ``k`` the filters
    updated; ``selected`` (variant -> chosen columns; random: the first set); ``notes``.
    """

    results: pd.DataFrame
    k: int
    selected: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


class FineTuneCheck(Explainer):
    """One normalised gradient step on a single image through k filters only (Fig. 6).

    The step updates the chosen filters alone: W[f] -= step * ||W_selected|| * g[f] /
    ||g_selected||, with g the gradient of the image's cross-entropy and both norms taken over
    all chosen filters together: a normalised step whose size is a share of those filters'
    weights, so one default fits any model's scale. Variants: ``salient`` (the k highest z), ``random`` (``n_random``
    seeded random k-sets, averaged) and ``least`` (the k lowest z). ``k`` None: 1% of the
    filters (at least 1); more than 1% is clamped to it, with a note, as in the paper.
    ``step``: the paper gives no size for its normalised step (and no code for it); 0.1
    corrected 27% of 15 demo errors through their 2 most salient filters, against 13%
    (random) and 7% (least salient); 1e-3 of the raw weights moved nothing.
    ``n_neighbours``: the first neighbours given are used (pass them nearest first).

    ``explain(model, x_image, label, z=, index=, neighbours=, neighbour_targets=)`` returns
    a ``FineTuneResult``.
    """

    result_type = FineTuneResult

    def __init__(
        self, *, k: int | None = None, step: float = 0.1, n_neighbours: int = 10, n_random: int = 5, seed: int = 0
    ) -> None:
        self.k = k
        self.step = step
        self.n_neighbours = n_neighbours
        self.n_random = n_random
        self.seed = seed

    def explain(
        self, model: LoadedModel, images: torch.Tensor, targets: int, *, z: np.ndarray, index: FilterIndex,
        neighbours: torch.Tensor | None = None, neighbour_targets: Any = None,
    ) -> FineTuneResult:
        """The effect of the one-step update of each variant on the image and its neighbours.

        ``images``: a batch (1, 3, S, S) of the one image, normalised as the model takes it;
        ``targets``: its true class (an int); ``z`` (F,) its standardised profile over the
        filters of ``index``; ``neighbours`` (N, 3, S, S), nearest first, and their true
        classes ``neighbour_targets`` (N,): the images the step should also help (None:
        none)."""
        step = _check_positive(self.step, "step")
        n_neighbours = _check_count(self.n_neighbours, "n_neighbours", 0)
        n_random = _check_count(self.n_random, "n_random", 1)
        x_image = _check_images(images, model.input_size, "images")
        if len(x_image) != 1:
            raise DataError(f"images must hold exactly one image, got {len(x_image)}: pass one, e.g. x[i : i + 1].")
        label = _check_label(targets, model.num_classes)
        n = index.n_filters
        z_image = z
        z = np.asarray(z_image, dtype=np.float64).reshape(-1)
        if z.shape != (n,):
            raise DataError(f"z must hold one value per filter ({n}), got shape {np.shape(z_image)}.")
        cap = max(1, n // 100)
        notes: list[str] = []
        if self.k is None:
            k = cap
        else:
            k = _check_count(self.k, "k", 1)
            if k > cap:
                notes.append(f"k = {k} is more than 1% of the model's {n} filters: clamped to {cap}.")
                k = cap
        if neighbours is None:
            neighbours = torch.zeros((0, 3, model.input_size, model.input_size))
            neighbour_targets = np.zeros(0, dtype=np.int64)
        neighbour_x = _check_images(neighbours, model.input_size, "neighbours")
        neighbour_y = _check_labels(neighbour_targets, len(neighbour_x), model.num_classes, "neighbour_targets")
        neighbour_x, neighbour_y = neighbour_x[:n_neighbours], neighbour_y[:n_neighbours]
        if len(neighbour_x) == 0:
            notes.append("No neighbours given: their columns are NaN.")
        runner = _with_weights(model, index)
        device = model.device
        batch = torch.cat([x_image.to(device), neighbour_x.to(device)])
        targets = torch.cat([torch.tensor([label]), neighbour_y]).to(device)
        offsets = index.offsets
        rng = np.random.default_rng(self.seed)
        order = np.argsort(-z, kind="stable")
        choices = {"salient": [order[:k]], "random": [rng.choice(n, size=k, replace=False) for _ in range(n_random)],
                   "least": [order[::-1][:k]]}
        with eval_mode(model.module):
            if runner.copy is not None:
                runner.copy.eval()
            grads = runner.gradients(x_image.to(device), torch.tensor([label], device=device))
            with torch.inference_mode():
                before = _softmax(runner.logits(batch, {}))
                rows = []
                for variant in VARIANTS:
                    results = []
                    for columns in choices[variant]:
                        weights = _stepped(runner, grads, index, offsets, columns, step)
                        if weights is None:
                            notes.append(f"The gradient of the chosen {variant} filters is zero: no step taken.")
                            weights = {}
                        after = _softmax(runner.logits(batch, weights))
                        results.append(_fine_tune_effect(before, after, targets.cpu().numpy()))
                    rows.append({"variant": variant, **{m: float(np.mean([r[m] for r in results])) for m in FINE_TUNE_METRICS}})
        return FineTuneResult(
            results=pd.DataFrame(rows, columns=["variant", *FINE_TUNE_METRICS]),
            k=k,
            selected={v: np.asarray(c[0], dtype=np.int64) for v, c in choices.items()},
            notes=list(dict.fromkeys(notes)),
        )

    @staticmethod
    def aggregate(frames: Sequence[pd.DataFrame], seed: int = 0) -> pd.DataFrame:
        """Per variant, the mean of each metric over many images' ``results`` with a 95%
        percentile bootstrap interval over images (NaN entries, e.g. no neighbours, skipped)."""
        return aggregate(frames, seed=seed)


def aggregate(frames: Sequence[pd.DataFrame], seed: int = 0) -> pd.DataFrame:
    """``FineTuneCheck.aggregate``: per variant mean and 95% bootstrap interval of each metric."""
    columns = ["variant", "n"] + [f"{m}{s}" for m in FINE_TUNE_METRICS for s in ("", "_low", "_high")]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(list(frames), ignore_index=True)
    rows = []
    for variant in [v for v in VARIANTS if v in set(table["variant"])]:
        group = table[table["variant"] == variant]
        row: dict[str, Any] = {"variant": variant, "n": len(group)}
        for metric in FINE_TUNE_METRICS:
            values = group[metric].to_numpy(dtype=np.float64)
            row.update(_ci_columns(values[np.isfinite(values)], metric, seed))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _stepped(
    runner: _Weights, grads: dict[str, torch.Tensor], index: FilterIndex, offsets: np.ndarray,
    columns: np.ndarray, step: float,
) -> dict[str, torch.Tensor] | None:
    """New conv weights with W[f] -= step * ||W_selected|| * g[f] / ||g_selected|| for the
    chosen columns."""
    chosen: dict[str, list[int]] = {}
    for c in np.sort(np.asarray(columns)):
        layer = int(np.searchsorted(offsets, c, side="right") - 1)
        chosen.setdefault(f"{index.layers[layer]}.weight", []).append(int(c - offsets[layer]))
    norm = torch.sqrt(sum((grads[name][rows].double() ** 2).sum() for name, rows in chosen.items()))
    size = torch.sqrt(sum((runner.originals[name][rows].double() ** 2).sum() for name, rows in chosen.items()))
    if not float(norm) > 0:
        return None
    weights = {}
    for name, rows in chosen.items():
        w = runner.originals[name].clone()
        w[rows] -= (step * size / norm).to(w.dtype) * grads[name][rows]
        weights[name] = w
    return weights


def _fine_tune_effect(before: np.ndarray, after: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The four Fig. 6 metrics: row 0 is the image, the rest its neighbours."""
    rows = np.arange(len(targets))
    true_before, true_after = before[rows, targets], after[rows, targets]
    right_after = after.argmax(axis=1) == targets
    wrong_before = before.argmax(axis=1) != targets
    neighbours_wrong = wrong_before[1:]
    return {
        "image_corrected": float(right_after[0]),
        "image_true_confidence_change": float(true_after[0] - true_before[0]),
        "neighbours_corrected_share": float(right_after[1:][neighbours_wrong].mean()) if neighbours_wrong.any() else float("nan"),
        "neighbours_true_confidence_change": float((true_after[1:] - true_before[1:]).mean()) if len(rows) > 1 else float("nan"),
    }


# --------------------------------------------------------------------------- masking


@dataclass(frozen=True, eq=False)
class MaskingResult:
    """``MaskingExperiment.explain``'s result for one image.

    ``mask`` (S, S) bool, the pixels masked; ``masked_share``; ``probabilities_before`` and
    ``probabilities_after`` (K,); ``z_before`` and ``z_after`` (F,); ``top_saliency_before``
    and ``top_saliency_after`` the mean z of the top filters; ``saliency_drop`` = before -
    after.
    """

    mask: np.ndarray
    masked_share: float
    probabilities_before: np.ndarray
    probabilities_after: np.ndarray
    z_before: np.ndarray
    z_after: np.ndarray
    top_saliency_before: float
    top_saliency_after: float
    saliency_drop: float


class MaskingExperiment(Explainer):
    """Masking the most salient pixels of an input map, or the least salient as a control (Fig. 7).

    Pixels with ``map >= threshold`` are set to the dataset mean colour (zero after
    normalisation); with ``least=True`` the same number of pixels with the lowest map
    values are masked instead. The image's top filters (``top``) are re-scored on the
    masked image: the paper's check that the highlighted pixels drive their saliency.

    ``explain(model, image, label, saliency_map=, top=, mu=, sigma=, index=)`` returns a
    ``MaskingResult``.
    """

    result_type = MaskingResult

    def __init__(self, *, threshold: float = 0.5, least: bool = False) -> None:
        self.threshold = threshold
        self.least = least

    def explain(
        self, model: LoadedModel, images: Image.Image, targets: int, *, saliency_map: np.ndarray,
        top: Sequence[int] | np.ndarray, mu: np.ndarray, sigma: np.ndarray, index: FilterIndex,
    ) -> MaskingResult:
        """Output and top-filter saliency of one PIL image ``images`` with true class
        ``targets`` (an int), before and after masking by its ``saliency_map`` (S, S) in
        [0, 1]; ``top`` the filter columns re-scored (both from ``FilterSaliency.explain``:
        its result's ``map`` and ``top``), standardised with ``mu`` and ``sigma`` (F,)."""
        image, label = images, targets
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float) or not np.isfinite(self.threshold):
            raise DataError(f"threshold must be a number (maps are in [0, 1]), got {self.threshold!r}.")
        if not isinstance(image, Image.Image):
            raise DataError(f"The image must be one PIL image, got {type(image).__name__}.")
        label = _check_label(label, model.num_classes)
        _check_index(model.module, index)
        mu, sigma = _check_stats(mu, sigma, index)
        size = model.input_size
        input_map = np.asarray(saliency_map, dtype=np.float64)
        if input_map.shape != (size, size) or not np.isfinite(input_map).all():
            raise DataError(
                f"saliency_map must be a finite ({size}, {size}) map (FilterSaliencyResult.map), got {input_map.shape}."
            )
        top = np.asarray(top, dtype=np.int64).reshape(-1)
        if top.size == 0 or top.min() < 0 or top.max() >= index.n_filters:
            raise DataError(f"top must hold filter columns in 0..{index.n_filters - 1} (FilterSaliencyResult.top).")
        mask = input_map >= self.threshold
        if self.least:
            flat = np.zeros(size * size, dtype=bool)
            flat[np.argsort(input_map.reshape(-1), kind="stable")[: int(mask.sum())]] = True
            mask = flat.reshape(size, size)
        x = make_transform(size, model.mean, model.std)(image).unsqueeze(0).to(model.device)
        keep = torch.as_tensor(~mask, dtype=x.dtype, device=x.device)
        batch = torch.cat([x, x * keep])  # 0 after normalisation = the mean colour
        y = torch.tensor([label, label], device=model.device)
        with eval_mode(model.module):
            with torch.inference_mode():
                probabilities = _softmax(model.module(batch))
            profiles = filter_profiles(model.module, batch, y, index).cpu().numpy()
        z = standardise(profiles, mu, sigma)
        before, after = float(z[0, top].mean()), float(z[1, top].mean())
        return MaskingResult(
            mask=mask,
            masked_share=float(mask.mean()),
            probabilities_before=probabilities[0],
            probabilities_after=probabilities[1],
            z_before=z[0],
            z_after=z[1],
            top_saliency_before=before,
            top_saliency_after=after,
            saliency_drop=before - after,
        )


# --------------------------------------------------------------------------- known-answer measure


def marker_mass_ratio(maps: np.ndarray, boxes_mask: np.ndarray) -> float:
    """(share of the maps' total mass inside the boxes) / (share of the pixels in the boxes).

    Pooled over all images (``maps`` (n, S, S) >= 0, ``boxes_mask`` (n, S, S) bool): 1 means
    the maps ignore the boxes, above 1 that they concentrate there. NaN without any mass
    or box.
    """
    maps = np.asarray(maps, dtype=np.float64)
    boxes = np.asarray(boxes_mask, dtype=bool)
    if maps.shape != boxes.shape or maps.ndim != 3:
        raise InputError(
            f"maps and boxes_mask must both be (n, S, S), got {maps.shape} and {boxes.shape}: "
            "give one map and one box mask per image, at the same size."
        )
    total = maps.sum()
    area = boxes.mean() if boxes.size else 0.0
    if not total > 0 or not area > 0:
        return float("nan")
    return float((maps[boxes].sum() / total) / area)
