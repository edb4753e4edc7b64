"""Subgroups: where the model fails (UDIS) and why (VisCUIT's Grad-CAM, neurons and concepts)."""

import numpy as np
import streamlit as st

from core.methods import (
    UDIS,
    UDIS_THRESHOLD,
    VISCUIT_THRESHOLD,
    subgroups_csv,
)
from core.methods.subgroups.record import RECORD
from core.scoring.scorecard import loss_rankings
from core.ui import cache, cohort_link, subset_view
from core.ui import subgroups_view as view
from core.ui.context import page_context
from core.ui.keys import state_key
from core.ui.method_page import (
    kept_run,
    save_subset_form,
    scorecard_section,
    settings_form,
    significance_section,
)
from core.ui.widgets import how_to_read, kept, percent

SHOWN_IMAGES = 12
PAGE = "subgroups"

ctx = page_context()
store, meta = ctx.store, ctx.meta()
classes = store.classes
SELECTED = state_key(PAGE, "selected", ctx.key)
RUN_KEY = state_key(PAGE, "run", ctx.key)

st.title("Subgroups")
st.caption(
    "UDIS clusters the images by the model's last hidden layer (Ward, cut by silhouette score) and "
    "lists the clusters whose accuracy is far below the overall accuracy; VisCUIT then shows, for "
    "one of them and its most similar well-performing cluster, where the model looks (Grad-CAM) and "
    "which neurons and image concepts drive it (Lee, Wang, Hoffman & Chau, *VisCUIT*, CVPR 2022 workshop; Krishnakumar et al., *UDIS*)."
)
scope_name, scope_rows = subset_view.scope_select(ctx, PAGE)  # all images, or a saved subset's
compare_name, compare_rows = subset_view.compare_select(ctx, PAGE)  # a subset to compare with the rest

defaults = RECORD.defaults(len(meta)).get_params()
with st.expander("Clustering settings (UDIS)"):
    submitted = settings_form(PAGE, "udis_settings", RECORD.settings, defaults, last=st.session_state.get(RUN_KEY),
                              columns=(4, 4), submit="Re-cluster")
if submitted:
    st.session_state[RUN_KEY] = {**submitted, "max_size": max(submitted["max_size"], submitted["min_size"] + 1)}
udis = UDIS(**st.session_state.get(RUN_KEY, defaults))

choice = st.segmented_control(
    "Under-performing when accuracy < threshold × overall accuracy",
    [f"{VISCUIT_THRESHOLD} (VisCUIT paper)", f"{UDIS_THRESHOLD} (UDIS code)", "Custom"],
    **kept(state_key(PAGE, "threshold_choice"), f"{VISCUIT_THRESHOLD} (VisCUIT paper)"),
)
custom = kept(state_key(PAGE, "threshold_custom"), 0.8)  # kept even while another choice is shown
if choice == "Custom":
    threshold = st.slider("Threshold", 0.05, 1.0, step=0.01, **custom)
else:
    threshold = UDIS_THRESHOLD if choice and choice.startswith(str(UDIS_THRESHOLD)) else VISCUIT_THRESHOLD



def cluster(params: dict, rows: np.ndarray | None) -> UDIS:
    scoped = f"the {len(rows):,} images of the subset" if rows is not None else f"{len(meta):,} images"
    with st.spinner(f"Clustering {scoped} (cached afterwards)..."):
        return view.subgroups_for(store, UDIS(**params), scope=rows)


result, params, (scope_name, scope_rows) = kept_run(
    PAGE, ctx.key, udis.get_params(), (scope_name, scope_rows), cluster,
    lambda exc: st.error(f"The subgroups cannot be computed: {exc}"),
)
udis = UDIS(**params)
table = result.subgroups_.set_index("subgroup", drop=False)
under = result.under_performing(threshold)
st.caption(
    f"{len(table):,} subgroups ({result.method_}, cut with the best silhouette among {len(result.cuts_)} cuts, "
    f"{result.seconds_:.1f} s); overall accuracy {percent(result.overall_accuracy_)}; "
    f"{len(under)} under-performing at accuracy < {threshold:g} × {percent(result.overall_accuracy_)} = "
    f"{percent(threshold * result.overall_accuracy_)}. " + " ".join(result.notes_)
)
c1, c2 = st.columns(2)
c1.download_button("Export subgroups (CSV)", subgroups_csv(result, meta["id"].to_numpy(), threshold),
                   file_name=f"{ctx.workspace.name}-subgroups.csv", mime="text/csv", icon=":material/download:")

if under.empty:
    hint = result.suggest_threshold()
    st.info(
        f"No subgroup of more than 5 images has accuracy below {threshold:g} × the overall accuracy."
        + (f" A threshold of {hint:g} (Custom) would list the worst one." if hint else " Every subgroup is as accurate as the model overall.")
    )
    st.stop()

if compare_name:
    subset_view.compare_panel(meta, compare_name, compare_rows, {f"#{int(g)}": result.rows(int(g)) for g in under["subgroup"]},
                              "under-performing subgroup")

# --------------------------------------------------------------------------- subgroup panel
st.subheader("Under-performing subgroups")
order = view.evidence_for(store, result, params, scope_rows, threshold)
ids = [int(g) for g in order["subgroup"]]
marks = {int(r["subgroup"]): view.evidence_mark(r) for _, r in order.iterrows()}
correct = meta["correct"].to_numpy()
if st.session_state.get(SELECTED) not in ids:
    st.session_state[SELECTED] = ids[0]
