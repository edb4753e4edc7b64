"""UDIS: under-performing subgroups found by clustering the model's own features.

Krishnakumar et al.'s UDIS, as VisCUIT uses it: cluster the last-hidden-layer vectors of
the evaluation images with Ward's hierarchical clustering, cut the tree where the
silhouette score is best, and call a subgroup *under-performing* when it has more than 5
images and its accuracy is below ``threshold`` x the overall accuracy (VisCUIT: 0.5;
UDIS's code: 0.66). For each under-performing subgroup, the *similar well-performing*
subgroup is the nearest (Euclidean, between mean embeddings) subgroup whose accuracy is at
least the overall accuracy.

The tree and the cut, step by step:

1. Ward tree. Up to ``exact_limit`` images: the exact tree over the images (scipy, O(N^2)
   memory and time). Above it, two stages so that memory stays O(N): k-means (in the top
   ``micro_dims`` principal directions, for speed) cuts the images into ``micro_clusters``
   micro-clusters, then an exact *size-weighted* Ward tree is grown on their full-space
   means (Lance-Williams with each micro-cluster's image count, so a merge costs what it
   would cost on the images if each micro-cluster were a tight ball). Micro-clusters are
   the finest subgroups then.
2. Descent. Starting from the root, the highest remaining merge is undone step by step
   (the usual sequence of cuts), except that a node is never split when one of its
   children would have fewer than ``min_size`` images, nor (``stop_at_perfect``, as in
   UDIS's code) when all its images are classified correctly. So every subgroup has at
   least ``min_size`` images and perfect regions stay whole.
3. Cut. UDIS's size range is the part of the descent where no splittable subgroup has
   more than ``max_size`` images (up to where nothing can be split any more): subgroups of
   5-100 images, small enough to share one cause. Among these cuts (all of them, or
   ``max_cuts`` geometrically spaced in the subgroup count), the one with the best
   silhouette score on a fixed random sample of ``silhouette_sample`` images is kept.

``UDIS(...).fit(X, correct)`` runs the three steps (``ward_tree``, ``descend``, the cut);
the threshold is applied afterwards, by ``under_performing(threshold)``.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.cluster.hierarchy import linkage
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.utils.validation import check_is_fitted

from core.errors import BiasLensError
from core.scoring.scorecard import top_loss_rows  # noqa: F401  (re-exported: it lived here)
from core.scoring.stats import binary_bootstrap_ci

MIN_IMAGES = 20
VISCUIT_THRESHOLD = 0.5
UDIS_THRESHOLD = 0.66


class SubgroupError(BiasLensError):
    """The subgroup search cannot run on these inputs."""


class UDIS(BaseEstimator):
    """UDIS as a scikit-learn estimator: parameters here, ``fit(X, correct)`` finds the subgroups.

    ``min_size``/``max_size``: the size range of the cut; ``max_cuts``: how many cuts of the
    range compete; ``silhouette_sample``: images each cut is scored on; ``exact_limit``: the
    exact Ward tree up to this many images, else the two-stage tree with ``micro_clusters``
    k-means micro-clusters (in ``micro_dims`` principal directions, ``micro_iterations``
    Lloyd iterations); ``stop_at_perfect``: keep perfectly classified nodes whole (UDIS's
    code); ``seed``: k-means, PCA and the silhouette sample. The under-performing threshold
    is applied afterwards, by ``under_performing(threshold)``.

    Fitted attributes: ``labels_`` (N,) subgroup of each image; ``subgroups_`` one row per
    subgroup (subgroup, size, correct, accuracy, low and high: its 95% bootstrap interval,
    similar: its similar well-performing subgroup or -1); ``centroids_`` (G, d) mean
    embedding of each subgroup; ``overall_accuracy_``; ``cuts_`` the candidate cuts
    (subgroups, silhouette); ``method_`` (which Ward tree); ``seconds_``; ``notes_``.
    """

    def __init__(
        self,
        min_size: int = 5,
        max_size: int = 100,
        max_cuts: int = 40,
        silhouette_sample: int = 4000,
        exact_limit: int = 5000,
        micro_clusters: int = 4096,
        micro_dims: int = 64,
        micro_iterations: int = 10,
        stop_at_perfect: bool = True,
        seed: int = 0,
    ) -> None:
        self.min_size = min_size
        self.max_size = max_size
        self.max_cuts = max_cuts
        self.silhouette_sample = silhouette_sample
        self.exact_limit = exact_limit
        self.micro_clusters = micro_clusters
        self.micro_dims = micro_dims
        self.micro_iterations = micro_iterations
        self.stop_at_perfect = stop_at_perfect
        self.seed = seed

    def fit(self, X: Any, correct: Any) -> UDIS:
        """UDIS on features X (N, d) of images whose correctness (N,) is known."""
        started = time.perf_counter()
        x = np.asarray(X)
        correct = np.asarray(correct, dtype=bool)
        self._check(x, correct)
        tree, method = ward_tree(x, correct, self)  # 1. the Ward tree
        splits, first = descend(tree, self)  # 2. the descent from the root
        # 3. the cut: the best silhouette among the cuts of the size range
        notes: list[str] = []
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(len(x), size=min(self.silhouette_sample, len(x)), replace=False))
        distances = euclidean_distances(x[sample]).astype(np.float32)
        np.fill_diagonal(distances, 0)
        schedule = _cut_schedule(first, len(splits), self.max_cuts)
        scores = []
        for j in schedule:
            labels = cut_labels(tree, splits, j)[sample]
            distinct = len(np.unique(labels))
            score = silhouette_score(distances, labels, metric="precomputed") if 2 <= distinct < len(sample) else np.nan
            scores.append({"subgroups": j + 1, "silhouette": float(score)})
        cuts = pd.DataFrame(scores, columns=["subgroups", "silhouette"])
        if cuts["silhouette"].notna().any():
            best = schedule[int(np.nanargmax(cuts["silhouette"].to_numpy()))]
        else:
            best = schedule[0]
            notes.append("No cut could be scored (fewer than two subgroups in the sample).")
        _, self.labels_ = np.unique(cut_labels(tree, splits, best), return_inverse=True)
        self.subgroups_, self.centroids_, self.overall_accuracy_ = _summarise(x, correct, self.labels_)
        self.cuts_ = cuts
        self.method_ = method
        self.notes_ = notes
        self.seconds_ = time.perf_counter() - started
        return self

    def _check(self, x: np.ndarray, correct: np.ndarray) -> None:
        if x.ndim != 2 or len(x) != len(correct):
            raise SubgroupError("Give one feature vector (a 2-D array row) and one correctness flag per image.")
        if len(x) < MIN_IMAGES:
            raise SubgroupError(f"Only {len(x)} images: subgroups need at least {MIN_IMAGES}. Use a larger dataset.")
        if not np.isfinite(x).all():
            raise SubgroupError("The features hold NaN or infinite values: rebuild the store (the model may be broken).")
        if self.min_size < 1 or self.max_size <= self.min_size:
            raise SubgroupError("Need 1 <= min size < max size.")
        if self.silhouette_sample < 10 or self.max_cuts < 1 or self.micro_clusters < 2:
            raise SubgroupError("Silhouette sample >= 10, max cuts >= 1 and micro-clusters >= 2 are required.")

    # ------------------------------------------------------------------ reading the fitted subgroups

    def rows(self, subgroup: int) -> np.ndarray:
        """Image rows of a subgroup, in dataset order."""
        check_is_fitted(self)
        return np.flatnonzero(self.labels_ == subgroup)

    def under_performing(self, threshold: float = VISCUIT_THRESHOLD, min_images: int = 5) -> pd.DataFrame:
        """Subgroups with more than ``min_images`` images and accuracy < threshold x overall, worst first."""
        check_is_fitted(self)
        if not 0 < threshold <= 1:
            raise SubgroupError("The threshold must be in (0, 1]: a fraction of the overall accuracy.")
        t = self.subgroups_
        under = t[(t["size"] > min_images) & (t["accuracy"] < threshold * self.overall_accuracy_)]
        return under.sort_values(["accuracy", "size"], ascending=[True, False], kind="stable")

    def suggest_threshold(self, min_images: int = 5) -> float | None:
        """The smallest threshold (in steps of 0.01) that makes at least one subgroup under-performing."""
        check_is_fitted(self)
        t = self.subgroups_[self.subgroups_["size"] > min_images]
        if t.empty or self.overall_accuracy_ == 0:
            return None
        needed = float(t["accuracy"].min()) / self.overall_accuracy_
        step = np.floor(needed * 100 + 1e-9) / 100 + 0.01
        return round(float(step), 2) if step <= 1 else None


@dataclass
class WardTree:
    """A Ward merge tree over ``m`` leaves in scipy's linkage layout, with image counts.

    ``merges[i] = (a, b)`` creates node ``m + i``; ``size`` and ``correct`` count images
    under every node (leaves first); ``leaf_of`` maps each image to its leaf.
    """

    merges: np.ndarray
    heights: np.ndarray
    size: np.ndarray
    correct: np.ndarray
    leaf_of: np.ndarray

    @property
    def n_leaves(self) -> int:
        return len(self.merges) + 1

    @cached_property
    def parent(self) -> np.ndarray:
        """(2m-1,) parent node of every node; -1 for the root."""
        m = self.n_leaves
        parent = np.full(2 * m - 1, -1, dtype=np.int64)
        parent[self.merges[:, 0]] = np.arange(m, 2 * m - 1)
        parent[self.merges[:, 1]] = np.arange(m, 2 * m - 1)
        return parent


# --------------------------------------------------------------------------- Ward trees


def weighted_ward(centres: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ward's tree over weighted points (micro-clusters), by the nearest-neighbour chain.

    Returns ``(merges (m-1, 2), heights (m-1,))`` in merge order. Heights are on scipy's
    scale (sqrt of twice the increase of the within-cluster sum of squares), so with unit
    weights the tree equals ``scipy.cluster.hierarchy.linkage(x, 'ward')``.
    """
    m = len(centres)
    if m < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    x = np.asarray(centres, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).copy()
    # squared Ward distance between clusters a, b: 2 w_a w_b / (w_a + w_b) * ||c_a - c_b||^2
    d2 = euclidean_distances(x, squared=True)
    np.maximum(d2, 0, out=d2)
    d2 *= 2 * np.outer(w, w) / (w[:, None] + w[None, :])
    np.fill_diagonal(d2, np.inf)
    active = np.ones(m, dtype=bool)
    node_id = np.arange(m)  # slot -> current tree node id
    merges, heights = [], []
    chain: list[int] = []
    while len(merges) < m - 1:
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        a = chain[-1]
        row = np.where(active, d2[a], np.inf)
        row[a] = np.inf
        b = int(np.argmin(row))
        if len(chain) > 1 and row[chain[-2]] <= row[b]:
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:
            chain.pop()
            chain.pop()
            h2 = d2[a, b]
            merges.append((node_id[a], node_id[b]))
            heights.append(np.sqrt(max(h2, 0.0)))
            # Lance-Williams for Ward: the merged cluster lives in slot a, slot b retires
            wa, wb = w[a], w[b]
            d_new = ((w + wa) * d2[a] + (w + wb) * d2[b] - w * h2) / (w + wa + wb)
            d2[a], d2[:, a] = d_new, d_new
            d2[a, a] = np.inf
            active[b] = False
            d2[b], d2[:, b] = np.inf, np.inf
            w[a] = wa + wb
            node_id[a] = m + len(merges) - 1
        else:
            chain.append(b)
    merges_arr = np.asarray(merges, dtype=np.int64)
    heights_arr = np.asarray(heights)
    return _in_height_order(merges_arr, heights_arr, m)


