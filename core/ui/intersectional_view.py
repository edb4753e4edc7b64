"""The Intersectional page's cached runs, charts and maps (Krug & Stober: linear probes per
layer, and NAP topographic maps of intersectional groups).

Groups are built from the store's metadata (core/methods/intersectional/groups.py); probes train on reduced
activations kept with the store (core/methods/intersectional/features.py); NAPs read the store's mean-pooled
channels. Every heavy run goes through ``cache.computed_once``, keyed by the store's
fingerprint, the groups and the estimator's ``get_params()``, so a rerun recomputes nothing.
Probes and layouts that ``python -m core prepare`` kept beside the store (core/services/prepare.py)
are read from disk when no run of this server process holds them. On a hosted server a
visitor's probe run is checked against the hosted caps first (core/services/estimates.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from sklearn.base import clone

from core.methods import LinearProbes, NAPs, TopographicLayout, topomap
from core.methods.intersectional.groups import (
    Groups,
    build_groups,
    default_group_columns,
    groups_from_subsets,
)
from core.services.estimates import HOSTED_REQUEST_DISK_BYTES, naps_seconds, topomap_seconds
from core.services.prepare import (
    GROUP_COLUMNS,
    MIN_GROUP_SIZE,
    ProbeRun,
    check_hosted_probes,
    fit_probes,
    group_naps,
    layout_key,
    load_layout,
    load_probes,
    probe_run,
    probes_key,
)
from core.services.subsets import scope_digest
from core.store.read import Store
from core.ui import cache
from core.ui.charts import MAX_ROWS, evenly, safe_fields
from core.ui.context import PageContext

MAP_SIZE = 100
MAP_VIEW = 120  # pixels per drawn map


# --------------------------------------------------------------------------- groups


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs=cache.STORE_HASH)
def groups_for(store: Store, columns: tuple[str, ...], min_size: int) -> Groups:
    """Groups of every combination of these attribute columns' values, built once."""
    return build_groups(cache.meta_for(store), columns, min_size=min_size)


def subset_groups(ctx: PageContext, names: Sequence[str], min_size: int) -> Groups:
    """Saved subsets as groups (they must not overlap)."""
    registry = ctx.subsets()
    return groups_from_subsets(ctx.store.n, {name: registry.get(name).rows for name in names}, min_size=min_size)


def disjoint_default(ctx: PageContext, names: Sequence[str], count: int = 2) -> list[str]:
    """The first ``count`` saved subsets, in order, that share no image with those before
    them: the page's default choice (overlapping subsets cannot be groups, and a default
    must not open the page on an error the user did not cause). Fewer when there are none."""
    registry, taken, chosen = ctx.subsets(), set(), []
    for name in names:
        rows = set(registry.get(name).rows)
        if not rows & taken:
            chosen.append(name)
            taken |= rows
            if len(chosen) == count:
                break
    return chosen


def groups_key(groups: Groups) -> str:
    """A short key of a grouping (its columns, names and membership)."""
    return cache.run_key(groups.columns, groups.names, scope_digest(np.flatnonzero(groups.labels >= 0)),
                         scope_digest(groups.labels[groups.labels >= 0]))


