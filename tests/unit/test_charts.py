"""Charts drawn from cached specs, zoomed attribute charts, the gallery's random order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.scoring.summary import gallery_rows
from core.ui import charts


def frame(values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"value": [f"v{i}" for i in range(len(values))], "n": 100, "accuracy": values,
                         "low": [v - 0.02 for v in values], "high": [v + 0.02 for v in values]})


def x_domain(chart) -> list[float]:
    return chart.to_dict()["layer"][0]["encoding"]["x"]["scale"]["domain"]


def test_attribute_charts_zoom_on_their_values_and_the_overall_line():
    data = frame([0.84, 0.86, 0.85])
    assert x_domain(charts.accuracy_intervals(data, "value", "tint", 0.854)) == [0.0, 1.0]
    lo, hi = x_domain(charts.accuracy_intervals(data, "value", "tint", 0.854, zoom=True))
    assert 0.7 <= lo <= 0.82 and 0.88 <= hi <= 0.95  # a few points either side, not 0-1
    lo, hi = x_domain(charts.accuracy_intervals(data, "value", "tint", 0.5, zoom=True))
    assert lo <= 0.5  # the overall line stays in view
    spec = charts.accuracy_intervals(data, "value", "tint", 0.854, zoom=True).to_dict()
    assert spec["layer"][0]["encoding"]["x"]["axis"]["format"] == "%"


def test_show_builds_each_chart_once_per_arguments(monkeypatch):
    st.cache_data.clear()
    built = []

    def builder(data: pd.DataFrame, title: str):
        built.append(title)
        return charts.accuracy_intervals(data, "value", title, 0.8)

    drawn = []
    monkeypatch.setattr(st, "vega_lite_chart", lambda spec, **kw: drawn.append((spec, kw)))
    for _ in range(3):
        charts.show(builder, frame([0.8, 0.9]), "a")
    charts.show(builder, frame([0.8, 0.7]), "a")  # other data: built again
    assert built == ["a", "a"] and len(drawn) == 4
    assert drawn[0][0] == drawn[1][0] and drawn[0][0] is not drawn[1][0]  # a fresh copy each time
    assert drawn[0][1] == {"width": "stretch"}


def test_random_sample_gallery_keeps_its_random_order():
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"row": np.arange(500), "correct": rng.random(500) < 0.5, "label": "a", "loss": rng.random(500)})
    rows = gallery_rows(meta, "misclassified", None, 24, seed=3)
    pool = meta[~meta["correct"]]
    assert rows["row"].tolist() == pool.sample(n=24, random_state=3)["row"].tolist()
    assert not rows["loss"].is_monotonic_increasing and not rows["loss"].is_monotonic_decreasing


def test_the_confusion_matrix_leaves_each_cell_room_for_its_text():
    # Streamlit fits the whole chart, axes and legend included, into the spec's size: 10
    # classes in 340 px left 19 px cells whose "12%" labels ran into each other
    classes = [f"class {i}" for i in range(10)]
    spec = charts.confusion_matrix(np.eye(10, dtype=int) * 7, classes, normalise=True).to_dict()
    assert spec["width"] == spec["height"] and spec["width"] - 160 >= 45 * len(classes)
