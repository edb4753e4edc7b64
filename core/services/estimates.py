"""How long a heavy run will take on this server, and the caps hosted visitors run under.

Heavy runs say their expected time beside their button before they start, and a hosted
server refuses a visitor's run that passes a cap below, with what to make smaller. The
estimates are arithmetic on the data's size (images, layers and their widths, seeds,
epochs, filters) and on the model's multiply-adds per image (``model_cost``, counted with
one forward pass of one blank image).

Calibration (rerun it by timing the calls named below), this project's 2-core
CPU VM, 2026-12-07, in CPU seconds of one torch thread (``time.process_time`` under
``torch.set_num_threads(1)``): other processes shared the machine (load 6 to 11), which
inflated wall-clock times up to 20-fold but not these. The fewest seconds of 5 to 16 repeats:

- per image, the tiny test CNN (0.28 M multiply-adds, 16 px), the demo CNN (10.4 M, 32 px)
  and resnet18 (1.81 G, 224 px): a forward pass (``reduced_activations``) 0.13 ms, 0.59 ms,
  40 ms; a saliency profile (``build_profiles``) 0.24 ms, 1.6 ms, 207 ms; turning filters
  off (``FilterTurnOff``, 217 masked passes) 6.0 ms, 0.11 s, 12.2 s; the fine-tuning check
  (``FineTuneCheck``, 10 neighbours) 7.1 ms, 49 ms, 3.7 s. Each curve a + A * macs ** P
  passes through its three points;
- the neighbour search over 20,000 x 2,000 float16 profiles (``row_norms``, ``nearest``);
- ``LinearProbes.fit`` on 13 sizes (300 to 4,608 images, widths 16 to 8,192, 3 to 36
  groups, 1 to 5 seeds, 1 to 50 epochs): every estimate within 8% of its measurement.

Two threads on a quiet machine ran 1.3 to 1.4 times faster (probes, the demo's profiles);
a busy server is slower. The estimates are for one run at a time, as the run queue serves
them (core/services/runqueue.py).

The methods' runs (same machine and date, same measure, BLAS and OpenMP pools also limited
to one thread with threadpoolctl; load 3 to 6, a benchmark beside them; the fewest seconds
of 2 or 3 repeats, a single run for k-means and the weighted Ward tree; synthetic data:
10 Gaussian clusters, exponential losses):

- the spotlight search (``Spotlight.fit``), 20 and 200 steps at 1,000 x 32, 10,000 x 32,
  40,000 x 32, 100,000 x 16, 2,000 x 512, 20,000 x 512 and 5,000 x 2,048 (0.02 to 2.73 s),
  the difference giving the cost of a step: 0.43 ms plus 0.40 ns per image x searched
  coordinate; per spotlight 2.5 us per image (the high-loss start, the size bisection);
  the principal directions of 4,096 x 512 / 1,024 / 2,048 rows 0.061 / 0.35 / 2.97 s
  (20 ps per row x d^2 plus 0.30 ns per d^3); checked on 3 spotlights at 4,000 x 128
  (0.28 s), 5,000 x 64 diagonal (0.10 s) and PCA 64 of 20,000 x 512 (0.50 s);
- UDIS (``UDIS.fit``) at 300 x 128, 1,000 x 128, 2,500 x 512, 5,000 x 512 (exact Ward:
  0.05, 0.30, 1.77, 6.37 s), 8,000 x 512 and 20,000 x 512 (two-stage: 6.30, 8.23 s); its
  parts: scipy's Ward linkage at 1,000 to 5,000 images of 64 and 512 dims (0.02 to 3.40 s),
  the silhouette sample's distances and one silhouette score at 1,000 and 4,000 images
  (0.005 to 0.27 s), k-means (4,096 or 1,024 clusters, 64 dims, 10 iterations) of 10,000
  and 20,000 images (0.55 to 2.24 s), the weighted Ward tree of 1,024 and 4,096
  micro-clusters (0.05, 1.58 s);
- the 2-D maps: ``project_2d`` PCA of 1,000 x 512, 4,000 x 64 / 512 / 2,048 (0.012 to
  6.3 s) and UMAP of 500 x 64, 2,000 x 64 / 512, 4,000 x 64 / 512 (0.61 to 17.1 s);
  ActiVis' ``Projection`` (t-SNE, UMAP, PCA) of 500 x 64, 1,500 x 512 and 3,000 x 512
  (t-SNE 0.65 / 2.38 / 8.41 s, UMAP 0.64 / 3.32 / 10.65 s, PCA under 0.13 s). The first
  UMAP of a server process imports and compiles umap: 10.2 to 11.4 s more;
- one pass over stored activations or profiles: ``ActivationMatrix.fit`` of 5,000 x 64 to
  100,000 x 128 float16 (1.4 to 48 ms), ``NAPs.fit`` (0.2 to 33 ms), the mean profiles and
  a reference set's statistics of 5,000 x 500 and 20,000 x 2,000 (4 to 176 ms),
  ``FailureModes.fit`` of 300 x 500 and 1,000 x 4,800 (14, 142 ms); the topographic
  layout (``TopographicLayout.fit``) of 8 x 64, 36 x 256 and 36 x 512 NAPs (0.07 to 0.89 s;
  1,000 relaxation steps of 64 to 512 channels 0.7 ns per channel pair and step);
- one image's Filter saliency (``FilterSaliency.explain``) and masking
  (``MaskingExperiment.explain``) with the tiny CNN and resnet18: 5.4 ms and 0.69 s, 4.0 ms
  and 0.47 s.
- occlusion (``OcclusionMap.explain``, same machine and date, load 6.7, the fewest CPU
  seconds of 3 repeats under one thread): 16 images with the demo CNN at 64 window places,
  0.91 s, and one 224 px image with resnet18 at 49 places, 2.58 s: 0.88 ms and 51.6 ms
  per occluded pass.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.errors import BiasLensError
from core.limits import (  # the caps a visitor's run keeps (the method records' settings import them too)
    HOSTED_MAX_EPOCHS,
    HOSTED_MAX_FILTERS_K,
    HOSTED_MAX_IMAGES,
    HOSTED_MAX_PER_GROUP,
    HOSTED_MAX_PROBE_LAYERS,
    HOSTED_MAX_RUN_SECONDS,
    HOSTED_MAX_SEEDS,
)
from core.methods.activis.matrix import PCA_DIMS
from core.methods.spotlight.search import FULL_SEARCH_ENTRIES, MIN_SEARCH_DIMS, SEARCH_ENTRIES
from core.models.loading import LoadedModel
from core.models.torchscript import ScriptedModel

# --------------------------------------------------------------------------- hosted caps

HOSTED_REQUEST_DISK_BYTES = 64 * 10**6  # new probe features one visitor's run may write
HOSTED_VISITOR_DISK_BYTES = 1024 * 10**6  # all probe features visitors wrote beside one store

# --------------------------------------------------------------------------- calibration

# Per image: seconds = a + A * (multiply-adds) ** P, an overhead plus the model's compute.
FORWARD = (1.09e-4, 4.69e-10, 0.857)  # a batched forward pass, loading the image included
PROFILE = (2.00e-4, 2.08e-10, 0.972)  # a saliency profile (per-sample gradients, batched)
MASKED_PASS = (1.03e-5, 1.75e-10, 0.919)  # one of the turn-off experiment's masked passes of one image
CHECK_PASS = (5.84e-5, 4.54e-10, 0.861)  # one image-pass of the fine-tuning check, its gradient spread over them
LOOP_FACTOR = 1.5  # TorchScript models compute profiles one image at a time (README: 1.58x on the demo)
NORMS_S_PER_VALUE = 3.4e-10  # the neighbour search's one pass of norms over the profiles, per value
NEAREST_S_PER_VALUE = 1.3e-10  # one image's neighbour search, per profile value
# Probe training: per layer; per step of each probe; per value of each probe's pass; the same
# times the groups; once per layer, per value of each seed's standardised copy.
PROBE_LAYER_S = 2.09e-2
PROBE_STEP_S = 3.56e-5
PROBE_VALUE_S = 4.52e-9
PROBE_GROUP_VALUE_S = 1.30e-10
PROBE_COPY_S = 1.53e-8
# The spotlight search: per Adam step; per step, per image x searched coordinate; per
# spotlight, per image; per value of the representation (copy, centring, projection).
SPOTLIGHT_STEP_S = 4.3e-4
SPOTLIGHT_STEP_VALUE_S = 4.0e-10
SPOTLIGHT_IMAGE_S = 2.5e-6
SPOTLIGHT_VALUE_S = 5.0e-9
# Principal directions: a covariance per row x d^2, its eigendecomposition per d^3; a thin
# SVD per (long side) x (short side)^2 and per (short side)^3.
COVARIANCE_S = 2.0e-11
EIGH_S = 3.0e-10
SVD_S = 2.3e-10
SVD_CUBE_S = 4.4e-10
# UDIS: scipy's Ward linkage per pair of images, and per pair and dimension; k-means per
# image x cluster x dimension x iteration; the randomised PCA before it per image x d x
# kept dimension; the weighted Ward tree per pair of micro-clusters, and per pair and
# micro-cluster; the silhouette sample's distances per pair, and per pair and dimension; a
# silhouette score per pair; cutting the tree per leaf.
WARD_PAIR_S = 3.1e-8
WARD_PAIR_VALUE_S = 4.7e-10
KMEANS_S = 4.0e-11
REDUCE_S = 2.0e-9
WEIGHTED_WARD_PAIR_S = 2.0e-8
WEIGHTED_WARD_PAIR_LEAF_S = 1.8e-11
DISTANCE_PAIR_S = 4.0e-9
DISTANCE_PAIR_VALUE_S = 3.0e-11
SILHOUETTE_PAIR_S = 2.7e-9
CUT_LEAF_S = 4.7e-6
# 2-D embeddings: per point and per pair of points (and per pair and dimension for UMAP's
# exact neighbours); the first UMAP of a process imports and compiles umap (numba).
UMAP_POINT_S = 8.4e-4
UMAP_PAIR_S = 7.3e-7
UMAP_PAIR_VALUE_S = 1.5e-10
UMAP_FIRST_S = 11.0
TSNE_POINT_S = 9.9e-4
TSNE_PAIR_S = 6.05e-7
RELAX_S = 7.0e-10  # the topographic layout's relaxation, per channel pair and step
# One pass over stored values (float16 activations or profiles), per value.
MATRIX_VALUE_S = 3.5e-9  # ActiVis' activation matrix
NAPS_VALUE_S = 2.0e-9
MEANS_VALUE_S = 2.3e-9  # the mean profiles of the correct and misclassified images
REFERENCE_VALUE_S = 4.4e-9  # a reference subset's mean and deviation (its rows gathered)
MODES_S, MODES_VALUE_S = 9.6e-3, 2.76e-8  # the failure modes: once, and per profile value
PASS_S = 1.0e-3  # a run's fixed cost (checks, bookkeeping)
# One image's Filter saliency (profile, boosted gradient, map) and masking experiment:
# a fixed cost plus this many saliency profiles of the image.
IMAGE_SALIENCY = (4.7e-3, 3.3)
MASKING = (3.5e-3, 2.25)
# One occluded pass of one image (captum's Occlusion, window places batched), a straight line
# in the multiply-adds through the demo CNN (0.88 ms) and resnet18 at 224 px (51.6 ms).
OCCLUSION_PASS = (5.84e-4, 2.815e-11, 1.0)
OCCLUSION_IMAGE_S = 2.0  # one image's occlusion map (a light run): the grid is coarsened to fit
OCCLUSION_MAX_PASSES = 100  # and at most a 10 x 10 grid, so a group of 100 images stays a short run


class HostedLimit(BiasLensError):
    """A hosted server's visitor asked for a run beyond the caps visitors run under."""


