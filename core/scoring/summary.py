"""Summaries the pages share: class, confusion and attribute breakdowns, how a weighted
group of images differs from the dataset (shares and lift), and 2-D maps of a representation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from core.errors import ParameterError
from core.scoring.stats import accuracy_by, binary_bootstrap_ci

GALLERY_FILTERS = ("misclassified", "correct", "all")


def confusion(meta: pd.DataFrame, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class index, columns = predicted class index."""
    return confusion_matrix(meta["label_idx"], meta["pred_idx"], labels=np.arange(num_classes))


def class_accuracy(meta: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per true class with bootstrap 95% intervals, columns [class, n, accuracy, low, high]."""
    return accuracy_by(meta, "label").rename(columns={"value": "class"})


def attribute_accuracy(meta: pd.DataFrame, attributes: list[str], max_values: int = 50) -> pd.DataFrame:
    """Accuracy per value of each attribute (skipping near-unique columns such as ids).

    Columns: [attribute, value, n, accuracy, low, high].
    """
    frames = []
    for attribute in attributes:
        if attribute not in meta or meta[attribute].nunique(dropna=False) > max_values:
            continue
        part = accuracy_by(meta, attribute)
        part.insert(0, "attribute", attribute)
        frames.append(part)
    columns = ["attribute", "value", "n", "accuracy", "low", "high"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def intersection_axes(meta: pd.DataFrame, attributes: list[str], max_values: int = 50) -> list[str]:
    """The columns an intersection heatmap may cross: ``label`` and the attributes with at most
    ``max_values`` distinct values (the rule of ``attribute_accuracy``: ids and paths are skipped;
    1,000 classes too, so a crossing has at most max_values² cells)."""
    axes = ["label"] if "label" in meta and meta["label"].nunique(dropna=False) <= max_values else []
    return axes + [a for a in attributes if a in meta and a != "label" and meta[a].nunique(dropna=False) <= max_values]


def intersection_accuracy(meta: pd.DataFrame, row_column: str, column_column: str, confidence: float = 0.95) -> pd.DataFrame:
    """Accuracy of every (row value, column value) cell of two columns, with 95% bootstrap intervals.

    Every combination of the values present appears, empty cells too (n = 0, accuracy NaN);
    a missing value is a value of its own (None). ``row`` and ``column`` keep the original
    values (so a cohort filter can match them). Columns: row, column, n, correct, accuracy,
    low, high, sorted by row then column value.
    """
    if row_column == column_column:
        raise ParameterError(f"Pick two different columns to cross (both are '{row_column}').")
    row_codes, row_values = pd.factorize(meta[row_column], sort=True, use_na_sentinel=True)
    col_codes, col_values = pd.factorize(meta[column_column], sort=True, use_na_sentinel=True)
    rows = [*row_values.tolist(), *([None] if (row_codes < 0).any() else [])]
    cols = [*col_values.tolist(), *([None] if (col_codes < 0).any() else [])]
    r = np.where(row_codes < 0, len(row_values), row_codes)
    c = np.where(col_codes < 0, len(col_values), col_codes)
    cell = r * len(cols) + c
    size = len(rows) * len(cols)
    n = np.bincount(cell, minlength=size)
    correct = np.bincount(cell, weights=meta["correct"].to_numpy(dtype=np.float64), minlength=size).round().astype(np.int64)
    low, high = binary_bootstrap_ci(correct, n, confidence)
    accuracy = np.divide(correct, n, out=np.full(size, np.nan), where=n > 0)
    return pd.DataFrame(
        {
            "row": pd.Series([v for v in rows for _ in cols], dtype=object),
            "column": pd.Series([v for _ in rows for v in cols], dtype=object),
            "n": n.astype(np.int64),
            "correct": correct,
            "accuracy": accuracy,
            "low": low,
            "high": high,
        }
    )


def gallery_rows(meta: pd.DataFrame, show: str, label: str | None, count: int, seed: int) -> pd.DataFrame:
    """A reproducible random sample of images for the gallery, errors or not, one class or all,
    in random order (sorting it, e.g. by loss, would make it look like a ranking)."""
    if show not in GALLERY_FILTERS:
        raise ParameterError(f"show must be one of {', '.join(GALLERY_FILTERS)}, got {show!r}: pick one of those.")
    pool = meta
    if show != "all":
        pool = pool[pool["correct"] == (show == "correct")]
    if label:
        pool = pool[pool["label"] == label]
    if len(pool) <= count:
        return pool
    return pool.sample(n=count, random_state=seed)


def weighted_shares(values: pd.Series, weights: np.ndarray) -> pd.DataFrame:
    """Share of each value inside a weighted group (e.g. a spotlight's k_i) and in the whole dataset.

    Columns: value, inside, overall, lift (inside / overall), sorted by lift then inside share.
    """
    w = np.asarray(weights, dtype=np.float64)
    frame = pd.DataFrame({"value": values.astype(str).to_numpy(), "w": w})
    total = w.sum()
    grouped = frame.groupby("value", sort=True)
    out = pd.DataFrame(
        {
            "inside": grouped["w"].sum() / total if total > 0 else grouped["w"].sum() * np.nan,
            "overall": grouped.size() / len(frame),
        }
    ).reset_index()
    out["lift"] = out["inside"] / out["overall"]
    return out.sort_values(["lift", "inside"], ascending=False, kind="stable").reset_index(drop=True)


def top_shares(shares: pd.DataFrame, top: int = 12, what: str = "classes") -> pd.DataFrame:
    """The ``top`` values of ``weighted_shares`` with the largest share inside the group, then one
    row "other (k <what>)" summing the rest (inside and overall), so a chart of 1,000 classes
    shows the ones that matter and still adds up to 100%. Columns: value, inside, overall."""
    ordered = shares.sort_values(["inside", "overall"], ascending=False, kind="stable")
    shown = ordered.head(top)[["value", "inside", "overall"]].reset_index(drop=True)
    rest = ordered.iloc[top:]
    if len(rest):
        other = {"value": f"other ({len(rest):,} {what})", "inside": float(rest["inside"].sum()),
                 "overall": float(rest["overall"].sum())}
        shown = pd.concat([shown, pd.DataFrame([other])], ignore_index=True)
    return shown


def stored_value(column: pd.Series, text: object) -> object:
    """The value of ``column`` that ``weighted_shares`` printed as ``text`` (it prints values as
    strings): the original value (a number, a boolean, None for a missing one), or ``text``."""
    if not isinstance(text, str) and pd.isna(text):
        return None
    values = column.drop_duplicates()
    for value, printed in zip(values, values.astype(str), strict=True):  # printed as weighted_shares does
        if printed == text:
            return None if not isinstance(value, str) and pd.isna(value) else value
    return text


def attribute_enrichment(meta: pd.DataFrame, columns: list[str], weights: np.ndarray, max_values: int = 50) -> pd.DataFrame:
    """Every attribute value's share inside a weighted group vs in the dataset, sorted by lift.

    Columns with more than ``max_values`` distinct values (ids, paths) are skipped.
    Columns: attribute, value, inside, overall, lift.
    """
    frames = []
    for column in columns:
        if column not in meta or meta[column].nunique(dropna=False) > max_values:
            continue
        part = weighted_shares(meta[column], weights)
        part.insert(0, "attribute", column)
        frames.append(part)
    if not frames:
        return pd.DataFrame(columns=["attribute", "value", "inside", "overall", "lift"])
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["lift", "inside"], ascending=False, kind="stable").reset_index(drop=True)


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, 2) map of a representation: PCA (fast, linear) or UMAP (slow, keeps neighbourhoods)."""
    x = np.asarray(x, dtype=np.float32)
    if method == "pca":
        centred = x - x.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        out = centred @ vt[:2].T
        return np.pad(out, ((0, 0), (0, 2 - out.shape[1]))).astype(np.float32)
    if method == "umap":
        import umap

        neighbours = max(2, min(15, x.shape[0] - 1))
        return umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed, n_jobs=1).fit_transform(x).astype(np.float32)
    raise ParameterError(f"Unknown map method '{method}'; use 'pca' or 'umap'.")


def subset_vs_rest(groups: dict[str, np.ndarray], subset: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """How a saved subset sits in the groups a method found ("compare it with the rest").

    For each group (name -> store rows): its size, how many of its images are in the subset,
    the subset's share of the group against its share of all images (``lift`` > 1: the subset
    is over-represented there), and the group's accuracy on the subset's images and on the
    rest, with 95% bootstrap intervals. The first row, "all images", is the baseline.
    """
    n = len(correct)
    member = np.zeros(n, dtype=bool)
    member[np.asarray(subset, dtype=np.int64)] = True
    overall_share = member.mean() if n else np.nan
    names, sizes, inside, acc_in_k, n_in, acc_out_k, n_out = [], [], [], [], [], [], []
    for name, rows in {"all images": np.arange(n), **groups}.items():
        rows = np.asarray(rows, dtype=np.int64)
        mine = member[rows]
        names.append(name)
        sizes.append(len(rows))
        inside.append(int(mine.sum()))
        acc_in_k.append(int(correct[rows[mine]].sum()))
        n_in.append(int(mine.sum()))
        acc_out_k.append(int(correct[rows[~mine]].sum()))
        n_out.append(int((~mine).sum()))
    sizes_a, inside_a = np.asarray(sizes), np.asarray(inside)
    k_in, k_out, n_in_a, n_out_a = map(np.asarray, (acc_in_k, acc_out_k, n_in, n_out))
    low_in, high_in = binary_bootstrap_ci(k_in, n_in_a)
    low_out, high_out = binary_bootstrap_ci(k_out, n_out_a)
    share = np.divide(inside_a, sizes_a, out=np.full(len(sizes_a), np.nan), where=sizes_a > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "group": names, "images": sizes_a, "in subset": inside_a, "subset share": share,
                "lift": share / overall_share if overall_share else np.nan,
                "accuracy (subset)": np.where(n_in_a > 0, k_in / np.maximum(n_in_a, 1), np.nan),
                "subset low": low_in, "subset high": high_in,
                "accuracy (rest)": np.where(n_out_a > 0, k_out / np.maximum(n_out_a, 1), np.nan),
                "rest low": low_out, "rest high": high_out,
            }
        )
