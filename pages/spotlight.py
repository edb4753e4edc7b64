"""Spotlight: contiguous high-loss regions of the representation space (d'Eon et al.)."""

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import BiasLensError
from core.methods import NothingToFind, Spotlight, weights_table
from core.methods.spotlight.record import MIN_SPOTLIGHT_TOP, RECORD, default_size
from core.ui import cohort_link, image_detail, subset_view
from core.ui import spotlight_view as view
from core.ui.charts import show, show_selectable
from core.ui.context import page_context
from core.ui.keys import state_key
from core.ui.method_page import (
    gallery,
    kept_run,
    save_subset_form,
    scorecard_section,
    settings_form,
    significance_section,
)
from core.ui.widgets import how_to_read, percent

MAP_POINTS = 4000
PAGE = "spotlight"

ctx = page_context()
store, meta = ctx.store, ctx.meta()
n = len(meta)
RUN_KEY = state_key(PAGE, "run", ctx.key)

st.title("Spotlight")
st.caption(
    "A spotlight is a Gaussian-weighted region of the model's representation space, placed "
    "where the mean loss is highest and kept at least S images wide (d'Eon et al., *The "
    "Spotlight*). Images that embed together tend to share a cause of failure, so a spotlight "
    "surfaces a coherent problem area without any attribute labels."
)

scope_name, scope_rows = subset_view.scope_select(ctx, PAGE)  # all images, or a saved subset's
compare_name, compare_rows = subset_view.compare_select(ctx, PAGE)  # a subset to compare with the rest
# The form's widgets keep their values in session state, seeded from the last run, so that
# coming back to the page shows the settings of the results below.
last = st.session_state.get(RUN_KEY)
default_pct = 100 * default_size(n)
submitted = settings_form(
    PAGE, "spotlight_controls", RECORD.settings, {**RECORD.defaults(n).get_params(), "representation": view.EMBEDDING},
    last=last and {**last["params"], "representation": last["representation"]},
    columns=([2, 1, 1, 1], 5),  # room for the representation's full name
    submit="Run", primary=True,
    options={"representation": list(store.representations())},  # the embedding first, then layer:pool
    format_funcs={"representation": lambda name: view.representation_label(store, name)},
)
st.caption(
    f"Default S here: {default_pct:g}% = {round(default_pct * n / 100):,} of {n:,} images. It is the paper's 2%, raised to "
    f"at least {MIN_SPOTLIGHT_TOP} images (at most 25%): each spotlight's accuracy is measured on its top S images, "
    "and on fewer its 95% interval says little (4 images, 2% of 200, read 0.0% – 0.0%)."
)
if submitted:  # S as a fraction of the images: the estimator turns it into a count
    st.session_state[RUN_KEY] = {"representation": submitted.pop("representation"), "params": submitted}
run = st.session_state.get(RUN_KEY)
if run is None:
    st.info(f"Choose the settings and press **Run** to find spotlights among the {n:,} images.")
    st.stop()



def spotlight_failed(exc: BiasLensError) -> None:
    if isinstance(exc, NothingToFind):
        st.success(f"Nothing to find: {exc}")
    else:
        st.error(f"The spotlight cannot run: {exc}")


result, run, (scope_name, scope_rows) = kept_run(
    PAGE, ctx.key, run, (scope_name, scope_rows),
    lambda chosen, rows: view.run_spotlights(store, chosen["representation"], Spotlight(**chosen["params"]), scope=rows),
    spotlight_failed,
)
representation, params = run["representation"], run["params"]
if not result.spotlights_:
    st.success("Nothing to find: " + " ".join(result.notes_))
    st.stop()
if result.size_ < MIN_SPOTLIGHT_TOP:
    floor = round(default_size(result.n_images_) * result.n_images_)  # the default S: 25 images, or a quarter of fewer than 100
    st.warning(
        f"S = {result.size_:,} images: each spotlight's accuracy below rests on its top {result.size_:,} images only, "
        "so its 95% interval is wide or degenerate. "
        + (f"Raise Size S to at least {100 * default_size(result.n_images_):g}% ({floor} images) unless you are after a very small group."
           if result.size_ < floor else
           f"With {result.n_images_:,} images a larger S would cover more than a quarter of them: read the intervals as rough."),
        icon=":material/warning:",
    )
order = view.evidence_for(store, result, run, scope_rows)
listed = [result.spotlights_[int(p)] for p in order["position"]]  # the page's order: by evidence
names = [f"Spotlight {fit.index + 1}" for fit in listed]
detail = (f"{view.representation_label(store, representation)}, S = {result.size_:,}, "
          f"{params['kernel']} kernel, {params['precision']} precision"
          + (f", scope: subset '{scope_name}' ({len(scope_rows):,} images)" if scope_name else ""))

# --------------------------------------------------------------------------- all spotlights
st.subheader("Spotlights found")
st.caption(
    f"{detail}; {len(result.spotlights_)} spotlight(s) in {result.seconds_:.1f} s on {result.device_}"
    + (f"; centre searched in the top {result.search_dims_} principal directions and the starts (distances use the full vectors)" if result.search_dims_ else "")
    + (f"; PCA keeps {percent(result.explained_variance_)} of the variance" if result.explained_variance_ is not None else "")
    + ". " + " ".join(result.notes_)
)
view.spotlights_table(result, order, listed, meta)
c1, c2 = st.columns([3, 1])
with c1:
    show(view.trace_chart, view.trace_frame(result))
    how_to_read("the objective while optimising; it rises as the barrier lets each spotlight narrow onto its high-loss region.")
