"""Numbers that read right: one format per table column and a dash for missing values, share
charts that keep a band per class from 2 to 1,000 classes, a confusion legend in whole counts,
and the missing-image placeholder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def test_percent_columns_share_one_format_and_missing_values_are_dashes():
    from core.ui.widgets import DASH, Shown, readable

    frame = pd.DataFrame({"slice": ["a", "b"], "high": [0.49, 0.5701], "recall": [0.25, np.nan],
                          "gap": [-0.1234, 0.05], "AUROC": [0.5, np.nan]})
    shown, config = readable(frame, {
        "high": Shown("percent"), "recall": Shown("percent", missing="no members."),
        "gap": Shown("points"), "AUROC": Shown("number", 2, missing="the slice holds every image."),
    })
    assert shown["high"].tolist() == pytest.approx([49.0, 57.01])  # numbers stay numbers (they sort) ...
    assert config["high"]["type_config"]["format"] == "%.1f%%"  # ... printed 49.0% and 57.0%
    assert shown["recall"].tolist() == ["25.0%", DASH]  # a column with a missing value: text, a dash
    assert shown["AUROC"].tolist() == ["0.50", DASH]
    assert "no members" in config["recall"]["help"] and "every image" in config["AUROC"]["help"]
    assert config["gap"]["type_config"]["format"] == "%+.1f pts"
    assert not any(str(v) in ("None", "nan") for v in shown.to_numpy().ravel())
    assert frame["recall"].isna().sum() == 1  # the caller's frame is left as it was


def shares(n: int) -> pd.DataFrame:
    from core.scoring.summary import weighted_shares

    labels = pd.Series([f"class {i:04d}" for i in np.arange(4 * n) % n])
    return weighted_shares(labels, np.linspace(1, 0, 4 * n))


@pytest.mark.parametrize("n", [2, 4, 10, 1000])
def test_share_charts_give_every_class_a_band(n):
    from core.scoring.summary import top_shares
    from core.ui.spotlight_view import SHARE_BAND, shares_chart

    part = top_shares(shares(n), 12)
    assert len(part) == min(n, 13)
    assert part["inside"].sum() == pytest.approx(1.0) and part["overall"].sum() == pytest.approx(1.0)
    if n > 12:
        assert part["value"].iloc[-1] == f"other ({n - 12:,} classes)"
    spec = shares_chart(shares(n), "True class").to_dict()
    assert spec["height"] == {"step": SHARE_BAND, "for": "position"}  # a band per class, not a fixed height
    assert spec["encoding"]["x"]["scale"]["domain"][0] == 0


def test_one_class_confusion_legend_counts_in_whole_numbers():
    from core.ui.charts import _count_ticks, confusion_matrix

    spec = confusion_matrix(np.array([[16]]), ["7"], normalise=False).to_dict()
    colour = spec["layer"][0]["encoding"]["color"]
    assert colour["legend"]["format"] == "d" and colour["legend"]["values"] == [0, 5, 10, 16]
    assert colour["scale"]["domain"] == [0, 16.0]
    assert _count_ticks(1) == [0, 1] and _count_ticks(4) == [0, 1, 2, 3, 4] and _count_ticks(100) == [0, 50, 100]
    rates = confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"]).to_dict()["layer"][0]["encoding"]["color"]
    assert rates["legend"]["format"] == ".0%" and rates["scale"]["domain"] == [0, 1.0]


def test_placeholder_is_a_grey_tile_with_a_cross_and_the_id():
    from core.data.images import PLACEHOLDER_GREY, placeholder

    tile = placeholder(96, "cat/0001.png")
    assert tile.shape == (96, 96, 3) and tile.dtype == np.uint8
    assert tuple(tile[60, 10]) == PLACEHOLDER_GREY  # grey away from the cross
    assert tile[70, 70].max() < 150 and tile[80, 16].max() < 150  # on both diagonals: the dark cross
    assert (tile[:8] == 255).all(axis=2).mean() > 0.5 and (tile[:16] < 100).any()  # a white band with dark text
    assert not np.array_equal(tile, placeholder(96, "dog/0002.png"))  # the id is written on it
    assert np.array_equal(placeholder(48), placeholder(48)) and not (placeholder(48) == 255).all(axis=2).any()


def test_a_saved_spotlight_lists_what_defines_it():
    from core.methods import Spotlight
    from core.ui.spotlight_view import finding_params

    params = finding_params(Spotlight(size=0.125, n_spotlights=5, device="cpu", threads=2))
    assert params["size"] == 0.125 and params["n_spotlights"] == 5
    assert not {"device", "threads", "pca"} & set(params)  # where it ran, and options left unset (None)
    assert None not in params.values()
