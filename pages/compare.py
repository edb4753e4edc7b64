"""Compare: where did the new checkpoint (this workspace, B) get worse than another (A), and is it real."""

import streamlit as st

from core.errors import BiasLensError, redact_paths
from core.services.compare import check_comparable
from core.ui import compare_view as view
from core.ui.context import page_context, workspace_context
from core.ui.keys import state_key
from core.ui.listing import workspace_list
from core.ui.widgets import how_to_read, kept
from core.ui.workshop import ground_truth_hidden, hidden_notice

PAGE = view.PAGE
ctx = page_context()  # B: the workspace chosen in the sidebar
st.title("Compare models")
st.caption(
    f"Model B is this workspace's ({ctx.workspace.title}); pick model A, an older checkpoint or another model on the same "
    "images. Both accuracies are compared image by image (McNemar's exact test); per class, attribute value and saved "
    "subset with Benjamini-Hochberg q; and the slices where B got worse (or better) are found without attribute labels "
    "(Spotlight on the per-image loss difference, UDIS clusters of the flips), on one half of the images, and "
    "confirmed on the other."
)
if ground_truth_hidden():  # workshop mode: a planted model against its control points at the answer
    hidden_notice("The Compare page")
    st.stop()
listing = workspace_list()
# only the workspaces on the same images can be compared: those whose dataset is this one's
others = [w for name, w in listing.workspaces.items() if name != ctx.workspace.name and w.dataset == ctx.workspace.dataset]
if not others:
    st.info("No other workspace uses this workspace's images. To compare two models, register the other model in the "
            "workspace file with the same `dataset` table (see \"Bring your own model and data\"), then pick it here.")
    st.stop()
c1, c2 = st.columns([3, 1])
titles = [w.title for w in others]
chosen = c1.selectbox("Model A (compare with)", titles, **kept(state_key(PAGE, "other", ctx.key), titles[0]))
embedding_of = c2.radio("Search in the embedding of", ["B", "A"], horizontal=True, key=state_key(PAGE, "embedding"))
other = others[titles.index(chosen)]
try:
    ctx_a = workspace_context(other, listing.hosted)  # A: its store, and its own model for Grad-CAM
    store_a = ctx_a.store
    if store_a is None:
        st.info(f"Workspace '{other.title}' has no complete activation store yet: open it from the sidebar and build it "
                "on its Overview (or run `python -m core build` for it), then come back.")
        st.stop()
    check_comparable(store_a, ctx.store)
    result = view.comparison_for(store_a, ctx.store, other.name, ctx.workspace.name, embedding_of)
except BiasLensError as exc:
    st.error(f"These two cannot be compared: {redact_paths(str(exc)) if listing.hosted else exc}")
    st.stop()

view.overall_panel(result)
for note in result.notes:
    st.caption(note)
if result.identical:
    st.success("The two models make the same prediction on every image: there is nothing to find.")
    view.report_downloads(ctx, result)
    st.stop()
st.subheader(f"Where B got worse: {len(result.significant_regressions)} confirmed slice(s)")
how_to_read("each card is a slice found without attribute labels on one half of the images; its accuracy under A and B, "
            "the q-value of the paired test on the other half (Benjamini-Hochberg over every candidate), and the "
            "difference there. Repeats of a slice are left out of the cards.")
shown = [r for r in result.regressions if not r["duplicate of"]][: view.SHOWN_SLICES]
if not shown:
    st.success("No slice where B got worse holds up on the held-out half.")
for rank, found in enumerate(shown, 1):
    view.slice_card(ctx, ctx_a, result, rank, found, "regression")
improved = [r for r in result.improvements if not r["duplicate of"]][: view.SHOWN_SLICES]
with st.expander(f"Where B got better ({len(result.significant_improvements)} confirmed)", icon=":material/trending_up:"):
    for rank, found in enumerate(improved, 1):
        view.slice_card(ctx, ctx_a, result, rank, found, "improvement")
    if not improved:
        st.caption("No slice where B got better was found.")
st.subheader("Per class, attribute value and saved subset")
view.groups_table(result)
st.subheader("Images that flipped")
view.flips_panel(ctx, ctx_a, result)
st.subheader("Report")
view.report_downloads(ctx, result)
