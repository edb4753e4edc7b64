"""Scorecard: how well discovered groups recover known (planted) slices, by precision-at-k.

The measure of slice-discovery benchmarks (Domino / dcbench): for a discovered group,
rank the images by the group's score and take the top k; P@k is the share of them that
belong to the true slice. For each true slice the best group counts, and a slice is
"identified" when that best P@k reaches 0.8.

Method-agnostic: a group is either a score per image (N floats, higher = more in the
group, e.g. spotlight weights or cluster membership probabilities) or a ranking (row
indices, best first, e.g. a cluster's members ordered by distance to its centre).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

IDENTIFIED = 0.8


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest scores, highest first; ties go to the lower row."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(-scores, kind="stable")[: max(0, int(k))]


def ranking_of(group: np.ndarray, n: int, k: int) -> np.ndarray:
    """The top-k rows of a group given as scores (N floats) or as a ranking (row indices)."""
    group = np.asarray(group)
    if group.ndim != 1:
        raise ValueError("A group must be a 1-D array of scores or of row indices.")
    if np.issubdtype(group.dtype, np.integer):
        if group.size and (group.min() < 0 or group.max() >= n):
            raise ValueError(f"Ranking holds rows outside 0..{n - 1}.")
        return group[:k]
    if group.size != n:
        raise ValueError(f"Scores must have one value per image ({n}), got {group.size}.")
    return top_k(group, k)


def precision_at_k(truth: np.ndarray, group: np.ndarray, k: int = 10) -> float:
    """Share of the group's top-k images inside the true slice (missing slots of a short ranking count as misses)."""
    truth = np.asarray(truth, dtype=bool)
    if k < 1:
        raise ValueError("k must be at least 1.")
    rows = ranking_of(group, truth.size, k)
    return float(truth[rows].sum() / k)


def precision_matrix(truth: np.ndarray, groups: Sequence[np.ndarray], k: int = 10) -> np.ndarray:
    """(slices, groups) P@k of every group against every true slice; ``truth`` is (N, slices) bool."""
    truth = np.asarray(truth, dtype=bool)
    if truth.ndim != 2:
        raise ValueError("The ground truth must be an (images x slices) boolean matrix.")
    out = np.zeros((truth.shape[1], len(groups)))
    for g, group in enumerate(groups):
        rows = ranking_of(group, truth.shape[0], k)
        out[:, g] = truth[rows].sum(axis=0) / k
    return out


def scorecard(
    truth: np.ndarray,
    groups: Sequence[np.ndarray],
    slice_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
    k: int = 10,
    members: Sequence[np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per true slice: its size, the best group, that group's P@k and whether it is identified.

    Ties between groups go to the first. With no groups, every slice scores 0 and has no best group.
    ``members`` (the row indices of each group, when a group is a set rather than a ranking)
    adds a ``recall`` column: the share of the slice's images that its best group holds.
    """
    truth = np.asarray(truth, dtype=bool)
    slice_names = list(slice_names) if slice_names is not None else [f"slice {i + 1}" for i in range(truth.shape[1])]
    group_names = list(group_names) if group_names is not None else [f"group {g + 1}" for g in range(len(groups))]
    if len(slice_names) != truth.shape[1] or len(group_names) != len(groups):
        raise ValueError("Give one name per slice and one per group.")
    if members is not None and len(members) != len(groups):
        raise ValueError("Give the members of every group, or of none.")
    matrix = precision_matrix(truth, groups, k)
    rows = []
    for i, name in enumerate(slice_names):
        best = int(np.argmax(matrix[i])) if len(groups) else -1
        p = float(matrix[i, best]) if best >= 0 else 0.0
        row = {
            "slice": name,
            "images": int(truth[:, i].sum()),
            "best group": group_names[best] if best >= 0 else None,
            f"P@{k}": p,
            "identified": p >= IDENTIFIED,
        }
        if members is not None:
            held = truth[np.asarray(members[best], dtype=np.int64), i].sum() if best >= 0 else 0
            row["recall"] = float(held / max(1, truth[:, i].sum()))
        rows.append(row)
    columns = ["slice", "images", "best group", f"P@{k}", "identified"]
    return pd.DataFrame(rows, columns=columns + (["recall"] if members is not None else []))
