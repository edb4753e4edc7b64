"""The ActiVis page's parts: the model graph, the matrix rows, a node's activation panel (matrix
and projected view) and the instance selection panel (Kahng et al., ActiVis, Sec. 4.2-4.3).

Clicks on the charts (a graph node, an instance square, a projected point) are read from their
widgets' state by ``apply_clicks`` at the top of the page, before anything is drawn, so the
rows and panels they change are drawn already changed on the same run.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.errors import BiasLensError, DataError
from core.methods import ActivationMatrix, Projection, instance_grid, pages_for
from core.methods.activis import rows as matrix_rows
from core.methods.activis.graph import ModelGraph, is_per_channel, model_graph
from core.services.estimates import matrix_seconds, projection_seconds
from core.services.subsets import scope_digest
from core.store.read import POOLS, Store
from core.ui import cache
from core.ui.charts import MAX_ROWS, show_selectable
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.method_page import save_subset_form
from core.ui.store_panel import run_build

PAGE = "activis"
GRAPH_PICK, ROW_PICK, SQUARE_PICK, POINT_PICK, POINT_BOX = "node", "row_pick", "square", "point", "box"
STORED, STORABLE, OTHER = "stored", "can be stored", "not storable"
STATUS_COLOURS = {STORED: "#e6a700", STORABLE: "#ffffff", OTHER: "#c8c8c8"}
DETAIL = {"Blocks": 1, "Sub-blocks": 2, "Every operator": None}
WIDE = ActivationMatrix().top_n  # neurons: wider layers show the matrix's default top-n (ActiVis' matrix stays readable)
PALETTE = "tableau10"
ACTIVIS_PAGE = "pages/activis.py"
CLASS_ROWS = 20  # the default rows: one per true class, of at most this many classes (those in the most errors)


def _key(name: str, ctx: PageContext, *scope: object) -> str:
    return state_key(PAGE, name, ctx.key, *scope)


# --------------------------------------------------------------------------- state


def open_nodes(ctx: PageContext) -> list[str]:
    """The store names (a layer, ``embedding``, ``logits``) of the nodes whose panels are open,
    in the order opened (stacked for comparison, ActiVis Fig. 5); the embedding at first."""
    return st.session_state.setdefault(_key("open", ctx), ["embedding"])


def rows(ctx: PageContext, store: Store) -> list[dict[str, Any]]:
    """The matrix rows (core.methods.activis.rows dicts), one per true class at first (``class_rows``)."""
    if _key("rows", ctx) not in st.session_state:
        st.session_state[_key("rows", ctx)] = class_rows(store, ctx.meta())
    return st.session_state[_key("rows", ctx)]


def open_group(ctx: PageContext, name: str, members: Any) -> None:
    """Add a group of images that no condition describes (a finding) as a matrix row and switch
    to the ActiVis page; DataError past the matrix's row limit."""
    row = {"kind": "group", "value": [int(r) for r in members], "name": name}
    set_rows(ctx, matrix_rows.with_row(rows(ctx, ctx.store), row))
    st.switch_page(ACTIVIS_PAGE)