def _in_height_order(merges: np.ndarray, heights: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber NN-chain merges (found out of order) into increasing height, as scipy does."""
    order = np.argsort(heights, kind="stable")
    # a merge must come after the merges that created its children: stable sort by height
    # keeps that for Ward (reducible: a parent is never lower than its children)
    new_id = np.empty(m + len(merges), dtype=np.int64)
    new_id[:m] = np.arange(m)
    new_id[m + order] = m + np.arange(len(order))
    renumbered = new_id[merges[order]]
    return np.sort(renumbered, axis=1), heights[order]


def ward_tree(x: np.ndarray, correct: np.ndarray, udis: UDIS) -> tuple[WardTree, str]:
    """The Ward tree of the images' features: exact up to ``udis.exact_limit`` images, else two-stage."""
    n = len(x)
    if n <= udis.exact_limit:
        z = linkage(np.asarray(x, dtype=np.float64), method="ward")
        merges, heights = z[:, :2].astype(np.int64), z[:, 2]
        leaf_of = np.arange(n)
        method = "exact Ward"
    else:
        k = min(udis.micro_clusters, n // 2)
        x32 = np.asarray(x, dtype=np.float32)
        # k-means in the top principal directions (fast), micro-cluster means in full space
        reduced = x32
        if x32.shape[1] > udis.micro_dims:
            reduced = PCA(udis.micro_dims, svd_solver="randomized", random_state=udis.seed).fit_transform(x32)
        km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=udis.micro_iterations, random_state=udis.seed)
        _, leaf_of = np.unique(km.fit_predict(reduced), return_inverse=True)
        counts = np.bincount(leaf_of).astype(np.float64)
        centres = _group_means(x32, leaf_of, len(counts))
        merges, heights = weighted_ward(centres, counts)
        method = f"two-stage Ward ({len(counts):,} k-means micro-clusters)"
    m = len(merges) + 1
    size = np.zeros(2 * m - 1, dtype=np.int64)
    good = np.zeros(2 * m - 1, dtype=np.int64)
    size[:m] = np.bincount(leaf_of, minlength=m)
    good[:m] = np.bincount(leaf_of, weights=correct.astype(np.float64), minlength=m).astype(np.int64)
    for i, (a, b) in enumerate(merges):
        size[m + i] = size[a] + size[b]
        good[m + i] = good[a] + good[b]
    return WardTree(merges, np.asarray(heights), size, good, leaf_of), method


def _group_means(x: np.ndarray, labels: np.ndarray, groups: int) -> np.ndarray:
    """(groups, d) mean of the rows of each label, in float64."""
    indicator = sparse.csr_matrix(
        (np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(groups, len(labels))
    )
    counts = np.bincount(labels, minlength=groups).astype(np.float64)
    return np.asarray(indicator @ np.asarray(x, dtype=np.float64)) / np.maximum(counts, 1)[:, None]


# --------------------------------------------------------------------------- descent and cut


def descend(tree: WardTree, udis: UDIS) -> tuple[np.ndarray, int]:
    """The nodes split in order from the root, and the first step inside the size range.

    Every splittable node is split eventually (see the module docstring); step j means
    "after the first j splits". The size range starts at the first step where no
    splittable subgroup has more than ``max_size`` images.
    """
    m = tree.n_leaves
    root = 2 * m - 2

    def splittable(node: int) -> bool:
        if node < m:
            return False
        a, b = tree.merges[node - m]
        if min(tree.size[a], tree.size[b]) < udis.min_size:
            return False
        return not (udis.stop_at_perfect and tree.correct[node] == tree.size[node])

    heap: list[int] = []  # max-heap on node id = latest merge first
    big = 0  # splittable subgroups above max_size
    splits: list[int] = []
    first_in_range: int | None = None

    def push(node: int) -> None:
        nonlocal big
        if splittable(node):
            heapq.heappush(heap, -node)
            big += int(tree.size[node] > udis.max_size)

    push(root)
    while heap:
        if big == 0 and first_in_range is None:
            first_in_range = len(splits)
        node = -heapq.heappop(heap)
        big -= int(tree.size[node] > udis.max_size)
        splits.append(node)
        for child in tree.merges[node - m]:
            push(int(child))
    return np.asarray(splits, dtype=np.int64), len(splits) if first_in_range is None else first_in_range


def cut_labels(tree: WardTree, splits: np.ndarray, j: int) -> np.ndarray:
    """(N,) subgroup node id of each image after the first ``j`` splits of the descent."""
    parent = tree.parent
    total = len(parent)
    is_split = np.zeros(total, dtype=bool)
    is_split[splits[:j]] = True
    root = total - 1
    # a node is a subgroup when it is not split and its parent is (or it is the root)
    is_group = ~is_split & np.where(parent >= 0, is_split[np.maximum(parent, 0)], True)
    up = np.where(is_group | (np.arange(total) == root), np.arange(total), parent)
    while True:  # pointer jumping: every node ends on its subgroup (or the root, if above)
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        up = nxt
    return up[tree.leaf_of]


def _cut_schedule(first: int, last: int, max_cuts: int) -> list[int]:
    """Descent steps first..last to score: all, or ``max_cuts`` geometric in the subgroup count."""
    if last - first + 1 <= max_cuts:
        return list(range(first, last + 1))
    counts = np.geomspace(first + 1, last + 1, max_cuts)
    return sorted({int(round(c)) - 1 for c in counts})


def _summarise(x: np.ndarray, correct: np.ndarray, labels: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, float]:
    """Each subgroup's figures (the ``subgroups_`` table), its mean embedding and the overall accuracy."""
    groups = int(labels.max()) + 1
    size = np.bincount(labels, minlength=groups)
    good = np.bincount(labels, weights=correct.astype(np.float64), minlength=groups).astype(np.int64)
    accuracy = good / size
    low, high = binary_bootstrap_ci(good, size)
    centroids = _group_means(np.asarray(x, dtype=np.float32), labels, groups)
    overall = float(correct.mean())
    table = pd.DataFrame(
        {"subgroup": np.arange(groups), "size": size, "correct": good, "accuracy": accuracy, "low": low, "high": high}
    )
    table["similar"] = similar_well_performing(centroids, accuracy, size, overall)
    return table, centroids, overall


def similar_well_performing(
    centroids: np.ndarray, accuracy: np.ndarray, size: np.ndarray, overall: float, min_images: int = 5
) -> np.ndarray:
    """For each subgroup, the nearest (Euclidean between means) other subgroup with accuracy >= overall and > min_images images; -1 if none."""
    well = np.flatnonzero((accuracy >= overall) & (size > min_images))
    out = np.full(len(centroids), -1, dtype=np.int64)
    if well.size == 0:
        return out
    d = euclidean_distances(centroids, centroids[well])
    d[well, np.arange(well.size)] = np.inf  # never the subgroup itself
    best = np.argmin(d, axis=1)
    has = np.isfinite(d[np.arange(len(centroids)), best])
    out[has] = well[best[has]]
    return out


def subgroup_confusion(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts: rows = true class, columns = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(preds)), 1)
    return matrix


def subgroups_csv(udis: UDIS, ids: np.ndarray, threshold: float) -> bytes:
    """One line per subgroup of a fitted UDIS: id, size, accuracy with its interval, flags and member image ids."""
    under = set(udis.under_performing(threshold)["subgroup"])
    members = pd.Series(np.asarray(ids).astype(str)).groupby(udis.labels_).agg(";".join)
    frame = udis.subgroups_.assign(
        under_performing=udis.subgroups_["subgroup"].isin(under),
        image_ids=udis.subgroups_["subgroup"].map(members),
    )
    return frame.to_csv(index=False).encode()
