"""core.scoring.summary.subset_vs_rest by hand: a saved subset's place in a method's groups."""

from __future__ import annotations

import numpy as np

from core.scoring.summary import subset_vs_rest


def test_shares_lift_and_accuracies_by_hand() -> None:
    # 10 images; the subset is rows 0-3 (40% of all); the group is rows 0-4 (4 of its 5 in the subset)
    correct = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    table = subset_vs_rest({"g": np.arange(5), "outside": np.array([7, 8, 9])}, np.arange(4), correct)
    assert table["group"].tolist() == ["all images", "g", "outside"]
    assert table["images"].tolist() == [10, 5, 3] and table["in subset"].tolist() == [4, 4, 0]
    np.testing.assert_allclose(table["subset share"], [0.4, 0.8, 0.0])
    np.testing.assert_allclose(table["lift"], [1.0, 2.0, 0.0])
    g = table.iloc[1]
    assert g["accuracy (subset)"] == 0.5 and g["accuracy (rest)"] == 1.0  # rows 0-3: 2 of 4; row 4: 1 of 1
    assert g["subset low"] <= 0.5 <= g["subset high"]
    assert np.isnan(g["rest low"])  # one image: no interval
    outside = table.iloc[2]
    assert np.isnan(outside["accuracy (subset)"]) and outside["accuracy (rest)"] == 2 / 3


def test_an_empty_subset_has_no_lift() -> None:
    table = subset_vs_rest({"g": np.arange(3)}, np.array([], dtype=np.int64), np.ones(5, dtype=bool))
    assert table["in subset"].tolist() == [0, 0] and table["lift"].isna().all()
