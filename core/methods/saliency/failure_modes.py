"""Failure modes: misclassified images grouped by which filters malfunction (Levin et al., sec. 3.2).

Parameter-space saliency says *which filters* are responsible for an error: the standardised
profile z(x) (core/methods/saliency/filters.py, eq. 2) of a misclassified image is high on the filters that
malfunction for it. The paper finds that nearest neighbours in saliency space, by cosine
similarity of the profiles, are images misclassified *for the same reason* (often the same
true -> predicted pair, or its reverse), and that restricting the profile to early or to
deep layers (Fig. 5) finds neighbours alike in low-level (colour) or abstract ways.

``FailureModes`` turns that nearest-neighbour search into groups: it clusters the
misclassified images' profiles in cosine geometry (rows scaled to unit length, then
k-means, which on the unit sphere ranks by cosine), optionally on a layer range's columns
only. Each group ("failure mode") has a centroid direction, its members ranked by cosine
to it (most typical first), a cosine score for every fitted image (for P@k) and its shared
top filters: the columns with the highest mean z over its members.

Profiles can be large (N up to 50k images x F up to ~26.5k filters, float16 on disk), so
the data are read in row chunks: k-means runs on the unit rows themselves when they have at
most ``MAX_DIMS`` columns, else on their coordinates in the top ``MAX_DIMS`` principal
directions (an uncentred randomised SVD, seeded, read chunk by chunk: it keeps the inner
products that carry the groups and drops the noise directions); centroids, scores and top
filters always use every chosen column. ``confusion_cell_groups`` (core/scoring/scorecard.py, re-exported here) is the trivial baseline: one group per (true -> predicted)
confusion cell, ranked by loss. ``failure_mode_scorecard`` scores the groups against planted
slices with core/scoring/scorecard.py, as the Spotlight and Subgroups pages do.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from core.errors import DataError
from core.methods.saliency.filters import FilterIndex
from core.scoring.scorecard import (
    confusion_cell_groups,  # noqa: F401  (re-exported: it lived here)
    scorecard,
)

MAX_DIMS = 64  # k-means runs on at most this many dimensions (principal directions above it)
OVERSAMPLE = 16  # extra random directions of the randomised SVD
CHUNK_BYTES = 1 << 26  # float32 profile rows held at once while reading (64 MiB)
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class FailureMode:
    """One group of misclassified images that fail the same way (a failure mode).

    ``rows``: store rows of its members, most typical (highest cosine to the centroid)
    first; ``score``: (n,) cosine of every fitted image to the centroid, in fit order;
    ``top_filters``: the shared salient filters, dicts {column, layer, filter, mean_z}
    (layer and filter are None without a FilterIndex).
    """

    index: int
    rows: np.ndarray
    size: int
    top_filters: list[dict] = field(default_factory=list)
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def top_rows(self, k: int) -> np.ndarray:
        """The k most typical members' store rows."""
        return self.rows[: max(0, int(k))]