with st.container(height=420):
    for g in ids:
        head, button = st.columns([5, 1])
        head.markdown(("**▶ " if g == st.session_state[SELECTED] else "**") + view.subgroup_label(table, g) + "**"
                      + f" · {marks[g]}")
        # on_click sets the choice before the run: one rerun, not a run stopped by st.rerun() and another
        button.button("Select", key=f"select:{g}", width="stretch", type="primary" if g == st.session_state[SELECTED] else "secondary",
                      on_click=st.session_state.__setitem__, args=(SELECTED, g))
        rows = result.rows(g)[:SHOWN_IMAGES]
        # one image per strip, made once: 12 image elements per subgroup made each rerun slow
        strip = cache.strip_png(ctx.dataset, ctx.key, tuple(int(r) for r in rows), 64,
                                tuple(bool(not correct[r]) for r in rows), SHOWN_IMAGES)
        st.image(strip, width="stretch", output_format="PNG")
how_to_read("subgroups listed by evidence: first those whose accuracy is significantly below the rest's (Fisher's "
            "exact test, q < 0.05 with Benjamini-Hochberg over every cluster of the run), by excess errors (the "
            "subgroup's size × how far its accuracy falls below the rest's: the errors it holds beyond what the rest's "
            "rate predicts), then the others; a subgroup sharing half its images with one above it (Jaccard ≥ 0.5) is "
            "the same failure and comes last. Images framed and crossed in red are misclassified.")

selected = st.session_state[SELECTED]
similar = int(table.loc[selected, "similar"])
left, right = st.columns(2)
with left:
    st.markdown(f"**Under-performing {view.subgroup_label(table, selected)}**")
    view.clickable_images(ctx, meta, result.rows(selected)[:24], key=f"under:{selected}", columns=4)
with right:
    if similar < 0:
        st.info("No well-performing subgroup (accuracy ≥ overall, more than 5 images) exists to compare with.")
    else:
        st.markdown(f"**Similar well-performing {view.subgroup_label(table, similar)}**")
        view.clickable_images(ctx, meta, result.rows(similar)[:24], key=f"well:{selected}:{similar}", columns=4)
how_to_read("the well-performing subgroup is the nearest one (Euclidean distance between mean embeddings) with accuracy ≥ overall; press CAM under an image to see where the model looks.")
left, right = st.columns(2)
with left:
    view.confusion_panel(result, meta, classes, selected, f"Confusion matrix of #{selected}")
if similar >= 0:
    with right:
        view.confusion_panel(result, meta, classes, similar, f"Confusion matrix of #{similar}")
how_to_read("rows are true classes, columns predictions, cells count images (classes absent from the subgroup are left out).")

c1, c2 = st.columns([1, 2])
which = c1.radio("Save", ["under-performing", "well-performing"], horizontal=True, disabled=similar < 0, key=state_key(PAGE, "save_which"))
target = selected if which == "under-performing" or similar < 0 else similar
with c2:
    save_subset_form(ctx, result.rows(target), f"subgroup {target}", "subgroup", view.subgroup_label(table, target),
                     key=state_key(PAGE, "save", ctx.key, target), params={**udis.get_params(), "subgroup": int(target)})
if c1.button("Open as cohort", icon=":material/filter_alt:", key=state_key(PAGE, "open_cohort", ctx.key, target),
             help="Filter within this subgroup on *Cohorts & subsets* (its accuracy, loss and images by any WHERE)."):
    cohort_link.open_group(ctx, f"subgroup {target}", result.rows(target))

# --------------------------------------------------------------------------- neuron panel
st.subheader("Neuron activation panel")
conv_layers = [layer for layer in ctx.model.conv_layers if layer in store.layers]
if not ctx.model.conv_layers:
    st.info("The neuron panel does not apply: the model has no convolutional layers.")
elif similar < 0:
    st.info("The neuron panel compares two subgroups; this one has no well-performing neighbour.")
elif not conv_layers:
    st.warning("None of the model's conv blocks is in the activation store: add layers on the Overview page (store panel).")
else:
    if ctx.model.only_patch_embedding:
        st.info(
            f"This model's only convolution is its patch embedding (`{conv_layers[0]}`, as in a vision transformer): "
            "the neurons below are its channels, which each see one image patch before any attention layer, and "
            "Grad-CAM reads the same layer. They say nothing of the transformer blocks after it."
        )
    view.neuron_panel_section(ctx, store, tuple(conv_layers), result, selected, similar)

# --------------------------------------------------------------------------- significance and scorecard
every = [int(g) for g in result.subgroups_["subgroup"]]
significance_section(store, [result.rows(g) for g in every], [f"#{g}" for g in every],
                     "subgroups (every cluster, not only the under-performing ones)",
                     held_out=view.held_out_for(store, udis, threshold, scope_rows))
members = [result.rows(g) for g in ids]
scorecard_section(
    store, loss_rankings(members, meta["loss"].to_numpy()), [f"#{g}" for g in ids],
    "for each planted slice, the under-performing subgroup whose 10 highest-loss images hold most slice images "
    "(P@10; ≥ 0.8 = identified) and the share of the slice it contains (recall); each subgroup ranks all its "
    "images by loss.",
    members=members,
)
