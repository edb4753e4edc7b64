"""Rendering for the Spotlight page: the run with progress, one panel per spotlight, charts."""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.errors import BiasLensError
from core.methods import Spotlight, SpotlightFit, attribute_enrichment, weighted_shares
from core.stats import bootstrap_ci
from core.store import Store
from core.ui import cache
from core.ui.context import PageContext
from core.ui.widgets import how_to_read, image_grid, percent

GALLERY = 24
SPOTLIGHT_COLOUR, DATASET_COLOUR = "#d62728", "#9e9e9e"


def run_spotlights(store: Store, layer: str | None, pool: str, spotlight: Spotlight) -> Spotlight:
    """The cached fitted spotlights, or a run inside st.status with a progress bar (errors propagate)."""
    cached = cache.spotlight_cached(store, layer, pool, spotlight)
    if cached is not None:
        return cached
    with st.status("Shining the spotlights...", expanded=True) as status:
        bar = st.progress(0.0, text="Preparing the representation...")

        def progress(done: int, total: int, message: str) -> None:
            bar.progress(min(1.0, done / max(1, total)), text=f"{message}: step {done:,} of {total:,}")

        try:
            result = cache.spotlight_result(store, layer, pool, spotlight, progress)
        except BiasLensError:
            status.update(label="No spotlight was run", state="error", expanded=False)
            raise
        status.update(label=f"{len(result.spotlights_)} spotlight(s) in {result.seconds_:.1f} s", state="complete", expanded=False)
    return result


def gallery(ctx: PageContext, meta: pd.DataFrame, rows: np.ndarray, extra: list[str] | None = None, columns: int = 8) -> None:
    """Thumbnails of these rows, captioned with label / prediction, errors marked in red."""
    part = meta.iloc[np.asarray(rows, dtype=np.int64)]
    thumbs = cache.thumbnails(ctx.dataset, ctx.key, tuple(int(r) for r in part["row"]), 96)
    image_grid(thumbs, part, columns=columns, extra=extra)


def trace_chart(result: Spotlight) -> alt.Chart:
    """Objective and effective size per optimisation step, one line per spotlight."""
    frames = []
    for fit in result.spotlights_:
        every = max(1, len(fit.trace) // 200)
        steps = np.arange(0, len(fit.trace), every)
        frames.append(
            pd.DataFrame(
                {"spotlight": f"Spotlight {fit.index + 1}", "step": steps, "objective": fit.trace[steps], "size": fit.size_trace[steps]}
            )
        )
    data = pd.concat(frames, ignore_index=True)
    return (
        alt.Chart(data)
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="Optimisation step"),
            y=alt.Y("objective:Q", title="Objective (weighted mean loss)"),
            color=alt.Color("spotlight:N", title=None),
            tooltip=["spotlight", "step", alt.Tooltip("objective:Q", format=".3f"), alt.Tooltip("size:Q", format=",.0f", title="sum of weights")],
        )
        .properties(height=220)
    )


def shares_chart(shares: pd.DataFrame, title: str, top: int = 12) -> alt.Chart:
    """Grouped bars: each value's share inside the spotlight vs in the dataset."""
    part = shares.sort_values("inside", ascending=False).head(top)
    data = part.melt(id_vars=["value"], value_vars=["inside", "overall"], var_name="where", value_name="share")
    data["where"] = data["where"].map({"inside": "Spotlight (weighted)", "overall": "Dataset"})
    order = list(part["value"])
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            y=alt.Y("value:N", sort=order, title=title, axis=alt.Axis(labelLimit=200, labelOverlap=False)),
            x=alt.X("share:Q", title="Share of images", axis=alt.Axis(format="%")),
            yOffset=alt.YOffset("where:N", sort=["Spotlight (weighted)", "Dataset"]),
            color=alt.Color(
                "where:N", title=None,
                scale=alt.Scale(domain=["Spotlight (weighted)", "Dataset"], range=[SPOTLIGHT_COLOUR, DATASET_COLOUR]),
                legend=alt.Legend(orient="bottom"),
            ),
            tooltip=["value", "where", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(height=max(120, 34 * len(part)))
    )


