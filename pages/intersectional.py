"""Intersectional: which layers encode groups of attributes, which groups the model confuses,
and whether their activations look alike (Krug & Stober: linear probes and NAP maps)."""

import streamlit as st

from core.errors import BiasLensError
from core.methods import LinearProbes, map_scale, nap_similarity
from core.methods.intersectional.features import MODES, default_probe_layers, probe_layer_options
from core.methods.intersectional.groups import capped_rows, counts_table
from core.methods.intersectional.record import RECORD
from core.methods.records import setting_defaults
from core.services import prepare
from core.services.estimates import (
    HOSTED_MAX_EPOCHS,
    HOSTED_MAX_PER_GROUP,
    HOSTED_MAX_PROBE_LAYERS,
    HOSTED_MAX_RUN_SECONDS,
    HOSTED_MAX_SEEDS,
    HostedLimit,
    duration,
    megabytes,
    on_this_server,
)
from core.ui import intersectional_view as view
from core.ui.charts import show, show_selectable
from core.ui.context import page_context
from core.ui.keys import state_key
from core.ui.method_page import (
    gallery,
    last_good_result,
    note_good_run,
    run_with_progress,
    settings_widgets,
)
from core.ui.subgroups_view import concept_patches_for, show_concept_patches
from core.ui.widgets import how_to_read, kept

PAGE = "intersectional"
ATTRIBUTES, SUBSETS = "Attribute columns", "Saved subsets"

ctx = page_context()
store, meta = ctx.store, ctx.meta()
hosted = ctx.hosted
probe_defaults = setting_defaults(RECORD, len(meta))  # LinearProbes' own

st.title("Intersectional")
st.caption(
    "Groups are the combinations of up to three attributes (e.g. tint × brightness). Linear probes ask in which "
    "layer the groups can be read off the activations, and which groups the probe confuses; neural activation "
    "patterns (NAPs) ask whether the groups' activations look alike, drawn as topographic maps of each layer's "
    "channels (Krug & Stober, *Visualizing deep neural networks with topographic activation maps* and "
    "*Intersectional probes*)."
)

# --------------------------------------------------------------------------- 1. groups
st.subheader("Groups")
candidates = list(store.attribute_columns)
saved = ctx.subsets().names()
if not candidates and not saved:
    st.info(
        "This dataset has no attribute columns to group by. The demo, CelebA and CSV manifests with attribute "
        "columns have them (an ImageFolder has none); or save subsets on *Cohorts & subsets* and group by those."
    )
    st.stop()
sources = ([ATTRIBUTES] if candidates else []) + ([SUBSETS] if saved else [])
c1, c2 = st.columns([2, 1])
source = c1.segmented_control("Groups from", sources, **kept(state_key(PAGE, "source", ctx.key), sources[0])) or sources[0]
min_size = int(c2.number_input("Minimum group size", 2, 10_000, **kept(state_key(PAGE, "min_size"), prepare.MIN_GROUP_SIZE),
                               help="Smaller groups are listed and left out."))
try:
    if source == ATTRIBUTES:
        defaults, passed = view.default_columns(store)
        columns = st.multiselect("Variables (1 to 3 attribute columns)", candidates, max_selections=3,
                                 **kept(state_key(PAGE, "columns", ctx.key), defaults))
        if passed and columns == defaults:  # why the page opened on these (or on none)
            why = "; ".join(f"`{c}`: {reason}" for c, reason in passed[:5]) + (" ..." if len(passed) > 5 else "")
            if defaults:
                st.caption("The page opens on the first attribute columns that split the images into groups of at "
                           f"least {prepare.MIN_GROUP_SIZE} images; passed over: {why}")
            else:
                st.info("No attribute column splits the images into 2 or more groups of at least "
                        f"{prepare.MIN_GROUP_SIZE} images, so none is picked. {why}")
        if not columns:
            st.info("Pick 1 to 3 attribute columns; each combination of their values is a group.")
            st.stop()
        groups = view.groups_for(store, tuple(columns), min_size)
    else:
        names = st.multiselect("Subsets (each one a group; they must not overlap)", saved,
                               **kept(state_key(PAGE, "subsets", ctx.key), default_from=lambda: view.disjoint_default(ctx, saved)))
        if len(names) < 2:
            st.info("Pick at least 2 saved subsets that share no image.")
            st.stop()
        groups = view.subset_groups(ctx, names, min_size)
except BiasLensError as exc:
    st.error(f"These groups cannot be built: {exc}")
    st.stop()

