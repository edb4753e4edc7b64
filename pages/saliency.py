"""Filter saliency: which filters malfunction on an error (Levin et al., parameter-space saliency)."""

import streamlit as st

from core.ui import saliency_image, why_view
from core.ui import saliency_view as view
from core.ui.context import page_context

MODE_SHOWN = 10  # failure modes drawn

ctx = page_context()
store, meta = ctx.store, ctx.meta()
wrong_rows = meta.loc[~meta["correct"]].sort_values("loss", ascending=False)["row"].to_numpy()

st.title("Filter saliency")
st.caption(
    "Parameter-space saliency ranks the network's conv filters by how much the loss of one image "
    "would change them (the mean absolute gradient of each filter's weights, standardised against the dataset): "
    "the filters most salient for an error are the ones that malfunction (Levin et al., "
    "*Where do models go wrong? Parameter-space saliency maps for explainability*)."
)

# 1. the dataset's profiles; 2. the reference set; 3. Fig. 1 and 2
st.subheader("Profiles of the dataset")
profiles, index = view.profiles_section(ctx)
names = ctx.subsets().names()
stats = view.reference_section(ctx, profiles, names)
view.profile_figures(store, profiles, meta["correct"].to_numpy(), stats)

# 4. pick an image; 5. its top filters, map, turning off, masking, fine-tuning check, neighbours
row = view.pick_image(ctx, wrong_rows, names)
tune = saliency_image.image_section(ctx, profiles, stats, index, row, wrong_rows)

# 5b. why: occlusion and the counterfactual check, for the image and for a group of errors
why_view.why_section(ctx, row, stats, index, wrong_rows, names)

# 6. turning filters off and the fine-tuning check over many errors; 7. failure modes
view.aggregate_section(ctx, profiles, stats[2], stats, wrong_rows, names, min(saliency_image.MAX_K, index.n_filters), tune)
view.failure_modes_section(ctx, profiles, stats, index, wrong_rows, MODE_SHOWN)
