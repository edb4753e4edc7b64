"""Scorecard: how well discovered groups recover known (planted) slices, by precision-at-k.

The measure of slice-discovery benchmarks (Domino / dcbench): for a discovered group,
rank the images by the group's score and take the top k; P@k is the share of them that
belong to the true slice. For each true slice the best group counts, and a slice is
"identified" when that best P@k reaches 0.8.

Method-agnostic: a group is either a score per image (N floats, higher = more in the
group, e.g. spotlight weights or cluster membership probabilities) or a ranking (row
indices, best first, e.g. a cluster's members ordered by distance to its centre).

``domino_scorecard`` adds Domino's other measures (P@25, P@100, recall, AUROC) of each
slice's best group; ``baseline_groups`` is the trivial baseline (errors by confusion cell)
and ``compare_with_baseline`` says where a method beats it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from core.errors import DataError, InputError, ParameterError

IDENTIFIED = 0.8


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest scores, highest first; ties go to the lower row."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(-scores, kind="stable")[: max(0, int(k))]


def ranking_of(group: np.ndarray, n: int, k: int) -> np.ndarray:
    """The top-k rows of a group given as scores (N floats) or as a ranking (row indices)."""
    group = np.asarray(group)
    if group.ndim != 1:
        raise InputError("A group must be a 1-D array of scores or of row indices: flatten it.")
    if np.issubdtype(group.dtype, np.integer):
        if group.size and (group.min() < 0 or group.max() >= n):
            raise InputError(f"Ranking holds rows outside 0..{n - 1}: rank rows of these images only.")
        return group[:k]
    if group.size != n:
        raise InputError(f"Scores must have one value per image ({n}), got {group.size}: score every image, or give a ranking of row indices.")
    return top_k(group, k)


def precision_at_k(truth: np.ndarray, group: np.ndarray, k: int = 10) -> float:
    """Share of the group's top-k images inside the true slice (missing slots of a short ranking count as misses)."""
    truth = np.asarray(truth, dtype=bool)
    if k < 1:
        raise ParameterError(f"k must be at least 1, got {k}: use e.g. k=10.")
    rows = ranking_of(group, truth.size, k)
    return float(truth[rows].sum() / k)


def precision_matrix(truth: np.ndarray, groups: Sequence[np.ndarray], k: int = 10) -> np.ndarray:
    """(slices, groups) P@k of every group against every true slice; ``truth`` is (N, slices) bool."""
    truth = np.asarray(truth, dtype=bool)
    if truth.ndim != 2:
        raise InputError("The ground truth must be an (images x slices) boolean matrix: give one column per slice.")
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
        raise InputError(
            f"Give one name per slice and one per group: {len(slice_names)} name(s) for {truth.shape[1]} slice(s), "
            f"{len(group_names)} for {len(groups)} group(s)."
        )
    if members is not None and len(members) != len(groups):
        raise InputError(f"Give the members of every group, or of none: {len(members)} member list(s) for {len(groups)} group(s).")
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


# --- Domino's measures, the confusion-cell baseline and the comparison with it ---------

DOMINO_KS = (10, 25, 100)
BEATS_BASELINE = 0.3


def membership_score(group: np.ndarray, n: int) -> np.ndarray:
    """A group as one score per image (higher = more in the group), for AUROC.

    Scores are kept as given; a ranking (row indices, best first) scores len - position on
    its rows (a row listed twice keeps its first place) and 0 elsewhere.
    """
    group = np.asarray(group)
    if group.ndim == 1 and np.issubdtype(group.dtype, np.integer):
        ranking_of(group, n, 0)  # checks the rows
        score = np.zeros(n)
        np.maximum.at(score, group, (group.size - np.arange(group.size)).astype(np.float64))
        return score
    if group.ndim != 1 or group.size != n:
        raise InputError(f"Scores must have one value per image ({n}): score every image, or give a ranking of row indices.")
    return group.astype(np.float64)


