"""The rows of the ActiVis neuron activation matrix: what each one is, and its store rows.

A row is a plain dict (so it lives in session state and in a saved link) naming a subset of
images the way ActiVis defines them (Sec. 4.2, "flexible subset definition"): by true class
(the default, one row per class), predicted class, correct vs wrong, a confidence range, a
cohort query (a DuckDB WHERE over the metadata, as on the Cohorts page), a saved subset, a
group of images another page sent (a finding: no condition describes it), or a single instance. ``resolve`` turns one into its store rows; the matrix itself is
``core.methods.ActivationMatrix`` (S^T A).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError
from core.services.cohorts import CohortView
from core.services.subsets import SubsetRegistry

MAX_ROWS = 50  # more rows than this are unreadable as a matrix (and refused by ActivationMatrix)
KINDS = ("class", "pred", "correct", "confidence", "query", "subset", "group", "instance")

Row = dict[str, Any]


def class_rows(classes: Sequence[str]) -> list[Row]:
    """The default rows: one subset per true class (ActiVis' default)."""
    return [{"kind": "class", "value": i, "name": name} for i, name in enumerate(classes)]


def label(row: Row, classes: Sequence[str]) -> str:
    """The row's name as the matrix prints it."""
    kind, value = row["kind"], row.get("value")
    if kind == "class":
        return f"class {classes[int(value)]}" if int(value) < len(classes) else f"class #{value}"
    if kind == "pred":
        return f"predicted {classes[int(value)]}" if int(value) < len(classes) else f"predicted #{value}"
    if kind == "correct":
        return "correct" if value else "wrong"
    if kind == "confidence":
        low, high = value
        return f"confidence {low:.2f}–{high:.2f}"
    if kind == "query":
        return f"cohort: {row.get('name') or value}"
    if kind == "subset":
        return f"subset: {value}"
    if kind == "group":
        return f"group: {row.get('name') or f'{len(value)} images'}"
    if kind == "instance":
        return f"image #{int(value)}"
    raise DataError(f"Unknown kind of matrix row '{kind}'; use one of {', '.join(KINDS)}.")


def resolve(
    row: Row, meta: pd.DataFrame, cohorts: CohortView, subsets: SubsetRegistry, classes: Sequence[str]
) -> np.ndarray:
    """The sorted store rows of one matrix row. DataError (what to do) when it has no image,
    names a subset that no longer exists or was saved for another store, or an image out of range."""
    kind, value = row["kind"], row.get("value")
    n = len(meta)
    if kind == "class":
        rows = np.flatnonzero(meta["label_idx"].to_numpy() == int(value))
    elif kind == "pred":
        rows = np.flatnonzero(meta["pred_idx"].to_numpy() == int(value))
    elif kind == "correct":
        rows = np.flatnonzero(meta["correct"].to_numpy() == bool(value))
    elif kind == "confidence":
        low, high = float(value[0]), float(value[1])
        confidence = meta["confidence"].to_numpy()
        rows = np.flatnonzero((confidence >= low) & (confidence <= high))
    elif kind == "query":
        rows = np.asarray(cohorts.rows(str(value)), dtype=np.int64)
    elif kind == "subset":
        if value not in subsets:
            damaged = subsets.damaged(str(value))
            if damaged:
                raise DataError(
                    f"The saved subset '{value}' is damaged ({damaged}): it was saved for another workspace or an "
                    "older store, or edited by hand. Remove its row."
                )
            raise DataError(f"The saved subset '{value}' no longer exists (renamed or deleted): remove its row.")
        rows = np.unique(np.asarray(subsets.get(value).rows, dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise DataError(
                f"The subset '{value}' holds image rows up to {int(rows.max())}, but this store has {n:,} images: "
                "it was saved for another workspace or an older store. Remove its row."
            )
    elif kind == "group":
        rows = np.unique(np.asarray(value, dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise DataError(
                f"The group '{label(row, classes)}' holds image rows up to {int(rows.max())}, but this store has {n:,} "
                "images: it came from another workspace. Remove its row."
            )
    elif kind == "instance":
        if not 0 <= int(value) < n:
            raise DataError(f"Image #{value} is not in this store (rows 0..{n - 1}).")
        rows = np.asarray([int(value)], dtype=np.int64)
    else:
        raise DataError(f"Unknown kind of matrix row '{kind}'; use one of {', '.join(KINDS)}.")
    if len(rows) == 0:
        raise DataError(f"The row '{label(row, classes)}' has no images: change its condition or remove it.")
    return rows.astype(np.int64)


def with_row(rows: Sequence[Row], row: Row) -> list[Row]:
    """``rows`` plus ``row`` at the end; a row already there is not added twice, and more than
    MAX_ROWS rows are refused with the count (DataError)."""
    if row["kind"] not in KINDS:
        raise DataError(f"Unknown kind of matrix row '{row['kind']}'; use one of {', '.join(KINDS)}.")
    if any(_same(row, r) for r in rows):
        return list(rows)
    if len(rows) + 1 > MAX_ROWS:
        raise DataError(
            f"The matrix would have {len(rows) + 1} rows: at most {MAX_ROWS} stay readable. Remove some rows first."
        )
    return [*rows, row]


def toggled_instance(rows: Sequence[Row], image: int) -> list[Row]:
    """``rows`` with image ``image`` added as an instance row, or removed when it is there
    (a click on a square of the instance panel adds it, a second click removes it)."""
    instance = {"kind": "instance", "value": int(image)}
    if any(_same(instance, r) for r in rows):
        return [r for r in rows if not _same(instance, r)]
    return with_row(rows, instance)


def _same(a: Row, b: Row) -> bool:
    return a["kind"] == b["kind"] and _plain(a.get("value")) == _plain(b.get("value"))


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value
