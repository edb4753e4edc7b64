"""The Spotlight page's cached runs, panels and charts.

Runs are keyed by the store, the representation's name (``Store.representation``) and the
estimator's ``get_params()``; the cached object is a fitted clone, never the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from sklearn.base import clone

from core.methods import Spotlight, SpotlightFit, summary
from core.methods.spotlight.record import spotlight_order
from core.scoring.stats import bootstrap_ci
from core.scoring.summary import (
    attribute_enrichment,
    project_2d,
    stored_value,
    top_shares,
    weighted_shares,
)
from core.services.cohorts import equals_filter
from core.services.estimates import map_seconds, spotlight_held_out_seconds, spotlight_seconds
from core.store.read import Store
from core.ui import cache
from core.ui.charts import show
from core.ui.cohort_link import open_cohort
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.method_page import gallery, run_with_progress, save_subset_form
from core.ui.widgets import Shown, how_to_read, percent, table

GALLERY = 24
SPOTLIGHT_COLOUR, DATASET_COLOUR = "#d62728", "#9e9e9e"
EMBEDDING = "embedding"
MAX_SPOTLIGHTS = 10  # the page's limit: larger cached runs are looked for up to it


def representation_label(store: Store, name: str) -> str:
    """How a representation is named on the page: the paper's default first."""
    if name == EMBEDDING:
        return f"Last hidden layer (input of {store.embedding_layer}, {store.manifest['embedding_dim']}-d)"
    layer, pool = name.rsplit(":", 1)
    return f"{layer} · {pool}-pooled"


# --------------------------------------------------------------------------- cached runs


def search_size(store: Store, representation: str, scope: np.ndarray | None = None) -> tuple[int, int]:
    """(images, dims) a run searches: the representation's shape, its rows limited to the
    scope (read from the memory map's header, nothing loaded)."""
    n, d = store.representation(representation).shape
    return (int(n) if scope is None else len(scope)), int(d)


def run_spotlights(store: Store, representation: str, spotlight: Spotlight, scope: np.ndarray | None = None) -> Spotlight:
    """The fitted spotlights of these inputs: cached, or found now with a progress bar.

    The losses are the store's per-image cross-entropy. With ``scope`` (store rows of a
    subset) the search runs on those images only, and each spotlight's weights are mapped
    back to all store rows (0 outside the scope). Errors propagate (nothing is cached).
    """
    cached = cache.cached_fit(store, spotlight, representation, scope)
    if cached is not None:
        return cached
    larger = _larger_cached_run(store, representation, spotlight, scope)
    if larger is not None:
        return larger.first(int(spotlight.n_spotlights))

    def work(progress: Any) -> Spotlight:
        expected = spotlight_seconds(*search_size(store, representation, scope), **spotlight.get_params())
        return cache.fitted_once(store, spotlight, representation, scope, label="The spotlight search", expected_s=expected,
                                 progress=progress)

    return run_with_progress(
        "Shining the spotlights...", work, lambda fitted: f"{len(fitted.spotlights_)} spotlight(s) in {fitted.seconds_:.1f} s",
        unit=None,  # the estimator's message names the spotlight and its own step count
    )


def held_out_for(
    store: Store, representation: str, spotlight: Spotlight, scope: np.ndarray | None = None
) -> tuple[pd.DataFrame | None, Callable[[], pd.DataFrame]]:
    """The split-half confirmation of the spotlights (its cached table or None, the run that
    computes it once)."""
    expected = spotlight_held_out_seconds(*search_size(store, representation, scope), **spotlight.get_params())
    return cache.held_out_once(store, spotlight, representation, scope, expected_s=expected)


def _larger_cached_run(
    store: Store, representation: str, spotlight: Spotlight, scope: np.ndarray | None = None
) -> Spotlight | None:
    """A cached run with more spotlights and the same other parameters, if there is one:
    spotlights are found in sequence, so its first ones are the ones asked for."""
    wanted = int(spotlight.n_spotlights)
    for more in range(wanted + 1, max(MAX_SPOTLIGHTS, wanted) + 1):
        found = cache.cached_fit(store, clone(spotlight).set_params(n_spotlights=more), representation, scope)
        if found is not None:
            return found
    return None