def counts_chart(table: pd.DataFrame, columns: Sequence[str], title: str) -> alt.Chart:
    """The paper's Fig. 1: a heatmap of group sizes, rows and columns the first two variables
    (the third as panels), with row and column totals. The variables' names (a CSV's, e.g.
    ``x:y``) are titles only: the chart's fields are ``charts.safe_fields`` names."""
    names = [str(c) for c in columns]
    data, fields = safe_fields(table, names)
    row, column = fields[names[0]], (fields[names[1]] if len(names) > 1 else None)
    if column is None:
        data["_column"] = "count"
        column = "_column"
    panel = fields[names[2]] if len(names) > 2 else None
    keys = [panel] if panel else []
    totals_row = data.groupby([*keys, column], as_index=False, observed=True)["count"].sum().assign(**{row: "total"})
    totals_column = data.groupby([*keys, row], as_index=False, observed=True)["count"].sum().assign(**{column: "total"})
    full = pd.concat([data, totals_row, totals_column], ignore_index=True)
    full["total"] = (full[row] == "total") | (full[column] == "total")
    column_title = None if column == "_column" else names[1]
    base = alt.Chart(full).encode(
        x=alt.X(f"{column}:N", title=column_title, sort=None),
        y=alt.Y(f"{row}:N", title=names[0], sort=None),
    )
    tooltip = [alt.Tooltip(f"{row}:N", title=names[0]), alt.Tooltip(f"{column}:N", title=column_title or " "),
               alt.Tooltip("count:Q", title="images")]
    cells = base.mark_rect().encode(
        color=alt.condition("datum.total", alt.value("#eeeeee"), alt.Color("count:Q", scale=alt.Scale(scheme="greens"), title="images")),
        tooltip=tooltip + ([alt.Tooltip(f"{panel}:N", title=names[2])] if panel else []),
    )
    text = base.mark_text(fontSize=10).encode(text="count:Q")
    chart = (cells + text).properties(title=title, width=alt.Step(44), height=alt.Step(22))
    return chart.facet(column=alt.Column(f"{panel}:N", title=names[2])) if panel else chart


# --------------------------------------------------------------------------- probes


def probe_plan(ctx: PageContext, groups: Groups, rows: np.ndarray, layers: tuple[str, ...], mode: str,
               probes: LinearProbes) -> ProbeRun:
    """The expected time and new disk bytes of a probe run (nothing is computed)."""
    return probe_run(ctx.store, ctx.model, groups, rows, layers, mode, probes)


def probes_for(ctx: PageContext, groups: Groups, rows: np.ndarray, layers: tuple[str, ...], mode: str,
               probes: LinearProbes, progress: Callable[[int, int, str], None] | None = None) -> LinearProbes:
    """Linear probes of these groups on each layer's reduced activations, fitted once (a clone).
    The reduced activations themselves are kept on disk with the store. On a hosted server
    the run must pass the hosted caps (HostedLimit otherwise) and writes at most the
    per-run disk budget."""
    store = ctx.store
    plan = probe_plan(ctx, groups, rows, layers, mode, probes)
    if ctx.hosted:
        check_hosted_probes(store, plan, layers, probes)

    def compute() -> LinearProbes:
        with ctx.run_model() as model:
            return fit_probes(store, model, ctx.dataset, groups, rows, layers, mode, probes, progress,
                              max_new_bytes=HOSTED_REQUEST_DISK_BYTES if ctx.hosted else None)

    key = cache.run_key(groups_key(groups), scope_digest(rows), layers, mode, probes.get_params())
    return cache.computed_once("probes", store.fingerprint, key, "The linear probes", compute, expected_s=plan.seconds)


@st.cache_resource(show_spinner=False, max_entries=8)
def _prepared() -> dict[tuple[str, str, str], Any]:
    """Prepared probes and layouts read from disk, once per (kind, store, key); only found
    ones are kept, so a result prepared while the server runs is found on the next rerun."""
    return {}


def _read_prepared(kind: str, store: Store, key: str, load: Callable[[Store, str], Any]) -> Any | None:
    slot = (kind, store.fingerprint, key)
    found = _prepared()
    if slot not in found:
        result = load(store, key)
        if result is None:
            return None
        found[slot] = result
    return found[slot]


def cached_probes(store: Store, groups: Groups, rows: np.ndarray, layers: tuple[str, ...], mode: str,
                  probes: LinearProbes) -> LinearProbes | None:
    """The probes already fitted for these inputs, in this server process or prepared on
    disk, or None (nothing is computed)."""
    key = cache.run_key(groups_key(groups), scope_digest(rows), layers, mode, probes.get_params())
    held = cache.cached_result("probes", store.fingerprint, key)
    if held is not None:
        return held
    disk_key = probes_key(store.fingerprint, groups, rows, layers, mode, probes.get_params())
    return _read_prepared("probes", store, disk_key, load_probes)


