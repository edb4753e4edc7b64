"""Small statistics shared by the pages: accuracy with bootstrap intervals, breakdowns."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` (e.g. 0/1 correctness) with a percentile bootstrap interval.

    Fewer than two values have no interval (NaN bounds); constant values give a
    zero-width interval at the value.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if values.size < 2:
        return mean, float("nan"), float("nan")
    if np.all(values == values[0]):
        return mean, mean, mean
    result = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def binary_bootstrap_ci(
    successes: np.ndarray, sizes: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap intervals of many accuracies at once, from their counts.

    Resampling n 0/1 values with replacement and taking the mean is exactly a
    Binomial(n, k/n) draw divided by n, so every group's bootstrap is one vectorised
    binomial draw: the same interval as ``bootstrap_ci`` gives per group, for hundreds of
    subgroups in milliseconds. Groups of fewer than two have NaN bounds.
    """
    successes = np.asarray(successes, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    rng = np.random.default_rng(seed)
    p = np.divide(successes, sizes, out=np.zeros(len(sizes)), where=sizes > 0)
    draws = rng.binomial(np.maximum(sizes, 1)[:, None], p[:, None], size=(len(sizes), n_resamples))
    means = draws / np.maximum(sizes, 1)[:, None]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=1)
    small = sizes < 2
    low[small], high[small] = np.nan, np.nan
    return low, high


def accuracy_by(meta: pd.DataFrame, column: str, confidence: float = 0.95) -> pd.DataFrame:
    """Accuracy per value of ``column`` with bootstrap intervals, sorted by accuracy."""
    rows = []
    for value, group in meta.groupby(column, observed=True, dropna=False, sort=True):
        acc, low, high = bootstrap_ci(group["correct"].to_numpy(), confidence)
        rows.append({"value": str(value), "n": len(group), "accuracy": acc, "low": low, "high": high})
    frame = pd.DataFrame(rows, columns=["value", "n", "accuracy", "low", "high"])
    return frame.sort_values("accuracy", kind="stable").reset_index(drop=True)


def slice_accuracy(meta: pd.DataFrame, slice_columns: list[str]) -> pd.DataFrame:
    """Accuracy of each planted slice (rows where its ground-truth column is true)."""
    overall = float(meta["correct"].mean())
    rows = []
    for column in slice_columns:
        members = meta.loc[meta[column].astype(bool), "correct"].to_numpy()
        acc, low, high = bootstrap_ci(members)
        rows.append(
            {
                "slice": column.removeprefix("slice_"),
                "n": int(members.size),
                "accuracy": acc,
                "low": low,
                "high": high,
                "gap": overall - acc if members.size else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["slice", "n", "accuracy", "low", "high", "gap"])


def wilson(k: int, n: int) -> tuple[float, float, float]:
    """Accuracy k / n with its 95% Wilson score interval (NaN for n = 0)."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(0.95, method="wilson")
    return k / n, float(ci.low), float(ci.high)