def domino_scorecard(
    truth: np.ndarray,
    groups: Sequence[np.ndarray],
    slice_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
    members: Sequence[np.ndarray] | None = None,
    ks: Sequence[int] = DOMINO_KS,
    best_by_measure: bool = False,
) -> pd.DataFrame:
    """Domino's measures per true slice: one row with its size and its best group's P@k, recall and AUROC.

    The best group of a slice is the one with the highest P@ks[0] (P@10 by default; ties go
    to the first), named in ``best group``. Columns: ``slice``, ``images``, ``best group``,
    ``P@k`` for each k of ``ks`` (a short ranking's missing places count as misses),
    ``recall`` (share of the slice's images among the best group's ``members``; NaN without
    them or for an empty slice), ``AUROC`` (of the slice indicator against the best group's
    ``membership_score``; NaN when the slice holds all images or none) and ``identified``
    (P@ks[0] >= 0.8).

    By default every measure is of that one P@10-best group, so a row describes a single
    named group. Domino reports each measure's own best group; ``best_by_measure=True``
    does that (each measure is its maximum over the groups, ``best group`` still names the
    P@10-best one), which flatters a method whose groups each do one thing well.
    """
    truth = np.asarray(truth, dtype=bool)
    ks = [int(k) for k in ks]
    if not ks:
        raise ParameterError("Give at least one k: e.g. ks=(10, 25, 100).")
    card = scorecard(truth, groups, slice_names, group_names, k=ks[0])  # checks names, picks the best
    if members is not None and len(members) != len(groups):
        raise InputError(f"Give the members of every group, or of none: {len(members)} member list(s) for {len(groups)} group(s).")
    n, n_slices = truth.shape
    precision = {k: precision_matrix(truth, groups, k) for k in ks}
    recall = np.full((n_slices, len(groups)), np.nan)
    auroc = np.full((n_slices, len(groups)), np.nan)
    sizes = truth.sum(axis=0)
    varied = (sizes > 0) & (sizes < n)
    for g, group in enumerate(groups):
        if members is not None:
            rows = np.unique(np.asarray(members[g], dtype=np.int64))
            recall[:, g] = np.divide(truth[rows].sum(axis=0), sizes, out=np.full(n_slices, np.nan), where=sizes > 0)
        score = membership_score(group, n)
        for i in np.flatnonzero(varied):
            auroc[i, g] = roc_auc_score(truth[:, i], score)
    best = [int(np.argmax(precision[ks[0]][i])) if len(groups) else -1 for i in range(n_slices)]

    def pick(matrix: np.ndarray, i: int, empty: float) -> float:
        if best[i] < 0:
            return empty
        if best_by_measure:
            return float(np.nan if np.isnan(matrix[i]).all() else np.nanmax(matrix[i]))
        return float(matrix[i, best[i]])

    for k in ks:
        card[f"P@{k}"] = [pick(precision[k], i, 0.0) for i in range(n_slices)]
    card["recall"] = [pick(recall, i, np.nan) for i in range(n_slices)]
    card["AUROC"] = [pick(auroc, i, np.nan) for i in range(n_slices)]
    card["identified"] = card[f"P@{ks[0]}"] >= IDENTIFIED
    columns = ["slice", "images", "best group", *[f"P@{k}" for k in dict.fromkeys(ks)], "recall", "AUROC", "identified"]
    return card[columns]


def top_loss_rows(rows: np.ndarray, losses: np.ndarray, k: int = 10) -> np.ndarray:
    """A subgroup's k highest-loss members, highest first: the ranking the scorecard uses."""
    rows = np.asarray(rows)
    order = np.argsort(-np.asarray(losses)[rows], kind="stable")
    return rows[order[:k]]


