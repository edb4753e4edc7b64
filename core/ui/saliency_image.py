"""Filter saliency's per-image panels (Levin et al.): for the picked image, its top filters and
input-space map, turning them off (ranked by |z| or z), masking the salient pixels, the one-step
fine-tuning check and its saliency-space neighbours (from this dataset or an independent image
set). The runs themselves are in core/ui/saliency_view.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.data.images import placeholder
from core.errors import BiasLensError
from core.methods import FilterSaliency, FilterTurnOff, FineTuneCheck, MaskingExperiment, overlay
from core.methods.records import setting_defaults
from core.methods.saliency.filters import FilterIndex
from core.methods.saliency.profiles import SaliencyProfiles
from core.methods.saliency.record import RECORD
from core.services.estimates import HOSTED_MAX_FILTERS_K
from core.ui.charts import show
from core.ui.image_detail import enlarged
from core.ui.keys import state_key
from core.ui.method_page import gallery, save_subset_form, settings_widgets
from core.ui.page import PageContext
from core.ui.saliency_view import (
    ORIGIN,
    PAGE,
    RANKING_LABELS,
    curves_frame,
    fine_tune_for,
    image_set_section,
    layer_columns,
    masked_view,
    masking_for,
    neighbours_for,
    saliency_for,
    set_gallery,
    set_neighbours,
    top_filters_table,
    turn_off_chart,
    turn_off_for,
)
from core.ui.widgets import how_to_read, kept, percent

VIEW = 224  # pixels of the image panels
NEIGHBOURS = 10  # saliency-space neighbours shown and used by the fine-tuning check
MAX_K = 30  # turning off: the paper's k = 0..30


def most_filters_tuned(ctx: PageContext, index: FilterIndex) -> int:
    """The fine-tuning check's most filters (the paper's 1% of them; capped when hosted)."""
    one_percent = max(1, index.n_filters // 100)
    return min(one_percent, HOSTED_MAX_FILTERS_K) if ctx.hosted else one_percent


def image_section(ctx: PageContext, profiles: SaliencyProfiles, stats: tuple[np.ndarray, np.ndarray, str],
                  index: FilterIndex, row: int, wrong_rows: np.ndarray) -> FineTuneCheck:
    """The picked image's heading and panels; an image whose file is gone is marked and skipped.
    Returns the fine-tuning settings for the aggregate over many errors."""
    rec = ctx.meta().iloc[row]
    st.subheader(f"Image {rec['id']} (row {row})")
    st.markdown(f"Label **{rec['label']}** · predicted **{rec['pred']}** ({percent(rec['confidence'])})"
                + (" ✓" if rec["correct"] else " ✗ misclassified") + f" · loss {rec['loss']:.3f}")
    image, unreadable = ctx.dataset.try_load_image(row)
    if image is None:  # a file deleted or damaged since the store was built: marked, not fatal
        st.image(enlarged(placeholder(VIEW, str(rec["id"])), VIEW), caption=f"Image {rec['id']}: missing")
        st.warning(f"This image cannot be read ({unreadable}), so its saliency cannot be computed: pick another image. "
                   "The sections below use the dataset's profiles and still work.")
        return FineTuneCheck(k=most_filters_tuned(ctx, index))
    return explain_image(ctx, profiles, stats, index, row, wrong_rows)


def explain_image(ctx: PageContext, profiles: SaliencyProfiles, stats: tuple[np.ndarray, np.ndarray, str],
                  index: FilterIndex, row: int, wrong_rows: np.ndarray) -> FineTuneCheck:
    """The picked image's top filters, input map, turning off, masking, fine-tuning check and
    neighbours; returns the fine-tuning settings (the aggregate over many errors uses them)."""
    store, meta, classes = ctx.store, ctx.meta(), ctx.store.classes
    rec = meta.iloc[row]
    label = int(rec["label_idx"])
    mu, sigma, ref = stats
    max_k = min(MAX_K, index.n_filters)
    if rec["correct"]:
        st.info("This image is classified correctly. The paper studies errors: the salient filters of a correct image "
                "show what it relies on, and turning them off lowers the true class's confidence.")
    defaults = setting_defaults(RECORD, store.n)  # each explainer's own
    saliency = FilterSaliency(**settings_widgets(PAGE, RECORD.settings_named("k"), defaults, (st,), hosted=ctx.hosted))
    try:
        with st.spinner("Computing the image's saliency (cached afterwards)..."):
            explained = saliency_for(ctx, profiles, row, label, stats, saliency)
    except BiasLensError as exc:
        st.error(f"The image's saliency cannot be computed: {exc}")
        st.stop()
    for note in explained.notes:
        st.caption(note)
    left, middle, right = st.columns([1, 1, 2])
    left.image(enlarged(explained.view, VIEW), caption="Image (as the model sees it)", width="stretch")
    middle.image(enlarged(overlay(explained.view, explained.map), VIEW),
                 caption=f"Input-space saliency of the top {len(explained.top)} filters", width="stretch")
    right.dataframe(top_filters_table(explained), hide_index=True, height=260,
                    column_config={"z": st.column_config.NumberColumn("z", format="%.2f")})
    how_to_read("the map shows the pixels that drive the top filters' saliency (red = most; eq. 4); the table lists "
                "the filters with the highest z for this image: the candidates for the error.")

    z = profiles.z([row], mu, sigma)[0]
    st.markdown("**Turning the salient filters off**")
    ranking = settings_widgets(PAGE, RECORD.settings_named("ranking"), defaults, (st,), format_funcs={"ranking": RANKING_LABELS.get})
    turned = turn_off_for(ctx, profiles, row, label, z, ref, FilterTurnOff(max_k=max_k, **ranking))
    show(turn_off_chart, curves_frame(turned.curves), False)
    st.caption(" ".join(turned.notes))
    how_to_read("zeroing the most salient filters (red) should lower the wrong class's confidence (dashed) and raise the "
                "true class's (solid) faster than random (grey) or least salient (green) filters.")

    st.markdown("**Masking the salient pixels**")
    c1, c2 = st.columns([2, 1])
    masked = settings_widgets(PAGE, RECORD.settings_named("threshold", "least"), defaults, (c1, c2))
    masking = masking_for(ctx, profiles, row, label, saliency, explained, stats, MaskingExperiment(**masked))
    left, right = st.columns([1, 2])
    left.image(enlarged(masked_view(explained.view, masking.mask, ctx.model.mean), VIEW),
               caption=f"Masked: {percent(masking.masked_share)} of the pixels", width="stretch")
    pred = int(rec["pred_idx"])
    shown = list(dict.fromkeys([label, pred, int(np.argmax(masking.probabilities_after))]))
    right.dataframe(pd.DataFrame({
        "class": [classes[c] + (" (true)" if c == label else "") for c in shown],
        "before": [masking.probabilities_before[c] for c in shown],
        "after masking": [masking.probabilities_after[c] for c in shown],
    }), hide_index=True, column_config={c: st.column_config.ProgressColumn(c, min_value=0, max_value=1, format="%.3f")
                                        for c in ("before", "after masking")})
    right.metric("Top filters' mean z", f"{masking.top_saliency_after:.2f}", f"{-masking.saliency_drop:+.2f} after masking",
                 delta_color="inverse")
    how_to_read("masking the most salient pixels should lower the top filters' saliency (and change the output) more "
                "than masking the same number of least salient pixels (the control).")

    # the neighbours' image set, then the saliency-space neighbours (used by the fine-tuning check and shown below it)
    st.markdown("**Neighbours' image set**")
    image_set = image_set_section(ctx, profiles)
    every_filter = np.arange(index.n_filters)
    if image_set.independent:
        all_neighbours, _ = set_neighbours(image_set, profiles, row, str(rec["id"]), stats, NEIGHBOURS, every_filter, False)
    else:
        all_neighbours, _ = neighbours_for(store, profiles, row, stats, NEIGHBOURS, every_filter, None)
    set_labels = image_set.meta()["label_idx"].to_numpy()

    st.markdown("**Fine-tuning check**")
    f1, f2 = st.columns(2)
    most_tuned = most_filters_tuned(ctx, index)
    tuned = int(f1.number_input("Filters updated (k ≤ 1% of them)", 1, most_tuned,
                                **kept(state_key(PAGE, "tune_k", ctx.key, index.n_filters), most_tuned),
                                help="The paper restricts the update to at most 1% of the filters."
                                + (f" This server allows at most {HOSTED_MAX_FILTERS_K}." if ctx.hosted else "")))
    tuning = settings_widgets(PAGE, RECORD.settings_named("step"), defaults, (f2,))
    try:
        check = fine_tune_for(ctx, profiles, row, label, z, ref, image_set, all_neighbours, set_labels[all_neighbours],
                              FineTuneCheck(k=tuned, **tuning))
    except BiasLensError as exc:
        st.error(f"The fine-tuning check cannot run: {exc}")
    else:
        st.dataframe(check.results, hide_index=True, column_config={
            "image_corrected": st.column_config.NumberColumn("image corrected", format="percent"),
            "image_true_confidence_change": st.column_config.NumberColumn("Δ true conf. (image)", format="%+.4f"),
            "neighbours_corrected_share": st.column_config.NumberColumn("neighbours corrected", format="percent"),
            "neighbours_true_confidence_change": st.column_config.NumberColumn("Δ true conf. (neighbours)", format="%+.4f"),
        })
        st.caption(f"One normalised gradient step on this image through {check.k} filter(s) only, chosen as the most "
                   f"salient, random or least salient; measured on the image and its {len(all_neighbours)} saliency-space "
                   f"neighbours from {image_set.title}. The step is applied to copies of the weights: the model in the app "
                   "is never modified. "
                   + " ".join(check.notes))
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
    columns = layer_columns(index, tuple(span))
    if image_set.independent:
        near, similarity = set_neighbours(image_set, profiles, row, str(rec["id"]), stats, NEIGHBOURS, columns,
                                          scope == "Misclassified only")
        set_gallery(ctx, image_set, near, [f"cos {s:.2f}" for s in similarity])
        how_to_read(f"the images of {image_set.title} whose standardised profiles (over the chosen layers, against this "
                    "dataset's reference) point the same way as this one's (cosine); the paper finds they are often "
                    "misclassified for the same reason. They belong to another set, so they cannot be saved as a subset here.")
        return FineTuneCheck(k=tuned, **tuning)
    candidates = wrong_rows if scope == "Misclassified only" else None
    near, similarity = neighbours_for(store, profiles, row, stats, NEIGHBOURS, columns, candidates)
    gallery(ctx, meta, near, extra=[f"cos {s:.2f}" for s in similarity], origin="saliency-neighbours")
    how_to_read("the images whose standardised profiles (over the chosen layers) point the same way as this one's (cosine); "
                "the paper finds they are often misclassified for the same reason.")
    save_subset_form(ctx, np.concatenate([[row], near]), f"saliency neighbours of {rec['id']}", ORIGIN,
                     f"row {row} and its {len(near)} saliency-space neighbours ({scope.lower()}, layers {span[0]}..{span[1]})",
                     key=state_key(PAGE, "save_neighbours", ctx.key, row), params={"row": row, "layers": list(span), "scope": scope})
    return FineTuneCheck(k=tuned, **tuning)

