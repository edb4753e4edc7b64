"""Overview: the workspace's model and data, its store, and where accuracy drops."""

import streamlit as st

from core.scoring.summary import GALLERY_FILTERS, gallery_rows, intersection_axes
from core.services.cohorts import equals_filter
from core.store.read import metadata_attribute_names
from core.ui import cache, charts
from core.ui.cohort_link import open_cohort, selected_cell
from core.ui.context import page_context
from core.ui.keys import state_key
from core.ui.method_page import gallery
from core.ui.store_panel import store_panel
from core.ui.widgets import how_to_read, percent
from core.ui.workshop import ground_truth_hidden, hidden_notice, live_section, mark_visited

mark_visited()  # the workshop's first step: done on opening the Overview
ctx = page_context(require_store=False)
truth_hidden = ground_truth_hidden()  # workshop mode: no planted slice until the reveal
ws, model, dataset = ctx.workspace, ctx.model, ctx.dataset

st.title(ws.title)
if ws.description:
    st.caption(ws.description)

left, right = st.columns(2)
with left:
    st.subheader("Model")
    st.markdown(
        f"- {model.description} on **{model.device}**\n"
        f"- {model.num_classes} outputs, input {model.input_size}×{model.input_size} px\n"
        f"- Last hidden layer: input of `{model.embedding_layer}` ({model.embedding_dim}-d)\n"
        f"- Convolutional blocks: {len(model.conv_layers)}"
    )
with right:
    st.subheader("Dataset")
    attribute_names = metadata_attribute_names(dataset)  # the names cohorts use
    st.markdown(
        f"- {dataset.name}: **{len(dataset):,}** images, {len(dataset.classes)} classes\n"
        f"- Attributes: {', '.join(f'`{a}`' for a in attribute_names) or 'none'}\n"
        + (f"- Planted slices (ground truth): {len(dataset.ground_truth.columns)}"
           if len(dataset.ground_truth.columns) and not truth_hidden else "")
    )

store = store_panel(ctx)
if store is None:
    st.stop()
meta = ctx.meta()
tables = cache.overview_tables(store)

