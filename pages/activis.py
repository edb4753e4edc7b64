"""ActiVis: the model graph, the neuron activation matrix of subsets and single images, the
projected view, and the instance selection panel (Kahng et al., ActiVis, IEEE VIS 2017)."""

import streamlit as st

from core.ui import activis_view as view
from core.ui.charts import show_selectable
from core.ui.context import page_context
from core.ui.widgets import how_to_read, kept

ctx = page_context()
store, meta = ctx.store, ctx.meta()
storable = ctx.model.storable_layers

st.title("ActiVis")
st.caption(
    "Where every subset found elsewhere (a class, a cohort, a spotlight, a subgroup, a saliency neighbourhood) meets "
    "the neurons, side by side: pick a node of the model's graph; its panel shows the mean activation of each neuron "
    "for each row (subsets and single images), and a 2-D projection of the images' activations (Kahng et al., "
    "*ActiVis: visual exploration of industry-scale deep neural network models*)."
)

# --------------------------------------------------------------------------- A. the model graph
st.subheader("Model graph")
default = view.default_detail(storable)
detail = st.segmented_control("Detail", list(view.DETAIL), **kept(view.state_key(view.PAGE, "detail", ctx.key), default)) or default
graph = view.graph_for(ctx, ctx.key, ctx.model.weights_fingerprint, view.DETAIL[detail])
view.apply_clicks(ctx, store, graph, detail)
if not graph.traced:
    st.info(graph.note)
nodes, edges = view.graph_frames(graph, store, storable, view.open_nodes(ctx))
show_selectable(view.graph_chart, nodes, edges, key=view.graph_key(ctx, detail), modes=(view.GRAPH_PICK,))
how_to_read(
    "data flows left (input) to right (output); dark squares are operators, circles the tensors between them: gold = "
    "in the activation store, white = a layer the store can add, grey = not one the store keeps; a red ring = its "
    "panel is open. Hover for the full name and shape, drag to pan, scroll to zoom, click a tensor to open its panel."
)
unplaced = st.session_state.get(view.state_key(view.PAGE, "unplaced", ctx.key))
if unplaced:
    why, nearest = view.nearest_text(graph, unplaced, store, storable)
    st.warning(why)
    if nearest and st.button(f"Open the nearest node that has a panel: `{nearest}`"):
        if nearest not in view.open_nodes(ctx):
            view.toggle_open(ctx, nearest)
        st.session_state[view.state_key(view.PAGE, "unplaced", ctx.key)] = None
        st.rerun()
view.open_list(ctx, [n for n in nodes["layer"] if n])

# --------------------------------------------------------------------------- rows and instances
left, right = st.columns([3, 1])
with left:
    st.subheader("Rows of the matrix")
    view.rows_editor(ctx, store, meta)
    names, members, problems = view.resolved_rows(ctx, store, meta)
    for problem in problems:
        st.warning(f"Left out: {problem}")
with right:
    view.instance_panel(ctx, store, meta)

# --------------------------------------------------------------------------- B. one panel per open node
st.subheader("Activation panels")
if not view.open_nodes(ctx):
    st.info("Click a tensor of the graph (or pick one under *Open panels*) to see its neurons' activations.")
for layer in list(view.open_nodes(ctx)):
    view.node_panel(ctx, store, meta, graph, layer, names, members)
how_to_read(
    "each row is a subset of images (its mean activation per neuron) or one image; each column a neuron (a channel, "
    "pooled over space); darker = stronger, one scale per panel. Sort the neurons by a row to see which fire for it; "
    "the projection places images with similar activations together, coloured by true class."
)