class FailureModes(BaseEstimator):
    """Groups misclassified images by the cosine geometry of their saliency profiles.

    ``n_groups``: how many clusters k-means looks for (clamped to n - 1); ``min_size``:
    groups with fewer members are dropped (and named in ``notes_``); ``top_filters``: how
    many shared salient filters each group reports; ``seed``: the randomised SVD and k-means.

    Fitted attributes: ``groups_`` list of ``FailureMode`` (largest first); ``labels_`` (n,)
    the group of each fitted image, -1 when its group was dropped; ``rows_`` (n,) the fitted
    store rows (the order of ``labels_`` and every group's ``score``); ``columns_`` the
    profile columns used; ``n_groups_`` the clusters searched for; ``notes_``.
    """

    def __init__(self, n_groups: int = 8, min_size: int = 5, top_filters: int = 10, seed: int = 0) -> None:
        self.n_groups = n_groups
        self.min_size = min_size
        self.top_filters = top_filters
        self.seed = seed

    def fit(
        self,
        z: np.ndarray,
        rows: np.ndarray,
        index: FilterIndex | None = None,
        columns: np.ndarray | None = None,
    ) -> FailureModes:
        """Cluster z (n, F), the standardised profiles of misclassified images with store rows ``rows``.

        ``index`` names the filters; ``columns`` restricts the profile to those columns (a
        layer range, as in Fig. 5: ``index.columns(layers)``).
        """
        notes: list[str] = []
        z = z if isinstance(z, np.ndarray) else np.asarray(z)  # a memmap stays on disk
        rows, cols = self._check(z, rows, index, columns)
        n = len(rows)
        k = min(int(self.n_groups), n - 1)
        if k < self.n_groups:
            notes.append(f"Asked for {self.n_groups} groups but only {n} images: looked for {k}.")

        # 1. unit rows (cosine geometry); wide profiles go to their principal directions
        if len(cols) > MAX_DIMS:
            embedded, clipped = _principal_embedding(z, cols, min(MAX_DIMS, n), np.random.default_rng(self.seed))
            notes.append(
                f"Clustered in the top {embedded.shape[1]} principal directions of the {len(cols):,} "
                "filters' unit profiles; centroids, scores and top filters use every filter."
            )
        else:
            embedded, clipped = np.empty((n, len(cols)), dtype=np.float32), 0
            for span, _, unit, inf in _unit_chunks(z, cols):
                embedded[span], clipped = unit, clipped + inf
        if clipped:
            notes.append(f"{clipped:,} profile values beyond the float16 range were clipped to ±{FLOAT16_MAX:g}.")
        embedded /= np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)

        # 2. k-means on the unit sphere (spherical k-means up to the centroid's length)
        if k > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate profiles
                clusters = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit_predict(embedded)
        else:
            clusters = np.zeros(n, dtype=np.int64)

        # 3. keep groups of min_size images or more, largest first (ties: earliest member)
        sizes = np.bincount(clusters, minlength=k)
        first = np.array([np.flatnonzero(clusters == c)[0] if sizes[c] else n for c in range(k)])
        order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
        kept = [c for c in order if sizes[c] >= self.min_size]
        dropped = [c for c in order if 0 < sizes[c] < self.min_size]
        if dropped:
            notes.append(
                f"Dropped {len(dropped)} group(s) under {self.min_size} images: "
                + ", ".join(f"{sizes[c]} image(s) (rows {', '.join(map(str, rows[clusters == c][:5]))}"
                            f"{' ...' if sizes[c] > 5 else ''})" for c in dropped)
                + "."
            )
        if (sizes == 0).any():
            notes.append(f"Only {int((sizes > 0).sum())} distinct groups were found: many profiles are identical.")
        if not kept:
            notes.append(f"No group has {self.min_size} images or more: lower the minimum size.")
        relabel = np.full(k, -1, dtype=np.int64)
        relabel[kept] = np.arange(len(kept))
        labels = relabel[clusters]

        # 4. full-space centroids (mean unit profile) and mean z of each kept group
        g = len(kept)
        unit_sum = np.zeros((g, len(cols)))
        z_sum = np.zeros((g, len(cols)))
        for span, x, unit, _ in _unit_chunks(z, cols):
            member = labels[span]
            onehot = (member[None, :] == np.arange(g)[:, None]).astype(np.float32)
            unit_sum += onehot @ unit
            z_sum += onehot @ x
        counts = np.bincount(labels[labels >= 0], minlength=g).astype(np.float64)
        centroids = unit_sum / np.maximum(np.linalg.norm(unit_sum, axis=1, keepdims=True), 1e-12)
        mean_z = z_sum / np.maximum(counts, 1)[:, None]

        # 5. every fitted image's cosine to every centroid (the membership score for P@k)
        scores = np.zeros((g, n))
        for span, _, unit, _ in _unit_chunks(z, cols):
            scores[:, span] = centroids.astype(np.float32) @ unit.T

        groups = []
        for j in range(g):
            members = np.flatnonzero(labels == j)
            typical = members[np.argsort(-scores[j, members], kind="stable")]
            groups.append(FailureMode(
                index=j, rows=rows[typical], size=len(members),
                top_filters=_top_filters(mean_z[j], cols, index, self.top_filters), score=scores[j],
            ))
        self.groups_ = groups
        self.labels_ = labels
        self.rows_ = rows
        self.columns_ = cols
        self.n_groups_ = k
        self.notes_ = notes
        return self

    def _check(
        self, z: np.ndarray, rows: np.ndarray, index: FilterIndex | None, columns: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Validated (rows, columns); raises DataError with what to change."""
        for name in ("n_groups", "min_size", "top_filters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise DataError(f"{name} must be a whole number of at least 1, got {value!r}.")
        if getattr(z, "ndim", None) != 2:
            raise DataError("Give the saliency profiles as a 2-D array: one row per misclassified image.")
        rows = np.asarray(rows)
        if rows.ndim != 1 or len(rows) != z.shape[0]:
            raise DataError(f"Give one store row per profile: {z.shape[0]} profiles, {rows.size} rows.")
        if rows.size and (not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0):
            raise DataError("Store rows must be non-negative whole numbers.")
        if len(np.unique(rows)) != len(rows):
            raise DataError("Store rows repeat: give each misclassified image once.")
        if len(rows) < 2:
            raise DataError(
                f"Only {len(rows)} misclassified image(s): failure modes need at least 2. "
                "Use a larger dataset or scope."
            )
        n_filters = z.shape[1]
        if index is not None and index.n_filters != n_filters:
            raise DataError(
                f"The filter index covers {index.n_filters} filters but the profiles have {n_filters} "
                "columns: rebuild the profiles for this model."
            )
        if columns is None:
            cols = np.arange(n_filters)
        else:
            cols = np.asarray(columns)
            if cols.dtype == bool:
                if cols.shape != (n_filters,):
                    raise DataError(f"A column mask needs one flag per filter ({n_filters}).")
                cols = np.flatnonzero(cols)
            if cols.ndim != 1 or (cols.size and not np.issubdtype(cols.dtype, np.integer)):
                raise DataError("Columns must be a 1-D array of profile column numbers.")
            if cols.size and (cols.min() < 0 or cols.max() >= n_filters):
                raise DataError(f"Columns must lie in 0..{n_filters - 1}.")
            cols = np.unique(cols)
        if not cols.size:
            raise DataError("No profile columns chosen: pick at least one layer.")
        return rows.astype(np.int64), cols.astype(np.int64)

    # ------------------------------------------------------------------ reading the fitted groups

    def rows(self, group: int) -> np.ndarray:
        """Store rows of a group, most typical first."""
        check_is_fitted(self)
        return self._group(group).rows

    def top_rows(self, group: int, k: int = 10) -> np.ndarray:
        """The k most typical store rows of a group (the ranking P@k reads)."""
        check_is_fitted(self)
        return self._group(group).top_rows(k)

    def _group(self, group: int) -> FailureMode:
        if not 0 <= int(group) < len(self.groups_):
            raise DataError(f"No failure mode {group}: there are {len(self.groups_)}.")
        return self.groups_[int(group)]


def _unit_chunks(z: np.ndarray, cols: np.ndarray) -> Iterator[tuple[slice, np.ndarray, np.ndarray, int]]:
    """(rows, z as float32, z scaled to unit length, infinities clipped) in row chunks, so a
    memmap is never read whole. NaN refuses the data; float16 infinities are clipped to the
    float16 range.
    """
    step = max(1, CHUNK_BYTES // (4 * max(1, len(cols))))
    full = len(cols) == z.shape[1]
    for start in range(0, z.shape[0], step):
        span = slice(start, min(start + step, z.shape[0]))
        x = np.asarray(z[span], dtype=np.float32)
        x = x if full else x[:, cols]
        inf = 0
        if not np.isfinite(x).all():
            if np.isnan(x).any():
                bad = start + int(np.flatnonzero(np.isnan(x).any(axis=1))[0])
                raise DataError(f"The profile at position {bad} holds NaN values: rebuild the saliency profiles.")
            inf = int(np.isinf(x).sum())
            x = np.clip(x, -FLOAT16_MAX, FLOAT16_MAX)
        norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        unit = x * (1.0 / np.maximum(norm, 1e-12)).astype(np.float32)[:, None]
        yield span, x, unit, inf  # an all-zero profile stays zero (cosine 0)


def _principal_embedding(
    z: np.ndarray, cols: np.ndarray, dims: int, rng: np.random.Generator, power: int = 1
) -> tuple[np.ndarray, int]:
    """(n, dims) coordinates of the unit profiles U in their top right-singular directions.

    A randomised SVD (range finder with ``power`` subspace iterations) read in row chunks, so
    U (n x F) is never held whole. It is uncentred, so inner products, hence the cosine
    geometry, are kept up to the discarded (noise) directions. Also returns how many
    infinities the reads clipped.
    """
    n, width = len(z), min(dims + OVERSAMPLE, len(z), len(cols))

    def times(right: np.ndarray) -> tuple[np.ndarray, int]:  # U @ right, (n, width)
        out, clipped = np.empty((n, right.shape[1]), dtype=np.float64), 0
        for span, _, unit, inf in _unit_chunks(z, cols):
            out[span], clipped = unit @ right, clipped + inf
        return out, clipped

    def transposed_times(left: np.ndarray) -> np.ndarray:  # U.T @ left, (F, width)
        out = np.zeros((len(cols), left.shape[1]))
        for span, _, unit, _ in _unit_chunks(z, cols):
            out += unit.T @ left[span].astype(np.float32)
        return out

    y, clipped = times(rng.standard_normal((len(cols), width)).astype(np.float32))
    for _ in range(power):
        q = np.linalg.qr(y)[0]
        y, _ = times(np.linalg.qr(transposed_times(q))[0].astype(np.float32))
    q = np.linalg.qr(y)[0]
    w, sigma, _ = np.linalg.svd(transposed_times(q).T, full_matrices=False)  # Q.T U = W S Vt
    return (q @ (w[:, :dims] * sigma[:dims])).astype(np.float32), clipped  # U V = Q W S


def _top_filters(mean_z: np.ndarray, cols: np.ndarray, index: FilterIndex | None, k: int) -> list[dict]:
    """The group's k shared salient filters: highest mean z first (ties: lower column)."""
    top = np.argsort(-mean_z, kind="stable")[: min(int(k), len(cols))]
    out = []
    for j in top:
        column = int(cols[j])
        layer, number = index.name(column) if index is not None else (None, None)
        out.append({"column": column, "layer": layer, "filter": number, "mean_z": float(mean_z[j])})
    return out


def failure_mode_scorecard(fitted: FailureModes, slices: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """core.scoring.scorecard's table for the failure modes: per planted slice, its best group and P@k.

    ``slices``: one row per store row (positional, as the pages read the metadata) with bool
    ``slice_<name>`` columns. A group's ranking is its members, most typical first, so
    ``recall`` (the share of the slice inside its best group) comes too.
    """
    check_is_fitted(fitted)
    names = [c for c in slices.columns if str(c).startswith("slice_")]
    if not names:
        raise DataError("No slice_* columns: the scorecard needs a dataset with planted slices.")
    truth = slices[names].to_numpy(dtype=bool)
    if fitted.rows_.size and fitted.rows_.max() >= len(truth):
        raise DataError(f"The failure modes hold store rows beyond the {len(truth)} rows of the slices.")
    return scorecard(
        truth, [g.rows for g in fitted.groups_],
        slice_names=[str(c).removeprefix("slice_") for c in names],
        group_names=[f"#{g.index}" for g in fitted.groups_], k=k,
        members=[g.rows for g in fitted.groups_],
    )