def representation_map(store: Store, representation: str, method: str, rows: tuple[int, ...]) -> np.ndarray:
    """(len(rows), 2) PCA or UMAP map of a representation at these rows, computed once."""

    def compute() -> np.ndarray:
        x = store.representation(representation)
        return project_2d(np.asarray(x[np.asarray(rows, dtype=np.int64)]), method)

    key = cache.run_key(representation, method, rows)
    expected = map_seconds(len(rows), search_size(store, representation)[1], method)
    return cache.computed_once("map", store.fingerprint, key, f"The {method.upper()} map", compute, expected_s=expected)


def trace_frame(result: Spotlight) -> pd.DataFrame:
    """Objective and effective size at (at most) 200 steps of each spotlight."""
    frames = []
    for fit in result.spotlights_:
        every = max(1, len(fit.trace) // 200)
        steps = np.arange(0, len(fit.trace), every)
        frames.append(
            pd.DataFrame(
                {"spotlight": f"Spotlight {fit.index + 1}", "step": steps, "objective": fit.trace[steps], "size": fit.size_trace[steps]}
            )
        )
    return pd.concat(frames, ignore_index=True)


def trace_chart(data: pd.DataFrame) -> alt.Chart:
    """Objective per optimisation step, one line per spotlight (``trace_frame``)."""
    return (
        alt.Chart(data)
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="Optimisation step"),
            y=alt.Y("objective:Q", title="Weighted mean loss", axis=alt.Axis(titleLimit=400)),
            color=alt.Color("spotlight:N", title=None),
            tooltip=["spotlight", "step", alt.Tooltip("objective:Q", format=".3f"), alt.Tooltip("size:Q", format=",.0f", title="sum of weights")],
        )
        .properties(height=220)
    )


SHARE_BAND = 30  # px per class in the share charts, whatever the number of classes


def shares_chart(shares: pd.DataFrame, title: str, top: int = 12) -> alt.Chart:
    """Grouped bars: each value's share inside the spotlight vs in the dataset, for the ``top``
    values most present inside and one "other" bar for the rest (``core.scoring.summary.top_shares``).

    Each value gets a band of SHARE_BAND px (a Vega-Lite step), so 2 or 4 classes read as well
    as 12: a chart of fixed height squeezed their bars to slivers under the axis and legend.
    """
    part = top_shares(shares, top)
    data = part.melt(id_vars=["value"], value_vars=["inside", "overall"], var_name="where", value_name="share")
    data["where"] = data["where"].map({"inside": "Spotlight (weighted)", "overall": "Dataset"})
    order = list(part["value"])
    peak = float(data["share"].max()) if len(data) else 1.0
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            y=alt.Y("value:N", sort=order, title=title, axis=alt.Axis(labelLimit=200, labelOverlap=False)),
            x=alt.X("share:Q", title="Share of images", scale=alt.Scale(domain=[0, min(1.0, max(0.05, peak))], nice=True),
                    axis=alt.Axis(format=".0%", tickCount=5)),
            yOffset=alt.YOffset("where:N", sort=["Spotlight (weighted)", "Dataset"]),
            color=alt.Color(
                "where:N", title=None,
                scale=alt.Scale(domain=["Spotlight (weighted)", "Dataset"], range=[SPOTLIGHT_COLOUR, DATASET_COLOUR]),
                legend=alt.Legend(orient="bottom"),
            ),
            tooltip=["value", "where", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(height=alt.Step(SHARE_BAND, **{"for": "position"}))
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


MAP_BRUSH, MAP_PICK = "brush", "pick"  # the map's named selections: a dragged box, a clicked point


def map_chart(frame: pd.DataFrame, x_title: str, y_title: str) -> alt.Chart:
    """Scatter of the 2-D map coloured by spotlight weight; errors drawn as crosses.

    Selectable: drag a box (``brush``, over x and y) to select images, click a point
    (``pick``, by its store row) to open its details.
    """
    data = frame.sort_values("weight")  # high weights drawn last, on top
    brush = alt.selection_interval(name=MAP_BRUSH, encodings=["x", "y"])
    pick = alt.selection_point(name=MAP_PICK, fields=["row"], on="click")
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
        .add_params(brush, pick)
        .properties(height=460)
    )


