"""Issue 22: every chart stays under Altair's row limit with 1,000 classes, 30,000 filters or
100,000 images, and takes user column names such as ``x:y`` (unit tests of the builders)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import pytest
from torchvision.models import resnet50

from core.methods.intersectional.groups import build_groups, counts_table, default_group_columns
from core.methods.saliency.explain import tour_error
from core.methods.saliency.filters import FilterIndex, conv_filters
from core.scoring.summary import intersection_axes
from core.services.subsets import defining_params, params_text
from core.ui import charts
from core.ui import intersectional_view as iview
from core.ui import saliency_view as sview

ODD_NAMES = ["x:y", "a.b", "c[0]", 'q"uote', "it's"]


def rows_of(chart: alt.TopLevelMixin) -> int:
    """The most rows of one data set in the chart's spec (to_dict raises MaxRowsError above 5,000)."""
    spec = chart.to_dict()
    return max((len(v) for v in spec.get("datasets", {}).values()), default=0)


def wide_index(layers: int, per_layer: int) -> FilterIndex:
    return FilterIndex(layers=tuple(f"layer{i}" for i in range(layers)), counts=(per_layer,) * layers, sizes=(9,) * layers)


@pytest.mark.parametrize("index", [conv_filters(resnet50()), wide_index(30, 1000), wide_index(3, 1600)],
                         ids=["resnet50", "30k filters", "4,800 filters"])
def test_profile_figure_keeps_each_layers_shape_under_the_limit(index):
    rng = np.random.default_rng(0)
    means = {"correct": rng.random(index.n_filters), "misclassified": rng.random(index.n_filters) * 2}
    mu, sigma = np.zeros(index.n_filters), np.ones(index.n_filters)
    for standardised in (False, True):
        points, bounds = sview.profile_frame.__wrapped__(means, index, mu, sigma, standardised)
        assert len(points) <= charts.MAX_ROWS
        assert rows_of(sview.profile_chart(points, bounds, "y", log=not standardised)) <= charts.MAX_ROWS
        for name, start, count in zip(index.layers, index.offsets, index.counts, strict=True):
            layer = points[(points["layer"] == name) & (points["group"] == "misclassified")]
            values = np.sort(means["misclassified"][start : start + count] * (1 if standardised else 1))[::-1]
            assert layer["value"].iloc[0] == pytest.approx(values[0])  # the top of each sorted profile is kept
            assert layer["value"].iloc[-1] == pytest.approx(values[-1])  # and its bottom
            assert layer["value"].is_monotonic_decreasing
    assert sview.thinning_note(index) is not None and "quantiles" in sview.thinning_note(index)
    assert sview.thinning_note(wide_index(2, 8)) is None


def test_confusion_of_a_thousand_classes_pools_the_rest():
    rng = np.random.default_rng(0)
    k = 1000
    matrix = np.diag(rng.integers(50, 100, k))
    matrix[7, 3] = 40  # the most confused pair
    matrix[5, 999] = 30
    classes = [f"c{i}" for i in range(k)]
    chart = charts.confusion_matrix(matrix, classes)
    assert rows_of(chart) <= (charts.MOST_CLASSES + 1) ** 2
    spec = chart.to_dict()
    assert "pooled" in spec["title"] and "1,000" in spec["title"]
    counts, names, _ = charts.most_confused(matrix, classes)
    assert counts.sum() == matrix.sum()  # every image is still counted
    assert {"c7", "c3", "c5", "c999"} <= set(names) and names[-1].startswith("other (980")
    small, names, note = charts.most_confused(matrix[:4, :4], classes[:4])
    assert note is None and names == classes[:4]
    charts.confusion_matrix(matrix, classes, normalise=False).to_dict()


def test_accuracy_of_a_thousand_classes_shows_the_lowest():
    rng = np.random.default_rng(0)
    acc = rng.random(1000)
    frame = pd.DataFrame({"class": [f"c{i}" for i in range(1000)], "n": 50, "accuracy": acc, "low": acc - 0.1, "high": acc + 0.1})
    chart = charts.accuracy_intervals(frame, "class", "True class", 0.5)
    spec = chart.to_dict()
    assert rows_of(chart) == charts.MOST_CATEGORIES and "lowest accuracy" in spec["title"]
    shown = set(pd.DataFrame(next(iter(spec["datasets"].values())))["class"])
    assert shown == set(frame.nsmallest(charts.MOST_CATEGORIES, "accuracy")["class"])


