"""The Findings page's cached run and its finding cards (core/services/findings.py does the work)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.errors import BiasLensError
from core.methods.records import method_records
from core.methods.saliency.profiles import find_profiles
from core.services.findings import Finding, FindingsReport, find_failures
from core.ui import activis_view, cache, cohort_link
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.method_page import gallery, run_with_progress, save_subset_form
from core.ui.widgets import percent

PAGE = "findings"
ORIGIN = "finding"
THUMBNAILS = 8
# where each source's groups are shown (a finding links to the pages that found it)
SOURCE_PAGES = {"spotlight": "spotlight", "udis": "subgroups", "saliency": "saliency"}


def findings_for(ctx: PageContext, with_attributes: bool) -> FindingsReport:
    """The ranked findings of the store, once per server for these settings (a rerun reads them back)."""
    store = ctx.store
    try:
        profiles = find_profiles(store, model=ctx.model)  # Filter saliency's failure modes join when they exist
    except BiasLensError:
        profiles = None
    key = cache.run_key("findings", with_attributes, None if profiles is None else profiles.manifest.get("key"))
    held = cache.cached_result("findings", store.fingerprint, key)
    if held is not None:
        return held

    def work(progress: Any) -> FindingsReport:
        return cache.computed_once("findings", store.fingerprint, key, "The findings",
                                   lambda: find_failures(store, with_attributes=with_attributes, profiles=profiles,
                                                                         progress=progress))

    return run_with_progress("Pooling the methods' groups...", work,
                             lambda report: f"{len(report.findings)} finding(s) from {report.candidates} candidate groups",
                             unit=None)


def _page_of(source: str) -> tuple[str, str] | None:
    """(page path, title) of the method page that shows a source's groups, if there is one."""
    name = SOURCE_PAGES.get(source)
    return next(((r.page, r.title) for r in method_records() if r.name == name), None)


def finding_card(ctx: PageContext, finding: Finding) -> None:
    """One finding: what it is, how sure, its images and where to go next."""
    significant = finding.q < 0.05
    mark = ":material/error:" if significant else ":material/help:"
    with st.container(border=True):
        st.markdown(f"{mark} **#{finding.rank} · {finding.description}**")
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Images", f"{finding.size:,}")
        c2.metric("Accuracy", percent(finding.accuracy),
                  delta=f"{100 * (finding.accuracy - finding.rest_accuracy):+.1f} pts vs the rest", delta_color="normal")
        c3.metric("q (BH)", f"{finding.q:.2g}")
        c4.metric("Worse on the held-out half", "n/a" if finding.held_out_gap is None else f"{100 * finding.held_out_gap:+.1f} pts",
                  help="The rest's accuracy minus the group's, in points, on the half of the images that played no part "
                       "in finding it: positive = the group is worse there too (a real failure keeps its gap).")
        described = ("" if finding.description_precision is None else
                     f" The description holds {percent(finding.description_precision)} of its images' share "
                     f"(precision) and covers {percent(finding.description_recall)} of the group (recall).")
        st.caption(
            f"Accuracy {percent(finding.accuracy)} (95% {percent(finding.accuracy_low)} – {percent(finding.accuracy_high)}) "
            f"against {percent(finding.rest_accuracy)} for the rest: about {finding.excess_errors:.0f} errors more than the "
            f"rest's rate would give. Found by {', '.join(finding.methods)} ({'; '.join(finding.names)})." + described
        )
        gallery(ctx, ctx.meta(), finding.rows[:THUMBNAILS], origin=f"finding-{finding.rank}")
        left, middle, right = st.columns([1, 1, 2])
        if left.button("Open as cohort", icon=":material/filter_alt:", key=state_key(PAGE, "open", ctx.key, finding.rank)):
            cohort_link.open_group(ctx, f"finding {finding.rank}", finding.rows)
        if left.button("Open in ActiVis as a row", icon=":material/grid_on:", key=state_key(PAGE, "activis", ctx.key, finding.rank),
                       help="Add this finding as a row of ActiVis' neuron activation matrix, beside one row per class."):
            try:
                activis_view.open_group(ctx, f"finding {finding.rank}", finding.rows)
            except BiasLensError as exc:
                left.error(str(exc))
        for source in finding.methods:
            shown = _page_of(source)
            if shown:
                middle.page_link(shown[0], label=f"Open {shown[1]}", icon=":material/arrow_forward:")
        with right:
            save_subset_form(ctx, finding.rows, f"finding {finding.rank}: {finding.description}"[:100], ORIGIN,
                             f"finding #{finding.rank} ({', '.join(finding.methods)}): {finding.description}",
                             key=state_key(PAGE, "save", ctx.key, finding.rank))
