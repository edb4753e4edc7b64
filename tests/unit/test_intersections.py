"""Intersection accuracy by hand, and cell filters that select exactly the cell's rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.scoring.summary import intersection_accuracy, intersection_axes, stored_value
from core.services.cohorts import CohortView, equals_filter


def small() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": range(8),
            "label": ["Bag", "Bag", "Bag", "Sandal", "Sandal", "Sandal", "Sandal", "Bag"],
            "tint": ["red", "red", "blue", "red", "blue", "blue", None, "red"],
            "correct": [True, False, True, True, False, False, True, True],
        }
    )


def test_intersection_accuracy_by_hand():
    table = intersection_accuracy(small(), "label", "tint")
    assert list(table.columns) == ["row", "column", "n", "correct", "accuracy", "low", "high"]
    cells = {(r, c): (n, k) for r, c, n, k in table[["row", "column", "n", "correct"]].itertuples(index=False)}
    # every combination, missing values as a value of their own, empty cells with n = 0
    assert cells == {
        ("Bag", "blue"): (1, 1), ("Bag", "red"): (3, 2), ("Bag", None): (0, 0),
        ("Sandal", "blue"): (2, 0), ("Sandal", "red"): (1, 1), ("Sandal", None): (1, 1),
    }
    bag_red = table[(table["row"] == "Bag") & (table["column"] == "red")].iloc[0]
    assert bag_red["accuracy"] == pytest.approx(2 / 3)
    assert 0 <= bag_red["low"] <= 2 / 3 <= bag_red["high"] <= 1
    empty = table[table["n"] == 0].iloc[0]
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["low"])
    single = table[(table["row"] == "Bag") & (table["column"] == "blue")].iloc[0]
    assert math.isnan(single["low"])  # fewer than two images: no interval
    with pytest.raises(ValueError):
        intersection_accuracy(small(), "tint", "tint")


def test_intersection_axes_skip_many_valued_columns():
    meta = small().assign(path=[f"p{i}" for i in range(8)])
    assert intersection_axes(meta, ["tint", "path"], max_values=5) == ["label", "tint"]


def test_equals_filter_quotes_identifiers_and_values():
    assert equals_filter({"label": "Sandal", "marker": "square"}) == "\"label\" = 'Sandal' AND \"marker\" = 'square'"
    assert equals_filter({'we"ird': "O'Hara"}) == "\"we\"\"ird\" = 'O''Hara'"
    assert equals_filter({"a": None, "b": True, "c": np.int64(3)}) == '"a" IS NULL AND "b" = true AND "c" = 3'


def test_equals_filter_selects_exactly_the_cell_through_cohort_view():
    meta = pd.DataFrame(
        {
            "row": range(7),
            "name": ["O'Hara", "O'Hara", 'say "hi"', None, "plain", "O'Hara", None],
            "size": [1, 2, 1, 1, 2, 1, 2],
            "ratio": [0.1, 0.30000000000000004, 0.1, 2.5, 0.1, np.nan, 0.1],
            "flag": [True, False, True, True, False, True, False],
            'odd "col"': ["a", "b", "a", "a", "b", "a", "b"],
            "correct": [True] * 7,
        }
    )
    view = CohortView(meta)
    cells = [
        {"name": "O'Hara", "size": 1},
        {"name": 'say "hi"', "flag": True},
        {"name": None, "size": 2},
        {"ratio": 0.30000000000000004},
        {"ratio": np.nan, "flag": True},
        {"flag": np.False_, 'odd "col"': "b"},
        {"size": np.int64(1), "ratio": 0.1, "name": None},
    ]
    for pairs in cells:
        mask = pd.Series(True, index=meta.index)
        for column, value in pairs.items():
            mask &= meta[column].isna() if value is None or (isinstance(value, float) and np.isnan(value)) else meta[column] == value
        expected = meta.loc[mask, "row"].tolist()
        assert view.rows(equals_filter(pairs)) == expected, pairs
        assert expected or pairs == {"size": np.int64(1), "ratio": 0.1, "name": None}


def test_stored_value_maps_printed_values_back():
    assert stored_value(pd.Series([1, 2, 2]), "2") == 2
    assert stored_value(pd.Series([True, False]), "False") is np.False_ or stored_value(pd.Series([True, False]), "False") is False
    missing = pd.Series(["a", None])
    assert stored_value(missing, missing.astype(str).iloc[1]) is None
    assert stored_value(pd.Series(["a"]), "zzz") == "zzz"


def test_heatmap_selects_cells_and_leaves_empty_cells_blank():
    from core.ui.charts import CELL_SELECTION, intersection_heatmap

    spec = intersection_heatmap(intersection_accuracy(small(), "label", "tint"), "label", "tint").to_dict()
    [param] = spec["params"]
    assert param["name"] == CELL_SELECTION and param["select"]["fields"] == ["row_text", "column_text"]
    cells, text = spec["layer"]
    assert {"filter": "datum.n > 0"} in cells["transform"] and {"filter": "datum.n > 0"} in text["transform"]
    assert cells["encoding"]["color"]["scale"]["domain"] == [0, 1]
    assert "condition" in text["encoding"]["color"]  # white text only on the scale's dark ends
