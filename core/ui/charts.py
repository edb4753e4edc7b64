"""Altair charts used across pages; each has axis titles and a tooltip."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd


def accuracy_intervals(frame: pd.DataFrame, category: str, title: str, overall: float) -> alt.Chart:
    """Horizontal accuracy points with 95% interval bars per category, and the overall line.

    ``frame`` has columns [category, n, accuracy, low, high].
    """
    data = frame.copy()
    data["low"] = data["low"].fillna(data["accuracy"])
    data["high"] = data["high"].fillna(data["accuracy"])
    order = list(data.sort_values("accuracy")[category])
    y = alt.Y(f"{category}:N", sort=order, title=title, axis=alt.Axis(labelOverlap=False, labelLimit=220))
    base = alt.Chart(data)
    bars = base.mark_rule(strokeWidth=2, color="#888").encode(
        y=y,
        x=alt.X("low:Q", title="Accuracy (95% bootstrap interval)", scale=alt.Scale(domain=[0, 1])),
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
    return (bars + points + rule).properties(height=max(140, 26 * len(data)))


def confusion_matrix(matrix: np.ndarray, classes: list[str], normalise: bool = True) -> alt.Chart:
    """Heatmap of true class (rows) vs predicted class (columns), with counts as text."""
    counts = np.asarray(matrix)
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
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="blues"), title="share of row" if normalise else "images"),
        tooltip=["true", "predicted", "count", alt.Tooltip("rate:Q", format=".1%", title="share of true class")],
    )
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("count:Q"),
        color=alt.condition(alt.datum.rate > 0.5, alt.value("white"), alt.value("black")),
    )
    side = max(240, 34 * len(classes))
    return (cells + text).properties(width=side, height=side)
