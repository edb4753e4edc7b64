"""The Compare page's cached run and its panels (core/services/compare.py does the work)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.services.compare import Comparison, compare_stores
from core.services.workspace import Workspace
from core.store.read import Store
from core.ui import cache, cohort_link
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.method_page import gallery, run_with_progress, save_subset_form
from core.ui.widgets import Shown, percent, table

PAGE = "compare"
ORIGIN = "comparison"
THUMBNAILS = 8
SHOWN_SLICES = 5


def other_store(workspace: Workspace, hosted: bool) -> Store | None:
    """The complete store of the other workspace (model A), or None while it is not built."""
    return cache.store_for(workspace, workspace.key(), hosted)


def comparison_for(store_a: Store, store_b: Store, name_a: str, name_b: str, embedding_of: str) -> Comparison:
    """The comparison of the two stores, once per server for these settings (a rerun reads it back)."""
    fingerprint, key = f"{store_a.fingerprint}|{store_b.fingerprint}", cache.run_key("compare", embedding_of, name_a, name_b)
    held = cache.cached_result("compare", fingerprint, key)
    if held is not None:
        return held

    def work(progress: Any) -> Comparison:
        return cache.computed_once("compare", fingerprint, key, "The comparison",
                                   lambda: compare_stores(store_a, store_b, embedding_of=embedding_of, name_a=name_a,
                                                          name_b=name_b,
                                                          progress=lambda share, message: progress(round(100 * share), 100, message)))

    return run_with_progress("Comparing the two models...", work, lambda result: f"Compared in {result.seconds:.1f} s",
                             unit=None)


def overall_panel(result: Comparison) -> None:
    """Both accuracies, the paired test and the 2x2 table."""
    o = result.overall
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Accuracy of A ({result.name_a})", percent(o["acc A"]), help=f"95%: {percent(o['acc A low'])} – {percent(o['acc A high'])}")
    c2.metric(f"Accuracy of B ({result.name_b})", percent(o["acc B"]), delta=f"{100 * o['difference']:+.1f} pts",
              help=f"95%: {percent(o['acc B low'])} – {percent(o['acc B high'])}")
    c3.metric("McNemar p (same accuracy)", f"{o['p']:.2g}")
    st.caption(result.summary())
    cells = o["table"]
    two_by_two = pd.DataFrame({"B right": [cells["both right"], cells["A wrong, B right"]],
                               "B wrong": [cells["A right, B wrong"], cells["both wrong"]]}, index=["A right", "A wrong"])
    st.dataframe(two_by_two)


def slice_card(ctx: PageContext, rank: int, found: dict[str, Any], direction: str) -> None:
    """One regression (or improvement) slice: what it is, how sure, its images, what to do next."""
    mark = ":material/trending_down:" if direction == "regression" else ":material/trending_up:"
    with st.container(border=True):
        st.markdown(f"{mark} **#{rank} · {found['description']}** ({found['name']})")
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Images", f"{found['size']:,}")
        c2.metric("Accuracy under B", percent(found["acc B"]),
                  delta=f"{100 * (found['acc B'] - found['acc A']):+.1f} pts from A ({percent(found['acc A'])})")
        c3.metric("q (BH)", f"{found['q']:.2g}")
        c4.metric("Held-out difference", f"{100 * found['held-out difference']:+.1f} pts")
        st.caption(f"{found['A right, B wrong']:,} images A got right and B wrong, {found['A wrong, B right']:,} the reverse; "
                   f"on the held-out half ({found['held-out n']:,} images) the difference is "
                   f"{100 * found['held-out difference']:+.1f} points (95% {100 * found['held-out low']:+.1f} to "
                   f"{100 * found['held-out high']:+.1f}).")
        rows = found["rows"]
        gallery(ctx, ctx.meta(), rows[:THUMBNAILS], origin=f"compare-{direction}-{rank}")
        left, right = st.columns([1, 3])
        if left.button("Open as cohort", icon=":material/filter_alt:", key=state_key(PAGE, "open", ctx.key, direction, rank)):
            cohort_link.open_group(ctx, f"{direction} {rank}", rows)
        word = "regressed" if direction == "regression" else "improved"
        with right:
            save_subset_form(ctx, rows, f"{word} in B: {found['description']}"[:100], ORIGIN,
                             f"{word} from A to B: {found['description']} ({found['name']})",
                             key=state_key(PAGE, "save", ctx.key, direction, rank))


def groups_table(result: Comparison) -> None:
    """Per class, attribute value and saved subset: both accuracies, the paired difference, q."""
    frame = result.groups.sort_values(["q", "difference"], kind="stable") if "q" in result.groups else result.groups
    table(frame, {"acc A": Shown("percent"), "acc B": Shown("percent"), "difference": Shown("points"),
                  "low": Shown("points", label="95% low"), "high": Shown("points", label="95% high"),
                  "p": Shown("general", 2), "q": Shown("general", 2)}, hide_index=True)


def flips_panel(ctx: PageContext, result: Comparison) -> None:
    """The images that flipped, both ways, with both predictions and confidences."""
    worse, better = st.tabs([f"A right → B wrong ({len(result.worse):,})", f"A wrong → B right ({len(result.better):,})"])
    for tab, frame, origin in ((worse, result.worse, "flips-worse"), (better, result.better, "flips-better")):
        with tab:
            if frame.empty:
                st.caption("None.")
                continue
            gallery(ctx, ctx.meta(), frame["row"].to_numpy()[:16], origin=origin)
            table(frame.drop(columns=["row"]).head(200), {"confidence A": Shown("percent"), "confidence B": Shown("percent"),
                                                          "loss A": Shown("number", 2), "loss B": Shown("number", 2)},
                  hide_index=True)