def map_selection(frame: pd.DataFrame, event: dict[str, Any] | None) -> tuple[np.ndarray, int | None]:
    """(store rows inside the dragged box, ordered by weight; the clicked point's row or None)
    from the map chart's selection event."""
    selection = (event or {}).get("selection") or {}
    box = selection.get(MAP_BRUSH) or {}
    inside = np.zeros(len(frame), dtype=bool)
    if "x" in box and "y" in box:
        (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
        x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
        inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    chosen = frame[inside].sort_values("weight", ascending=False)
    points = selection.get(MAP_PICK) or []
    clicked = int(points[0]["row"]) if points and "row" in points[0] else None
    return chosen["row"].to_numpy(dtype=np.int64), clicked


RUNTIME_PARAMS = ("device", "threads")  # where and how a run was computed, not what it found


def finding_params(spotlight: Spotlight) -> dict[str, Any]:
    """The parameters that define a run's spotlights, as a saved subset's origin lists them:
    without where it ran (device, threads) and without options left unset (None)."""
    return {k: v for k, v in spotlight.get_params().items() if k not in RUNTIME_PARAMS and v is not None}


def _save_subset(ctx: PageContext, meta: pd.DataFrame, fit: SpotlightFit, result: Spotlight, detail: str) -> None:
    """Save the spotlight's top-k images, or those above a weight threshold, as a subset."""
    i = fit.index + 1
    st.markdown("**Save as a subset** (for the other pages; export it on *Cohorts & subsets*)")
    c1, c2, c3 = st.columns([1, 1, 2])
    mode = c1.radio("Keep", ["top-k images", "weight threshold"], key=state_key("spotlight", "save_mode", i))
    if mode == "top-k images":
        k = int(c2.number_input("k", 1, len(meta), min(result.size_, len(meta)), key=state_key("spotlight", "save_k", i)))
        rows, how = fit.top_rows(k), f"top {k} by weight"
    else:
        threshold = float(c2.slider("Weight at least", 0.01, 1.0, 0.5, 0.01, key=state_key("spotlight", "save_threshold", i)))
        rows, how = np.flatnonzero(fit.weights >= threshold), f"weight >= {threshold:.2f}"
    c2.caption(f"{len(rows):,} images")
    with c3:
        save_subset_form(
            ctx, rows, f"spotlight {i}: {how}", "spotlight", f"spotlight {i} ({detail}): {how}",
            key=state_key("spotlight", "save", i, how), params={**finding_params(result), "spotlight": i},
        )


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
    gallery(ctx, meta, top[:GALLERY], extra=[f"w {fit.weights[r]:.2f}" for r in top[:GALLERY]], origin=f"spotlight-{fit.index}")
    how_to_read("the spotlight's highest-weighted images, highest first; red frames and ✗ mark misclassified images (prediction, then true label).")

    left, right = st.columns(2)
    with left:
        show(shares_chart, figures["labels"], "True class")
        how_to_read("share of each true class inside the spotlight (weighted by k_i, red) vs in the whole dataset (grey).")
    with right:
        show(shares_chart, figures["preds"], "Predicted class")
        how_to_read("the same for the model's predictions: a class far more predicted inside than overall is the confusion.")

    enrichment = figures["enrichment"]
    if enrichment.empty:
        st.caption("This dataset has no attribute columns to describe the spotlight with.")
    else:
        st.markdown("**What describes this spotlight** — attribute values by lift")
        show(enrichment_chart, enrichment)
        how_to_read("lift = an attribute value's share inside the spotlight ÷ its share in the dataset; right of the dashed line (1) it is over-represented.")
        with st.expander("All attribute values"):
            event = table(
                enrichment,
                {"inside": Shown("percent", label="share in spotlight"), "overall": Shown("percent", label="share in dataset"),
                 "lift": Shown("number", 2, missing="the value is absent from the dataset.")},
                hide_index=True, on_select="rerun", selection_mode="single-row",
                key=state_key("spotlight", "lift_pick", ctx.key, fit.index),
            )
            picked = list(((event or {}).get("selection") or {}).get("rows") or [])
            if picked and picked[0] < len(enrichment):
                choice = enrichment.iloc[picked[0]]
                where = equals_filter({choice["attribute"]: stored_value(meta[choice["attribute"]], choice["value"])})
                st.code(where, language="sql")
                if st.button("Open as cohort", key=state_key("spotlight", "lift_open", ctx.key, fit.index)):
                    open_cohort(ctx, where)
            else:
                st.caption("Select a row to open its attribute value as a cohort.")
    _save_subset(ctx, meta, fit, result, detail)


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs=cache.STORE_HASH)
def _evidence(store: Store, run: dict[str, Any], scope: np.ndarray | None, _result: Spotlight) -> pd.DataFrame:
    return spotlight_order(_result, cache.meta_for(store))


