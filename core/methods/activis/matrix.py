"""ActiVis (Kahng et al. 2017): neuron activations of instance subsets, their projection, and
the instance selection panel.

Sec. 4.2 and 4.4.2 of the paper, for one layer's activations ``A`` (N instances x C neurons;
here a store representation, e.g. a layer's per-channel spatial mean):

- The instance-to-subset matrix ``S`` (N x m, ``membership_matrix``): column j holds
  1/|subset j| at the rows of subset j and 0 elsewhere. Subsets may overlap (a class, a
  cohort, the misclassified images...) and a single instance is a subset of size 1.
- The neuron activation matrix is ``S^T A`` (m x C): row j is subset j's mean activation of
  every neuron, computed in one pass over the instances, linear in N (``ActivationMatrix``).
  ``A`` is read in row chunks (a float16 memmap of a million rows never sits in memory whole)
  and each chunk costs one sparse product ``S[chunk]^T @ A[chunk]`` (float32 within a chunk,
  float64 across chunks).
- Sorting reveals patterns: the neurons (columns) are ordered by one row's values,
  descending (``sort_by``); for wide layers only ``top_n`` columns are shown, chosen by that
  row's values or by their variance across the rows (``rank``).
- The projected view (``Projection``): a 2-D t-SNE (or UMAP, or PCA) of the instances' raw
  activation vectors, on a seeded sample of at most ``max_points`` instances.
- The instance selection panel (Sec. 4.3 C, ``instance_grid``): one square per instance,
  grouped in row-groups by true label; correctly classified ones on the left, sorted by
  score descending, misclassified ones on the right; large classes are sampled and paged
  (Sec. 4.4.2: "by default, we present a sample of instances").

NaN or infinite activations do not stop the matrix: a cell is the mean over the subset's
finite values of that neuron (NaN when there is none) and ``nan_rows_`` counts the instances
with any non-finite value, for the page to report. The projection drops such instances
(``dropped_``).

t-SNE implementation (``Projection(method="tsne")``): scikit-learn's Barnes-Hut ``TSNE``
after PCA to 50 dimensions, ``init="pca"``, ``learning_rate="auto"``, ``max_iter=500``
(250 of them early exaggeration), ``n_jobs=1``; no new dependency. Measured on this 2-core
machine, shared with other jobs (load 2.3-4.5, so timings vary by up to 2x), 5,000 x 512
points in 10 Gaussian clusters: scikit-learn's defaults on the raw 512 dimensions 43.8 s
and openTSNE 1.0.4 29.1 s (both from the brief); scikit-learn after PCA-50 with n_jobs=2
and 1000 / 750 / 500 iterations 47.3 / 29.5 / 21.6-33.7 s, trustworthiness (10
neighbours, 1,000-point subsample) 0.9634 / 0.9633 / 0.9637; with n_jobs=1, 500
iterations 9.2-17.4 s (750: 17.1 s), same trustworthiness: two threads lose more to
waiting on each other than they gain when the other core is busy. On sklearn's digits
(1,797 x 64), defaults / 1000 / 750 / 500 iterations: trustworthiness 0.9925 / 0.9925 /
0.9925 / 0.9923, 10-NN class accuracy in 2-D (5-fold) 0.9739 / 0.9739 / 0.9722 / 0.9728.
500 iterations keep the quality of the defaults within 0.002 and meet the 30 s target with
a margin on a busy machine. Projections of fewer than 2,000 points run with every thread
pool (OpenMP, BLAS) limited to one thread: a 60-point t-SNE took 2-10 s with the default
pools on the busy machine and 0.1 s with one thread.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from core.errors import DataError, ParameterError

MAX_ROWS = 50  # rows (subsets and single instances) one matrix shows
RANKS = ("row", "variance")
PROJECTIONS = ("tsne", "umap", "pca")
PCA_DIMS = 50  # t-SNE and UMAP run on the first 50 principal components of wider layers
MIN_POINTS = 5
TSNE_ITERATIONS = 500  # see the module docstring
SMALL_INPUT = 2000  # projections of fewer points run on one thread


def membership_matrix(
    members: Sequence[np.ndarray], n: int, names: Sequence[str] | None = None
) -> sp.csc_matrix:
    """S (n x m): column j is 1/|subset j| at the rows of ``members[j]``, 0 elsewhere.

    ``members[j]`` are row indices 0..n-1 (a row listed twice counts once) or a boolean mask
    of length n. An empty subset or an index out of range is a ``DataError`` naming the row.
    """
    n = int(n)
    labels = _row_names(names, len(members))
    columns: list[np.ndarray] = []
    for j, member in enumerate(members):
        rows = np.asarray(member)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise DataError(f"Row '{labels[j]}': a mask of {rows.size} entries for {n} images; rebuild the subset")
            rows = np.flatnonzero(rows)
        rows = rows.ravel()
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise DataError(f"Row '{labels[j]}': image indices must be integers, got {rows.dtype}")
        rows = np.unique(rows.astype(np.int64, copy=False))
        if rows.size == 0:
            raise DataError(f"Row '{labels[j]}' has no images: remove it or change its definition so it selects some")
        if rows[0] < 0 or rows[-1] >= n:
            bad = int(rows[0] if rows[0] < 0 else rows[-1])
            raise DataError(
                f"Row '{labels[j]}' names image {bad}, but the store has images 0..{n - 1}; "
                "the subset was made for another dataset: define it again"
            )
        columns.append(rows)
    sizes = np.array([c.size for c in columns], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    indices = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
    data = np.repeat(1.0 / np.maximum(sizes, 1), sizes)
    return sp.csc_matrix((data, indices, indptr), shape=(n, len(columns)))


def _row_names(names: Sequence[str] | None, m: int) -> list[str]:
    if names is None:
        return [f"row {j}" for j in range(m)]
    names = [str(name) for name in names]
    if len(names) != m:
        raise DataError(f"{len(names)} row name(s) for {m} row(s)")
    return names


class ActivationMatrix(BaseEstimator):
    """The neuron activation matrix S^T A of m subsets (rows) over C neurons (columns).

    ``chunk``: instances read per step (the memory bound: ``chunk`` x C float32);
    ``sort_by``: the row whose values order the neurons, descending (None: natural order);
    ``top_n``: columns shown for layers wider than that; ``rank``: which ``top_n`` columns,
    "row" (largest values of the ``sort_by`` row, or of the first row when ``sort_by`` is
    None) or "variance" (largest variance across the rows).

    ``fit(activations, members, names=None)``: ``activations`` (N, C), any float array or
    memmap; ``members`` one array of row indices (or a boolean mask) per subset, at most
    ``MAX_ROWS``; ``names`` their labels.

    Fitted attributes: ``means_`` (m, C) float64 S^T A (means over finite values);
    ``sizes_`` (m,) instances per subset; ``names_``; ``order_`` (C,) every column, sorted by
    the ``sort_by`` row descending (NaN last) or in natural order; ``shown_`` the columns to
    draw, in ``order_`` order; ``nan_rows_`` instances in some subset with a non-finite
    value; ``scale_`` (min, max) over the shown finite cells, one colour scale for the panel
    ((0.0, 1.0) when none is finite); ``fit_seconds_``.
    """

    def __init__(self, chunk: int = 65536, sort_by: int | None = None, top_n: int = 200, rank: str = "row"):
        self.chunk = chunk
        self.sort_by = sort_by
        self.top_n = top_n
        self.rank = rank

    def fit(
        self,
        activations: np.ndarray,
        members: Sequence[np.ndarray],
        names: Sequence[str] | None = None,
    ) -> ActivationMatrix:
        """One pass over the instances: the sum of S[chunk]^T A[chunk] over the chunks."""
        start = time.perf_counter()
        if int(self.chunk) < 1:
            raise ParameterError(f"chunk must be at least 1, got {self.chunk}: set a positive number of rows per step")
        if int(self.top_n) < 1:
            raise ParameterError(f"top_n must be at least 1, got {self.top_n}: show at least one column")
        if self.rank not in RANKS:
            raise ParameterError(f"rank must be one of {RANKS}, got {self.rank!r}: use one of those")
        if getattr(activations, "ndim", None) != 2:
            raise DataError(f"activations must be a 2-D array (images x neurons), got shape {np.shape(activations)}")
        n, c = activations.shape
        if n == 0 or c == 0:
            raise DataError("no activations to show: the layer has no images or no neurons")
        m = len(members)
        if m == 0:
            raise DataError("the matrix has no rows: add a class, a subset or an image")
        if m > MAX_ROWS:
            raise DataError(f"{m} rows: at most {MAX_ROWS}; remove some")
        if self.sort_by is not None and not 0 <= int(self.sort_by) < m:
            raise DataError(f"sorting by row {self.sort_by}, but the matrix has rows 0..{m - 1}; sort by another row")
        row_names = _row_names(names, m)

        s = membership_matrix(members, n, row_names)
        sizes = np.diff(s.indptr).astype(np.int64)
        # The sums B^T A with B = S without its normalisation (exact 1s in float32), divided by
        # the sizes in float64 at the end: S^T A without rounding 1/|subset| to float32.
        binary = sp.csr_matrix((np.ones(s.nnz, dtype=np.float32), s.indices, s.indptr), shape=(m, n)).T.tocsr()
        used = np.diff(binary.indptr) > 0
        sums = np.zeros((m, c), dtype=np.float64)  # sums over the finite values
        missing: np.ndarray | None = None  # (m, C) non-finite values per cell, once any is seen
        nan_rows = 0
        step = int(self.chunk)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            chunk_used = used[lo:hi]
            if not chunk_used.any():
                continue
            part_t = binary[lo:hi].T.tocsr()
            block = _float32(activations[lo:hi])
            part = np.asarray(part_t @ block)
            if np.isfinite(part).all():
                sums += part
                continue
            # some instance of a subset holds NaN or inf: sums and counts of the finite values
            finite = np.isfinite(block)
            nan_rows += int((~finite.all(axis=1) & chunk_used).sum())
            sums += np.asarray(part_t @ np.where(finite, block, np.float32(0.0)))
            if missing is None:
                missing = np.zeros((m, c), dtype=np.float64)
            missing += np.asarray(part_t @ (~finite).astype(np.float32))
        counts = sizes[:, None] if missing is None else sizes[:, None] - np.rint(missing)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / counts, np.nan)  # S^T A over the finite values

        self.means_ = means
        self.sizes_ = sizes
        self.names_ = row_names
        self.nan_rows_ = nan_rows
        self.order_ = (
            np.arange(c, dtype=np.int64) if self.sort_by is None else _descending(means[int(self.sort_by)])
        )
        self.shown_ = self._shown(means)
        shown = means[:, self.shown_]
        finite_cells = shown[np.isfinite(shown)]
        self.scale_ = (
            (float(finite_cells.min()), float(finite_cells.max())) if finite_cells.size else (0.0, 1.0)
        )
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _shown(self, means: np.ndarray) -> np.ndarray:
        c = means.shape[1]
        top_n = int(self.top_n)
        if c <= top_n:
            return self.order_.copy()
        if self.rank == "row":
            key = means[0 if self.sort_by is None else int(self.sort_by)]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a column of NaN only
                key = np.nanvar(means, axis=0)
        chosen = np.zeros(c, dtype=bool)
        chosen[_descending(key)[:top_n]] = True
        return self.order_[chosen[self.order_]]

    def long_frame(self) -> pd.DataFrame:
        """The shown cells for charting: row (name), row_index, neuron (column index), value.

        Rows in matrix order; within a row the neurons in ``shown_`` order.
        """
        check_is_fitted(self, "means_")
        m, k = len(self.names_), len(self.shown_)
        return pd.DataFrame(
            {
                "row": np.repeat(np.asarray(self.names_, dtype=object), k),
                "row_index": np.repeat(np.arange(m, dtype=np.int64), k),
                "neuron": np.tile(self.shown_, m),
                "value": self.means_[:, self.shown_].ravel(),
            }
        )


def _float32(block: np.ndarray) -> np.ndarray:
    """A chunk of rows as a C-contiguous float32 array (float16 and float64 converted)."""
    return np.ascontiguousarray(block, dtype=np.float32)


def _descending(values: np.ndarray) -> np.ndarray:
    """Indices sorting ``values`` descending, NaN last, ties in index order."""
    values = np.asarray(values, dtype=np.float64)
    key = np.where(np.isnan(values), np.inf, -values)
    return np.argsort(key, kind="stable").astype(np.int64)


# ----------------------------------------------------------------------------- projection


class Projection(BaseEstimator):
    """2-D projection of the instances' activations (the projected view, Sec. 4.2).

    ``method``: "tsne" (scikit-learn's Barnes-Hut t-SNE, see the module docstring), "umap"
    or "pca"; ``max_points``: instances embedded at most (a uniform seeded sample beyond);
    ``seed``: the sample's and the embedding's random state; ``perplexity``: t-SNE's.

    ``fit(activations, rows=None)``: ``activations`` (N, d) array or memmap; ``rows`` the
    instances to consider (default all). Raw activations, not standardised; t-SNE and UMAP
    run on the first 50 principal components when d > 50.

    Fitted attributes: ``rows_`` (k,) the embedded instances, sorted; ``embedding_`` (k, 2)
    float32; ``sampled_`` True when a sample was drawn; ``dropped_`` sampled instances left
    out for non-finite activations; ``perplexity_`` the perplexity used (clamped below
    (k - 1) / 3 for tiny inputs; None for umap and pca); ``fit_seconds_``.
    """

    def __init__(self, method: str = "tsne", max_points: int = 3000, seed: int = 0, perplexity: float = 30.0):
        self.method = method
        self.max_points = max_points
        self.seed = seed
        self.perplexity = perplexity

    def fit(self, activations: np.ndarray, rows: np.ndarray | None = None) -> Projection:
        """Sample, drop non-finite rows, PCA-50 for wide layers, then the 2-D embedding."""
        start = time.perf_counter()
        if self.method not in PROJECTIONS:
            raise ParameterError(f"method must be one of {PROJECTIONS}, got {self.method!r}: use one of those")
        if int(self.max_points) < MIN_POINTS:
            raise ParameterError(f"max_points must be at least {MIN_POINTS}, got {self.max_points}: raise it to {MIN_POINTS} or more")
        if not float(self.perplexity) > 0:
            raise ParameterError(f"perplexity must be positive, got {self.perplexity}: use e.g. 30")
        if getattr(activations, "ndim", None) != 2:
            raise DataError(f"activations must be a 2-D array (images x neurons), got shape {np.shape(activations)}")
        n, d = activations.shape
        if rows is None:
            candidates = np.arange(n, dtype=np.int64)
        else:
            candidates = np.asarray(rows)
            if candidates.dtype == bool:
                candidates = np.flatnonzero(candidates)
            candidates = np.unique(candidates.astype(np.int64, copy=False))
            if candidates.size and (candidates[0] < 0 or candidates[-1] >= n):
                raise DataError(f"an image index is out of range 0..{n - 1}; select the images again")
        rng = np.random.default_rng(int(self.seed))
        sampled = candidates.size > int(self.max_points)
        if sampled:
            candidates = np.sort(rng.choice(candidates, size=int(self.max_points), replace=False))
        points = np.asarray(activations[candidates] if candidates.size else np.zeros((0, d)), dtype=np.float32)
        finite = np.isfinite(points).all(axis=1)
        dropped = int((~finite).sum())
        candidates, points = candidates[finite], points[finite]
        k = len(candidates)
        if k < MIN_POINTS:
            extra = f" ({dropped} dropped for NaN or infinite activations)" if dropped else ""
            raise DataError(
                f"{k} image(s) to project{extra}: a projection needs at least {MIN_POINTS}; select more images"
            )

        # Small inputs on one thread: their per-iteration work is tiny, and OpenMP/BLAS threads
        # waiting on a busy second core made a 60-point t-SNE take 2-10 s instead of 0.1 s.
        with threadpool_limits(1 if k < SMALL_INPUT else None):
            embedding, perplexity = self._embed(points)
        self.rows_ = candidates
        self.embedding_ = np.asarray(embedding, dtype=np.float32)
        self.sampled_ = bool(sampled)
        self.dropped_ = dropped
        self.perplexity_ = perplexity
        self.fit_seconds_ = time.perf_counter() - start
        return self


    def _embed(self, points: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(the 2-D embedding, the perplexity used or None)."""
        k, d = points.shape
        if self.method == "pca":
            return _pca(points, 2, int(self.seed)), None
        reduced = _pca(points, PCA_DIMS, int(self.seed)) if d > PCA_DIMS else points
        perplexity = float(min(float(self.perplexity), (k - 1) / 3)) if self.method == "tsne" else None
        if np.ptp(reduced, axis=0).max() == 0:  # every point alike: nothing to embed
            return np.zeros((k, 2)), perplexity
        if self.method == "tsne":
            return _tsne(reduced, perplexity, int(self.seed)), perplexity
        return _umap(reduced, int(self.seed)), None


def _pca(points: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """The first ``dims`` principal components (zero-padded when fewer exist)."""
    from sklearn.decomposition import PCA

    k, d = points.shape
    components = min(dims, k, d)
    out = np.zeros((k, dims), dtype=np.float32)
    if np.ptp(points, axis=0).max() > 0:
        out[:, :components] = PCA(n_components=components, random_state=seed).fit_transform(points)
    return out


def _tsne(points: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        max_iter=TSNE_ITERATIONS,
        method="barnes_hut",
        n_jobs=1,  # see the module docstring
        random_state=seed,
    ).fit_transform(points)


def _umap(points: np.ndarray, seed: int) -> np.ndarray:
    """Seeded 2-D UMAP (umap is imported here: its import is slow, its first call compiles)."""
    import umap

    k = len(points)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", spectral fallbacks
        neighbors = min(15, k - 1)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=neighbors,
            random_state=seed,
            init="spectral" if k > neighbors + 1 else "random",
        )
        return reducer.fit_transform(points)


# ----------------------------------------------------------------------------- instance panel


GRID_COLUMNS = ["row", "label", "pred", "score", "correct", "x", "y", "class_total", "class_shown"]


def pages_for(labels: np.ndarray, per_class: int) -> int:
    """Pages of ``instance_grid``: enough for the largest class to show every instance (>= 1)."""
    if int(per_class) < 1:
        raise ParameterError(f"per_class must be at least 1, got {per_class}: show at least one image per class")
    labels = np.asarray(labels)
    if labels.size == 0:
        return 1
    counts = np.unique(labels, return_counts=True)[1]
    return max(1, math.ceil(int(counts.max()) / int(per_class)))


def instance_grid(
    labels: np.ndarray,
    predictions: np.ndarray,
    scores: np.ndarray,
    n_classes: int,
    per_class: int = 200,
    page: int = 0,
    seed: int = 0,
    columns: int = 10,
) -> pd.DataFrame:
    """The instance selection panel (Sec. 4.3 C): one row per square.

    ``labels``, ``predictions`` (N,) class indices 0..n_classes-1; ``scores`` (N,) the model's
    probability of the predicted class. Classes are row-groups stacked top to bottom
    (``y`` grows downwards, one empty row between classes; classes without instances take
    no rows). Within a class the correctly classified instances fill ``x`` 0..columns-1 and
    the misclassified ones ``x`` columns+1..2*columns (one empty column between), each block
    sorted by score descending in reading order: left to right, then the next row
    (row-major, the paper's "from top to bottom, and left to right within each row").

    Classes with more than ``per_class`` instances are paged: each class's instances are
    cut, in a seeded order, into blocks of ``per_class``; page k shows block k of every
    class (classes with fewer blocks show nothing on later pages). A block gives the
    misclassified instances their share of the class, but at least half the block while
    any are left, so errors are never hidden; correct ones fill the rest (and misclassified
    ones again when the correct run out). Columns: row (image index), label, pred, score,
    correct, x, y, class_total (instances of the class), class_shown (squares of the class
    on this page).
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    scores = np.asarray(scores, dtype=np.float64)
    n = labels.shape[0] if labels.ndim == 1 else -1
    if labels.ndim != 1 or predictions.shape != (n,) or scores.shape != (n,):
        raise DataError(
            f"labels, predictions and scores need one entry per image, got shapes "
            f"{labels.shape}, {predictions.shape}, {scores.shape}"
        )
    if int(per_class) < 1 or int(columns) < 1:
        raise ParameterError(f"per_class and columns must be at least 1, got {per_class}, {columns}: set both to 1 or more")
    n_classes = int(n_classes)
    for name, values in (("labels", labels), ("predictions", predictions)):
        if n and (not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() >= n_classes):
            raise DataError(f"{name} must be class indices 0..{n_classes - 1}")
    pages = pages_for(labels, per_class)
    if not 0 <= int(page) < pages:
        raise DataError(f"page {page}: there are pages 0..{pages - 1}; pick one of those")

    per_class, page, columns = int(per_class), int(page), int(columns)
    rng = np.random.default_rng(int(seed))
    parts: list[pd.DataFrame] = []
    top = 0
    for cls in range(n_classes):
        members = np.flatnonzero(labels == cls)
        if members.size == 0:
            continue
        right = predictions[members] == cls
        block = _page_block(members[right], members[~right], per_class, page, rng)
        correct_rows = _by_score(block[predictions[block] == cls], scores)
        wrong_rows = _by_score(block[predictions[block] != cls], scores)
        height = max(math.ceil(len(correct_rows) / columns), math.ceil(len(wrong_rows) / columns), 1)
        for rows_, x0, ok in ((correct_rows, 0, True), (wrong_rows, columns + 1, False)):
            if not rows_.size:
                continue
            position = np.arange(rows_.size)
            parts.append(
                pd.DataFrame(
                    {
                        "row": rows_,
                        "label": np.full(rows_.size, cls, dtype=np.int64),
                        "pred": predictions[rows_].astype(np.int64),
                        "score": scores[rows_],
                        "correct": np.full(rows_.size, ok),
                        "x": x0 + position % columns,
                        "y": top + position // columns,
                        "class_total": np.full(rows_.size, members.size, dtype=np.int64),
                        "class_shown": np.full(rows_.size, block.size, dtype=np.int64),
                    }
                )
            )
        top += height + 1  # one gap row between classes
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype="int64") for name in GRID_COLUMNS}).astype(
            {"score": "float64", "correct": "bool"}
        )
    return pd.concat(parts, ignore_index=True)[GRID_COLUMNS]


def _page_block(correct: np.ndarray, wrong: np.ndarray, per_class: int, page: int, rng) -> np.ndarray:
    """Block ``page`` of one class: the seeded sequence of blocks described in instance_grid."""
    correct = rng.permutation(correct)  # the rng advances the same way whatever the page
    wrong = rng.permutation(wrong)
    total = correct.size + wrong.size
    share = wrong.size / total
    used_c = used_w = 0
    for k in range(page + 1):
        left_c, left_w = correct.size - used_c, wrong.size - used_w
        if left_c + left_w == 0:
            return np.zeros(0, dtype=np.int64)
        w = min(left_w, max(round(per_class * share), per_class // 2, 1))
        c = min(left_c, per_class - w)
        w = min(left_w, per_class - c)  # the correct ran out: more misclassified
        if k == page:
            return np.concatenate([correct[used_c : used_c + c], wrong[used_w : used_w + w]])
        used_c, used_w = used_c + c, used_w + w
    return np.zeros(0, dtype=np.int64)  # unreachable


def _by_score(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``rows`` by score descending (NaN last), ties by image index."""
    rows = np.sort(rows)
    return rows[_descending(scores[rows])]