def accuracy_chart(summary: pd.DataFrame) -> alt.LayerChart:
    """Fig. 2 and the controls: validation accuracy per layer with its 95% interval over
    seeds, train accuracy, the shuffled-labels control and the chance level."""
    order = list(summary["layer"])
    long = pd.concat(
        [
            summary.assign(measure="validation", value=summary["val_accuracy"]),
            summary.assign(measure="train", value=summary["train_accuracy"]),
            summary.assign(measure="shuffled labels (validation)", value=summary["shuffled_val_accuracy"]),
        ],
        ignore_index=True,
    )
    colour = alt.Color("measure:N", scale=alt.Scale(domain=["validation", "train", "shuffled labels (validation)"],
                                                     range=["#d62728", "#1f77b4", "#7f7f7f"]), title=None)
    x = alt.X("layer:N", sort=order, title="Layer (network order)")
    lines = alt.Chart(long).mark_line(point=True).encode(
        x=x, y=alt.Y("value:Q", title="Probe accuracy", scale=alt.Scale(domain=[0, 1])), color=colour,
        tooltip=["layer", "measure", alt.Tooltip("value:Q", format=".3f")],
    )
    bars = alt.Chart(summary).mark_errorbar(color="#d62728").encode(
        x=x, y=alt.Y("val_low:Q", title="Probe accuracy"), y2="val_high:Q"
    )
    chance = alt.Chart(summary).mark_line(strokeDash=[4, 4], color="black").encode(x=x, y="chance:Q")
    return (lines + bars + chance).properties(height=300)


