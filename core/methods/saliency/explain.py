"""Parameter-space saliency (Levin et al., "Where do models go wrong?"), the image-level parts.

The per-image filter profiles s(x) (eq. 1) and their standardisation z = (s - mu) / sigma
(eq. 2) live in ``core.methods.saliency.filters``. This module builds the paper's analyses on top of them,
each a per-image explainer (``core.methods.explainer``): parameters in ``__init__``, one
``explain(model, images, targets, **context)`` call that returns a frozen result
(``FilterSaliencyResult``, ``FilterTurnOffResult``, ``FineTuneResult``, ``MaskingResult``):

- ``FilterSaliency``: an image's profile, its top-k filters by z, and the input-space
  saliency map M_F = |d/dx D_C(z(x), s'_F)| (eq. 3-4), post-processed as in the authors'
  code (``postprocess``).
- ``FilterTurnOff``: turning off the k most salient filters (by |z| as the authors' code,
  or by z as the paper's text), k random ones or the k least salient ones, k = 0..max_k
  cumulatively (paper Fig. 3); a filter turned off has its weights and its channel of
  the conv bias and of the following BatchNorm zeroed, so its feature map is 0 (Sec. 3.1).
- ``FineTuneCheck``: one normalised gradient step on a single misclassified image that
  updates only k filters, and its effect on the image and its saliency-space neighbours
  (paper Fig. 6).
- ``MaskingExperiment``: masking the most salient pixels (or, as a control, the least
  salient ones) and the change in the output and in the top filters' saliency (Fig. 7).

None of them changes the model: modified weights (and BatchNorm parameters) are new tensors passed through
``torch.func.functional_call`` (TorchScript modules, which it cannot run, get a throwaway
``copy.deepcopy``), and the input map's double backward only reads the parameters.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import fx, nn

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
RANKINGS = ("magnitude", "signed")  # FilterTurnOff's orders: by |z| (the authors' code) or by z (the paper's text)
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


# --------------------------------------------------------------------------- what turning a filter off zeroes


BATCHNORM_NAMES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})  # TorchScript's original_name
_PAIRINGS: dict[tuple, tuple[dict[str, str], str]] = {}  # module structure -> (conv -> BN, how found)
_PAIRING_LOCK = threading.Lock()


def _is_batchnorm(module: nn.Module | None) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or getattr(module, "original_name", "") in BATCHNORM_NAMES


def _channels(module: nn.Module) -> int | None:
    """A BatchNorm's channels, from its tensors (a TorchScript mirror has no ``num_features``)."""
    for name in ("running_mean", "weight"):
        tensor = getattr(module, name, None)
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 1:
            return int(tensor.shape[0])
    return getattr(module, "num_features", None)


class _ConvTracer(fx.Tracer):
    """An fx tracer that keeps the profiled convs and every BatchNorm as single calls."""

    def __init__(self, convs: frozenset[str]) -> None:
        super().__init__()
        self.convs = convs

    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return name in self.convs or _is_batchnorm(module) or super().is_leaf_module(module, name)


def _traced_pairs(module: nn.Module, convs: frozenset[str]) -> dict[str, str]:
    """conv -> the BatchNorm module called on the conv's output, from an fx trace of ``module``."""
    modules = dict(module.named_modules())
    pairs = {}
    for node in _ConvTracer(convs).trace(module).nodes:
        if node.op != "call_module" or node.target not in convs:
            continue
        for user in node.users:
            if user.op == "call_module" and _is_batchnorm(modules.get(user.target)) and user.args and user.args[0] is node:
                pairs[str(node.target)] = str(user.target)
    return pairs


def _try_trace(module: nn.Module, convs: frozenset[str]) -> dict[str, str] | None:
    """``_traced_pairs``, or None when fx cannot trace the model (data-dependent control flow...)."""
    try:
        return _traced_pairs(module, convs)
    except Exception:  # noqa: BLE001 - fx raises TraceError, TypeError, AttributeError...: all mean "use the fallback"
        return None


def _registered_pairs(module: nn.Module, convs: frozenset[str]) -> dict[str, str]:
    """conv -> the next leaf module in registration order when it is a BatchNorm (the fallback)."""
    leaves = [(name, sub) for name, sub in module.named_modules() if next(sub.children(), None) is None]
    return {name: after for (name, _), (after, sub) in pairwise(leaves) if name in convs and _is_batchnorm(sub)}


