"""Cohorts & subsets: filter images with a SQL WHERE expression, save and export subsets."""

import numpy as np
import streamlit as st

from core.services.cohorts import QUERY_MEMORY_MB, QUERY_SECONDS, CohortError
from core.ui import cache, cohort_link, subset_view
from core.ui.context import page_context
from core.ui.keys import state_key
from core.ui.method_page import gallery, save_subset_form
from core.ui.widgets import how_to_read, kept, percent

ctx = page_context()
store = ctx.store
meta = ctx.meta()
view = cache.cohort_view_for(store)
registry = ctx.subsets()

st.title("Cohorts & subsets")
st.caption(
    "A cohort is a SQL `WHERE` expression over the per-image metadata (DuckDB syntax). "
    "Save it as a subset to compare it on the other pages. "
    f"A filter may run {QUERY_SECONDS:g} s and use {QUERY_MEMORY_MB} MB of memory; beyond that it is stopped."
)
with st.expander("Columns you can filter on"):
    st.dataframe(
        [{"column": c, "type": str(meta[c].dtype), "example": str(meta[c].iloc[0])} for c in view.columns],
        hide_index=True,
    )
example = "correct = false"
if "label" in meta and store.attribute_columns:
    first = store.attribute_columns[0]
    example = f"label = '{meta['label'].iloc[0]}' AND \"{first}\" = '{meta[first].iloc[0]}'"
within_name, within_rows = cohort_link.within_select(ctx, registry)
where = st.text_input("WHERE", placeholder=example, **kept(state_key("cohorts", "where", ctx.key), ""))

if where.strip() or within_rows is not None:
    try:
        rows = view.rows(where) if where.strip() else list(range(len(meta)))
    except CohortError as exc:
        st.error(f"The filter was refused; fix the expression and press Enter.\n\n```\n{exc}\n```")
        rows = None
    if rows is not None and within_rows is not None:
        rows = [int(r) for r in np.intersect1d(rows, within_rows)]
    if rows is not None and not rows:
        st.warning("No image matches this filter.")
    elif rows:
        cohort = meta.iloc[rows]
        overall, _, _ = cache.overview_tables(store)["overall"]  # both cached: no bootstrap on a rerun
        acc, low, high = cache.accuracy_interval(store, tuple(int(r) for r in cohort["row"]))
        c1, c2, c3 = st.columns(3)
        c1.metric("Images", f"{len(cohort):,}", f"{100 * len(cohort) / len(meta):.1f}% of all", delta_color="off")
        c2.metric("Accuracy", percent(acc), f"{100 * (acc - overall):+.1f} pts vs overall")
        c3.metric("Mean loss", f"{cohort['loss'].mean():.3f}")
        st.caption(f"95% bootstrap interval of the cohort's accuracy: {percent(low)} – {percent(high)}")
        sample = cohort.sort_values("loss", ascending=False).head(16)
        gallery(ctx, meta, sample["row"].to_numpy(), origin="cohort")
        how_to_read("the cohort's 16 highest-loss images; red frames are misclassified.")
        detail = where.strip() if not within_name else " AND ".join(
            [f"within '{within_name}'"] + ([f"({where.strip()})"] if where.strip() else [])
        )
        save_subset_form(ctx, rows, detail[:60], "cohort", detail, key=state_key("cohorts", "save", ctx.key))

# the run's one registry: a subset saved just above is listed on this run
subset_view.subsets_section(ctx, meta, ctx.subsets())