@dataclass(frozen=True)
class ModelCost:
    """What one image costs the model: multiply-adds of its forward pass, and whether its
    per-sample gradients run one image at a time (TorchScript)."""

    macs: int
    scripted: bool = False


_COSTS: weakref.WeakKeyDictionary[nn.Module, ModelCost] = weakref.WeakKeyDictionary()


def hook_free_copy(module: nn.Module) -> nn.Module:
    """A private copy of a model for a probe pass (its cost, its layers' shapes): hooks that
    other sessions' runs registered on the shared model neither fire in it nor see its pass.
    A TorchScript model's script is copied and wrapped afresh (its wrapper cannot be copied)."""
    if isinstance(module, ScriptedModel):
        return ScriptedModel(copy.deepcopy(module._script)).eval()
    try:
        twin = copy.deepcopy(module)
    except RuntimeError:  # another thread added or removed a hook while it was copied: once more
        twin = copy.deepcopy(module)
    for sub in twin.modules():
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
    return twin.eval()


def model_cost(model: LoadedModel) -> ModelCost:
    """The multiply-adds of one image's forward pass: each layer with a weight matrix or
    conv kernel adds its output size times the weights behind one output, counted by hooks
    during a pass of one blank image through a private copy (``hook_free_copy``). When no
    hook fires (a graph the hooks cannot see), the pass is timed instead and turned into
    multiply-adds with the forward calibration. Counted once per model (a page asks on
    every rerun)."""
    if model.module in _COSTS:
        return _COSTS[model.module]
    module, size = hook_free_copy(model.module), model.input_size
    x = torch.zeros(1, 3, size, size, device=model.device)
    total = 0

    def count(layer: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            total += out.numel() // max(int(out.shape[0]), 1) * layer.weight[0].numel()

    for layer in module.modules():
        if isinstance(getattr(layer, "weight", None), torch.Tensor) and layer.weight.dim() in (2, 4):
            layer.register_forward_hook(count)  # on the private copy, discarded afterwards
    with torch.inference_mode():
        module(x)
    scripted = isinstance(module, ScriptedModel)
    if total == 0:
        with torch.inference_mode():
            start = time.perf_counter()
            module(x.expand(8, -1, -1, -1))
            seconds = (time.perf_counter() - start) / 8
        overhead, scale, power = FORWARD
        total = int((max(seconds - overhead, overhead) / scale) ** (1 / power))
    _COSTS[model.module] = ModelCost(macs=max(total, 1), scripted=scripted)
    return _COSTS[model.module]


def _per_image(curve: tuple[float, float, float], cost: ModelCost) -> float:
    overhead, scale, power = curve
    return overhead + scale * float(cost.macs) ** power


# --------------------------------------------------------------------------- estimates


def forward_seconds(cost: ModelCost, images: int) -> float:
    """A batched forward pass over ``images`` images (loading them included)."""
    return images * _per_image(FORWARD, cost)


def profile_seconds(cost: ModelCost, images: int) -> float:
    """The dataset's saliency profiles of ``images`` images (per-sample gradients)."""
    return images * _per_image(PROFILE, cost) * (LOOP_FACTOR if cost.scripted else 1.0)


def turn_off_seconds(cost: ModelCost, images: int, max_k: int = 30, n_random: int = 5) -> float:
    """Turning filters off (k = 0..max_k in the salient, least and n_random random orders)
    over ``images`` images: (n_random + 2) x (max_k + 1) masked passes of each image."""
    return images * (n_random + 2) * (max_k + 1) * _per_image(MASKED_PASS, cost)


def fine_tune_seconds(cost: ModelCost, images: int, n_filters: int, dataset_images: int,
                      n_neighbours: int = 10, n_random: int = 5) -> float:
    """The fine-tuning check over ``images`` images: the norms of the dataset's profiles once,
    then per image its neighbour search (over the whole dataset at most) and its gradient
    and n_random + 3 passes over it and its neighbours."""
    values = dataset_images * n_filters
    passes = (n_random + 3) * (1 + n_neighbours) * _per_image(CHECK_PASS, cost)
    return values * NORMS_S_PER_VALUE + images * (values * NEAREST_S_PER_VALUE + passes)


def probe_seconds(images: int, dims: Sequence[int], n_groups: int, seeds: int, epochs: int,
                  shuffled: bool = True, val_share: float = 0.1, batch_size: int = 64) -> float:
    """Training the linear probes of layers of widths ``dims`` on ``images`` images: for each
    layer, a standardised copy of the features per seed, then ``epochs`` passes of 2 x
    ``seeds`` probes (with the shuffled control) over the training split in batches and over
    every image for the accuracies."""
    probes = seeds * (2 if shuffled else 1)
    steps = math.ceil(math.ceil((1 - val_share) * images) / batch_size)
    total = 0.0
    for d in dims:
        values = probes * images * d
        total += (PROBE_LAYER_S + PROBE_COPY_S * seeds * images * d
                  + epochs * (PROBE_STEP_S * steps * probes + PROBE_VALUE_S * values + PROBE_GROUP_VALUE_S * values * n_groups))
    return total


# --------------------------------------------------------------------------- the methods' runs


def _eigen_seconds(rows: int, d: int) -> float:
    """Principal directions of ``rows`` x ``d`` values: their covariance, its eigenvectors."""
    return COVARIANCE_S * rows * d * d + EIGH_S * d**3


def spotlight_seconds(n: int, d: int, n_spotlights: int = 1, steps: int = 1000, precision: str = "spherical",
                      pca: int | None = None, start: str = "best", search_dims: int | str | None = "auto",
                      **_other: Any) -> float:
    """The spotlight search (``Spotlight.fit``) over ``n`` images of ``d`` dims on a CPU, from
    its parameters (pass ``**spotlight.get_params()``; the others do not change the time).
    Each spotlight runs ``steps`` Adam steps of the zero start and half as many of the
    high-loss start ("best"), each a pass over n images x the searched coordinates: all d,
    the PCA's components, or the top principal directions on large problems (as
    ``Spotlight._search_dims`` picks them on a CPU)."""
    n, d = max(int(n), 1), max(int(d), 1)
    seconds = SPOTLIGHT_VALUE_S * n * d
    if pca is not None and 0 < int(pca) < d:
        seconds += _eigen_seconds(n, d) + SPOTLIGHT_VALUE_S * n * int(pca)
        d = int(pca)
    dims = search_dims
    if dims == "auto":
        dims = None if n * d <= FULL_SEARCH_ENTRIES else max(MIN_SEARCH_DIMS, SEARCH_ENTRIES // n - 4)
    q = d
    if dims is not None and precision == "spherical" and int(dims) + 2 < d:
        q = int(dims) + 2
        seconds += _eigen_seconds(min(n, 4096), d) + SPOTLIGHT_VALUE_S * n * q
    coordinates = q + 3 if precision == "spherical" else 2 * q + 1
    runs = {"best": 1.5, "zero": 1.0, "high-loss": 1.0}.get(str(start), 1.5) * max(int(steps), 1)
    per_spotlight = runs * (SPOTLIGHT_STEP_S + SPOTLIGHT_STEP_VALUE_S * n * coordinates) + SPOTLIGHT_IMAGE_S * n
    return PASS_S + seconds + max(int(n_spotlights), 1) * per_spotlight


def spotlight_held_out_seconds(n: int, d: int, **params: Any) -> float:
    """The split-half check of the spotlights (``core.services.score.spotlight_held_out``): the search
    on half the images, then the found kernels on every image."""
    spotlights = max(int(params.get("n_spotlights", 1)), 1)
    return spotlight_seconds(max(int(n) // 2, 1), d, **params) + SPOTLIGHT_VALUE_S * int(n) * int(d) * spotlights


def udis_seconds(n: int, d: int, max_cuts: int = 40, silhouette_sample: int = 4000, exact_limit: int = 5000,
                 micro_clusters: int = 4096, micro_dims: int = 64, micro_iterations: int = 10, **_other: Any) -> float:
    """UDIS (``UDIS.fit``) over ``n`` images of ``d`` dims, from its parameters (pass
    ``**udis.get_params()``): the Ward tree (exact up to ``exact_limit`` images, else k-means
    micro-clusters and their weighted tree), then up to ``max_cuts`` silhouette scores on a
    sample of ``silhouette_sample`` images."""
    n, d = max(int(n), 1), max(int(d), 1)
    if n <= int(exact_limit):
        leaves = n
        tree = n * (n - 1) / 2 * (WARD_PAIR_S + WARD_PAIR_VALUE_S * d)
    else:
        leaves = min(int(micro_clusters), n // 2)
        kept = min(d, int(micro_dims))
        tree = (REDUCE_S * n * d * kept if d > int(micro_dims) else 0.0) \
            + KMEANS_S * n * leaves * kept * int(micro_iterations) \
            + leaves * leaves * (WEIGHTED_WARD_PAIR_S + WEIGHTED_WARD_PAIR_LEAF_S * leaves)
    s = min(int(silhouette_sample), n)
    cuts = s * s * (DISTANCE_PAIR_S + DISTANCE_PAIR_VALUE_S * d) \
        + int(max_cuts) * (SILHOUETTE_PAIR_S * s * s + CUT_LEAF_S * leaves)
    return PASS_S + tree + cuts


def udis_held_out_seconds(n: int, d: int, **params: Any) -> float:
    """The split-half check of UDIS's subgroups (``core.services.score.udis_held_out``): UDIS on half
    the images, then each image's nearest subgroup."""
    return udis_seconds(max(int(n) // 2, 1), d, **params) + SPOTLIGHT_VALUE_S * int(n) * int(d)


def svd_seconds(n: int, d: int) -> float:
    """A thin SVD (or PCA) of ``n`` x ``d`` values."""
    short, long = sorted((max(int(n), 1), max(int(d), 1)))
    return SVD_S * long * short * short + SVD_CUBE_S * short**3


def umap_seconds(n: int, d: int, first: bool | None = None) -> float:
    """A seeded 2-D UMAP of ``n`` points of ``d`` dims. ``first``: the first in this process
    (umap imported and compiled too); None: when umap is not imported yet."""
    n = max(int(n), 1)
    cold = ("umap" not in sys.modules) if first is None else first
    return (UMAP_FIRST_S if cold else 0.0) + UMAP_POINT_S * n + n * n * (UMAP_PAIR_S + UMAP_PAIR_VALUE_S * max(int(d), 1))


def tsne_seconds(n: int) -> float:
    """scikit-learn's Barnes-Hut t-SNE (500 iterations) of ``n`` points of at most 50 dims."""
    n = max(int(n), 1)
    return TSNE_POINT_S * n + TSNE_PAIR_S * n * n


def map_seconds(n: int, d: int, method: str) -> float:
    """A 2-D map of ``n`` points of ``d`` dims (``core.scoring.summary.project_2d``): PCA or UMAP on
    the raw dimensions."""
    if method == "umap":
        return PASS_S + umap_seconds(n, d)
    return PASS_S + svd_seconds(n, d)


def projection_seconds(n: int, d: int, method: str = "tsne", max_points: int = 3000, **_other: Any) -> float:
    """ActiVis' projected view (``Projection.fit``) of ``n`` instances of ``d`` dims, from its
    parameters: a sample of ``max_points`` at most, the first 50 principal components of
    wider layers, then t-SNE, UMAP or PCA."""
    k = min(max(int(n), 1), max(int(max_points), 1))
    d = max(int(d), 1)
    if method == "pca":
        return PASS_S + svd_seconds(k, d)
    reduced = svd_seconds(k, d) if d > PCA_DIMS else 0.0
    dims = min(d, PCA_DIMS)
    return PASS_S + reduced + (tsne_seconds(k) if method == "tsne" else umap_seconds(k, dims))


def matrix_seconds(n: int, channels: int) -> float:
    """ActiVis' activation matrix (``ActivationMatrix.fit``): one pass over ``n`` x ``channels``."""
    return PASS_S + MATRIX_VALUE_S * int(n) * int(channels)


def naps_seconds(n: int, channels: int) -> float:
    """The groups' NAPs (``NAPs.fit``) over ``n`` rows of a layer of ``channels`` channels."""
    return PASS_S + NAPS_VALUE_S * int(n) * int(channels)


def topomap_seconds(groups: int, channels: int, iterations: int = 1000) -> float:
    """The topographic layout (``TopographicLayout.fit``) of a layer's ``channels`` channels
    from ``groups`` groups' NAPs: a UMAP of the channels, then ``iterations`` relaxation steps."""
    c = max(int(channels), 1)
    return PASS_S + umap_seconds(c, groups) + RELAX_S * int(iterations) * c * c


def saliency_means_seconds(n: int, n_filters: int) -> float:
    """The mean profiles of the correct and the misclassified images: one pass over the store."""
    return PASS_S + MEANS_VALUE_S * int(n) * int(n_filters)


def reference_seconds(rows: int, n_filters: int) -> float:
    """A reference subset's mean and deviation of the profiles (``reference_stats``)."""
    return PASS_S + REFERENCE_VALUE_S * int(rows) * int(n_filters)


def failure_modes_seconds(images: int, columns: int) -> float:
    """The failure modes (``FailureModes.fit``) of ``images`` misclassified images' profiles
    on ``columns`` filters."""
    return MODES_S + MODES_VALUE_S * int(images) * int(columns)


def norms_seconds(images: int, n_filters: int) -> float:
    """The neighbour search's norms of ``images`` profiles (``row_norms``): whole rows of
    ``n_filters`` values are read, whatever range of layers is used."""
    return PASS_S + NORMS_S_PER_VALUE * int(images) * int(n_filters)


def neighbours_seconds(images: int, n_filters: int, columns: int | None = None) -> float:
    """One image's nearest neighbours among ``images`` profiles of ``n_filters`` filters
    (``nearest``), on ``columns`` of them (a range of layers; None: all). A range costs a
    copy of each row's part: as much as the norms' pass."""
    every = columns is None or int(columns) >= int(n_filters)
    return PASS_S + (NEAREST_S_PER_VALUE if every else NORMS_S_PER_VALUE) * int(images) * int(n_filters)


def image_saliency_seconds(cost: ModelCost) -> float:
    """One image's Filter saliency (``FilterSaliency.explain``): its profile, top filters and map."""
    overhead, profiles = IMAGE_SALIENCY
    return overhead + profiles * profile_seconds(cost, 1)


def masking_seconds(cost: ModelCost) -> float:
    """The masking experiment on one image (``MaskingExperiment.explain``)."""
    overhead, profiles = MASKING
    return overhead + profiles * profile_seconds(cost, 1)


def image_fine_tune_seconds(cost: ModelCost, neighbours: int, n_random: int = 5) -> float:
    """The fine-tuning check of one image with ``neighbours`` neighbours already found
    (``FineTuneCheck.explain``): n_random + 3 passes over the image and its neighbours."""
    return (n_random + 3) * (1 + int(neighbours)) * _per_image(CHECK_PASS, cost)


def occlusion_passes(cost: ModelCost) -> int:
    """The most window places (model passes) one image's occlusion map may take: 100, fewer
    when the model's passes would make one image take more than 2 s (at least 4)."""
    return int(max(4, min(OCCLUSION_MAX_PASSES, OCCLUSION_IMAGE_S // _per_image(OCCLUSION_PASS, cost))))


def occlusion_seconds(cost: ModelCost, images: int, passes: int) -> float:
    """Occlusion maps of ``images`` images with ``passes`` window places each (plus the
    unchanged image)."""
    return PASS_S + int(images) * (int(passes) + 1) * _per_image(OCCLUSION_PASS, cost)


def counterfactual_seconds(cost: ModelCost, images: int, maps: int, n_random: int) -> float:
    """The counterfactual check's passes over ``images`` images: the unchanged image, one
    hidden region per map and ``n_random`` random ones (the maps themselves not included)."""
    return PASS_S + forward_seconds(cost, int(images) * (1 + int(maps) + int(n_random)))


def duration(seconds: float) -> str:
    """A rounded duration for people: '5 s', '40 s', '6 min', '1.5 h'."""
    if seconds < 10:
        return f"{max(1, round(seconds))} s"
    if seconds < 90:
        return f"{round(seconds, -1):.0f} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def on_this_server(seconds: float) -> str:
    """The estimate as shown beside a button: 'about 6 min on this server'."""
    return f"about {duration(seconds)} on this server"


# --------------------------------------------------------------------------- hosted checks


def check_probe_request(layers: int, seeds: int, epochs: int, per_group: int) -> None:
    """HostedLimit when a visitor's probe run asks for more than the hosted caps."""
    over = [
        f"{name} ({asked}; at most {cap})"
        for name, asked, cap in (("layers", layers, HOSTED_MAX_PROBE_LAYERS), ("seeds", seeds, HOSTED_MAX_SEEDS),
                                 ("epochs", epochs, HOSTED_MAX_EPOCHS), ("cap per group", per_group, HOSTED_MAX_PER_GROUP))
        if asked > cap
    ]
    if over:
        raise HostedLimit(f"This server caps visitors' probe runs: lower the {', '.join(over)}.")


def check_saliency_request(k: int = 0, images: int = 0) -> None:
    """HostedLimit when a visitor's Filter saliency run asks for more filters or images than
    the hosted caps."""
    if k > HOSTED_MAX_FILTERS_K:
        raise HostedLimit(f"This server caps visitors at {HOSTED_MAX_FILTERS_K} filters (k = {k}): use k of at most "
                          f"{HOSTED_MAX_FILTERS_K}.")
    if images > HOSTED_MAX_IMAGES:
        raise HostedLimit(f"This server caps visitors' runs at {HOSTED_MAX_IMAGES} images ({images:,} asked): "
                          f"use at most {HOSTED_MAX_IMAGES}.")


def check_image_run(images: int, seconds: float, what: str) -> None:
    """HostedLimit when a visitor's run over many images passes the image cap or the time
    cap, saying how many images would fit."""
    check_saliency_request(images=images)
    fit = max(fitting(images, seconds), 1)
    check_seconds(seconds, what, f"Use at most {fit:,} image{'s' if fit != 1 else ''}.")


def fitting(amount: int, seconds: float) -> int:
    """How much of ``amount`` (images, epochs) fits the hosted time cap, when ``amount``
    takes ``seconds``: the run's time is taken as proportional to it."""
    return int(amount * HOSTED_MAX_RUN_SECONDS / seconds) if seconds > 0 else amount


def check_seconds(seconds: float, what: str, smaller: str) -> None:
    """HostedLimit when a visitor's run would take longer than the hosted cap by its
    estimate; ``smaller`` says how to make it fit."""
    if seconds > HOSTED_MAX_RUN_SECONDS:
        raise HostedLimit(
            f"{what} would take {on_this_server(seconds)}; visitors may start runs of up to "
            f"{duration(HOSTED_MAX_RUN_SECONDS)}. {smaller}"
        )


def check_disk(new_bytes: int, written_bytes: int, what: str, smaller: str) -> None:
    """HostedLimit when a visitor's run would write more than the per-run disk budget, or
    push what visitors wrote beside the store (``written_bytes``) past the total budget."""
    if new_bytes > HOSTED_REQUEST_DISK_BYTES:
        raise HostedLimit(f"{what} would write {megabytes(new_bytes)} to this server's disk; a visitor's run may write "
                          f"{megabytes(HOSTED_REQUEST_DISK_BYTES)}. {smaller}")
    if written_bytes + new_bytes > HOSTED_VISITOR_DISK_BYTES:
        raise HostedLimit(f"The space this server gives visitors' new results ({megabytes(HOSTED_VISITOR_DISK_BYTES)}) "
                          f"is used up. {smaller}")


def megabytes(n: int) -> str:
    """Bytes in MB, for people."""
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e6:.1f} MB"
