"""VisCUIT's neuron activation panel (Lee, Wang, Hoffman & Chau, 2022, section 3.3): which neurons a
subgroup activates, the image concepts behind a neuron, and neurons that share a concept.

- Highly activated neurons (Summit's rule, ``NeuronSelector``): per image and layer, each
  channel's maximum over space is its activation; channels are taken in descending order
  until their sum exceeds ``mass`` (3%) of the layer's total. A subgroup's activation score
  for a neuron is the fraction of its images that took it. The panel's three columns
  (underperforming only, both, well-performing only) come from comparing the two
  subgroups' scores to a threshold (``neuron_columns``).
- Concept patches (``ConceptPatchFinder``): a neuron's most activating images each get
  random square masks (kept a few pixels apart); every masked input goes through the
  classifier once, and the patches that activate the neuron most are its concept patches.
  Masks depend only on the image row and the seed, so one batched pass serves every
  requested neuron at once.
- Neuron clusters (``NeuronClusters``): the paper trains a separate patch-embedding network
  (initialised from the classifier, trained so that patches of the same neuron have similar
  vectors) and adds each neuron greedily to the most similar cluster when the similarity
  exceeds 0.9. We keep the greedy rule but embed patches with the classifier's own last
  hidden layer, recorded in the same pass as the patch activations: it needs no training,
  costs no extra forward pass and is cached with the patches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from core.data.datasets import ImageDataset
from core.errors import DataError, InputError, ModelError, ParameterError, StoreError
from core.models.loading import LoadedModel, make_transform, model_view
from core.store.hooks import ActivationRecorder

Neuron = tuple[str, int]

COLUMNS = ("under only", "both", "well only")
PAPER_PATCH, PAPER_INPUT = 30, 224  # VisCUIT: 30x30 px patches on 224x224 inputs
MIN_PATCH = 8  # smallest patch that still shows a recognisable part of an image
CLUSTER_THRESHOLD = 0.9  # VisCUIT's similarity above which a neuron joins a concept cluster
_FRAME_COLUMNS = ["layer", "layer_index", "neuron", "under", "well", "column"]


# --------------------------------------------------------------------------- activation scores


class NeuronSelector(BaseEstimator):
    """Summit's highly activated neurons of one layer, per image.

    ``mass``: channels are taken until their sum exceeds this share of the layer's total
    (VisCUIT: 3%). Fitted attribute: ``selected_``, a bool (N, C) array of the channels each
    image (row) took; ``activation_scores(rows)`` reads a subgroup's scores from it.
    """

    def __init__(self, mass: float = 0.03) -> None:
        self.mass = mass

    def fit(self, activations: np.ndarray) -> NeuronSelector:
        """Select from ``activations`` (N, C): each channel's max over space for one layer.

        Negative values count as 0. Channels are taken in descending order until the running
        sum of the taken ones exceeds ``mass`` x the row's total; the channel that crosses the
        line is included, zero channels never are, and a row whose total is 0 selects nothing.
        """
        mass = self.mass
        if not 0 < mass <= 1:
            raise ParameterError(f"mass must be in (0, 1], got {mass}: use a share such as 0.03.")
        values = np.maximum(np.asarray(activations, dtype=np.float64), 0.0)
        if values.ndim != 2:
            raise InputError(f"activations must be (images, channels), got shape {values.shape}: give one row per image.")
        ranked = -np.sort(-values, axis=1)  # each row in descending order
        running = np.cumsum(ranked, axis=1)
        before = np.concatenate([np.zeros((len(values), 1)), running[:, :-1]], axis=1)
        count = ((before <= mass * running[:, -1:]) & (ranked > 0)).sum(axis=1)
        # The taken channels are the `count` largest: those above the last one taken's value,
        # then as many as still needed of those equal to it, lowest channel index first.
        last = np.full(len(values), np.inf)
        last[count > 0] = ranked[count > 0, count[count > 0] - 1]
        above = values > last[:, None]
        tied = values == last[:, None]
        needed = count - above.sum(axis=1)
        self.selected_ = above | (tied & (np.cumsum(tied, axis=1) <= needed[:, None]))
        return self

    def activation_scores(self, rows: np.ndarray) -> np.ndarray:
        """(C,) fraction of the images ``rows`` (indices, or a bool mask over the N images) that
        selected each neuron: a subgroup's neuron activation score. No rows give zeros."""
        check_is_fitted(self)
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.size == 0:
            return np.zeros(self.selected_.shape[1], dtype=np.float64)
        return self.selected_[rows.astype(np.int64)].mean(axis=0)