st.caption(
    f"{len(groups.names)} groups over {int((groups.labels >= 0).sum()):,} images."
    + (" Left out (fewer than the minimum): " + ", ".join(f"{n} ({s})" for n, s in groups.dropped) + "." if groups.dropped else "")
    + "".join(f" `{column}` binned as {', '.join(labels)}." for column, labels in groups.bins.items())
)
c1, c2, c3 = st.columns(3)
nap_cap = int(c1.number_input("Cap per group (NAPs)", 2, 100_000, **kept(state_key(PAGE, "nap_cap"), prepare.NAP_CAP)))
sample = settings_widgets(PAGE, RECORD.settings_named("per_group", "seed"), probe_defaults, (c2, c3), hosted=hosted)  # the probes' too: it seeds the NAPs' sample
probe_cap, seed = sample["per_group"], sample["seed"]
nap_rows = capped_rows(groups, nap_cap, seed)
probe_rows = capped_rows(groups, probe_cap, seed)
whole, nap_tab, probe_tab = st.tabs(["All images", f"Capped at {nap_cap} (NAPs)", f"Capped at {probe_cap} (probes)"])
for tab, rows, title in ((whole, None, "all images"), (nap_tab, nap_rows, "NAP sample"), (probe_tab, probe_rows, "probe sample")):
    with tab:
        show(view.counts_chart, counts_table(groups, rows), list(groups.columns), f"Group sizes ({title})")
how_to_read("each cell is a group (a combination of the variables' values) with its number of images; grey cells are totals.")

# --------------------------------------------------------------------------- 2. linear probes
st.subheader("Linear probes per layer")
layer_options = probe_layer_options(store, ctx.model)  # the default sweep, and the output as the paper's ends
c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
chosen = c1.multiselect("Layers", layer_options, default=prepare.default_probe_choice(default_probe_layers(store, ctx.model), hosted),
                        key=state_key(PAGE, "probe_layers", ctx.key), max_selections=HOSTED_MAX_PROBE_LAYERS if hosted else None)
mode = c2.radio("Reduce to ≤ 8×8 by", list(MODES), key=state_key(PAGE, "probe_mode"))
training = settings_widgets(PAGE, RECORD.settings_named("n_seeds", "epochs"), probe_defaults, (c3, c4), hosted=hosted)
seeds, epochs = training["n_seeds"], training["epochs"]
if hosted:
    st.caption(f"On this server, a probe run takes at most {HOSTED_MAX_PROBE_LAYERS} layers, {HOSTED_MAX_SEEDS} seeds, "
               f"{HOSTED_MAX_EPOCHS} epochs and {HOSTED_MAX_PER_GROUP} images per group, and about "
               f"{duration(HOSTED_MAX_RUN_SECONDS)} by its estimate.")
layers = tuple(layer for layer in layer_options if layer in chosen)
probes = LinearProbes(**sample, **training)
run = (groups, probe_rows, layers, mode, probes)  # what view.cached_probes finds a result by
fitted = view.cached_probes(store, *run) if layers else None
if fitted is not None:
    note_good_run(PAGE, ctx.key, run)
if fitted is None and not layers:
    st.info("Pick at least one layer to probe.")
elif fitted is None:
    plan = view.probe_plan(ctx, groups, probe_rows, layers, mode, probes)
    refusal = None
    if hosted:
        try:
            prepare.check_hosted_probes(store, plan, layers, probes)
        except HostedLimit as exc:
            refusal = str(exc)
    c1, c2 = st.columns([1, 3], vertical_alignment="center")
    submitted = c1.button("Train the probes", type="primary", disabled=refusal is not None, key=state_key(PAGE, "probe_train"))
    c2.caption(f"{len(probe_rows):,} images, {len(groups.names)} groups, {len(layers)} layer(s) × {seeds} seed(s) × "
               f"{epochs} epochs: {on_this_server(plan.seconds)}"
               + (f"; writes {megabytes(plan.new_bytes)} of activations first." if plan.new_bytes else "."))
    if refusal is not None:
        st.warning(refusal)
    elif submitted:
        try:
            fitted = run_with_progress(
                "Training the probes...",
                lambda progress: view.probes_for(ctx, groups, probe_rows, layers, mode, probes, progress),
                lambda p: f"Probes trained on {len(layers)} layer(s) × {seeds} seed(s)", unit=None,
            )
            note_good_run(PAGE, ctx.key, run)
        except BiasLensError as exc:
            st.error(f"The probes cannot be trained: {exc}")
            fitted = last_good_result(PAGE, ctx.key, lambda good: view.cached_probes(store, *good))