accuracy, low, high = tables["overall"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Accuracy", percent(accuracy), help="Share of images whose top prediction is the label.")
m1.caption(f"95% interval: {percent(low)} – {percent(high)}")
m2.metric("Misclassified", f"{int((~meta['correct']).sum()):,}")
m3.metric("Mean loss", f"{meta['loss'].mean():.3f}", help="Mean per-image cross-entropy.")
m4.metric("Images", f"{len(meta):,}")


def planted_slices(hidden: bool) -> None:
    """The planted slices, or the workshop's notice while they are hidden (a live section: a
    reveal shows here without rerunning the page)."""
    st.subheader("Planted slices")
    if hidden:
        hidden_notice("Where the planted failures are")
        return
    slices = tables["slices"]
    charts.show(charts.accuracy_intervals, slices, "slice", "Planted slice", accuracy)
    how_to_read(
        "each dot is a planted slice's test accuracy with its 95% bootstrap interval; the dashed "
        "line is overall accuracy. Each slice should sit far left of it: that is the failure to find."
    )
    shown = slices.assign(
        accuracy=slices["accuracy"].map(percent), gap=slices["gap"].map(lambda g: f"{100 * g:.1f} pts")
    )[["slice", "n", "accuracy", "gap"]]
    notes = dataset.planted_slices()
    if len(notes):
        shown = shown.merge(notes.drop(columns="description"), on="slice", how="left")
    st.dataframe(shown, hide_index=True, column_config={"where": st.column_config.TextColumn(
        "where (a cohort filter)", help="Paste it into Cohorts & subsets to see the slice.", width="large")})
    for note in notes.itertuples():  # in full: a table cell cuts long text
        st.markdown(f"- **{note.slice}** ({note.kind}): {note.description}")
    st.caption("Scorecards of each method's recovery of these slices appear on the method pages.")


if store.slice_columns:
    live_section(planted_slices)

classes_tab, attributes_tab, crossed_tab, gallery_tab = st.tabs(["Classes", "Attributes", "Intersections", "Gallery"])
with classes_tab:
    per_class = tables["classes"]
    charts.show(charts.accuracy_intervals, per_class, "class", "True class", accuracy)
    how_to_read("accuracy of each true class with its 95% bootstrap interval; the dashed line is overall accuracy.")
    normalise = st.toggle("Confusion matrix as shares of each true class", value=True)
    charts.show(charts.confusion_matrix, tables["confusion"], store.classes, normalise, width="content")
    how_to_read("row = true class, column = prediction; the diagonal is correct, off-diagonal cells are the confusions.")

with attributes_tab:
    table = tables["attributes"]
    if table.empty:
        st.info(
            "This dataset has no attribute columns with few enough values to break down. "
            "Add attribute columns to a CSV manifest to see accuracy per attribute value."
        )
    else:
        for attribute in table["attribute"].unique():
            part = table[table["attribute"] == attribute]
            st.markdown(f"**{attribute}**")
            charts.show(charts.accuracy_intervals, part, "value", attribute, accuracy, zoom=True)
        how_to_read("accuracy per attribute value with 95% bootstrap intervals; the dashed line is overall accuracy.")

with crossed_tab:
    axes = intersection_axes(meta, store.attribute_columns)  # label and few-valued attributes only
    if len(axes) < 2:
        st.info("Crossing needs two columns (the class or attribute columns) with at most 50 values each.")
    else:
        x1, x2 = st.columns(2)
        row_axis = x1.selectbox("Rows", axes, key=state_key("overview", "cross_rows", ctx.key))
        column_axis = x2.selectbox("Columns", [a for a in axes if a != row_axis],
                                   key=state_key("overview", "cross_columns", ctx.key, row_axis))
        crossed = cache.intersection_table(store, row_axis, column_axis)
        event = charts.show_selectable(charts.intersection_heatmap, crossed, row_axis, column_axis,
                                       key=state_key("overview", "cross_cell", ctx.key, row_axis, column_axis),
                                       width="content")
        how_to_read(
            "each cell is the accuracy of the images with that row and column value (colour and text, "
            "with the count n; the 95% bootstrap interval in the tooltip); blank cells have no image. "
            "Click a cell to open it as a cohort."
        )
        cell = selected_cell(crossed, event)
        if cell is not None:
            st.markdown(f"**{row_axis} = {charts.cell_text(cell['row'])}, {column_axis} = {charts.cell_text(cell['column'])}**")
            c1, c2, c3 = st.columns(3)
            c1.metric("Images", f"{int(cell['n']):,}")
            c2.metric("Accuracy", percent(cell["accuracy"]), f"{100 * (cell['accuracy'] - accuracy):+.1f} pts vs overall")
            c3.metric("95% interval", f"{percent(cell['low'])} – {percent(cell['high'])}")
            if st.button("Open as cohort", key=state_key("overview", "cross_open", ctx.key)):
                open_cohort(ctx, equals_filter({row_axis: cell["row"], column_axis: cell["column"]}))

with gallery_tab:
    g1, g2, g3 = st.columns([2, 2, 1])
    show = g1.segmented_control("Show", GALLERY_FILTERS, default="misclassified", key=state_key("overview", "gallery_show")) or "all"
    label = g2.selectbox("Class", ["(all classes)", *store.classes], key=state_key("overview", "gallery_class"))
    seed = int(g3.number_input("Sample seed", 0, 10_000, 0, key=state_key("overview", "gallery_seed")))
    rows = gallery_rows(meta, show, None if label == "(all classes)" else label, 24, seed)
    gallery(ctx, meta, rows["row"].to_numpy(), extra=[f"loss {v:.2f}" for v in rows["loss"]], origin="overview")
    how_to_read("a random sample; misclassified images have a red frame and cross, captioned with the prediction.")