def enrichment_chart(enrichment: pd.DataFrame, top: int = 12) -> alt.Chart:
    """Horizontal bars of lift (share inside / share in the dataset) for the top attribute values."""
    data = enrichment.head(top).copy()
    data["attribute value"] = data["attribute"] + " = " + data["value"]
    order = list(data["attribute value"])
    bars = (
        alt.Chart(data)
        .mark_bar(color=SPOTLIGHT_COLOUR)
        .encode(
            y=alt.Y(
                "attribute value:N", sort=order, title="Attribute value", axis=alt.Axis(labelLimit=240, labelOverlap=False)
            ),
            x=alt.X("lift:Q", title="Lift: share in the spotlight ÷ share in the dataset"),
            tooltip=[
                "attribute value",
                alt.Tooltip("inside:Q", format=".1%", title="in spotlight"),
                alt.Tooltip("overall:Q", format=".1%", title="in dataset"),
                alt.Tooltip("lift:Q", format=".2f"),
            ],
        )
    )
    rule = alt.Chart(pd.DataFrame({"lift": [1.0]})).mark_rule(strokeDash=[4, 4]).encode(x="lift:Q")
    return (bars + rule).properties(height=max(120, 26 * len(data)))


def map_chart(frame: pd.DataFrame, x_title: str, y_title: str) -> alt.Chart:
    """Scatter of the 2-D map coloured by spotlight weight; errors drawn as crosses."""
    data = frame.sort_values("weight")  # high weights drawn last, on top
    return (
        alt.Chart(data)
        .mark_point(filled=True, size=28, opacity=0.8)
        .encode(
            x=alt.X("x:Q", title=x_title, axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("y:Q", title=y_title, axis=alt.Axis(labels=False, ticks=False)),
            color=alt.Color("weight:Q", title="Spotlight weight", scale=alt.Scale(scheme="inferno", reverse=True, domain=[0, 1])),
            shape=alt.Shape(
                "outcome:N", title="Prediction",
                scale=alt.Scale(domain=["correct", "error"], range=["circle", "cross"]),
            ),
            tooltip=["row", "label", "pred", "outcome", alt.Tooltip("weight:Q", format=".3f"), alt.Tooltip("loss:Q", format=".3f")],
        )
        .properties(height=460)
    )


def _save_subset(ctx: PageContext, meta: pd.DataFrame, fit: SpotlightFit, result: Spotlight, detail: str) -> None:
    """Save the spotlight's top-k images, or those above a weight threshold, as a subset."""
    i = fit.index + 1
    st.markdown("**Save as a subset** (for the other pages; export it on *Cohorts & subsets*)")
    c1, c2, c3 = st.columns([1, 1, 2])
    mode = c1.radio("Keep", ["top-k images", "weight threshold"], key=f"spot_mode_{i}")
    if mode == "top-k images":
        k = int(c2.number_input("k", 1, len(meta), min(result.size_, len(meta)), key=f"spot_k_{i}"))
        rows, how = fit.top_rows(k), f"top {k} by weight"
    else:
        threshold = float(c2.slider("Weight at least", 0.01, 1.0, 0.5, 0.01, key=f"spot_thr_{i}"))
        rows, how = np.flatnonzero(fit.weights >= threshold), f"weight >= {threshold:.2f}"
    c2.caption(f"{len(rows):,} images")
    name = c3.text_input("Subset name", f"spotlight {i}: {how}", key=f"spot_name_{i}")
    if c3.button("Save as subset", key=f"spot_save_{i}"):
        try:
            ctx.subsets().add(name, rows, origin="spotlight", detail=f"spotlight {i} ({detail}): {how}")
            st.toast(f"Saved subset '{name}' ({len(rows):,} images)")
        except BiasLensError as exc:
            st.error(str(exc))


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs={**cache.STORE_HASH, SpotlightFit: lambda fit: fit.weights.tobytes()})
def _panel_figures(
    store: Store, _meta: pd.DataFrame, fit: SpotlightFit, attributes: tuple[str, ...], size: int
) -> dict[str, Any]:
    """One spotlight's figures, computed once per store and weights: the accuracy of its top
    ``size`` images with an interval, its class mixes and its attribute lift."""
    correct = _meta["correct"].to_numpy()
    return {
        "overall": bootstrap_ci(correct)[0],
        "top": bootstrap_ci(correct[fit.top_rows(size)]),
        "labels": weighted_shares(_meta["label"], fit.weights),
        "preds": weighted_shares(_meta["pred"], fit.weights),
        "enrichment": attribute_enrichment(_meta, list(attributes), fit.weights),
    }