if fitted is not None:
    summary = fitted.summary()
    show(view.accuracy_chart, summary)
    how_to_read(
        "validation accuracy (red, with its 95% interval over seeds) against train accuracy (blue), the same probe "
        "trained on shuffled labels (grey) and chance (dashed, the majority group's share): a layer encodes the "
        "groups where red stands above grey and dashed; red far below blue is overfitting."
    )
    c1, c2 = st.columns(2)
    with c1:
        shown = st.selectbox("Layer", list(summary["layer"]), index=len(summary) - 1, key=state_key(PAGE, "probe_layer"))
        show(view.curves_chart, fitted.curves_[fitted.curves_["layer"] == shown])
        how_to_read("accuracy per epoch of the chosen layer's probe, one line per seed (Fig. 3).")
    with c2:
        st.markdown(f"**Most frequent errors** at `{shown}` (Table 1)")
        st.dataframe(fitted.errors(shown), hide_index=True, column_config={
            "error_rate": st.column_config.NumberColumn("error rate", format="percent")})
        how_to_read("the true group, the group the probe predicted instead, the share of the true group's validation "
                    "images it went to, and the variables whose values differ between the two.")

# --------------------------------------------------------------------------- 3. NAPs and topographic maps
st.subheader("NAPs and topographic maps")
eligible = prepare.map_layers(store)
if not eligible:
    st.info("A topographic map needs a stored layer of more than 15 channels; add one on the Overview (store panel).")
    st.stop()
c1, c2 = st.columns([2, 1])
layer = c1.selectbox("Layer", eligible, index=len(eligible) - 1, key=state_key(PAGE, "nap_layer", ctx.key))
clip = c2.toggle("Clip the colour scale to the 0.5–99.5th percentile", **kept(state_key(PAGE, "clip"), False))
try:
    naps = view.naps_for(store, groups, nap_rows, layer)
    with st.spinner("Laying out the channels (UMAP, then the particle relaxation; the first UMAP call compiles, "
                    "about a minute)..."):
        layout = view.layout_for(store, groups, nap_rows, layer, naps, seed)
except BiasLensError as exc:
    st.error(f"The maps cannot be drawn: {exc}")
    st.stop()
limit = map_scale(naps.naps_, clip)
maps = view.maps_for(layout.positions_, naps.naps_)
names = list(groups.names)
variables = list(groups.columns)
if len(variables) > 2:
    panels = sorted({v[2] for v in groups.values})
    for tab, value in zip(st.tabs([f"{variables[2]} = {p}" for p in panels]), panels, strict=True):
        with tab:
            view.draw_map_grid(groups, naps, layout.positions_, maps, limit, (value,))
else:
    view.draw_map_grid(groups, naps, layout.positions_, maps, limit, ())
how_to_read(
    f"each map places the layer's {naps.naps_.shape[1]} channels so that channels with similar NAPs sit together "
    f"(the same layout for every group); red = the group activates the channel more than expected, blue = less, "
    f"white = as expected (one scale, ±{limit:.3g}, for every map). Margins are unions of the groups in that row or column."
)

st.markdown("**Compare two groups**")
c1, c2 = st.columns(2)
first = c1.selectbox("Group", names, index=0, key=state_key(PAGE, "compare_a"))
second = c2.selectbox("minus group", names, index=min(1, len(names) - 1), key=state_key(PAGE, "compare_b"))
difference = maps[names.index(first)] - maps[names.index(second)]
left, right = st.columns([1, 2])
left.image(view.map_png(difference, 2 * limit), caption=f"{first} − {second}")
similarity, order = nap_similarity(naps.naps_)
with right:
    show(view.similarity_chart, names, similarity, order, [int(v) for v in naps.sizes_])
how_to_read("the difference map shows where the two groups' NAPs differ (same colours, twice the scale); the matrix "
            "gives the cosine similarity of every two groups' NAPs, ordered so that groups that look alike sit together.")

st.markdown("**Channels**")
c1, c2 = st.columns([1, 2])
group = c1.selectbox("Colour by the NAP of", names, key=state_key(PAGE, "channel_group"))
with c2:
    event = show_selectable(view.channel_chart, layout.positions_, naps.naps_[names.index(group)], limit, group,
                            key=state_key(PAGE, "channel_pick", ctx.key, layer))
points = ((event or {}).get("selection") or {}).get(view.CHANNEL_PICK) or []
if points and "channel" in points[0]:
    channel = int(points[0]["channel"])
    st.markdown(f"**Channel {channel} of `{layer}`**: the images that activate it most (mean over space)")
    gallery(ctx, meta, view.top_rows(store, layer, channel), origin=f"intersectional-channel-{layer}-{channel}")
    try:
        with st.spinner("Concept patches of the channel..."):
            patches = concept_patches_for(ctx, ((layer, channel),))
        show_concept_patches(patches[(layer, channel)])
        how_to_read("the squares of its top images (by max over space) that activate the channel most, as on the "
                    "Subgroups page's concept window; the numbers are its activation on the image masked to that square.")
    except BiasLensError as exc:
        st.warning(f"The concept patches cannot be shown: {exc}")
else:
    st.caption("Hover a channel for its index and NAP; click one to see the images that activate it most.")
