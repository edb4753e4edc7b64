"""Filter saliency: which filters malfunction on an error (Levin et al., parameter-space saliency)."""

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import BiasLensError
from core.estimates import HOSTED_MAX_FILTERS_K, on_this_server
from core.filters import conv_filters
from core.images import placeholder
from core.methods import (
    FilterSaliency,
    FilterTurnOff,
    FineTuneCheck,
    MaskingExperiment,
    overlay,
)
from core.saliency_store import profile_problem, size_message
from core.ui import cache
from core.ui import saliency_view as view
from core.ui.charts import show
from core.ui.context import page_context
from core.ui.image_detail import enlarged
from core.ui.keys import state_key
from core.ui.method_page import gallery, run_with_progress, save_subset_form
from core.ui.widgets import how_to_read, kept, percent

PAGE = "saliency"
VIEW = 224
NEIGHBOURS = 10
MODE_SHOWN = 10

ctx = page_context()
store, meta = ctx.store, ctx.meta()
classes = store.classes
labels_idx = meta["label_idx"].to_numpy()
correct = meta["correct"].to_numpy()
wrong_rows = meta.loc[~meta["correct"]].sort_values("loss", ascending=False)["row"].to_numpy()

st.title("Filter saliency")
st.caption(
    "Parameter-space saliency ranks the network's conv filters by how much the loss of one image "
    "would change them (the mean absolute gradient of each filter's weights, standardised against the dataset): "
    "the filters most salient for an error are the ones that malfunction (Levin et al., "
    "*Where do models go wrong? Parameter-space saliency maps for explainability*)."
)

# --------------------------------------------------------------------------- 1. the dataset's profiles
st.subheader("Profiles of the dataset")
try:
    choices = view.layer_choices(ctx)
except BiasLensError as exc:
    st.info(str(exc))
    st.stop()
if ctx.model.only_patch_embedding:
    st.info(
        f"This model's only convolution is its patch embedding (`{choices[0]}`, as in a vision transformer). Filter "
        "saliency ranks conv filters, so here it ranks only that layer's filters, each of which sees one image patch "
        "before any attention layer; the transformer blocks after it have no filters and are not ranked."
    )
if store.n < 2:
    st.error(f"The dataset has {store.n} image(s); saliency profiles are standardised over the dataset and need at least 2.")
    st.stop()
chosen = st.multiselect(
    "Conv layers profiled", choices, **kept(state_key(PAGE, "layers", ctx.key), choices),
    help="The filters of these conv layers (or blocks) make up each image's profile. Default: all of them.",
)
if not chosen:
    st.warning("Pick at least one conv layer.")
    st.stop()
layers = view.requested_layers(chosen, choices)
try:
    index = conv_filters(ctx.model.module, layers)
except BiasLensError as exc:
    st.error(str(exc))
    st.stop()
profiles = view.profiles_for(ctx, layers)
if profiles is None:
    if ctx.hosted:  # visitors cannot start a pass over the whole dataset
        st.info(view.not_prepared(ctx, layers))
        st.stop()
    problem = profile_problem(store, ctx.model, layers)  # kept profiles that are refused
    before = st.empty()  # the size and the button, cleared once the build starts
    with before.container():
        if problem:
            st.warning(f"{problem} They are not used; the button below computes them again from the start.")
        st.info(f"{size_message(store.n, index)} Expected: {on_this_server(view.build_seconds(ctx))}.")
        if view.uses_loop(ctx, index):
            st.info(view.LOOP_NOTE)
        command = f"python -m core saliency {ctx.workspace.name}" + (f" --layers {','.join(layers)}" if layers else "")
        st.caption(f"Or from a terminal: `{command}` (resumes where it stopped).")
        clicked = st.button("Rebuild the saliency profiles" if problem else "Compute saliency profiles", type="primary",
                            icon=":material/tune:", key=state_key(PAGE, "build"))
    if not clicked:
        st.stop()
    before.empty()
    try:
        with cache.queued("The saliency profiles", expected_s=view.build_seconds(ctx)):
            profiles = run_with_progress(
                "Computing saliency profiles...",
                lambda progress: view.build(ctx, layers, progress, notice=st.info),
                lambda p: f"Saliency profiles of {p.n:,} images over {p.n_filters:,} filters",
                unit="image",
            )
    except BiasLensError as exc:
        st.error(f"The saliency profiles cannot be computed: {exc}")
        st.stop()
m = profiles.manifest
st.caption(f"{profiles.n:,} images × {profiles.n_filters:,} filters over {len(index.layers)} conv layer(s), "
           f"computed in {float(m.get('seconds', 0)):.0f} s.")
if view.uses_loop(ctx, index, profiles):
    st.info(view.LOOP_NOTE)

# --------------------------------------------------------------------------- 2. reference set
names = ctx.subsets().names()
stats = view.reference_section(ctx, profiles, names)
mu, sigma, ref = stats

