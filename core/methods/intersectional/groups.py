"""Intersectional groups of images: every combination of 1-3 attribute values is a group.

Krug & Stober (Sec. 3, Fig. 1) study the intersections G of sensitive variables (race x
age x gender = 126 groups on FairFace), capped per group. ``build_groups`` forms them from
metadata columns (categorical ones as they are, numeric ones binned by quantiles with the
bins shown); ``groups_from_subsets`` uses saved subsets as groups instead. Groups below a
minimum size are left out and listed in ``Groups.dropped``, never silently.
``capped_rows`` draws the deterministic per-group sample and ``counts_table`` the group
sizes behind the paper's Fig. 1 heatmap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import DataError

MAX_COLUMNS = 3
MAX_CATEGORIES = 12  # numeric columns with at most this many distinct values count as categorical


@dataclass(frozen=True, eq=False)
class Groups:
    """The intersectional groups over the store's rows.

    ``labels[i]`` is the group index of store row i, -1 for rows left out (a missing
    value, or a group below the minimum size). ``values[g]`` holds group g's value of each
    column as text; ``names[g]`` joins them with ", ". ``levels`` gives each column's values
    in display order (the axes of the counts heatmap).
    """

    columns: tuple[str, ...]
    names: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]
    labels: np.ndarray
    sizes: np.ndarray
    bins: dict[str, list[str]]
    dropped: tuple[tuple[str, int], ...]
    levels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.names)

    def rows(self, g: int) -> np.ndarray:
        """Sorted store rows of group ``g``."""
        if not 0 <= g < self.n_groups:
            raise IndexError(f"group {g} out of range 0..{self.n_groups - 1}")
        return np.flatnonzero(self.labels == g)

    def members(self) -> list[np.ndarray]:
        """Sorted store rows of every group, in group order."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.n_groups + 1))
        return [np.sort(order[bounds[g] : bounds[g + 1]]) for g in range(self.n_groups)]