def test_the_crossing_never_offers_a_thousand_classes():
    meta = pd.DataFrame({"label": [f"c{i % 1000}" for i in range(5000)], "tint": ["a", "b"] * 2500})
    assert intersection_axes(meta, ["tint"]) == ["tint"]
    assert intersection_axes(meta.assign(label=meta["label"].str[:2]), ["tint"]) == ["label", "tint"]


def test_probe_curves_of_500_epochs_and_20_seeds():
    curves = pd.DataFrame([{"seed": s, "epoch": e, "train_accuracy": 0.5, "val_accuracy": 0.4}
                           for s in range(20) for e in range(500)])
    chart = iview.curves_chart(curves)
    assert rows_of(chart) <= charts.MAX_ROWS and "evenly spaced epochs" in chart.to_dict()["title"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_counts_chart_takes_odd_column_names(name):
    meta = pd.DataFrame({name: ["p", "q"] * 30, "other": ["r"] * 20 + ["s"] * 40, "third": ["u", "v", "w"] * 20})
    for columns in ([name], [name, "other"], ["other", name], [name, "other", "third"]):
        groups = build_groups(meta, columns, min_size=2)
        spec = iview.counts_chart(counts_table(groups), list(groups.columns), "sizes").to_dict()
        assert name in str(spec)  # as a title
        fields = [enc.get("field") for enc in _encodings(spec)]
        assert name not in fields


def _encodings(spec: dict) -> list[dict]:
    found = []
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "encoding" and isinstance(value, dict):
                found += [v for v in value.values() if isinstance(v, dict)]
            found += _encodings(value)
    elif isinstance(spec, list):
        for value in spec:
            found += _encodings(value)
    return found


def test_safe_fields_renames_only_the_given_columns():
    frame = pd.DataFrame({"x:y": [1], "count": [2]})
    renamed, fields = charts.safe_fields(frame, ["x:y"])
    assert list(renamed.columns) == ["f0", "count"] and fields == {"x:y": "f0"}


def test_similarity_matrix_labels_every_group():
    names = [f"group with a long name number {i}, value {i % 3}" for i in range(36)]
    sim = np.eye(36)
    spec = iview.similarity_chart(names, sim, np.arange(36)).to_dict()
    y = spec["encoding"]["y"]["axis"]
    assert y["labelOverlap"] is False and y["labelLimit"] >= 300
    assert spec["height"] == {"step": iview.SIMILARITY_STEP} and spec["width"] == {"step": iview.SIMILARITY_STEP}
    many = [f"g{i}" for i in range(500)]
    chart = iview.similarity_chart(many, np.eye(500), np.arange(500)[::-1], sizes=list(range(500)))
    assert rows_of(chart) == iview.MOST_GROUPS**2 and "70 largest of 500" in chart.to_dict()["title"]
    kept = set(pd.DataFrame(next(iter(chart.to_dict()["datasets"].values())))["a"])
    assert kept == {f"g{i}" for i in range(430, 500)}


def test_default_group_columns_skip_a_single_value():
    meta = pd.DataFrame({"site": ["only"] * 60, "ids": [str(i) for i in range(60)], "tint": ["a", "b"] * 30,
                         "size": ["s"] * 30 + ["l"] * 30})
    chosen, passed = default_group_columns(meta, list(meta.columns), 2, 10)
    assert chosen == ["tint", "size"]
    assert [c for c, _ in passed] == ["site", "ids"] and "single value" in passed[0][1]
    assert default_group_columns(meta, ["site"], 2, 10) == ([], [("site", passed[0][1])])


def test_tour_error_has_a_moderate_margin():
    meta = pd.DataFrame({"row": range(5), "correct": [True, False, False, False, False],
                         "confidence": [0.9, 1.0, 0.6, 0.5, 0.55], "p_true": [0.9, 0.0, 0.34, 0.1, 0.3],
                         "loss": [0.1, 20.0, 1.08, 2.3, 1.2]})
    assert tour_error(meta) == 4  # margin 0.25 (row 2: 0.26; the top-loss error, row 1, is 100% confident)
    assert tour_error(meta[meta["correct"]]) is None


def test_subset_parameters_show_only_what_defines_the_result():
    params = {"device": None, "threads": 1, "size": 0.1, "seed": 0, "chunk": 65536, "sort_by": None}
    assert defining_params(params) == {"size": 0.1, "seed": 0}
    assert params_text(params) == "size = 0.1, seed = 0" and "None" not in params_text(params)