@dataclass(frozen=True)
class FeatureMapZeroing:
    """What turning a filter off zeroes besides its weights, so its feature map is 0.

    ``zeroed`` maps each conv layer to the per-channel tensors (parameter or buffer names)
    zeroed with its filters: the conv's own bias, and the gamma and beta of the BatchNorm
    that reads its output (its running mean for a BatchNorm without them). ``batchnorms``
    maps each conv to that BatchNorm; ``found_by`` says how the pairs were found: ``fx
    trace`` or ``registration order`` (the model cannot be traced); ``total`` the conv layers.
    """

    zeroed: dict[str, tuple[str, ...]]
    batchnorms: dict[str, str]
    found_by: str
    total: int

    @property
    def note(self) -> str:
        """One line for the result's notes: what is zeroed and how the BatchNorms were found."""
        bias = " and conv bias" if any(n == f"{c}.bias" for c, names in self.zeroed.items() for n in names) else ""
        if not self.batchnorms:
            return (f"Turning a filter off zeroes its weights{bias}: no BatchNorm reads a conv's output directly "
                    f"(searched by {self.found_by}), so that is enough for its feature map to be 0.")
        return (f"Turning a filter off zeroes its weights{bias} and its channel of the BatchNorm that reads the conv's "
                f"output, so its feature map is 0 as Levin et al. do ({len(self.batchnorms)} of the {self.total} conv "
                f"layers paired with a BatchNorm, by {self.found_by}).")


def feature_map_zeroing(module: nn.Module, index: FilterIndex) -> FeatureMapZeroing:
    """The tensors to zero with each conv filter so that its feature map is exactly 0.

    The BatchNorm paired with a conv is the one whose module call takes the conv's output
    directly, read from a ``torch.fx`` trace of the model (convs and BatchNorms kept as
    calls); when the model cannot be traced (TorchScript, data-dependent control flow) it is
    the next leaf module in registration order, if that is a BatchNorm. A pair counts only
    when the BatchNorm has one channel per filter. The trace depends on the module tree
    alone, so it is kept per structure: fx patches ``nn.Module.__call__`` for everyone while
    it traces, and tracing once per architecture keeps that window to one moment per process.
    """
    convs = frozenset(index.layers)
    modules = dict(module.named_modules())
    structure = (tuple((n, type(m).__module__, type(m).__qualname__) for n, m in modules.items()), convs)
    with _PAIRING_LOCK:
        if structure not in _PAIRINGS:
            traced = None if _script_of(module) is not None else _try_trace(module, convs)  # fx cannot run TorchScript
            _PAIRINGS[structure] = ((traced, "fx trace") if traced is not None
                                    else (_registered_pairs(module, convs), "registration order"))
        pairs, found_by = _PAIRINGS[structure]
    zeroed, batchnorms = {}, {}
    for layer, count in zip(index.layers, index.counts, strict=True):
        names = []
        bias = getattr(modules[layer], "bias", None)
        if isinstance(bias, torch.Tensor) and tuple(bias.shape) == (count,):
            names.append(f"{layer}.bias")
        bn = pairs.get(layer)
        if bn is not None and _channels(modules[bn]) == count:
            batchnorms[layer] = bn
            affine = [f"{bn}.{t}" for t in ("weight", "bias") if isinstance(getattr(modules[bn], t, None), torch.Tensor)]
            running = getattr(modules[bn], "running_mean", None)
            names += affine or ([f"{bn}.running_mean"] if isinstance(running, torch.Tensor) else [])
        zeroed[layer] = tuple(names)
    return FeatureMapZeroing(zeroed=zeroed, batchnorms=batchnorms, found_by=found_by, total=len(index.layers))