def class_rows(store: Store, meta: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per true class; of more than CLASS_ROWS classes (1,000 ImageNet classes), the
    CLASS_ROWS classes with the most misclassified images, in class order."""
    every = matrix_rows.class_rows(store.classes)
    if len(every) <= CLASS_ROWS:
        return every
    wrong = meta["label_idx"].to_numpy()[~meta["correct"].to_numpy(dtype=bool)]
    errors = np.bincount(wrong, minlength=len(every))
    return [every[i] for i in np.sort(np.argsort(-errors, kind="stable")[:CLASS_ROWS])]


def set_rows(ctx: PageContext, new: list[dict[str, Any]]) -> None:
    st.session_state[_key("rows", ctx)] = new


def toggle_open(ctx: PageContext, layer: str) -> None:
    shown = open_nodes(ctx)
    if layer in shown:
        shown.remove(layer)
    else:
        shown.append(layer)


def open_list(ctx: PageContext, openable: list[str]) -> None:
    """The open panels as a list to edit (the same as clicking the graph's tensors)."""
    widget = _key("open_list", ctx)
    st.session_state[widget] = [n for n in open_nodes(ctx) if n in openable]

    def sync() -> None:
        st.session_state[_key("open", ctx)] = list(st.session_state[widget])

    st.multiselect("Open panels (or click the graph's tensors)", openable, key=widget, on_change=sync)


def _clicked(key: str, param: str, field: str) -> tuple[bool, Any]:
    """(changed, value) of a chart's one-point selection since the last run that read it: a
    click on a new point gives its value; a second click on the same point empties the
    selection and gives the point it had (so a click always names the point clicked)."""
    event = st.session_state.get(key) or {}
    points = ((event.get("selection") or {}).get(param)) or []
    value = points[0].get(field) if points else None
    seen_key = f"{key}:seen"
    before = st.session_state.get(seen_key)
    if value == before:
        return False, None
    st.session_state[seen_key] = value
    return True, value if value is not None else before


def graph_key(ctx: PageContext, detail: str) -> str:
    return _key("graph_chart", ctx, detail)


def apply_clicks(ctx: PageContext, store: Store, graph: ModelGraph, detail: str) -> None:
    """Apply this run's chart clicks: a graph tensor opens (or closes) its panel, or, when the
    store cannot hold it, is kept to say why; an instance square or a projected point adds (or
    removes) the image as a matrix row."""
    changed, node_id = _clicked(graph_key(ctx, detail), GRAPH_PICK, "id")
    if changed and node_id:
        layer = graph.node(str(node_id)).layer
        st.session_state[_key("unplaced", ctx)] = None if layer else str(node_id)
        if layer:
            toggle_open(ctx, layer)
    click_keys = [(_key("instances", ctx), SQUARE_PICK)]
    click_keys += [(projection_key(ctx, layer), POINT_PICK) for layer in open_nodes(ctx)]
    for key, param in click_keys:
        changed, image = _clicked(key, param, "row")
        if changed and image is not None:
            add_instance(ctx, store, int(image))


def add_instance(ctx: PageContext, store: Store, image: int) -> None:
    """Add image ``image`` as a matrix row, or remove it when it is one (a refusal is kept to show)."""
    try:
        set_rows(ctx, matrix_rows.toggled_instance(rows(ctx, store), image))
    except DataError as exc:
        st.session_state[_key("row_error", ctx)] = str(exc)


def projection_key(ctx: PageContext, layer: str) -> str:
    return _key("projection_chart", ctx, layer)


# --------------------------------------------------------------------------- the graph


def default_detail(storable: Sequence[str]) -> str:
    """The coarsest detail that still shows every storable layer as a node of its own."""
    deepest = max((name.count(".") + 1 for name in storable), default=1)
    return "Blocks" if deepest <= 1 else "Sub-blocks" if deepest == 2 else "Every operator"


@st.cache_resource(show_spinner="Tracing the model's graph...", max_entries=16)
def graph_for(_ctx: PageContext, workspace_key: str, weights: str, depth: int | None) -> ModelGraph:
    with _ctx.run_model() as model:  # tracing runs the model (hooks, ShapeProp): on its own copy
        return model_graph(model.module, model.input_size, model.storable_layers, model.embedding_layer,
                           model.embedding_is_output, depth)


def status_of(layer: str | None, store: Store, storable: Sequence[str]) -> str:
    if layer in ("embedding", "logits") or (layer and layer in store.layers):
        return STORED
    return STORABLE if layer in storable else OTHER


def graph_frames(graph: ModelGraph, store: Store, storable: Sequence[str], opened: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    nodes = graph.frame()
    nodes["status"] = [status_of(layer or None, store, storable) if kind == "tensor" else ""
                       for layer, kind in zip(nodes["layer"], nodes["kind"], strict=True)]
    nodes["open"] = nodes["layer"].isin(list(opened)) & (nodes["kind"] == "tensor")
    return nodes, graph.edge_frame()


def graph_chart(nodes: pd.DataFrame, edges: pd.DataFrame) -> alt.LayerChart:
    """The computation graph, left (input) to right (output): operators as dark squares, tensors
    as circles (gold: in the store; white: can be added; grey: not a layer the store holds; red
    ring: panel open). Drag to pan, wheel to zoom; click a tensor to open or close its panel."""
    zoom = alt.selection_interval(bind="scales", name="zoom")
    pick = alt.selection_point(name=GRAPH_PICK, fields=["id"], on="click", empty=False)
    x = alt.X("x:Q", axis=None, scale=alt.Scale(padding=12))
    y = alt.Y("y:Q", axis=None, scale=alt.Scale(padding=12))
    lines = alt.Chart(edges).mark_rule(color="#b0b0b0", strokeWidth=1).encode(x=x, y=y, x2="x2:Q", y2="y2:Q")
    ops = alt.Chart(nodes[nodes["kind"] == "op"]).mark_square(size=90, color="#333").encode(
        x=x, y=y, tooltip=[alt.Tooltip("name:N", title="operator"), alt.Tooltip("op_type:N", title="type")],
    ).add_params(zoom)
    tensors = alt.Chart(nodes[nodes["kind"] == "tensor"]).mark_circle(size=150, opacity=1).encode(
        x=x, y=y,
        fill=alt.Fill("status:N", scale=alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values())),
                      legend=alt.Legend(title="tensor", orient="bottom")),
        stroke=alt.condition("datum.open", alt.value("#d62728"), alt.value("#555")),
        strokeWidth=alt.condition("datum.open", alt.value(3), alt.value(1)),
        tooltip=[alt.Tooltip("name:N", title="tensor"), alt.Tooltip("shape:N"), alt.Tooltip("layer:N", title="store name"),
                 alt.Tooltip("status:N"), alt.Tooltip("op_type:N", title="made by")],
    ).add_params(pick)
    names = alt.Chart(nodes[(nodes["kind"] == "tensor") & (nodes["layer"] != "")]).mark_text(
        dy=-13, fontSize=10, color="#444").encode(x=x, y=y, text="layer:N")
    spread = float(nodes["y"].max() - nodes["y"].min()) if len(nodes) else 0.0
    return (lines + ops + tensors + names).properties(height=int(min(420, 150 + 36 * spread)), width="container")


# --------------------------------------------------------------------------- a node's activations


def activations(store: Store, layer: str, pool: str) -> np.ndarray:
    """(N, C) per-channel activations of a stored node: a layer pooled over space, the embedding or the logits."""
    if layer == "logits":
        return store.logits()
    if layer == "embedding":
        return store.embedding()
    return store.pooled(layer, pool)


def matrix_for(store: Store, layer: str, pool: str, members: Sequence[np.ndarray], names: Sequence[str],
               params: dict[str, Any]) -> ActivationMatrix:
    """The fitted matrix (S^T A) of these rows, computed once per store, node, rows and parameters."""
    key = cache.run_key(layer, pool, [scope_digest(m) for m in members], list(names), params)
    return cache.computed_once(
        "activis-matrix", store.fingerprint, key, "Averaging the activations...",
        lambda: ActivationMatrix(**params).fit(activations(store, layer, pool), list(members), list(names)),
        expected_s=matrix_seconds(*activations(store, layer, pool).shape),
    )


def projection_for(store: Store, layer: str, pool: str, params: dict[str, Any]) -> Projection:
    key = cache.run_key(layer, pool, params)
    return cache.computed_once(
        "activis-projection", store.fingerprint, key, f"Projecting the activations ({params['method']})...",
        lambda: Projection(**params).fit(activations(store, layer, pool)),
        expected_s=projection_seconds(*activations(store, layer, pool).shape, **params),
    )


def matrix_chart(frame: pd.DataFrame, row_names: list[str], width: int, scale: tuple[float, float]) -> alt.Chart:
    """Rows (subsets and instances) x neurons in the shown order; darker = stronger mean
    activation, one colour scale for the panel. Click a row to highlight its images in the
    projected view."""
    pick = alt.selection_point(name=ROW_PICK, fields=["row"], on="click", empty=False)
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("place:O", title=f"neurons ({width} shown, in the order chosen; hover for the index)",
                axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("row:N", sort=row_names, title=None, axis=alt.Axis(labelLimit=260, labelOverlap=False)),
        color=alt.Color("value:Q", scale=alt.Scale(scheme="greys", domain=list(scale)), title="mean activation",
                        legend=alt.Legend(orient="bottom", gradientLength=160)),
        stroke=alt.condition(pick, alt.value("#d62728"), alt.value(None)),
        tooltip=[alt.Tooltip("row:N"), alt.Tooltip("neuron:Q", title="neuron (channel)"),
                 alt.Tooltip("value:Q", format=".4g", title="mean activation")],
    ).add_params(pick).properties(height=alt.Step(18), width=alt.Step(max(1, min(16, 440 // max(width, 1)))))


def projection_chart(frame: pd.DataFrame, classes: list[str], highlighted: str) -> alt.Chart:
    """Each sampled image at its projected place, coloured by true class; the highlighted row's
    images drawn large and the rest faded. Drag a box to select, click a point to add it as a row."""
    box = alt.selection_interval(name=POINT_BOX, encodings=["x", "y"])
    pick = alt.selection_point(name=POINT_PICK, fields=["row"], on="click", empty=False)
    emphasis = "datum.member" if highlighted else "true"
    return alt.Chart(frame).mark_circle().encode(
        x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None),
        color=alt.Color("label:N", scale=alt.Scale(domain=classes, scheme=PALETTE), title="true class"),
        opacity=alt.condition(emphasis, alt.value(0.9), alt.value(0.12)),
        size=alt.condition(emphasis, alt.value(40 if highlighted else 18), alt.value(12)),
        tooltip=[alt.Tooltip("row:Q", title="image"), alt.Tooltip("label:N", title="true"), alt.Tooltip("pred:N", title="predicted")],
    ).add_params(box, pick).properties(height=320)


def projection_frame(fitted: Projection, meta: pd.DataFrame, members: np.ndarray | None) -> pd.DataFrame:
    frame = meta.iloc[fitted.rows_][["row", "label", "pred"]].reset_index(drop=True)
    frame["x"], frame["y"] = fitted.embedding_[:, 0], fitted.embedding_[:, 1]
    frame["member"] = np.isin(frame["row"].to_numpy(), members) if members is not None else False
    return frame


def boxed_rows(event: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    """The store rows inside the box dragged on the projected view (empty when none)."""
    box = ((event or {}).get("selection") or {}).get(POINT_BOX) or {}
    if "x" not in box or "y" not in box:
        return np.empty(0, dtype=np.int64)
    (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
    inside = frame["x"].between(x0, x1) & frame["y"].between(y0, y1)
    return frame.loc[inside, "row"].to_numpy(dtype=np.int64)


def neighbour_text(graph: ModelGraph, node_id: str) -> str:
    """The node and its neighbours in the graph (ActiVis' left subpanel), as markdown."""
    before, after = graph.neighbours(node_id)
    node = graph.node(node_id)

    def names(nodes: Sequence[Any]) -> str:
        return ", ".join(f"`{n.name}`" + (f" ({n.layer})" if n.layer else "") for n in nodes) or "none"

    return f"**From**: {names(before)}\n\n**This**: `{node.name}`\n\n**To**: {names(after)}"


def nearest_text(graph: ModelGraph, node_id: str, store: Store, storable: Sequence[str]) -> tuple[str, str | None]:
    """Why a node has no panel, and the store name of the nearest node that has one (or None)."""
    node = graph.node(node_id)
    shape = "×".join(str(s) for s in node.shape) if node.shape else "unknown"
    if not is_per_channel(node.shape):
        why = f"`{node.name}` has activations of shape {shape}, not one value per channel."
    else:
        why = f"`{node.name}` ({shape}) is inside a block: the store keeps block outputs and hidden linear layers."
    among = [*store.layers, *storable, "embedding", "logits"]
    nearest = graph.nearest_layer(node_id, among=among)
    if nearest is None:
        return why, None
    return why, next(name for name in graph.layer_names(nearest.id) if name in among)


# --------------------------------------------------------------------------- the instance panel


def instance_frame(ctx: PageContext, store: Store, meta: pd.DataFrame, per_class: int, page: int) -> pd.DataFrame:
    """The instance panel's squares (core.methods.instance_grid) with a thumbnail for the tooltip."""
    probabilities = store.probabilities()
    predictions = meta["pred_idx"].to_numpy()
    scores = probabilities[np.arange(len(meta)), predictions]
    grid = instance_grid(meta["label_idx"].to_numpy(), predictions, scores, len(store.classes), per_class=per_class, page=page)
    classes = store.classes
    grid["label_name"] = [classes[i] for i in grid["label"]]
    grid["pred_name"] = [classes[i] for i in grid["pred"]]
    grid["p_true"] = meta["p_true"].to_numpy()[grid["row"].to_numpy()]
    shown = tuple(int(r) for r in grid["row"])
    pngs = cache.thumbnail_pngs(ctx.dataset, ctx.key, shown, 48, tuple(not c for c in grid["correct"]))
    grid["image"] = ["data:image/png;base64," + base64.b64encode(p).decode() for p in pngs]
    return grid


def instance_chart(frame: pd.DataFrame, classes: list[str], chosen: list[int]) -> alt.Chart:
    """ActiVis' instance selection panel: one square per image, a row group per true class,
    correct on the left (by score), misclassified on the right; fill = true class, border =
    predicted class; a click adds the image as a matrix row (again: removes it)."""
    data = frame.assign(chosen=frame["row"].isin(chosen))
    pick = alt.selection_point(name=SQUARE_PICK, fields=["row"], on="click", empty=False)
    colours = alt.Scale(domain=classes, scheme=PALETTE)
    return alt.Chart(data).mark_square(size=110, strokeWidth=2).encode(
        x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None, scale=alt.Scale(reverse=True)),
        fill=alt.Fill("label_name:N", scale=colours, title="true class (fill)",
                      legend=alt.Legend(orient="bottom", columns=2, symbolType="square")),
        stroke=alt.Stroke("pred_name:N", scale=colours, legend=None),
        opacity=alt.condition("datum.chosen", alt.value(1), alt.value(0.75)),
        shape=alt.condition("datum.chosen", alt.value("diamond"), alt.value("square")),
        tooltip=[alt.Tooltip("image:N"), alt.Tooltip("row:Q", title="image"), alt.Tooltip("label_name:N", title="true"),
                 alt.Tooltip("pred_name:N", title="predicted"), alt.Tooltip("score:Q", format=".3f", title="score (predicted)"),
                 alt.Tooltip("p_true:Q", format=".3f", title="score (true class)")],
    ).add_params(pick).properties(height=int(14 * (data["y"].max() + 1)), width=int(14 * (data["x"].max() + 1)))


def class_pages(meta: pd.DataFrame, per_class: int) -> int:
    return pages_for(meta["label_idx"].to_numpy(), per_class)


def resolved_rows(ctx: PageContext, store: Store, meta: pd.DataFrame) -> tuple[list[str], list[np.ndarray], list[str]]:
    """(names, store rows, problems) of the matrix rows; a row that cannot be resolved (empty,
    a deleted subset, one from another store) is left out and named in ``problems``."""
    names, members, problems = [], [], []
    registry, cohorts = ctx.subsets(), cache.cohort_view_for(store)
    for row in rows(ctx, store):
        name = matrix_rows.label(row, store.classes)
        try:
            members.append(matrix_rows.resolve(row, meta, cohorts, registry, store.classes))
            names.append(name)
        except BiasLensError as exc:
            problems.append(f"{name}: {exc}")
    return names, members, problems



# --------------------------------------------------------------------------- sections


def rows_editor(ctx: PageContext, store: Store, meta: pd.DataFrame) -> None:
    """The matrix rows: remove any, reset to one per class, add from a cohort query, a saved
    subset, a predicted class, correct vs wrong, a confidence range or one image."""
    classes = store.classes
    listed = st.container()  # drawn last, so that it lists the rows this run's buttons added
    many = len(classes) > CLASS_ROWS
    if st.button("One row per true class", key=_key("reset_rows", ctx), icon=":material/restart_alt:",
                 help=f"Of the {len(classes):,} classes, the {CLASS_ROWS} with the most misclassified images." if many else None):
        set_rows(ctx, class_rows(store, meta))
    registry = ctx.subsets()
    tabs = st.tabs(["Cohort query", "Saved subset", "Predicted class", "Correct / wrong", "Confidence", "Image"])
    with tabs[0], st.form(_key("add_query", ctx), border=False):
        where = st.text_input("WHERE (as on the Cohorts page)", placeholder="correct = false AND confidence > 0.9")
        name = st.text_input("Row name (optional)")
        if st.form_submit_button("Add the cohort row"):
            _add(ctx, store, meta, {"kind": "query", "value": where.strip(), "name": name.strip()}, check=True)
    with tabs[1]:
        names = registry.names()
        if not names:
            st.caption("No saved subsets yet: save one on any page (a cohort, a spotlight, a subgroup...).")
        else:
            with st.form(_key("add_subset", ctx), border=False):
                chosen = st.selectbox("Subset", names)
                if st.form_submit_button("Add the subset row"):
                    _add(ctx, store, meta, {"kind": "subset", "value": chosen}, check=True)
    with tabs[2], st.form(_key("add_pred", ctx), border=False):
        chosen = st.selectbox("Predicted class", range(len(classes)), format_func=lambda i: classes[i])
        if st.form_submit_button("Add the predicted-class row"):
            _add(ctx, store, meta, {"kind": "pred", "value": int(chosen)}, check=True)
    with tabs[3]:
        if st.button("Add a correct row and a wrong row", key=_key("add_correct", ctx)):
            for value in (True, False):
                _add(ctx, store, meta, {"kind": "correct", "value": value}, check=True)
    with tabs[4], st.form(_key("add_confidence", ctx), border=False):
        low, high = st.slider("Confidence of the prediction", 0.0, 1.0, (0.0, 0.5), 0.01)
        if st.form_submit_button("Add the confidence row"):
            _add(ctx, store, meta, {"kind": "confidence", "value": [float(low), float(high)]}, check=True)
    with tabs[5], st.form(_key("add_image", ctx), border=False):
        image = st.number_input("Image (store row)", 0, store.n - 1, 0, key=_key("image_row", ctx))
        if st.form_submit_button("Add the image row"):
            _add(ctx, store, meta, {"kind": "instance", "value": int(image)}, check=True)
    error = st.session_state.pop(_key("row_error", ctx), None)
    if error:
        st.error(error)
    with listed:
        current = rows(ctx, store)
        labels = [matrix_rows.label(r, classes) for r in current]
        widget = _key("row_list", ctx)
        st.session_state[widget] = labels  # the list shows the rows as they are now (clicks change them)

        def keep_chosen() -> None:
            chosen = set(st.session_state[widget])
            set_rows(ctx, [r for r in rows(ctx, store) if matrix_rows.label(r, classes) in chosen])

        st.multiselect(f"Matrix rows ({len(current)} of at most {matrix_rows.MAX_ROWS})", labels, key=widget,
                       on_change=keep_chosen, help="Remove a row with its ×. Rows are subsets of images (their mean "
                       "activations) or single images.")


def _add(ctx: PageContext, store: Store, meta: pd.DataFrame, row: dict[str, Any], check: bool) -> None:
    """Add one row, after checking that it has images (an empty query or subset is refused);
    a refusal is shown where the row was asked for."""
    try:
        if row["kind"] == "query" and not str(row["value"]):
            raise DataError("Write a WHERE expression first, e.g. `correct = false`.")
        if check:
            matrix_rows.resolve(row, meta, cache.cohort_view_for(store), ctx.subsets(), store.classes)
        set_rows(ctx, matrix_rows.with_row(rows(ctx, store), row))
    except BiasLensError as exc:
        st.error(f"The row was not added: {exc}")


def not_stored(ctx: PageContext, store: Store, layer: str) -> None:
    """A storable layer that the store does not hold yet: add it (one pass over the new layer only)."""
    if ctx.hosted:
        st.info(f"`{layer}` is not in this server's store; visitors cannot add layers, only whoever runs the server.")
        return
    st.info(f"`{layer}` is not in the store yet. Adding it runs the model once over the {store.n:,} images and "
            "keeps only this layer's pooled activations (the rest of the store stays).")
    if st.button(f"Add `{layer}` to the store", key=_key("add_layer", ctx, layer), type="primary"):
        run_build(ctx, [*store.layers, layer], f"Adding `{layer}` to the store...")


def instance_panel(ctx: PageContext, store: Store, meta: pd.DataFrame) -> None:
    """ActiVis' instance selection panel, a per-class sample with pages."""
    st.markdown("**Instances** (click a square: add it as a row)")
    c1, c2 = st.columns(2)
    per_class = int(c1.number_input("Per class", 10, 500, 40, step=10, key=_key("per_class", ctx)))
    present = max(1, int(meta["label"].nunique()))
    drawn = min(per_class, max(1, MAX_ROWS // present))  # squares stay under Altair's row limit (1,000 classes)
    if drawn < per_class:
        st.caption(f"{present:,} classes: {drawn} image(s) per class and page are drawn, so the panel stays readable.")
    pages = class_pages(meta, drawn)
    page = int(c2.number_input(f"Page (of {pages})", 1, pages, 1, key=_key("page", ctx))) if pages > 1 else 1
    frame = instance_frame(ctx, store, meta, drawn, page - 1)
    chosen = [int(r["value"]) for r in rows(ctx, store) if r["kind"] == "instance"]
    show_selectable(instance_chart, frame, store.classes, chosen, key=_key("instances", ctx), modes=(SQUARE_PICK,),
                    width="content")
    st.caption(
        f"{len(frame):,} of {store.n:,} images: up to {drawn} per class" + (f", page {page} of {pages}" if pages > 1 else "")
        + ". Per class: correct on the left by score (the predicted class's probability), misclassified on the right; "
        "fill = true class, border = predicted class; ◆ = a matrix row."
    )


def node_panel(ctx: PageContext, store: Store, meta: pd.DataFrame, graph: ModelGraph, layer: str,
               names: list[str], members: list[np.ndarray]) -> None:
    """One node's activation panel: its neighbours, the neuron activation matrix of the rows,
    and the projected view of its instance activations."""
    node = graph.tensor_for_layer(layer)
    with st.container(border=True):
        head, close = st.columns([6, 1])
        shape = "×".join(str(s) for s in node.shape) if node is not None and node.shape else ""
        head.markdown(f"#### `{layer}`" + (f" · {shape}" if shape else ""))
        if close.button("Close", key=_key("close", ctx, layer), icon=":material/close:"):
            toggle_open(ctx, layer)
            st.rerun()
        if layer not in ("embedding", "logits") and layer not in store.layers:
            not_stored(ctx, store, layer)
            return
        side, body = st.columns([1, 6])
        with side:
            if node is not None:
                st.markdown(neighbour_text(graph, node.id))
            spatial = layer in store.layers and (node is None or node.shape is None or len(node.shape) == 3)
            pool = st.radio("Pool over space", POOLS, key=_key("pool", ctx, layer), horizontal=True) if spatial else "mean"
        with body:
            _matrix(ctx, store, layer, pool, names, members)
            _projection(ctx, store, meta, layer, pool, names, members)


def _matrix(ctx: PageContext, store: Store, layer: str, pool: str, names: list[str], members: list[np.ndarray]) -> None:
    width = int(activations(store, layer, pool).shape[1])
    c1, c2, c3 = st.columns([2, 1, 1])
    sort = c1.selectbox("Sort neurons by", ["(network order)", *names], key=_key("sort", ctx, layer))
    matrix = ActivationMatrix()  # its defaults: rank by the sorting row, the top WIDE neurons
    rank, top_n = matrix.rank, width
    if width > WIDE:
        ranks = ["row", "variance"]
        rank = c2.radio("Top neurons by", ranks, index=ranks.index(matrix.rank), key=_key("rank", ctx, layer),
                        format_func=lambda r: "the sorting row" if r == "row" else "variance across rows")
        top_n = int(c3.number_input("Show", 10, width, matrix.top_n, step=10, key=_key("top_n", ctx, layer)))
    fits = max(1, MAX_ROWS // max(1, len(names)))  # rows x neurons cells stay under Altair's row limit
    top_n = min(top_n, fits)
    params = {"sort_by": names.index(sort) if sort in names else None, "top_n": top_n, "rank": rank}
    if not members:
        st.info("No rows to show: add a row (or press **One row per true class**).")
        return
    try:
        fitted = matrix_for(store, layer, pool, members, names, params)
    except BiasLensError as exc:
        st.error(f"The matrix cannot be computed: {exc}")
        return
    frame = fitted.long_frame()
    neurons = len(fitted.shown_)
    frame["place"] = np.tile(np.arange(neurons), len(names))
    show_selectable(matrix_chart, frame, list(names), neurons, tuple(float(v) for v in fitted.scale_),
                    key=_key("matrix", ctx, layer), modes=(ROW_PICK,), width="content")
    shown = f"{neurons} of {width} neurons" + (
        f" (the top {neurons} by {'the sorting row' if rank == 'row' else 'variance across rows'}"
        + (f"; {len(names)} rows leave room for {fits} per row" if neurons == fits < width else "") + ")"
        if neurons < width else "")
    st.caption(f"{shown}; rows: {', '.join(f'{n} ({len(m):,})' for n, m in zip(names, members, strict=True))[:600]}.")
    if fitted.nan_rows_:
        st.warning(f"{fitted.nan_rows_:,} image(s) have NaN or infinite activations here: each cell averages the finite values only.")


def _projection(ctx: PageContext, store: Store, meta: pd.DataFrame, layer: str, pool: str, names: list[str],
                members: list[np.ndarray]) -> None:
    methods = {"t-SNE": "tsne", "UMAP": "umap", "PCA": "pca"}
    default = next(shown for shown, name in methods.items() if name == Projection().method)  # the projection's own
    chart, controls = st.columns([3, 2])
    method = controls.segmented_control("Projection", list(methods), default=default, key=_key("method", ctx, layer)) or default
    points = int(controls.number_input("Sample", 100, 5000, 1000, step=100, key=_key("points", ctx, layer),
                                       help="Images projected: a seeded random sample of at most this many."))
    params = {"method": methods[method], "max_points": points, "seed": 0}
    label = "Projecting" + (" (UMAP compiles on its first use: about a minute)..." if method == "UMAP" else "...")
    try:
        with st.spinner(label):
            fitted = projection_for(store, layer, pool, params)
    except BiasLensError as exc:
        st.error(f"The projection cannot be computed: {exc}")
        return
    picked = ((st.session_state.get(_key("matrix", ctx, layer)) or {}).get("selection") or {}).get(ROW_PICK) or []
    highlight_key = _key("highlight", ctx, layer)
    if picked and picked[0].get("row") in names:
        st.session_state[highlight_key] = picked[0]["row"]
    if st.session_state.get(highlight_key) not in ["(none)", *names]:
        st.session_state[highlight_key] = "(none)"
    highlight = controls.selectbox("Highlight the images of", ["(none)", *names], key=highlight_key,
                                   help="Or click a row of the matrix.")
    chosen = members[names.index(highlight)] if highlight in names else None
    frame = projection_frame(fitted, meta, chosen)
    with chart:
        event = show_selectable(projection_chart, frame, store.classes, highlight if chosen is not None else "",
                                key=projection_key(ctx, layer), modes=(POINT_BOX, POINT_PICK))
    controls.caption(f"{method} of {len(fitted.rows_):,} images" + (f" (a random sample of {store.n:,}, seed 0)" if fitted.sampled_ else "")
                     + (f"; {fitted.dropped_} left out for NaN activations" if fitted.dropped_ else "")
                     + ". Colour = true class. Drag a box to select images; click one to add it as a row.")
    boxed = boxed_rows(event, frame)
    if len(boxed):
        controls.markdown(f"**{len(boxed):,} images in the box**")
        with controls:
            save_subset_form(ctx, boxed, f"{layer} {method} box", "activis", f"{method} of `{layer}` ({pool}), box",
                             _key("save_box", ctx, layer))