def evidence_for(store: Store, result: Spotlight, run: dict[str, Any], scope: np.ndarray | None) -> pd.DataFrame:
    """The spotlights in the page's order (``spotlight_order``: tested, ranked by evidence,
    near-duplicates last), once per run (the store, the run's settings and the scope)."""
    return _evidence(store, run, scope, result)


def spotlights_table(result: Spotlight, order: pd.DataFrame, listed: list[SpotlightFit], meta: pd.DataFrame) -> None:
    """The "Spotlights found" table in the page's order (``evidence_for``): each spotlight's loss,
    size and top-S accuracy (``summary``) beside its q, excess errors and the spotlight it repeats."""
    found = summary(result, meta["correct"].to_numpy()).set_index("spotlight").loc[[fit.index + 1 for fit in listed]].reset_index()
    found["q"] = order["q"].to_numpy()
    found["excess errors"] = order["excess errors"].to_numpy()
    found["same as"] = [name.capitalize() for name in order["same as"]]
    table(
        found,
        {
            "mean loss": Shown("number", 3, label="weighted mean loss"),
            "loss ratio": Shown("number", 2, label="× dataset mean loss", missing="the dataset's mean loss is 0."),
            "effective size": Shown("number", 0),
            "top-S accuracy": Shown("percent", label=f"accuracy of top {result.size_:,}"),
            "low": Shown("percent", label="95% low", help="Bootstrap interval of the top-S accuracy."),
            "high": Shown("percent", label="95% high", help="Bootstrap interval of the top-S accuracy."),
            "q": Shown("general", 2, help="Fisher's exact test of the top S against the rest, Benjamini-Hochberg over the spotlights."),
            "excess errors": Shown("number", 0, help="Top-S size × (the rest's accuracy − the top S's): the errors it holds "
                                                     "beyond what the rest's error rate predicts."),
        },
        hide_index=True,
        column_config={"same as": st.column_config.TextColumn(
            help="A spotlight sharing half its top S with one listed above it (Jaccard ≥ 0.5): the same failure.")},
    )
    how_to_read(
        "each row is a spotlight (numbered in the order the search found them), listed by evidence: those whose top S is "
        "significantly less accurate than the rest (q < 0.05) first, by excess errors, and a spotlight repeating one above "
        "it last (same as). "
        f" The dataset's mean loss is {result.mean_loss_:.3f} and its "
        f"accuracy {percent(meta['correct'].mean())}: a good spotlight has a loss ratio well above 1 and a low top-S accuracy."
    )