def curves_chart(curves: pd.DataFrame) -> alt.Chart:
    """Fig. 3: train and validation accuracy per epoch of one layer, one line per seed. Of
    more epochs than fit under Altair's row limit (500 epochs x 20 seeds), evenly spaced
    epochs are drawn, the first and last included, and the title says so."""
    epochs = np.sort(curves["epoch"].unique())
    most = MAX_ROWS // max(1, 2 * curves["seed"].nunique())
    title = None
    if len(epochs) > most:
        kept_epochs = epochs[evenly(len(epochs), most)]
        curves = curves[curves["epoch"].isin(kept_epochs)]
        title = f"{len(kept_epochs)} evenly spaced epochs of {len(epochs)}"
    long = curves.melt(id_vars=["seed", "epoch"], value_vars=["train_accuracy", "val_accuracy"], var_name="split",
                       value_name="accuracy")
    long["split"] = long["split"].str.replace("_accuracy", "")
    return alt.Chart(long).mark_line(opacity=0.7).encode(
        x=alt.X("epoch:Q", title="Epoch"), y=alt.Y("accuracy:Q", title="Accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("split:N", title=None), detail="seed:N",
        tooltip=["seed", "epoch", "split", alt.Tooltip("accuracy:Q", format=".3f")],
    ).properties(height=260, **({"title": title} if title else {}))


# --------------------------------------------------------------------------- NAPs and maps


def naps_for(store: Store, groups: Groups, rows: np.ndarray, layer: str) -> NAPs:
    """NAPs of the groups in one layer over these rows (the store's mean-pooled channels), once."""
    key = cache.run_key(groups_key(groups), scope_digest(rows), layer)
    channels = int(store.manifest["layer_channels"][layer])  # from the manifest: nothing opened on a rerun
    return cache.computed_once("naps", store.fingerprint, key, "The NAPs", lambda: group_naps(store, groups, rows, layer),
                               expected_s=naps_seconds(len(rows), channels))


def layout_for(store: Store, groups: Groups, rows: np.ndarray, layer: str, naps: NAPs, seed: int) -> TopographicLayout:
    """The layer's topographic layout (UMAP then the particle relaxation): prepared on disk,
    else computed once."""
    layout = TopographicLayout(seed=seed)
    key = cache.run_key(groups_key(groups), scope_digest(rows), layer, layout.get_params())
    if cache.cached_result("topomap", store.fingerprint, key) is None:
        prepared = _read_prepared("layouts", store, layout_key(store.fingerprint, groups, rows, layer, layout.get_params()),
                                  load_layout)
        if prepared is not None:
            return prepared
    return cache.computed_once("topomap", store.fingerprint, key, "The topographic layout",
                               lambda: clone(layout).fit(naps.naps_),
                               expected_s=topomap_seconds(*naps.naps_.shape, iterations=int(layout.iterations)))


@st.cache_data(show_spinner=False, max_entries=64)
def maps_for(positions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(G, 100, 100) interpolated maps of each row of ``values`` (channels' NAPs) on the layout."""
    return np.stack([topomap(positions, v, MAP_SIZE) for v in values])


def colourise(grid: np.ndarray, limit: float) -> np.ndarray:
    """Blue-white-red, symmetric around 0 with one limit for every map: uint8 RGB."""
    t = np.clip(grid / limit, -1.0, 1.0) if limit > 0 else np.zeros_like(grid)
    red = np.where(t < 0, 1.0 + t, 1.0)
    blue = np.where(t > 0, 1.0 - t, 1.0)
    green = 1.0 - np.abs(t)
    rgb = np.stack([red, green, blue], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def map_png(grid: np.ndarray, limit: float) -> bytes:
    """One map as a PNG of MAP_VIEW pixels (nearest resampling keeps it crisp)."""
    image = Image.fromarray(colourise(grid, limit)[::-1])  # y up, as the layout
    out = io.BytesIO()
    image.resize((MAP_VIEW, MAP_VIEW), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


MOST_GROUPS = 70  # the similarity matrix's groups: 70 x 70 cells stay under charts.MAX_ROWS
SIMILARITY_STEP = 16  # px per row and column of the similarity matrix: every label has room


def similarity_chart(names: Sequence[str], similarity: np.ndarray, order: np.ndarray,
                     sizes: Sequence[int] | None = None) -> alt.Chart:
    """The group-by-group cosine similarity of NAPs, ordered by hierarchical clustering. Every
    row and column is labelled (a step of SIMILARITY_STEP px each, labels never dropped or
    cut short); of more than MOST_GROUPS groups, the largest (by ``sizes``) are drawn, in
    the clustering order, and the title says so."""
    order = [int(i) for i in order]
    title = None
    if len(order) > MOST_GROUPS:
        weight = np.asarray(sizes if sizes is not None else np.ones(len(names)), dtype=np.float64)
        largest = set(np.argsort(-weight, kind="stable")[:MOST_GROUPS].tolist())
        title = f"The {MOST_GROUPS} largest of {len(order)} groups"
        order = [i for i in order if i in largest]
    ordered = [str(names[i]) for i in order]
    grid = pd.DataFrame([{"a": str(names[i]), "b": str(names[j]), "cosine": float(similarity[i, j])} for i in order for j in order])
    axis = alt.Axis(labelLimit=400, labelOverlap=False, labelFontSize=10)
    base = alt.Chart(grid).encode(
        x=alt.X("b:N", sort=ordered, title=None, axis=alt.Axis(labelLimit=400, labelOverlap=False, labelFontSize=10, labelAngle=-60)),
        y=alt.Y("a:N", sort=ordered, title=None, axis=axis),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("cosine:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True), title="cosine"),
        tooltip=[alt.Tooltip("a:N", title="group"), alt.Tooltip("b:N", title="and group"), alt.Tooltip("cosine:Q", format=".2f")],
    )
    chart = cells.properties(width=alt.Step(SIMILARITY_STEP), height=alt.Step(SIMILARITY_STEP))
    return chart.properties(title=title) if title else chart


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs=cache.STORE_HASH)
def default_columns(store: Store) -> tuple[list[str], list[tuple[str, str]]]:
    """(the variables the page opens on, [(attribute passed over, why)]): the first attribute
    columns that split the images into groups (``core.methods.intersectional.groups.default_group_columns``)."""
    return default_group_columns(cache.meta_for(store), list(store.attribute_columns), GROUP_COLUMNS, MIN_GROUP_SIZE)


CHANNEL_PICK = "channel"  # the channel chart's point selection


def channel_chart(positions: np.ndarray, values: np.ndarray, limit: float, group: str) -> alt.Chart:
    """The layer's channels at their layout positions, coloured by one group's NAP; hover for
    the index and value, click to pick a channel."""
    data = pd.DataFrame({"x": positions[:, 0], "y": positions[:, 1], "channel": np.arange(len(values)), "nap": values})
    pick = alt.selection_point(name=CHANNEL_PICK, fields=["channel"], on="click")
    return alt.Chart(data).mark_circle(size=40, stroke="black", strokeWidth=0.3).encode(
        x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None),
        color=alt.Color("nap:Q", scale=alt.Scale(scheme="redblue", domain=[-limit, limit], reverse=True), title=f"NAP ({group})"),
        tooltip=["channel", alt.Tooltip("nap:Q", format=".4f")],
    ).add_params(pick).properties(height=320)


def top_rows(store: Store, layer: str, channel: int, k: int = 8) -> np.ndarray:
    """The store rows whose mean activation of one channel is highest."""
    values = np.asarray(store.representation(f"{layer}:mean")[:, channel], dtype=np.float64)
    return np.argsort(-values, kind="stable")[:k]


def _union_maps(naps: NAPs, positions: np.ndarray, over: list[str]) -> dict[tuple[str, ...], np.ndarray]:
    """Maps of the unions of groups that share the values of ``over`` (same expectation),
    keyed by those values."""
    union_names, union_naps = naps.unions(over)
    grids = maps_for(positions, union_naps)
    return {tuple(n.split(", ")): grid for n, grid in zip(union_names, grids, strict=True)}


def draw_map_grid(groups: Groups, naps: NAPs, positions: np.ndarray, maps: np.ndarray, limit: float,
                  panel: tuple[str, ...]) -> None:
    """One panel of group maps in the counts table's grid (rows: the first variable's values,
    columns: the second's; ``panel``: the third's value), the unions as margins."""
    variables = list(groups.columns)
    index = {tuple(v): g for g, v in enumerate(groups.values)}
    values0 = sorted({v[0] for v in groups.values})
    values1: list[str | None] = sorted({v[1] for v in groups.values}) if len(variables) > 1 else [None]
    row_margin = _union_maps(naps, positions, [variables[0], *variables[2:]]) if len(variables) > 1 else {}
    column_margin = _union_maps(naps, positions, [variables[1], *variables[2:]]) if len(variables) > 1 else {}
    header = st.columns(len(values1) + 2)
    header[0].markdown(f"**{variables[0]}** × **{variables[1]}**" if len(variables) > 1 else f"**{variables[0]}**")
    for col, v1 in zip(header[1:], values1, strict=False):
        col.markdown(f"**{v1}**" if v1 is not None else "")
    if row_margin:
        header[-1].markdown("**all** (union)")
    for v0 in values0:
        cells = st.columns(len(values1) + 2)
        cells[0].markdown(f"**{v0}**")
        for col, v1 in zip(cells[1:], values1, strict=False):
            key = tuple(x for x in (v0, v1, *panel) if x is not None)
            if key in index:
                col.image(map_png(maps[index[key]], limit), caption=f"n={int(naps.sizes_[index[key]])}")
        if (v0, *panel) in row_margin:
            cells[-1].image(map_png(row_margin[(v0, *panel)], limit), caption="union")
    if column_margin:
        cells = st.columns(len(values1) + 2)
        cells[0].markdown("**all** (union)")
        for col, v1 in zip(cells[1:], values1, strict=False):
            if (v1, *panel) in column_margin:
                col.image(map_png(column_margin[(v1, *panel)], limit), caption="union")