def neuron_columns(
    scores_under: dict[str, np.ndarray],
    scores_well: dict[str, np.ndarray],
    threshold: float = 0.5,
    layer_order: list[str] | None = None,
) -> pd.DataFrame:
    """The panel's neurons: one row per neuron whose score reaches ``threshold`` for at least
    one of the two subgroups, placed in 'under only', 'both' or 'well only'.

    Scores are per layer, (C,) each; a layer missing from one side scores 0 there.
    ``layer_order`` (network order) defaults to the order of the dictionaries' keys. Rows
    are sorted by layer, then column, then descending best score.
    """
    if not 0 <= threshold <= 1:
        raise ParameterError(f"threshold must be in [0, 1], got {threshold}: use a share of the subgroup's images.")
    layers = list(dict.fromkeys([*scores_under, *scores_well]))
    order = list(dict.fromkeys(layers if layer_order is None else layer_order))
    unplaced = [layer for layer in layers if layer not in order]
    if unplaced:
        raise InputError(f"layer_order lacks the scored layer(s) {', '.join(unplaced)}: add them, or leave layer_order out.")
    frames = []
    for layer in layers:
        under, well = _paired_scores(layer, scores_under.get(layer), scores_well.get(layer))
        high_under, high_well = under >= threshold, well >= threshold
        shown = np.flatnonzero(high_under | high_well)
        column = np.where(
            high_under[shown] & high_well[shown],
            COLUMNS[1],
            np.where(high_under[shown], COLUMNS[0], COLUMNS[2]),
        )
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "layer_index": order.index(layer),
                    "neuron": shown.astype(np.int64),
                    "under": under[shown],
                    "well": well[shown],
                    "column": column.astype(object),
                }
            )
        )
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if table.empty:
        return pd.DataFrame({name: pd.Series(dtype=_dtype(name)) for name in _FRAME_COLUMNS})
    table = table.astype({name: _dtype(name) for name in _FRAME_COLUMNS})
    keys = pd.DataFrame(
        {
            "layer_index": table["layer_index"],
            "column": table["column"].map(COLUMNS.index),
            "best": -np.maximum(table["under"], table["well"]),
            "neuron": table["neuron"],
        }
    )
    return table.loc[keys.sort_values(list(keys.columns), kind="stable").index].reset_index(
        drop=True
    )


def panel_neurons(
    selectors: Mapping[str, NeuronSelector], rows_under: np.ndarray, rows_well: np.ndarray, threshold: float = 0.5
) -> pd.DataFrame:
    """The panel of two subgroups: their activation scores at every layer of ``selectors``
    (fitted, in network order), placed in the three columns by ``neuron_columns``."""
    under = {layer: selector.activation_scores(rows_under) for layer, selector in selectors.items()}
    well = {layer: selector.activation_scores(rows_well) for layer, selector in selectors.items()}
    return neuron_columns(under, well, threshold, list(selectors))


