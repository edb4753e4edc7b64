"""Intersectional groups: names, sizes, dropped groups, binning, capping, counts, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from core.methods.intersectional.groups import (
    Groups,
    build_groups,
    capped_rows,
    counts_table,
    groups_from_subsets,
)


@pytest.fixture
def meta() -> pd.DataFrame:
    # a x b: (x, u) 12, (x, v) 12, (y, u) 12, (y, v) 3; one row with a missing value
    a = ["x"] * 24 + ["y"] * 15 + [None]
    b = ["u"] * 12 + ["v"] * 12 + ["u"] * 12 + ["v"] * 3 + ["u"]
    return pd.DataFrame({"a": a, "b": b, "score": np.arange(40, dtype=float), "flag": [True, False] * 20})


def test_names_sizes_and_dropped(meta):
    g = build_groups(meta, ["a", "b"], min_size=10)
    assert isinstance(g, Groups) and g.columns == ("a", "b")
    assert g.names == ("x, u", "x, v", "y, u")
    assert g.values == (("x", "u"), ("x", "v"), ("y", "u"))
    assert g.sizes.tolist() == [12, 12, 12]
    assert g.dropped == (("y, v", 3),)
    assert g.labels[39] == -1 and (g.labels[36:39] == -1).all()  # missing value; dropped group
    assert g.rows(0).tolist() == list(range(12))
    assert [m.tolist() for m in g.members()] == [list(range(12)), list(range(12, 24)), list(range(24, 36))]
    assert g.bins == {}


def test_numeric_column_is_binned_with_labels(meta):
    g = build_groups(meta, ["score"], min_size=1)
    assert list(g.bins) == ["score"] and len(g.bins["score"]) == 4
    assert list(g.names) == g.bins["score"]
    assert g.sizes.tolist() == [10, 10, 10, 10]
    assert g.bins["score"] == ["(0, 10]", "(10, 20]", "(20, 29]", "(29, 39]"]
    # a numeric column with few values is categorical
    few = build_groups(pd.DataFrame({"k": [1, 2, 3] * 10}), ["k"], min_size=1)
    assert few.names == ("1", "2", "3") and few.bins == {}
    assert build_groups(meta, ["flag"], min_size=1).names == ("False", "True")


def test_infinite_values_are_left_out_of_the_bins():
    """pd.qcut raised on inf ("missing values must be missing in the same location"), which
    crashed the Intersectional page on a CSV attribute holding inf (hostile-input sweep)."""
    score = np.arange(40, dtype=float)
    score[[3, 17]] = [np.inf, -np.inf]
    g = build_groups(pd.DataFrame({"score": score}), ["score"], min_size=1)
    assert g.labels[3] == -1 and g.labels[17] == -1
    assert int(g.sizes.sum()) == 38 and len(g.bins["score"]) == 4


def test_errors(meta):
    with pytest.raises(DataError, match="at least one"):
        build_groups(meta, [])
    with pytest.raises(DataError, match="at most 3"):
        build_groups(meta, ["a", "b", "score", "flag"])
    with pytest.raises(DataError, match="not in the metadata"):
        build_groups(meta, ["nope"])
    with pytest.raises(DataError, match="single value 'z'"):
        build_groups(pd.DataFrame({"c": ["z"] * 5, "a": list("ababa")}), ["c", "a"])
    wide = pd.DataFrame({"p": np.arange(30) % 6, "q": np.arange(30) % 5})
    with pytest.raises(DataError, match=r"30 value combinations.*more than the 20 groups.*fewer variables"):
        build_groups(wide, ["p", "q"], max_groups=20, min_size=1)
    with pytest.raises(DataError, match="Only 1 group"):
        build_groups(meta, ["a"], min_size=20)


def test_capped_rows_deterministic_and_capped(meta):
    g = build_groups(meta, ["a", "b"], min_size=10)
    r1, r2 = capped_rows(g, 5, seed=3), capped_rows(g, 5, seed=3)
    assert np.array_equal(r1, r2) and np.all(np.diff(r1) > 0) and len(r1) == 15
    assert np.bincount(g.labels[r1]).tolist() == [5, 5, 5]
    assert not np.array_equal(r1, capped_rows(g, 5, seed=4))
    assert len(capped_rows(g, 100)) == 36  # below the cap: every member


def test_counts_table(meta):
    g = build_groups(meta, ["a", "b"], min_size=10)
    table = counts_table(g)
    assert table.columns.tolist() == ["a", "b", "group", "count"]
    assert table["count"].tolist() == [12, 12, 12]
    assert table["a"].tolist() == ["x", "x", "y"] and table["b"].tolist() == ["u", "v", "u"]
    capped = counts_table(g, capped_rows(g, 4))
    assert capped["count"].tolist() == [4, 4, 4]
    assert counts_table(g, np.arange(13))["count"].tolist() == [12, 1, 0]


def test_groups_from_subsets():
    g = groups_from_subsets(30, {"first": range(0, 12), "second": range(15, 27), "tiny": [28]}, min_size=10)
    assert g.columns == ("subset",) and g.names == ("first", "second") and g.dropped == (("tiny", 1),)
    assert g.sizes.tolist() == [12, 12] and g.labels[13] == -1
    with pytest.raises(DataError, match="2 image"):
        groups_from_subsets(30, {"a": range(0, 12), "b": range(10, 22)})