def _value_text(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _is_categorical(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return True
    return series.nunique(dropna=True) <= MAX_CATEGORIES


def _interval_text(interval: pd.Interval, decimals: int) -> str:
    left = "[" if interval.closed in ("left", "both") else "("
    right = "]" if interval.closed in ("right", "both") else ")"
    lo, hi = (round(float(v), decimals) + 0.0 for v in (interval.left, interval.right))  # no "-0"
    return f"{left}{lo:.{decimals}f}, {hi:.{decimals}f}{right}"


def _column_codes(
    meta: pd.DataFrame, column: str, n_bins: int
) -> tuple[np.ndarray, list[str], list[str] | None]:
    """(codes (N,) with -1 for missing, level texts in order, bin labels or None)."""
    series = meta[column]
    present = series.dropna()
    if present.nunique() < 2:
        shown = "no value" if present.empty else f"the single value '{_value_text(present.iloc[0])}'"
        raise DataError(
            f"Column '{column}' has {shown}, so it cannot split the images into groups. "
            "Pick another column."
        )
    if _is_categorical(series):
        if isinstance(series.dtype, pd.CategoricalDtype):
            levels = [c for c in series.cat.categories if (series == c).any()]
        else:
            try:
                levels = sorted(present.unique())
            except TypeError:  # mixed types: order by their text
                levels = sorted(present.unique(), key=str)
        codes = np.asarray(pd.Categorical(series, categories=levels).codes, dtype=np.int64)  # NaN -> -1
        texts = [_value_text(v) for v in levels]
        return codes, texts, None
    # Numeric with many values: quantile bins (the paper's age groups are bins too).
    # Infinite values have no quantile: they are left out, like missing ones.
    finite = series.astype(float).replace([np.inf, -np.inf], np.nan)
    cut = pd.qcut(finite, q=n_bins, duplicates="drop")
    categories = list(cut.cat.categories)
    if len(categories) < 2:
        raise DataError(f"Column '{column}' gives a single quantile bin; it cannot split the images into groups.")
    edges = [categories[0].left] + [c.right for c in categories]
    decimals = next((d for d in range(7) if len({round(float(e), d) for e in edges}) == len(edges)), 6)
    texts = [_interval_text(c, decimals) for c in categories]
    codes = np.asarray(cut.cat.codes, dtype=np.int64)
    return codes, texts, list(texts)


def _finish(
    columns: tuple[str, ...],
    keys: list[tuple[int, ...]],
    key_codes: np.ndarray,
    level_texts: list[list[str]],
    bins: dict[str, list[str]],
    min_size: int,
) -> Groups:
    """Groups from per-row combination indices (``key_codes``, -1: left out) over ``keys``."""
    counts = np.bincount(key_codes[key_codes >= 0], minlength=len(keys))
    names_all = [", ".join(level_texts[c][k] for c, k in enumerate(key)) for key in keys]
    keep = [i for i in range(len(keys)) if counts[i] >= min_size]
    dropped = tuple((names_all[i], int(counts[i])) for i in range(len(keys)) if counts[i] < min_size)
    if len(keep) < 2:
        detail = ", ".join(f"'{n}' ({s})" for n, s in dropped[:10])
        raise DataError(
            f"Only {len(keep)} group(s) have at least {min_size} images"
            + (f"; too small: {detail}{' ...' if len(dropped) > 10 else ''}" if dropped else "")
            + ". Lower the minimum size or pick other columns."
        )
    remap = np.full(len(keys), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    labels = np.where(key_codes >= 0, remap[np.clip(key_codes, 0, None)], -1)
    return Groups(
        columns=columns,
        names=tuple(names_all[i] for i in keep),
        values=tuple(tuple(level_texts[c][k] for c, k in enumerate(keys[i])) for i in keep),
        labels=labels,
        sizes=counts[keep].astype(np.int64),
        bins=bins,
        dropped=dropped,
        levels={col: tuple(level_texts[c]) for c, col in enumerate(columns)},
    )


def build_groups(
    meta: pd.DataFrame, columns: Sequence[str], min_size: int = 10, max_groups: int = 500, n_bins: int = 4
) -> Groups:
    """The intersectional groups of 1-3 metadata ``columns`` (one group per combination).

    Categorical columns (text, category, bool, or numeric with <= 12 values) are used as
    they are; other numeric ones are cut into ``n_bins`` quantile bins (``Groups.bins``).
    Rows with a missing value, and groups below ``min_size`` images, get label -1.
    """
    columns = tuple(str(c) for c in columns)
    if not columns:
        raise DataError("Pick at least one attribute column to form groups.")
    if len(columns) > MAX_COLUMNS:
        raise DataError(f"Pick at most {MAX_COLUMNS} attribute columns; {len(columns)} were given.")
    if len(set(columns)) < len(columns):
        raise DataError("Each attribute column can be picked only once.")
    missing = [c for c in columns if c not in meta.columns]
    if missing:
        raise DataError(f"Column(s) {', '.join(repr(c) for c in missing)} not in the metadata.")
    if len(meta) == 0:
        raise DataError("The metadata has no rows to group.")
    per_column = [_column_codes(meta, c, n_bins) for c in columns]
    codes = np.stack([pc[0] for pc in per_column], axis=1)  # (N, K)
    present = (codes >= 0).all(axis=1)
    keys, inverse = np.unique(codes[present], axis=0, return_inverse=True)
    if len(keys) > max_groups:
        raise DataError(
            f"{len(columns)} column(s) give {len(keys)} value combinations, more than the "
            f"{max_groups} groups allowed. Pick fewer variables, or columns with fewer values."
        )
    key_codes = np.full(len(meta), -1, dtype=np.int64)
    key_codes[present] = inverse.reshape(-1)
    bins = {c: pc[2] for c, pc in zip(columns, per_column, strict=True) if pc[2] is not None}
    return _finish(columns, [tuple(int(v) for v in k) for k in keys], key_codes, [pc[1] for pc in per_column], bins, min_size)


def default_group_columns(
    meta: pd.DataFrame, columns: Sequence[str], count: int = 2, min_size: int = 10
) -> tuple[list[str], list[tuple[str, str]]]:
    """(the first ``count`` of ``columns``, in order, that together build groups, [(a column
    passed over, why)]): a default that never opens a page on an error the user did not
    cause, e.g. a column with a single value, or one whose values leave fewer than 2 groups
    of ``min_size`` images. Empty when no column splits the images."""
    chosen: list[str] = []
    passed: list[tuple[str, str]] = []
    for column in columns:
        if len(chosen) == count:
            break
        try:
            build_groups(meta, [*chosen, column], min_size=min_size)
        except DataError as exc:
            passed.append((str(column), str(exc)))
            continue
        chosen.append(str(column))
    return chosen, passed


def groups_from_subsets(n: int, subsets: dict[str, Sequence[int]], min_size: int = 10) -> Groups:
    """Saved subsets as groups (column ``subset``); rows in no subset get label -1.

    Overlapping subsets cannot be groups: a DataError names how many rows they share.
    """
    if len(subsets) < 2:
        raise DataError("Pick at least two subsets to use as groups.")
    key_codes = np.full(int(n), -1, dtype=np.int64)
    seen = np.zeros(int(n), dtype=np.int64)
    names = [str(name) for name in subsets]
    for i, rows in enumerate(subsets.values()):
        rows = np.unique(np.asarray(list(rows), dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= n):
            raise DataError(f"Subset '{names[i]}' has rows outside 0..{n - 1}; it belongs to another store.")
        seen[rows] += 1
        key_codes[rows] = i
    overlap = int((seen > 1).sum())
    if overlap:
        raise DataError(
            f"{overlap} image(s) belong to more than one of the chosen subsets; groups must not "
            "overlap. Pick disjoint subsets."
        )
    return _finish(("subset",), [(i,) for i in range(len(names))], key_codes, [names], {}, min_size)


def capped_rows(groups: Groups, cap: int, seed: int = 0) -> np.ndarray:
    """Sorted store rows of at most ``cap`` images per group, drawn without replacement.

    Each group's draw depends only on (seed, group index), so it is deterministic.
    """
    if cap < 1:
        raise DataError(f"The cap per group must be at least 1; got {cap}.")
    chosen = []
    for g, rows in enumerate(groups.members()):
        if len(rows) > cap:
            rng = np.random.default_rng([int(seed), g])
            rows = rng.choice(rows, size=cap, replace=False)
        chosen.append(rows)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def counts_table(groups: Groups, rows: np.ndarray | None = None) -> pd.DataFrame:
    """One row per group: its value of each column (ordered categoricals), ``group`` and
    ``count`` (restricted to ``rows`` when given, e.g. after capping)."""
    labels = groups.labels if rows is None else groups.labels[np.asarray(rows, dtype=np.int64)]
    counts = np.bincount(labels[labels >= 0], minlength=groups.n_groups)
    data: dict[str, object] = {}
    for c, col in enumerate(groups.columns):
        levels = list(groups.levels.get(col, ())) or sorted({v[c] for v in groups.values})
        data[col] = pd.Categorical([v[c] for v in groups.values], categories=levels, ordered=True)
    data["group"] = list(groups.names)
    data["count"] = counts.astype(np.int64)
    return pd.DataFrame(data)