def confusion_cell_groups(
    labels: np.ndarray, predictions: np.ndarray, losses: np.ndarray, rows: np.ndarray
) -> pd.DataFrame:
    """The baseline: misclassified images grouped by (true -> predicted) confusion cell.

    All four arrays are aligned, one entry per image (``rows`` its store row). One line per
    cell, largest first (ties by true then predicted class): ``true``, ``predicted``,
    ``size`` and ``rows``, the cell's store rows by loss, highest first (its first 10 are
    the P@10 ranking, as ``top_loss_rows`` gives the Subgroups scorecard).
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    losses, rows = np.asarray(losses, dtype=np.float64), np.asarray(rows)
    if not labels.ndim == predictions.ndim == losses.ndim == rows.ndim == 1 or not (
        len(labels) == len(predictions) == len(losses) == len(rows)
    ):
        raise DataError("Give one label, prediction, loss and store row per image (1-D arrays of one length).")
    wrong = np.flatnonzero(labels != predictions)
    columns = ["true", "predicted", "size", "rows"]
    if not wrong.size:
        return pd.DataFrame(columns=columns)
    cells = pd.DataFrame({"true": labels[wrong], "predicted": predictions[wrong], "at": wrong})
    out = []
    for (true, pred), cell in cells.groupby(["true", "predicted"], sort=True):
        ranked = top_loss_rows(cell["at"].to_numpy(), losses, k=len(cell))
        out.append({"true": true, "predicted": pred, "size": len(cell), "rows": rows[ranked]})
    frame = pd.DataFrame(out, columns=columns)
    return frame.sort_values("size", ascending=False, kind="stable").reset_index(drop=True)


def baseline_groups(meta: pd.DataFrame) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """The trivial baseline: the misclassified images grouped by confusion cell (true -> predicted).

    ``meta`` needs ``label_idx``, ``pred_idx`` and ``loss`` (and ``label``/``pred`` for the
    names). Returns (names, rankings, members), largest cell first: a cell's ranking is its
    rows by loss, highest first (its first 10 are its P@10 list), and its members are the same
    rows. Rows are positions in ``meta`` (0..len-1), the index space of a truth matrix built
    from ``meta`` (equal to store rows when ``meta`` is the whole store in row order).
    """
    cells = confusion_cell_groups(meta["label_idx"].to_numpy(), meta["pred_idx"].to_numpy(),
                                  meta["loss"].to_numpy(), np.arange(len(meta)))
    rankings = [np.asarray(rows, dtype=np.int64) for rows in cells["rows"]]
    named = "label" in meta and "pred" in meta
    names = [f"{meta['label'].iat[r[0]]} → {meta['pred'].iat[r[0]]}" if named else f"{t} → {p}"
             for t, p, r in zip(cells["true"], cells["predicted"], rankings, strict=True)]
    return names, rankings, [r.copy() for r in rankings]


def compare_with_baseline(
    truth: np.ndarray,
    groups: Sequence[np.ndarray],
    baseline: Sequence[np.ndarray],
    slice_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
    baseline_names: Sequence[str] | None = None,
    k: int = 10,
    margin: float = BEATS_BASELINE,
) -> pd.DataFrame:
    """Per true slice, a method's best P@k beside the baseline's (e.g. ``baseline_groups``' rankings).

    Columns: ``slice``, ``images``, ``method group``, ``method P@k``, ``baseline group``,
    ``baseline P@k`` and ``beats_baseline``: the method's P@k exceeds the baseline's by at
    least ``margin`` (0.3: three more slice images in the top 10). A method shows skill on a
    slice only where it beats the baseline; slices that fail into one confusion cell are
    found by the baseline already.
    """
    method = scorecard(truth, groups, slice_names, group_names, k=k)
    base = scorecard(truth, baseline, slice_names, baseline_names, k=k)
    p = f"P@{k}"
    return pd.DataFrame(
        {
            "slice": method["slice"],
            "images": method["images"],
            "method group": method["best group"],
            f"method {p}": method[p],
            "baseline group": base["best group"],
            f"baseline {p}": base[p],
            "beats_baseline": method[p] - base[p] >= margin - 1e-9,  # 0.7 - 0.4 is 0.2999...
        }
    )


def loss_rankings(members: Sequence[np.ndarray], losses: np.ndarray) -> list[np.ndarray]:
    """Each group's whole membership, highest loss first: the ranking its P@k and AUROC are
    measured on. Cutting it short (to the 10 highest-loss images, say) caps P@25 at 10/25 and
    P@100 at 0.10, and scores the rest of the group like images outside it in AUROC."""
    return [top_loss_rows(rows, losses, len(rows)) for rows in members]


BUDGETS = (5, 10)  # the first k groups a method flags: what a user reads before giving up


def budget_scorecard(truth: np.ndarray, rankings: Sequence[np.ndarray], slice_names: Sequence[str],
                     budgets: Sequence[int] = BUDGETS, k: int = 10) -> pd.DataFrame:
    """The honest scorecard: a method is scored on the groups it flags, in the order it lists
    them. Per planted slice: ``first hit``, the 1-based rank of the first group that identifies
    it (P@k >= IDENTIFIED; NaN when none does), and ``within <b>`` for each budget b, whether
    that rank is at most b. ``rankings`` are the flagged groups in list order (each its rows,
    best first); ``truth`` is (N, slices) bool."""
    truth = np.asarray(truth, dtype=bool)
    if truth.ndim != 2 or truth.shape[1] != len(slice_names):
        raise InputError(f"truth must be (images, {len(slice_names)}) booleans, one column per slice; got {truth.shape}: pass the slice_* columns.")
    hits = precision_matrix(truth, list(rankings), k) >= IDENTIFIED - 1e-9 if len(rankings) else np.zeros((truth.shape[1], 0), dtype=bool)
    rows = []
    for s, name in enumerate(slice_names):
        found = np.flatnonzero(hits[s])
        first = float(found[0] + 1) if found.size else float("nan")
        rows.append({"slice": name, "first hit": first, **{f"within {b}": bool(found.size and found[0] < b) for b in budgets}})
    return pd.DataFrame(rows, columns=["slice", "first hit", *[f"within {b}" for b in budgets]])


def flagged_scorecard(truth: np.ndarray, rankings: Sequence[np.ndarray], slice_names: Sequence[str],
                      group_names: Sequence[str], members: Sequence[np.ndarray] | None = None) -> pd.DataFrame:
    """Domino's scorecard of the groups a method flags, with the honest columns first: per
    slice, ``first hit`` (the rank of the first flagged group that identifies it) and ``within
    5`` / ``within 10``, then the best flagged group's measures (``best group``, P@k, recall,
    AUROC), the secondary figure: the best of a list credits groups a user may never reach."""
    card = domino_scorecard(truth, rankings, slice_names, group_names, members=members)
    budget = budget_scorecard(truth, rankings, slice_names)
    card = card.merge(budget, on="slice", how="left", sort=False)
    first = ["slice", "images", *[c for c in budget.columns if c != "slice"]]
    return card[first + [c for c in card.columns if c not in first]]
