"""Altair charts used across pages; each has axis titles and a tooltip.

``show(builder, *args)`` draws a chart from a Vega-Lite spec built once per arguments:
building and validating an Altair chart costs 0.05-0.3 s, paid on every rerun otherwise.

Altair refuses a data frame of more than ``MAX_ROWS`` rows (MaxRowsError), and a browser
could not read such a chart anyway: every builder aggregates or samples its data below that
(``evenly``, ``MOST_CLASSES``, ``MOST_CATEGORIES``) and its title or caption says so. Column
names a user chose (CSV attributes such as ``x:y`` or ``a.b``) reach Vega-Lite only through
``safe_fields``: Altair reads ``:`` as a type and Vega-Lite ``.`` and ``[]`` as nesting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

_BUILDERS: dict[str, Callable[..., alt.TopLevelMixin]] = {}
MAX_ROWS = 5000  # Altair's row limit for a data frame (MaxRowsError above it)
MOST_CLASSES = 20  # a confusion matrix shows at most this many classes; the rest are pooled
MOST_CATEGORIES = 40  # accuracy_intervals shows at most this many categories (the lowest)


def evenly(count: int, most: int) -> np.ndarray:
    """At most ``most`` of the positions 0..count-1, evenly spaced, the first (and for
    ``most`` >= 2 the last) included: the thinning that keeps a sorted curve's shape (its
    quantiles)."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max(1, most)).round().astype(np.int64))