def spotlight_panel(
    ctx: PageContext, meta: pd.DataFrame, result: Spotlight, fit: SpotlightFit, attributes: list[str], detail: str
) -> None:
    """Everything about one spotlight: metrics, gallery, class mix, attribute enrichment, saving."""
    top = fit.top_rows(result.size_)
    figures = _panel_figures(ctx.store, meta, fit, tuple(attributes), result.size_)
    overall, (accuracy, low, high) = figures["overall"], figures["top"]
    m1, m2, m3 = st.columns(3)
    m1.metric(
        "Weighted mean loss", f"{fit.mean_loss:.3f}", f"{fit.mean_loss / result.mean_loss_:.1f}× the dataset's {result.mean_loss_:.3f}"
        if result.mean_loss_ > 0 else None, delta_color="inverse",
    )
    m2.metric("Effective size (sum of weights)", f"{fit.size:,.0f}", f"{100 * fit.size / result.n_images_:.1f}% of images", delta_color="off")
    m3.metric(f"Accuracy of the top {result.size_:,}", percent(accuracy), f"{100 * (accuracy - overall):+.1f} pts vs overall {percent(overall)}")
    m3.caption(f"95% bootstrap interval: {percent(low)} – {percent(high)}")

    st.markdown(f"**Top-weighted images** (of {result.size_:,} in the top S)")
    gallery(ctx, meta, top[:GALLERY], extra=[f"w {fit.weights[r]:.2f}" for r in top[:GALLERY]])
    how_to_read("the spotlight's highest-weighted images, highest first; red frames and ✗ mark misclassified images (prediction, then true label).")

    left, right = st.columns(2)
    with left:
        st.altair_chart(shares_chart(figures["labels"], "True class"), width="stretch")
        how_to_read("share of each true class inside the spotlight (weighted by k_i, red) vs in the whole dataset (grey).")
    with right:
        st.altair_chart(shares_chart(figures["preds"], "Predicted class"), width="stretch")
        how_to_read("the same for the model's predictions: a class far more predicted inside than overall is the confusion.")

    enrichment = figures["enrichment"]
    if enrichment.empty:
        st.caption("This dataset has no attribute columns to describe the spotlight with.")
    else:
        st.markdown("**What describes this spotlight** — attribute values by lift")
        st.altair_chart(enrichment_chart(enrichment), width="stretch")
        how_to_read("lift = an attribute value's share inside the spotlight ÷ its share in the dataset; right of the dashed line (1) it is over-represented.")
        with st.expander("All attribute values"):
            st.dataframe(
                enrichment, hide_index=True,
                column_config={
                    "inside": st.column_config.NumberColumn("share in spotlight", format="percent"),
                    "overall": st.column_config.NumberColumn("share in dataset", format="percent"),
                    "lift": st.column_config.NumberColumn(format="%.2f"),
                },
            )
    _save_subset(ctx, meta, fit, result, detail)
