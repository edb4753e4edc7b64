"""Workspace summaries for the Overview page: class, confusion and attribute breakdowns."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from core.stats import accuracy_by

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


def gallery_rows(meta: pd.DataFrame, show: str, label: str | None, count: int, seed: int) -> pd.DataFrame:
    """A reproducible random sample of images for the gallery, errors or not, one class or all."""
    if show not in GALLERY_FILTERS:
        raise ValueError(f"show must be one of {GALLERY_FILTERS}")
    pool = meta
    if show != "all":
        pool = pool[pool["correct"] == (show == "correct")]
    if label:
        pool = pool[pool["label"] == label]
    if len(pool) <= count:
        return pool
    return pool.sample(n=count, random_state=seed).sort_values("loss", ascending=(show == "correct"))