def safe_fields(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """(``frame`` with these columns renamed ``f0``, ``f1``, ..., {original name: field}):
    user-chosen names reach a chart only as titles, never as field names, which Altair
    and Vega-Lite would parse (``x:y`` as a field and a type, ``a.b`` and ``a[0]`` as nesting)."""
    fields = {str(name): f"f{i}" for i, name in enumerate(dict.fromkeys(columns))}
    return frame.rename(columns=fields), fields


@st.cache_data(show_spinner=False, max_entries=512)
def _spec(builder: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Vega-Lite spec of ``builder(*args, **kwargs)`` (a fresh copy on each call:
    Streamlit moves the spec's datasets out of it when it draws the chart)."""
    return _BUILDERS[builder](*args, **kwargs).to_dict()


def show(builder: Callable[..., alt.TopLevelMixin], *args: Any, width: str | int = "stretch", **kwargs: Any) -> None:
    """Draw ``builder(*args, **kwargs)``, an Altair chart built (and validated) once per
    arguments (data frames are hashed by content). For charts without selections."""
    name = f"{builder.__module__}.{builder.__qualname__}"
    _BUILDERS[name] = builder
    st.vega_lite_chart(_spec(name, args, kwargs), width=width)


def accuracy_intervals(
    frame: pd.DataFrame, category: str, title: str, overall: float, zoom: bool = False
) -> alt.Chart:
    """Horizontal accuracy points with 95% interval bars per category, and the overall line.

    ``frame`` has columns [category, n, accuracy, low, high]. ``zoom``: the x axis spans the
    intervals and the overall line (rounded out to 5 points) instead of 0-1, for values that
    differ by a few points (attribute values), which on 0-1 sit on top of each other. Of more
    than MOST_CATEGORIES categories (1,000 classes) only the lowest are drawn, and the chart's
    title says so.
    """
    data = frame.copy()
    title = None
    if len(data) > MOST_CATEGORIES:
        data = data.sort_values(["accuracy", "n"], ascending=[True, False], kind="stable").head(MOST_CATEGORIES)
        title = f"The {MOST_CATEGORIES} of {len(frame):,} with the lowest accuracy"
    data["low"] = data["low"].fillna(data["accuracy"])
    data["high"] = data["high"].fillna(data["accuracy"])
    order = list(data.sort_values("accuracy")[category])
    domain = [0.0, 1.0]
    if zoom and len(data):
        lo = min(float(data["low"].min()), overall)
        hi = max(float(data["high"].max()), overall)
        domain = [max(0.0, np.floor(lo * 20 - 0.5) / 20), min(1.0, np.ceil(hi * 20 + 0.5) / 20)]
    y = alt.Y(f"{category}:N", sort=order, title=title, axis=alt.Axis(labelOverlap=False, labelLimit=320))
    base = alt.Chart(data)
    bars = base.mark_rule(strokeWidth=2, color="#888").encode(
        y=y,
        x=alt.X(
            "low:Q", title="Accuracy (95% bootstrap interval)", scale=alt.Scale(domain=domain),
            axis=alt.Axis(format="%", labelOverlap=True, tickCount=5),
        ),
        x2="high:Q",
    )
    points = base.mark_point(filled=True, size=70).encode(
        y=y,
        x="accuracy:Q",
        color=alt.Color("accuracy:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), legend=None),
        tooltip=[
            alt.Tooltip(f"{category}:N"),
            alt.Tooltip("n:Q", title="images"),
            alt.Tooltip("accuracy:Q", format=".1%"),
            alt.Tooltip("low:Q", format=".1%", title="95% low"),
            alt.Tooltip("high:Q", format=".1%", title="95% high"),
        ],
    )
    rule = alt.Chart(pd.DataFrame({"overall": [overall]})).mark_rule(strokeDash=[4, 4], color="#1f77b4").encode(
        x="overall:Q"
    )
    chart = (bars + points + rule).properties(height=max(170, 26 * len(data)))  # the x axis takes ~70 px of it
    return chart.properties(title=title) if title else chart


def most_confused(matrix: np.ndarray, classes: Sequence[str], most: int = MOST_CLASSES) -> tuple[np.ndarray, list[str], str | None]:
    """(counts, names, note) of a confusion matrix small enough to draw: all of it for at most
    ``most`` classes, else the ``most`` classes in the most errors (as the true or the
    predicted class; in class order) and one "other" row and column pooling the rest, so
    every image is still counted. ``note`` says what was pooled (None when nothing was)."""
    counts = np.asarray(matrix)
    k = len(classes)
    if k <= most:
        return counts, list(classes), None
    errors = counts.sum(axis=1) + counts.sum(axis=0) - 2 * np.diag(counts)
    kept = np.sort(np.argsort(-errors, kind="stable")[:most])
    rest = np.setdiff1d(np.arange(k), kept)
    groups = [[int(i)] for i in kept] + [list(rest)]
    pooled = np.array([[counts[np.ix_(a, b)].sum() for b in groups] for a in groups])
    other = f"other ({len(rest):,} classes)"
    note = f"The {most} classes in the most errors, of {k:,}; the other {len(rest):,} pooled as '{other}'"
    return pooled, [str(classes[i]) for i in kept] + [other], note


def confusion_matrix(matrix: np.ndarray, classes: list[str], normalise: bool = True) -> alt.Chart:
    """Heatmap of true class (rows) vs predicted class (columns), with the plotted value
    (shares of the true class, or counts) as text. Of more than MOST_CLASSES classes, the
    most confused are drawn and the rest pooled (``most_confused``), said in the title."""
    counts, classes, note = most_confused(matrix, classes)
    row_sums = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, row_sums, out=np.zeros_like(counts, dtype=float), where=row_sums > 0)
    records = [
        {"true": classes[i], "predicted": classes[j], "count": int(counts[i, j]), "rate": float(rates[i, j])}
        for i in range(len(classes))
        for j in range(len(classes))
    ]
    data = pd.DataFrame(records)
    value = "rate" if normalise else "count"
    base = alt.Chart(data).encode(
        x=alt.X("predicted:N", sort=classes, title="Predicted class"),
        y=alt.Y("true:N", sort=classes, title="True class"),
    )
    # the colour scale starts at 0 (so one class, or equal cells, still has a readable legend),
    # and its legend prints what the cells print: shares as percentages, counts as whole numbers
    top = 1.0 if normalise else float(max(1, counts.max(initial=0)))
    legend = alt.Legend(format=".0%", values=[0, 0.5, 1]) if normalise else alt.Legend(format="d", values=_count_ticks(top))
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="blues", domain=[0, top]), legend=legend,
                        title="share of row" if normalise else "images"),
        tooltip=["true", "predicted", "count", alt.Tooltip("rate:Q", format=".1%", title="share of true class")],
    )
    # the text prints what the colour shows (shares or counts), white only on the darker half
    # of the colour scale, so it stays readable on pale cells
    middle = top / 2  # the scale spans 0..top
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text(f"{value}:Q", format=".0%" if normalise else "d"),
        color=alt.condition(alt.datum[value] > middle, alt.value("white"), alt.value("black")),
    )
    # Streamlit fits the whole chart (axes and legend included) into this size: leave room
    # for them beside about 50 px per cell, or the cells' text overlaps (10 classes -> 660 px)
    side = max(320, 50 * len(classes) + 160)
    chart = (cells + text).properties(width=side, height=side)
    return chart.properties(title=note) if note else chart