# --------------------------------------------------------------------------- 3. Fig. 1 and 2
view.profile_figures(store, profiles, correct, stats)

# --------------------------------------------------------------------------- 4. pick an image
row = view.pick_image(ctx, wrong_rows, names)

# --------------------------------------------------------------------------- 5. the picked image
rec = meta.iloc[row]
label = int(rec["label_idx"])
st.subheader(f"Image {rec['id']} (row {row})")
st.markdown(f"Label **{rec['label']}** · predicted **{rec['pred']}** ({percent(rec['confidence'])})"
            + (" ✓" if rec["correct"] else " ✗ misclassified") + f" · loss {rec['loss']:.3f}")
max_k = min(30, index.n_filters)
image, unreadable = ctx.dataset.try_load_image(row)


def explain_image() -> FineTuneCheck:
    """The picked image's top filters, input map, turning off, masking, fine-tuning check and
    neighbours; returns the fine-tuning settings (the aggregate below uses them)."""
    if rec["correct"]:
        st.info("This image is classified correctly. The paper studies errors: the salient filters of a correct image "
                "show what it relies on, and turning them off lowers the true class's confidence.")
    k = int(st.number_input("Top filters (k)", 1, HOSTED_MAX_FILTERS_K if ctx.hosted else 100_000, **kept(state_key(PAGE, "k"), 10),
                            help="The paper's F: the k filters of highest z, boosted for the input-space map (eq. 3)."
                            + (f" This server allows at most {HOSTED_MAX_FILTERS_K}." if ctx.hosted else "")))
    try:
        with st.spinner("Computing the image's saliency (cached afterwards)..."):
            fitted = view.saliency_for(ctx, profiles, row, label, stats, FilterSaliency(k=k))
    except BiasLensError as exc:
        st.error(f"The image's saliency cannot be computed: {exc}")
        st.stop()
    for note in fitted.notes_:
        st.caption(note)
    left, middle, right = st.columns([1, 1, 2])
    left.image(enlarged(fitted.view_, VIEW), caption="Image (as the model sees it)", width="stretch")
    middle.image(enlarged(overlay(fitted.view_, fitted.map_), VIEW), caption=f"Input-space saliency of the top {len(fitted.top_)} filters",
                 width="stretch")
    right.dataframe(view.top_filters_table(fitted), hide_index=True, height=260,
                    column_config={"z": st.column_config.NumberColumn("z", format="%.2f")})
    how_to_read("the map shows the pixels that drive the top filters' saliency (red = most; eq. 4); the table lists "
                "the filters with the highest z for this image: the candidates for the error.")

    z = profiles.z([row], mu, sigma)[0]
    st.markdown("**Turning the salient filters off**")
    turned = view.turn_off_for(ctx, profiles, row, label, z, ref, FilterTurnOff(max_k=max_k))
    show(view.turn_off_chart, view.curves_frame(turned.curves_), False)
    how_to_read("zeroing the most salient filters (red) should lower the wrong class's confidence (dashed) and raise the "
                "true class's (solid) faster than random (grey) or least salient (green) filters.")

    st.markdown("**Masking the salient pixels**")
    c1, c2 = st.columns([2, 1])
    threshold = c1.slider("Mask pixels with map ≥", 0.05, 0.95, step=0.05, **kept(state_key(PAGE, "threshold"), 0.5))
    least = c2.toggle("least salient (control)", **kept(state_key(PAGE, "least"), False),
                      help="Mask as many pixels, but those of lowest saliency instead.")
    masking = view.masking_for(ctx, profiles, row, label, fitted, stats, MaskingExperiment(threshold=threshold, least=least))
    left, right = st.columns([1, 2])
    left.image(enlarged(view.masked_view(fitted.view_, masking.mask_, ctx.model.mean), VIEW),
               caption=f"Masked: {percent(masking.masked_share_)} of the pixels", width="stretch")
    pred = int(rec["pred_idx"])
    shown = list(dict.fromkeys([label, pred, int(np.argmax(masking.probabilities_after_))]))
    right.dataframe(pd.DataFrame({
        "class": [classes[c] + (" (true)" if c == label else "") for c in shown],
        "before": [masking.probabilities_before_[c] for c in shown],
        "after masking": [masking.probabilities_after_[c] for c in shown],
    }), hide_index=True, column_config={c: st.column_config.ProgressColumn(c, min_value=0, max_value=1, format="%.3f")
                                        for c in ("before", "after masking")})
    right.metric("Top filters' mean z", f"{masking.top_saliency_after_:.2f}", f"{-masking.saliency_drop_:+.2f} after masking",
                 delta_color="inverse")
    how_to_read("masking the most salient pixels should lower the top filters' saliency (and change the output) more "
                "than masking the same number of least salient pixels (the control).")

    # saliency-space neighbours (used by the fine-tuning check and shown below it)
    all_neighbours, _ = view.neighbours_for(store, profiles, row, stats, NEIGHBOURS, np.arange(index.n_filters), None)

    st.markdown("**Fine-tuning check**")
    f1, f2 = st.columns(2)
    one_percent = max(1, index.n_filters // 100)
    most_tuned = min(one_percent, HOSTED_MAX_FILTERS_K) if ctx.hosted else one_percent
    tuned = int(f1.number_input("Filters updated (k ≤ 1% of them)", 1, most_tuned,
                                **kept(state_key(PAGE, "tune_k", ctx.key, index.n_filters), most_tuned),
                                help="The paper restricts the update to at most 1% of the filters."
                                + (f" This server allows at most {HOSTED_MAX_FILTERS_K}." if ctx.hosted else "")))
    step = float(f2.number_input("Step (share of their weight norm)", 0.01, 2.0, step=0.05, format="%.2f",
                                 **kept(state_key(PAGE, "tune_step"), 0.1),
                                 help="A normalised gradient step whose length is this share of the chosen filters' weight norm."))
    try:
        check = view.fine_tune_for(ctx, profiles, row, label, z, ref, all_neighbours, labels_idx[all_neighbours],
                                   FineTuneCheck(k=tuned, step=step))
    except BiasLensError as exc:
        st.error(f"The fine-tuning check cannot run: {exc}")
    else:
        st.dataframe(check.results_, hide_index=True, column_config={
            "image_corrected": st.column_config.NumberColumn("image corrected", format="percent"),
            "image_true_confidence_change": st.column_config.NumberColumn("Δ true conf. (image)", format="%+.4f"),
            "neighbours_corrected_share": st.column_config.NumberColumn("neighbours corrected", format="percent"),
            "neighbours_true_confidence_change": st.column_config.NumberColumn("Δ true conf. (neighbours)", format="%+.4f"),
        })
        st.caption(f"One normalised gradient step on this image through {check.k_} filter(s) only, chosen as the most "
                   f"salient, random or least salient; measured on the image and its {len(all_neighbours)} saliency-space "
                   "neighbours. The step is applied to copies of the weights: the model in the app is never modified. "
                   + " ".join(check.notes_))
        how_to_read("if the salient filters cause the error, updating them corrects the image and helps its neighbours more "
                    "than random or least salient filters do.")

    st.markdown("**Saliency-space neighbours**")
    c1, c2 = st.columns([1, 2])
    scope = c1.radio("Among", ["All images", "Misclassified only"], horizontal=True, **kept(state_key(PAGE, "nb_scope"), "All images"))
    names_l = list(index.layers)
    span_key = state_key(PAGE, "nb_layers", ctx.key)
    if st.session_state.get(f"{span_key}:kept") is None or any(x not in names_l for x in st.session_state[f"{span_key}:kept"]):
        st.session_state[f"{span_key}:kept"] = (names_l[0], names_l[-1])
    if len(names_l) > 1:
        span = c2.select_slider("Layer range", names_l, **kept(span_key, (names_l[0], names_l[-1])),
                                help="Early layers find images alike in low-level ways (colour), deep ones in abstract ways (Fig. 5).")
    else:
        span = (names_l[0], names_l[0])
    columns = view.layer_columns(index, tuple(span))
    candidates = wrong_rows if scope == "Misclassified only" else None
    near, similarity = view.neighbours_for(store, profiles, row, stats, NEIGHBOURS, columns, candidates)
    gallery(ctx, meta, near, extra=[f"cos {s:.2f}" for s in similarity], origin="saliency-neighbours")
    how_to_read("the images whose standardised profiles (over the chosen layers) point the same way as this one's (cosine); "
                "the paper finds they are often misclassified for the same reason.")
    save_subset_form(ctx, np.concatenate([[row], near]), f"saliency neighbours of {rec['id']}", view.ORIGIN,
                     f"row {row} and its {len(near)} saliency-space neighbours ({scope.lower()}, layers {span[0]}..{span[1]})",
                     key=state_key(PAGE, "save_neighbours", ctx.key, row), params={"row": row, "layers": list(span), "scope": scope})
    return FineTuneCheck(k=tuned, step=step)


if image is None:  # a file deleted or damaged since the store was built: marked, not fatal
    st.image(enlarged(placeholder(VIEW, str(rec["id"])), VIEW), caption=f"Image {rec['id']}: missing")
    st.warning(f"This image cannot be read ({unreadable}), so its saliency cannot be computed: pick another image. "
               "The sections below use the dataset's profiles and still work.")
    one_percent = max(1, index.n_filters // 100)  # the fine-tuning check's defaults
    tune = FineTuneCheck(k=min(one_percent, HOSTED_MAX_FILTERS_K) if ctx.hosted else one_percent, step=0.1)
else:
    tune = explain_image()

# --------------------------------------------------------------------------- 6. aggregate turning-off
view.aggregate_section(ctx, profiles, ref, stats, wrong_rows, names, max_k, tune)

# --------------------------------------------------------------------------- 7. failure modes
view.failure_modes_section(ctx, profiles, stats, index, wrong_rows, MODE_SHOWN)