def _paired_scores(
    layer: str, under: np.ndarray | None, well: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' scores of one layer as float (C,) arrays (a missing side scores 0)."""
    either = np.asarray(under if under is not None else well, dtype=np.float64)
    under_scores = np.zeros_like(either) if under is None else np.asarray(under, np.float64)
    well_scores = np.zeros_like(either) if well is None else np.asarray(well, np.float64)
    if under_scores.shape != well_scores.shape or under_scores.ndim != 1:
        raise InputError(
            f"Scores of layer '{layer}' must be two (C,) arrays of one length, got "
            f"{under_scores.shape} and {well_scores.shape}: give both subgroups' scores of the same layer."
        )
    return under_scores, well_scores


def _dtype(column: str) -> str:
    return {"layer_index": "int64", "neuron": "int64", "under": "float64", "well": "float64"}.get(
        column, "object"
    )


# --------------------------------------------------------------------------- concept patches


def patch_size_for(input_size: int) -> int:
    """Side of a concept patch for this input size.

    VisCUIT's 30 px on 224 px inputs, scaled to the input, but at least ``MIN_PATCH`` px or
    a quarter of the input when that is smaller (and at least 3 px, at most the input):
    scaled alone, a 28-32 px input would get 4 px patches, which show nothing a person can
    recognise.
    """
    if input_size < 1:
        raise ParameterError(f"input_size must be positive, got {input_size}: give the model's input side in px.")
    scaled = round(PAPER_PATCH * input_size / PAPER_INPUT)
    return min(max(scaled, min(input_size // 4, MIN_PATCH), 3), input_size)


def mask_positions(
    side: int, size: int, count: int, gap: int, rng: np.random.Generator, attempts: int = 2000
) -> np.ndarray:
    """Up to ``count`` top-left corners (y, x) of ``size`` x ``size`` squares inside a
    ``side`` x ``side`` image, every two at least ``gap`` px apart, as an int (k, 2) array.

    Two squares are far enough apart when ``|y1 - y2| >= size + gap`` or
    ``|x1 - x2| >= size + gap``. Rejection sampling over ``attempts`` random corners (taken
    in order, each kept if it is far enough from those kept before); fewer come back when
    no more fit.
    """
    if not 1 <= size <= side:
        raise ParameterError(f"size must be in [1, {side}] for a {side} px image, got {size}: use a size in that range.")
    if gap < 0 or count < 0 or attempts < 1:
        raise ParameterError(f"gap and count must be >= 0 and attempts >= 1, got {gap}, {count} and {attempts}: use values in those ranges.")
    corners = rng.integers(0, side - size + 1, size=(attempts, 2))
    free = np.ones(attempts, dtype=bool)
    kept: list[np.ndarray] = []
    reach = size + gap
    while len(kept) < count and free.any():
        corner = corners[int(np.argmax(free))]
        kept.append(corner)
        far = np.abs(corners - corner) >= reach
        free &= far[:, 0] | far[:, 1]  # also drops this corner and its duplicates
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


@dataclass
class ConceptPatches:
    """A neuron's concept patches, best first.

    image_rows: the dataset rows of its most activating images (from the store).
    patch_rows, patch_boxes, patch_activations: the best patches' image rows, boxes
      (y, x, size) in model-input pixels and the neuron's activation (max over space) on
      the masked input; up to ``n_patches`` of them.
    patch_images: uint8 RGB crops of those patches at the model's input resolution.
    embedding: mean of the patches' L2-normalised last-hidden-layer embeddings, normalised.
    ties: how many of the shown patches tie with another one's activation. Among tied
      masked inputs, patches of images not yet shown come first, then positions not yet
      shown, so a flat neuron shows varied patches rather than the first masks of one image.
    """

    neuron: Neuron
    image_rows: np.ndarray
    patch_rows: np.ndarray
    patch_boxes: np.ndarray
    patch_activations: np.ndarray
    patch_images: list[np.ndarray]
    embedding: np.ndarray
    ties: int = 0  # patches whose activation equals another shown patch's (a flat neuron)


@dataclass
class _Best:
    """Running top patches of one neuron during the pass (pair indices into the mask list)."""

    pairs: np.ndarray
    activations: np.ndarray
    embeddings: np.ndarray


class ConceptPatchFinder(BaseEstimator):
    """VisCUIT's concept patches of neurons, from one batched pass over masked images.

    A neuron's ``n_images`` most activating images each get ``n_masks`` squares of
    ``patch_size`` px (None: ``patch_size_for`` the input) at least ``gap`` px apart, from
    ``mask_positions`` seeded by ``[seed, row]``, so an image has the same masks for every
    neuron; each neuron keeps its ``n_patches`` patches of highest activation. Masked inputs
    run ``batch_size`` at a time. Fitted attribute: ``patches_``, a ConceptPatches per
    neuron, in the order asked.
    """

    def __init__(
        self,
        n_images: int = 10,
        n_masks: int = 32,
        n_patches: int = 10,
        gap: int = 5,
        patch_size: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        self.n_images = n_images
        self.n_masks = n_masks
        self.n_patches = n_patches
        self.gap = gap
        self.patch_size = patch_size
        self.seed = seed
        self.batch_size = batch_size

    def fit(
        self,
        model: LoadedModel,
        dataset: ImageDataset,
        neurons: Sequence[Neuron],
        max_activations: Callable[[str], np.ndarray],
        embedding_centre: np.ndarray | None = None,
    ) -> ConceptPatchFinder:
        """Find the concept patches of ``neurons`` (layer, channel).

        A neuron's most activating rows come from ``max_activations(layer)`` (the store's
        (N, C) max-pooled activations). A masked input keeps the square and sets everything
        else to 0 (the normalised mean colour). All masked inputs run through the model once,
        with hooks on the requested layers and on the embedding. ``embedding_centre`` (e.g.
        the dataset's mean embedding) is subtracted from the patch embeddings before they are
        normalised: last-hidden-layer vectors are non-negative after a ReLU, so uncentred
        they all have high cosine similarity and every neuron would fall into one cluster.
        """
        wanted = list(dict.fromkeys((str(layer), int(channel)) for layer, channel in neurons))
        if not wanted:
            self.patches_ = {}
            return self
        if min(self.n_images, self.n_masks, self.n_patches, self.batch_size) < 1:
            raise ParameterError("n_images, n_masks, n_patches and batch_size must be at least 1: set each to 1 or more.")
        side = model.input_size
        size = patch_size_for(side) if self.patch_size is None else int(self.patch_size)
        if not 1 <= size <= side:
            raise ParameterError(f"patch_size must be in [1, {side}] px, got {size}: use a size in that range, or None for the default.")
        if not model.embedding_layer:
            raise ModelError("The model has no last hidden layer to embed concept patches with.")
        image_rows = _readable(dataset, _top_images(model, dataset, wanted, max_activations, self.n_images))
        rows = np.unique(np.concatenate(list(image_rows.values())))
        if not len(rows):
            raise DataError("The images that activate these neurons most cannot be read any more (deleted or damaged "
                            "since the store was built).")
        boxes = [
            mask_positions(side, size, self.n_masks, self.gap, np.random.default_rng([self.seed, int(r)]))
            for r in rows
        ]
        pair_rows = np.repeat(rows, [len(b) for b in boxes])
        pair_corners = np.concatenate(boxes)
        best = _masked_pass(
            model, dataset, wanted, image_rows, pair_rows, pair_corners, size, self.n_patches, self.batch_size
        )
        centre = 0.0 if embedding_centre is None else np.asarray(embedding_centre, dtype=np.float64)
        winners = np.concatenate([top.pairs for top in best.values()])
        crops = {int(r): model_view(model, dataset.load_image(int(r))) for r in np.unique(pair_rows[winners])}
        patches: dict[Neuron, ConceptPatches] = {}
        best = {n: _distinct(top, pair_rows, pair_corners, self.n_patches) for n, top in best.items()}
        for neuron in wanted:
            top = best[neuron]
            corners = pair_corners[top.pairs]
            patch_rows = pair_rows[top.pairs]
            patches[neuron] = ConceptPatches(
                neuron=neuron,
                image_rows=image_rows[neuron],
                patch_rows=patch_rows,
                patch_boxes=np.column_stack([corners, np.full(len(corners), size)]).astype(np.int64),
                patch_activations=top.activations,
                patch_images=[
                    crops[int(r)][y : y + size, x : x + size].copy()
                    for r, (y, x) in zip(patch_rows, corners, strict=True)
                ],
                embedding=_unit(_unit(top.embeddings - centre).mean(axis=0)),
                ties=_tied(top.activations),
            )
        self.patches_ = patches
        return self


def _top_images(
    model: LoadedModel,
    dataset: ImageDataset,
    neurons: list[Neuron],
    max_activations: Callable[[str], np.ndarray],
    n_images: int,
) -> dict[Neuron, np.ndarray]:
    """Each neuron's most activating dataset rows (ties: lower row first); checks the names."""
    modules = dict(model.module.named_modules())
    top: dict[Neuron, np.ndarray] = {}
    for layer in dict.fromkeys(layer for layer, _ in neurons):
        if not layer or layer not in modules:
            raise ModelError(
                f"Layer '{layer}' is not a module of the model: pick one of "
                f"{', '.join(model.conv_layers) or 'its modules'}."
            )
        activations = max_activations(layer)
        if activations.ndim != 2 or activations.shape[0] != len(dataset):
            raise StoreError(
                f"The activations of layer '{layer}' have shape {activations.shape}, not one row "
                f"per image of the {len(dataset)}-image dataset: rebuild the store."
            )
        channels = activations.shape[1]
        for name, channel in neurons:
            if name != layer:
                continue
            if not 0 <= channel < channels:
                raise ModelError(
                    f"Layer '{layer}' has {channels} channels (0..{channels - 1}); "
                    f"channel {channel} does not exist."
                )
            column = np.asarray(activations[:, channel], dtype=np.float64)
            top[(name, channel)] = np.argsort(-column, kind="stable")[:n_images].astype(np.int64)
    return top


def _readable(dataset: ImageDataset, image_rows: dict[Neuron, np.ndarray]) -> dict[Neuron, np.ndarray]:
    """``image_rows`` without the rows whose image cannot be read (a file deleted or damaged
    since the store was built): such an image is left out, never fatal."""
    rows = np.unique(np.concatenate(list(image_rows.values()))) if image_rows else np.zeros(0, dtype=np.int64)
    lost = {int(r) for r in rows if dataset.try_load_image(int(r))[0] is None}
    if not lost:
        return image_rows
    return {n: r[~np.isin(r, list(lost))] for n, r in image_rows.items()}


def _masked_pass(
    model: LoadedModel,
    dataset: ImageDataset,
    neurons: list[Neuron],
    image_rows: dict[Neuron, np.ndarray],
    pair_rows: np.ndarray,
    pair_corners: np.ndarray,
    size: int,
    n_patches: int,
    batch_size: int,
) -> dict[Neuron, _Best]:
    """Run every (image row, mask) pair through the model once, in row order, keeping each
    neuron's ``n_patches`` best pairs, and every pair tied with the last of them, with their
    activations and embeddings (``_distinct`` then picks among the ties)."""
    transform = make_transform(model.input_size, model.mean, model.std)
    layers = list(dict.fromkeys(layer for layer, _ in neurons))
    recorder = ActivationRecorder(model, layers, want_embedding=True)
    best = {
        n: _Best(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, 0))) for n in neurons
    }
    loaded: dict[int, torch.Tensor] = {}
    side = torch.arange(model.input_size, device=model.device)
    try:
        with torch.inference_mode():
            for start in range(0, len(pair_rows), batch_size):
                index = np.arange(start, min(start + batch_size, len(pair_rows)))
                batch_rows, position = np.unique(pair_rows[index], return_inverse=True)
                # pairs come in row order: keep only this batch's images loaded
                loaded = {
                    r: loaded[r] if r in loaded else transform(dataset.load_image(r))
                    for r in batch_rows.tolist()
                }
                images = torch.stack([loaded[r] for r in batch_rows.tolist()]).to(model.device)
                corners = torch.as_tensor(pair_corners[index], device=model.device)
                inside_y = (side >= corners[:, :1]) & (side < corners[:, :1] + size)
                inside_x = (side >= corners[:, 1:]) & (side < corners[:, 1:] + size)
                square = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
                recorder.captured.clear()
                model.module(images[torch.as_tensor(position, device=model.device)] * square)
                embeddings = recorder.captured["embedding"].cpu().numpy()
                pooled = {ly: recorder.captured[f"{ly}.max"].cpu().numpy() for ly in layers}
                for neuron in neurons:
                    mine = np.isin(pair_rows[index], image_rows[neuron])
                    if mine.any():
                        best[neuron] = _merge(
                            best[neuron],
                            index[mine],
                            pooled[neuron[0]][mine, neuron[1]],
                            embeddings[mine],
                            n_patches,
                        )
    finally:
        recorder.close()
    return best


def _same(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Activations equal up to float noise (batches of other sizes differ in the last bits)."""
    return np.abs(np.asarray(a) - np.asarray(b)) <= 1e-5 * np.maximum(1.0, np.abs(np.asarray(b)))


def _merge(
    best: _Best, pairs: np.ndarray, activations: np.ndarray, embeddings: np.ndarray, k: int
) -> _Best:
    """The k best of the running top and a batch's new pairs, plus every pair tied with the
    k-th (best first; equal activations in pair order)."""
    all_pairs = np.concatenate([best.pairs, pairs])
    all_activations = np.concatenate([best.activations, activations.astype(np.float64)])
    order = np.argsort(-all_activations, kind="stable")
    if len(order) > k:
        kth = all_activations[order[k - 1]]
        order = order[(all_activations[order] >= kth) | _same(all_activations[order], kth)]
    order = order[np.lexsort((all_pairs[order], -all_activations[order]))]  # ties: the earlier pair
    previous = best.embeddings.reshape(len(best.pairs), embeddings.shape[1])
    all_embeddings = np.concatenate([previous, embeddings])
    return _Best(all_pairs[order], all_activations[order], all_embeddings[order])


def _distinct(best: _Best, pair_rows: np.ndarray, pair_corners: np.ndarray, k: int) -> _Best:
    """The k best pairs; among tied activations, pairs from images not yet chosen come first,
    then pairs at positions not yet chosen, then the earlier pair."""
    chosen: list[int] = []
    rows_used: set[int] = set()
    places_used: set[tuple[int, int]] = set()
    i = 0
    while i < len(best.pairs) and len(chosen) < k:
        j = i + 1
        while j < len(best.pairs) and _same(best.activations[j], best.activations[i]):
            j += 1
        group = list(range(i, j))
        while group and len(chosen) < k:
            def novelty(t: int) -> tuple[bool, bool, int]:
                pair = int(best.pairs[t])
                place = (int(pair_corners[pair][0]), int(pair_corners[pair][1]))
                return int(pair_rows[pair]) in rows_used, place in places_used, t

            pick = min(group, key=novelty)
            group.remove(pick)
            chosen.append(pick)
            pair = int(best.pairs[pick])
            rows_used.add(int(pair_rows[pair]))
            places_used.add((int(pair_corners[pair][0]), int(pair_corners[pair][1])))
        i = j
    index = np.asarray(chosen, dtype=np.int64)
    return _Best(best.pairs[index], best.activations[index], best.embeddings[index])


def _tied(activations: np.ndarray) -> int:
    """How many of these activations equal another one of them."""
    values = np.asarray(activations, dtype=np.float64)
    return int(sum(_same(np.delete(values, i), v).any() for i, v in enumerate(values)))


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Vectors scaled to unit L2 norm along the last axis (zero vectors stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norm, out=np.zeros_like(vectors), where=norm > 0)


# --------------------------------------------------------------------------- clusters


class NeuronClusters(BaseEstimator):
    """Greedy clusters of neurons with similar concept patches (VisCUIT's rule).

    ``threshold``: a neuron joins a cluster when the cosine similarity exceeds it (VisCUIT:
    0.9). Fitted attribute: ``clusters_``, each neuron's cluster id (0, 1, 2, ... in order
    of creation).
    """

    def __init__(self, threshold: float = CLUSTER_THRESHOLD) -> None:
        self.threshold = threshold

    def fit(self, patches: Mapping[Neuron, ConceptPatches]) -> NeuronClusters:
        """Cluster the neurons of ``patches``, taken in the mapping's order: each joins the
        cluster whose mean patch embedding (re-normalised) is most cosine-similar to its own
        if that similarity exceeds ``threshold``, else starts a new cluster."""
        threshold = self.threshold
        if not -1 <= threshold <= 1:
            raise ParameterError(f"threshold is a cosine similarity in [-1, 1], got {threshold}: use a value in that range, e.g. 0.9.")
        sums: list[np.ndarray] = []
        members: dict[Neuron, int] = {}
        for neuron, concept in patches.items():
            vector = _unit(concept.embedding)
            if sums:
                similarity = _unit(np.stack(sums)) @ vector
                nearest = int(np.argmax(similarity))
                if similarity[nearest] > threshold:
                    sums[nearest] = sums[nearest] + vector
                    members[neuron] = nearest
                    continue
            members[neuron] = len(sums)
            sums.append(vector)
        self.clusters_ = members
        return self