def _count_ticks(top: float, most: int = 5) -> list[int]:
    """Whole-number legend values from 0 to ``top`` on a round step (1, 2, 5 × 10^k), at most
    ``most`` of them, ending at ``top`` itself so the legend shows the largest count (a tick
    closer than half a step below it is left out, so labels never crowd)."""
    steps = (m * 10**k for k in range(12) for m in (1, 2, 5))
    step = next(s for s in steps if top / s <= most - 1)
    return [t for t in range(0, int(top), step) if int(top) - t >= step / 2] + [int(top)]


CELL_SELECTION = "cell"  # the name of the intersection heatmap's point selection


def show_selectable(builder: Callable[..., alt.TopLevelMixin], *args: Any, key: str, width: str | int = "stretch",
                    modes: tuple[str, ...] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Like ``show``, for a chart with named selections: draw it clickable (a click reruns the
    page) and return Streamlit's event, ``{"selection": {param: ...}}``. ``modes`` names the
    selections that rerun (default all; leave out a zoom bound to the scales)."""
    name = f"{builder.__module__}.{builder.__qualname__}"
    _BUILDERS[name] = builder
    event = st.vega_lite_chart(_spec(name, args, kwargs), width=width, on_select="rerun", key=key,
                               selection_mode=list(modes) if modes else None)
    return dict(event) if event is not None else {}


def cell_text(value: Any) -> str:
    """How a heatmap axis prints a cell value (missing values as '(missing)')."""
    return "(missing)" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def intersection_heatmap(table: pd.DataFrame, row_title: str, column_title: str) -> alt.LayerChart:
    """Accuracy per cell of two columns (core.scoring.summary.intersection_accuracy): colour and text
    show the accuracy and the count, the tooltip the 95% interval; empty cells stay blank.

    A click selects a cell: the point selection ``cell`` over the fields ``row_text`` and
    ``column_text`` (the values as the axes print them).
    """
    data = table.copy()
    data["row_text"] = [cell_text(v) for v in data["row"]]
    data["column_text"] = [cell_text(v) for v in data["column"]]
    data = data.drop(columns=["row", "column"])
    data["text"] = [
        "" if n == 0 else f"{a:.0%} · n={n}" for a, n in zip(data["accuracy"], data["n"], strict=True)
    ]
    rows = list(dict.fromkeys(data["row_text"]))
    columns = list(dict.fromkeys(data["column_text"]))
    base = alt.Chart(data).encode(
        x=alt.X("column_text:N", sort=columns, title=column_title,
                axis=alt.Axis(labelAngle=-30, labelLimit=200, labelOverlap=False)),
        y=alt.Y("row_text:N", sort=rows, title=row_title, axis=alt.Axis(labelLimit=240, labelOverlap=False)),
    )
    selection = alt.selection_point(name=CELL_SELECTION, fields=["row_text", "column_text"], on="click", clear="dblclick")
    cells = base.transform_filter("datum.n > 0").mark_rect().encode(
        color=alt.Color("accuracy:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]),
                        legend=alt.Legend(format="%", title="accuracy")),
        strokeWidth=alt.condition(selection, alt.value(1), alt.value(0)),  # a clicked cell gets a frame
        stroke=alt.condition(selection, alt.value("black"), alt.value("white")),
        tooltip=[
            alt.Tooltip("row_text:N", title=row_title),
            alt.Tooltip("column_text:N", title=column_title),
            alt.Tooltip("n:Q", title="images"),
            alt.Tooltip("correct:Q", title="correct"),
            alt.Tooltip("accuracy:Q", format=".1%"),
            alt.Tooltip("low:Q", format=".1%", title="95% low"),
            alt.Tooltip("high:Q", format=".1%", title="95% high"),
        ],
    ).add_params(selection)
    # the scale's ends (dark red, dark green) take white text; the pale middle takes dark text
    text = base.transform_filter("datum.n > 0").mark_text(fontSize=10).encode(
        text="text:N",
        color=alt.condition("datum.accuracy < 0.2 || datum.accuracy > 0.85", alt.value("white"), alt.value("#222")),
    )
    return (cells + text).properties(width=alt.Step(90), height=alt.Step(26))  # a step per cell: labels never overlap