class _Weights:
    """Runs a module with some conv weights replaced by new tensors, never touching it.

    Plain modules go through ``torch.func.functional_call``; a TorchScript module is
    deep-copied once and the copy's tensors are overwritten (the copy is discarded).
    ``originals`` are detached views of the model's conv weights (``name -> tensor``) and,
    with ``zeroing`` (``feature_map_zeroing``), of the per-channel tensors zeroed with them.
    """

    def __init__(self, module: nn.Module, index: FilterIndex, zeroing: FeatureMapZeroing | None = None) -> None:
        self.module = module
        self.names = [f"{layer}.weight" for layer in index.layers]
        self.zeroed = [list(zeroing.zeroed[layer]) if zeroing else [] for layer in index.layers]
        tracked = self.names + [name for names in self.zeroed for name in names]
        self.originals = {name: _tensor(module, name).detach() for name in tracked}
        script = _script_of(module)
        self.copy: nn.Module | None = None
        if script is not None:
            self.copy = copy.deepcopy(script).eval()
            tensors = {**dict(self.copy.named_parameters()), **dict(self.copy.named_buffers())}
            missing = [n for n in tracked if n not in tensors]
            if missing:
                raise ModelError(
                    f"Cannot find the tensors {', '.join(missing[:3])} in the TorchScript file: "
                    "this check needs the conv weights (and BatchNorm parameters) as named tensors."
                )
            self.params = {n: tensors[n] for n in tracked}

    def _load(self, tensors: dict[str, torch.Tensor]) -> None:
        """The TorchScript copy's tracked tensors set to ``tensors``, the others to the originals."""
        with torch.no_grad():
            for name, target in self.params.items():
                target.copy_(tensors.get(name, self.originals[name]))

    def logits(self, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of ``x`` with the tensors ``weights`` (the others unchanged)."""
        if self.copy is None:
            from torch.func import functional_call

            return functional_call(self.module, weights, (x,)).float()
        self._load(weights)
        return self.copy(x).float()

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """dL/dW of the mean cross-entropy of ``(x, y)`` for every conv weight, at the originals."""
        with torch.inference_mode(False), torch.enable_grad():
            if self.copy is None:
                leaves = {n: self.originals[n].clone().requires_grad_(True) for n in self.names}
                loss = F.cross_entropy(self.logits(x, leaves), y)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            else:
                self._load({})
                leaves = {n: self.params[n] for n in self.names}
                for w in leaves.values():
                    w.requires_grad_(True)
                loss = F.cross_entropy(self.copy(x).float(), y)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return {
            n: torch.zeros_like(self.originals[n]) if g is None else g.detach()
            for n, g in zip(self.names, grads, strict=True)
        }

    def turned_off(self, keep: torch.Tensor, index: FilterIndex) -> dict[str, torch.Tensor]:
        """New tensors for one mask ``keep`` (F,), 1 for a filter kept and 0 for one turned off:
        W[f] = 0 and, for each tensor zeroed with the filter's layer, its channel f = 0."""
        bounds = np.concatenate([[0], np.cumsum(index.counts)]).astype(int)
        tensors = {}
        for name, extra, a, b in zip(self.names, self.zeroed, bounds[:-1], bounds[1:], strict=True):
            part = keep[a:b]
            for tensor_name in [name, *extra]:
                original = self.originals[tensor_name]
                shape = (-1,) + (1,) * (original.dim() - 1)
                tensors[tensor_name] = original * part.to(device=original.device, dtype=original.dtype).view(shape)
        return tensors

    def masked_logits(self, x: torch.Tensor, keep: torch.Tensor, index: FilterIndex) -> torch.Tensor:
        """(M, K) logits of the single image ``x`` (1, 3, S, S) under M filter masks.

        ``keep`` (M, F) is 1 for a filter kept and 0 for one turned off (``turned_off``).
        Plain modules evaluate the masks in vmapped chunks; TorchScript copies one at a time.
        """
        if self.copy is not None:
            return torch.cat([self.logits(x, self.turned_off(m, index)) for m in keep])
        from torch.func import vmap

        chunk = max(1, MASK_BYTES // max(4 * index.n_weights, 1))
        try:
            with math_attention():  # a fused attention kernel has no vmap rule (a slow fallback)
                return torch.cat([
                    vmap(lambda m: self.logits(x, self.turned_off(m, index))[0])(keep[i : i + chunk])
                    for i in range(0, len(keep), chunk)
                ])
        except RuntimeError:  # an op vmap cannot batch: one mask at a time
            return torch.cat([self.logits(x, self.turned_off(m, index)) for m in keep])


def turn_off(module: nn.Module, index: FilterIndex, columns: Sequence[int] | np.ndarray, *,
             zero_map: bool = True) -> dict[str, torch.Tensor]:
    """New tensors that turn the filters at these profile ``columns`` off, as ``FilterTurnOff``
    does (``zero_map``: with their conv bias and BatchNorm channels), for
    ``torch.func.functional_call(module, tensors, (x,))``; ``module`` is left as it is."""
    _check_index(module, index)
    keep = torch.ones(index.n_filters)
    keep[torch.as_tensor(np.asarray(columns, dtype=np.int64))] = 0.0
    zeroing = feature_map_zeroing(module, index) if zero_map else None
    return _Weights(module, index, zeroing).turned_off(keep, index)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` of ``module`` (a dotted path)."""
    owner, _, attribute = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attribute)


def _with_weights(model: LoadedModel, index: FilterIndex, zeroing: FeatureMapZeroing | None = None) -> _Weights:
    _check_index(model.module, index)
    return _Weights(model.module, index, zeroing)


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
    ``salient``, ``random`` (``n_random`` seeded random orders, averaged per image) and
    ``least``. ``ranking`` orders the filters: ``magnitude`` (default) by |z|, descending for
    salient and ascending for least, as the authors' pruning code does (the code behind
    their Fig. 3); ``signed`` by z itself, the paper's text ("the most salient filters" are
    those of highest z, as the input-space map and the fine-tuning check pick them), least
    salient then being the most negative z.

    A filter is turned off as the paper does (Sec. 3.1): its weights are zeroed and, with
    ``zero_map`` (default), so are its channel of the conv bias and of the BatchNorm that
    reads the conv's output (gamma and beta; ``feature_map_zeroing``), so its feature map is
    exactly 0, which the paper says its procedure guarantees (it names the BatchNorm biases;
    beta alone would leave -gamma * mean / sqrt(var + eps) where the running mean is not 0).
    ``zero_map=False`` zeroes the weights only, which leaves the map at the BatchNorm's
    constant beta - gamma * mean / sqrt(var + eps) (kept for comparison).
    All in new tensors: the model is never modified.

    ``explain(model, x, labels, z=, index=)`` returns a ``FilterTurnOffResult``.
    """

    result_type = FilterTurnOffResult

    def __init__(
        self, *, max_k: int = 30, n_random: int = 5, seed: int = 0, ranking: str = "magnitude", zero_map: bool = True
    ) -> None:
        self.max_k = max_k
        self.n_random = n_random
        self.seed = seed
        self.ranking = ranking
        self.zero_map = zero_map

    def explain(
        self, model: LoadedModel, images: torch.Tensor, targets: Any, *, z: np.ndarray, index: FilterIndex
    ) -> FilterTurnOffResult:
        """Confidence curves of the batch ``images`` (B, 3, S, S), normalised as the model
        takes them, with true classes ``targets`` (B,) and standardised profiles ``z`` (B, F)
        over the filters of ``index``."""
        max_k = _check_count(self.max_k, "max_k", 0)
        n_random = _check_count(self.n_random, "n_random", 1)
        if self.ranking not in RANKINGS:
            raise ParameterError(f"ranking must be one of {', '.join(RANKINGS)}, not {self.ranking!r}.")
        if not isinstance(self.zero_map, bool):
            raise ParameterError(f"zero_map must be True or False, not {self.zero_map!r}.")
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
        _check_index(model.module, index)
        zeroing = feature_map_zeroing(model.module, index) if self.zero_map else None
        if zeroing is not None:
            notes.append(zeroing.note)
        runner = _with_weights(model, index, zeroing)
        rng = np.random.default_rng(self.seed)
        x = x.to(model.device)
        rows = []
        with eval_mode(model.module), torch.inference_mode():
            predictions = model.module(x).float().argmax(dim=1).cpu().numpy()
            if runner.copy is not None:
                runner.copy.eval()
            ks = np.arange(max_k + 1)
            for i in range(len(x)):
                rank = np.abs(z[i]) if self.ranking == "magnitude" else z[i]
                orders = [np.argsort(-rank, kind="stable")]
                orders += [rng.permutation(n) for _ in range(n_random)]
                orders.append(np.argsort(rank, kind="stable"))
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