with c2:
    st.download_button(
        # made on click (deferred): writing 10,000 rows took 0.3 s of every rerun
        "Download weights (CSV)", lambda: weights_table(result, meta).to_csv(index=False).encode(),
        file_name=f"{ctx.workspace.name}-spotlights.csv", mime="text/csv",
        help="One row per image: id, label, prediction, loss and each spotlight's weight.",
    )

if compare_name:
    subset_view.compare_panel(meta, compare_name, compare_rows,
                              {f"Spotlight {fit.index + 1}": fit.top_rows(result.size_) for fit in listed},
                              f"spotlight (its top S = {result.size_:,} images by weight)")

# --------------------------------------------------------------------------- significance and planted slices
significance_section(store, [fit.top_rows(result.size_) for fit in listed], names, "spotlights (each its top S images)",
                     held_out=view.held_out_for(store, representation, Spotlight(**params), scope_rows))
scorecard_section(
    store, [fit.weights for fit in listed], names,
    "for each planted slice, the spotlight whose 10 highest-weighted images contain the most slice "
    f"members; P@10 is that share. A slice counts as identified at P@10 ≥ 0.8. Recall counts the spotlight's top S = {result.size_:,}.",
    members=[fit.top_rows(result.size_) for fit in listed],
)

# --------------------------------------------------------------------------- each spotlight, and the paper's baselines
panels = [*names, "Highest loss", "Random sample"]
PANEL = state_key(PAGE, "panel")
if st.session_state.get(PANEL) not in panels:  # a run with fewer spotlights
    st.session_state[PANEL] = names[0]
# One panel at a time: each holds a gallery and three charts, and drawing every one of
# them on each rerun made the page slow for the server and the browser alike.
shown_panel = st.segmented_control("Show", panels, key=PANEL, help="Each spotlight, or the paper's two baselines.") or names[0]
if shown_panel in names:
    view.spotlight_panel(ctx, meta, result, listed[names.index(shown_panel)], store.attribute_columns, detail)
elif shown_panel == "Highest loss":
    by_loss = np.argsort(-meta["loss"].to_numpy(), kind="stable")[: view.GALLERY]
    gallery(ctx, meta, by_loss, extra=[f"loss {v:.2f}" for v in meta["loss"].to_numpy()[by_loss]], origin="spotlight-loss")
    how_to_read("the images with the highest loss, for comparison: usually a diffuse mix of causes, unlike a spotlight.")
else:
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(view.GALLERY, n), replace=False))
    gallery(ctx, meta, sample, origin="spotlight-random")
    how_to_read("a random sample of the dataset (fixed seed), for comparison with the spotlights.")

# --------------------------------------------------------------------------- map
st.subheader("Map of the representation")
m1, m2 = st.columns([1, 2])
method = m1.segmented_control("Projection", ["PCA", "UMAP"], default="PCA", key=state_key(PAGE, "map_method")) or "PCA"
if st.session_state.get(state_key(PAGE, "map_spotlight")) not in names:  # a run with fewer spotlights
    st.session_state.pop(state_key(PAGE, "map_spotlight"), None)
shown = m2.selectbox("Colour by the weights of", names, key=state_key(PAGE, "map_spotlight"))
rows = np.arange(n) if n <= MAP_POINTS else np.sort(np.random.default_rng(0).choice(n, MAP_POINTS, replace=False))
try:
    with st.spinner(f"Computing the {method} map of {len(rows):,} images..."):
        coords = view.representation_map(store, representation, method.lower(), tuple(int(r) for r in rows))
except BiasLensError as exc:
    st.warning(f"The map cannot be drawn now: {exc}")
    st.stop()
fit = listed[names.index(shown)]
part = meta.iloc[rows]
frame = pd.DataFrame(
    {
        "x": coords[:, 0], "y": coords[:, 1], "weight": fit.weights[rows], "row": part["row"].to_numpy(),
        "label": part["label"].to_numpy(), "pred": part["pred"].to_numpy(), "loss": part["loss"].to_numpy(),
        "outcome": np.where(part["correct"].to_numpy(), "correct", "error"),
    }
)
first, second = ("PC 1", "PC 2") if method == "PCA" else ("UMAP 1", "UMAP 2")
event = show_selectable(view.map_chart, frame, first, second, key=state_key(PAGE, "map_select", ctx.key))
how_to_read(
    f"each point is an image ({len(rows):,} shown) placed by a 2-D {method} of the representation; darker = "
    "higher weight in the chosen spotlight, crosses are misclassified. A spotlight is one region of the full space, so it may look spread out in 2-D. "
    "Drag a box to select images; click a point to open its details."
)
boxed, clicked = view.map_selection(frame, event)
last_click = state_key(PAGE, "map_clicked", ctx.key)
if clicked is not None and clicked != st.session_state.get(last_click):  # a new click, not the same selection on a rerun
    image_detail.request("spotlight-map", clicked)
st.session_state[last_click] = clicked
image_detail.show_requested(ctx, meta, "spotlight-map")
if len(boxed):
    acc = float(meta["correct"].to_numpy()[boxed].mean())
    st.markdown(f"**{len(boxed):,} images in the box** · accuracy {percent(acc)} · mean weight {frame.set_index('row').loc[boxed, 'weight'].mean():.3f}")
    gallery(ctx, meta, boxed[:24], origin="spotlight-box")
    how_to_read("the selected images with the highest weight first (up to 24 shown).")
    b1, b2 = st.columns([2, 1])
    with b1:
        save_subset_form(ctx, boxed, f"map box of {len(boxed)}", "spotlight", f"box on the {method} map of {representation}",
                         key=state_key(PAGE, "save_box", ctx.key))
    if b2.button("Open as cohort", icon=":material/filter_alt:", key=state_key(PAGE, "box_cohort", ctx.key)):
        cohort_link.open_group(ctx, f"map box of {len(boxed)}", boxed)
