"""The saved subsets on the Cohorts & subsets page: open one (its gallery, accuracy with an
interval, class mix and attribute lift), rename it, note it, delete it, export it; export
them all as CSV or as a findings report (core/services/report.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.data.datasets import ImageDataset
from core.data.images import placeholder
from core.errors import BiasLensError
from core.scoring.summary import subset_vs_rest
from core.services.cohorts import sql_literal
from core.services.report import SubsetFigures, build_report, subset_figures
from core.services.subsets import SubsetRegistry, fitted_name, params_text
from core.store.read import Store
from core.ui import cache
from core.ui.cohort_link import ALL_IMAGES
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.method_page import gallery
from core.ui.widgets import DASH, Shown, group_select, how_to_read, percent, table

MESSAGE = state_key("cohorts", "subset_message")


def _saved(ctx: PageContext) -> dict[str, Any]:
    """Every saved subset's rows by name, from one read (no name can vanish between two)."""
    return {subset.name: subset.rows for subset in ctx.subsets().subsets()}


def scope_select(ctx: PageContext, page: str) -> tuple[str | None, np.ndarray | None]:
    """The "Scope" select of a method page: all images, or a saved subset's images only.

    Returns (subset name, its store rows), or (None, None) for all images.
    """
    return group_select(
        "Scope", state_key(page, "scope", ctx.key), _saved(ctx), ALL_IMAGES,
        "Run on every image, or only on the images of a subset saved on *Cohorts & subsets*.",
    )


NO_COMPARISON = "(none)"


def compare_select(ctx: PageContext, page: str) -> tuple[str | None, np.ndarray | None]:
    """The "Compare a subset with the rest" select of a method page: (name, store rows) of the
    subset whose place in the method's groups the page shows (compare_panel), or (None, None)."""
    return group_select(
        "Compare a subset with the rest", state_key(page, "compare", ctx.key), _saved(ctx), NO_COMPARISON,
        "The method runs on its scope as usual; a table then shows, for each group it found, how many of "
        "the subset's images fall in it against the rest, and their accuracy on each side.",
    )


def compare_panel(meta: pd.DataFrame, name: str, rows: np.ndarray, groups: dict[str, np.ndarray], what: str) -> None:
    """The subset-versus-rest table over the method's groups (core.scoring.summary.subset_vs_rest)."""
    st.subheader(f"Subset '{name}' versus the rest")
    compared = subset_vs_rest(groups, rows, meta["correct"].to_numpy())
    empty = "no image on that side of the group (no accuracy, no interval)"
    shares = {c: Shown("percent", missing=empty) for c in
              ("accuracy (subset)", "subset low", "subset high", "accuracy (rest)", "rest low", "rest high")}
    table(compared, {"subset share": Shown("percent", missing="an empty group"), **shares,
                   "lift": Shown("number", 2, missing="no subset share to compare (an empty group or subset)")},
          hide_index=True)
    how_to_read(
        f"one row per {what}; 'subset share' is the share of its images that are in the subset, 'lift' that share "
        "over the subset's share of all images (> 1: the subset is over-represented there); the accuracies are of "
        "its subset images and of its other images, with 95% bootstrap intervals."
    )


def open_key(ctx: PageContext) -> str:
    """The session-state key of the subset open on the Cohorts page."""
    return state_key("cohorts", "open", ctx.key)


@st.cache_data(show_spinner=False, max_entries=32, hash_funcs=cache.STORE_HASH)
def figures_for(store: Store, _meta: pd.DataFrame, rows: tuple[int, ...], attributes: tuple[str, ...]) -> SubsetFigures:
    """A subset's figures, computed once per store and set of rows."""
    return subset_figures(rows, _meta, attributes)


def _tell(kind: str, text: str) -> None:
    st.session_state[MESSAGE] = (kind, text)


def _rename(registry: SubsetRegistry, old: str, box: str, opened: str) -> None:
    try:
        new = registry.rename(old, st.session_state.get(box, old)).name
    except BiasLensError as exc:
        _tell("error", str(exc))
        return
    st.session_state[opened] = new
    _tell("success", f"Renamed '{old}' to '{new}'.")


def _note(registry: SubsetRegistry, name: str, box: str) -> None:
    try:
        registry.set_note(name, st.session_state.get(box, ""))
    except BiasLensError as exc:
        _tell("error", str(exc))
        return
    _tell("success", f"Saved the note of '{name}'.")


def _delete(registry: SubsetRegistry, name: str, opened: str) -> None:
    try:
        registry.remove(name)
    except BiasLensError as exc:
        _tell("error", str(exc))
        return
    st.session_state.pop(opened, None)
    _tell("success", f"Deleted subset '{name}'.")


def _report(ctx: PageContext, meta: pd.DataFrame, registry: SubsetRegistry, fmt: str) -> Any:
    """The report, built only when its download button is pressed (Streamlit calls this)."""
    dataset, attributes = ctx.dataset, list(ctx.store.attribute_columns) if ctx.store else []

    def make() -> str:
        return build_report(
            registry.subsets(), meta, attributes, title=f"BiasLens findings: {ctx.workspace.title}",
            load_image=lambda row: image_or_placeholder(dataset, row), fmt=fmt,
        )

    return make


def image_or_placeholder(dataset: ImageDataset, row: int, size: int = 96) -> Image.Image:
    """Image ``row``, or the missing-image placeholder with its id when its file is gone or
    damaged: a lost file marks its place in the report instead of stopping it."""
    image, _ = dataset.try_load_image(row)
    return image if image is not None else Image.fromarray(placeholder(size, dataset.ids[row]))


def subsets_section(ctx: PageContext, meta: pd.DataFrame, registry: SubsetRegistry) -> None:
    """The page's Subsets section."""
    st.subheader("Subsets")
    if registry.persistent:
        st.caption("Saved with this workspace's activation store: every session on this machine sees them, "
                   "and they are kept across reloads and restarts.")
    else:
        st.caption("Kept in this server's memory for you alone (hosted or workshop mode, or no store yet): a reload or "
                   "a new tab with the same address (its `?v=` key) finds them again, but a server restart does not keep "
                   "them. Export them to keep them.")
    names = registry.names()
    if registry.problem:
        st.warning(registry.problem)
    if st.button("Add one subset per class"):
        _add_classes(registry, meta)
        names = registry.names()
    message = st.session_state.pop(MESSAGE, None)
    if message is not None:
        getattr(st, message[0])(message[1])
    if not names:
        st.info("No subsets yet: save a cohort above, or a group found on a method page.")
        return
    opened = open_key(ctx)
    if st.session_state.get(opened) not in names:
        st.session_state[opened] = names[0]
    name = st.selectbox("Open subset", names, key=opened)
    subset = registry.get(name)
    attributes = tuple(ctx.store.attribute_columns) if ctx.store else ()
    f = figures_for(ctx.store, meta, subset.rows, attributes)
    origin = f"**{subset.origin}**" + (f" · `{subset.detail}`" if subset.detail else "")
    st.markdown(f"{origin} · created {subset.created_text}")
    if params_text(subset.params):
        st.caption("Parameters: " + params_text(subset.params))
    if subset.note:
        st.info(subset.note, icon=":material/sticky_note_2:")
    c1, c2, c3 = st.columns(3)
    c1.metric("Images", f"{f.size:,}", f"{100 * f.share:.1f}% of all", delta_color="off")
    c2.metric("Accuracy", percent(f.accuracy), f"{100 * (f.accuracy - f.overall):+.1f} pts vs overall")
    c3.metric("Mean loss", f"{f.mean_loss:.3f}")
    st.caption(f"95% bootstrap interval of the subset's accuracy: {percent(f.low)} – {percent(f.high)}")
    worst = meta.iloc[list(subset.rows)].sort_values("loss", ascending=False).head(16)
    gallery(ctx, meta, worst["row"].to_numpy(), origin="subset-view")
    how_to_read("the subset's 16 highest-loss images; red frames are misclassified.")
    left, right = st.columns([2, 3])
    with left:
        st.markdown("**Class mix**")
        table(f.classes, {"share": Shown("percent"), "accuracy": Shown("percent")}, hide_index=True)
    with right:
        st.markdown("**Attribute lift** (share inside the subset / share of all images)")
        if len(f.lift):
            table(f.lift.head(10), {"inside": Shown("percent"), "overall": Shown("percent"),
                                    "lift": Shown("number", 2, missing="the value is absent from the dataset")},
                  hide_index=True)
        else:
            st.caption("No attributes with few enough values to compare.")
    how_to_read("a lift of 3 means the value is three times as common inside the subset as in the whole dataset.")

    with st.expander("Rename, note, delete, export", expanded=False):
        r1, r2 = st.columns(2)
        with r1.form(state_key("cohorts", "rename_form", ctx.key, name), border=False):
            box = state_key("cohorts", "rename", ctx.key, name)
            st.text_input("New name", name, key=box)
            st.form_submit_button("Rename", on_click=_rename, args=(registry, name, box, opened))
        with r2.form(state_key("cohorts", "note_form", ctx.key, name), border=False):
            note_box = state_key("cohorts", "note", ctx.key, name)
            st.text_area("Note", subset.note, key=note_box, height=80)
            st.form_submit_button("Save note", on_click=_note, args=(registry, name, note_box))
        b1, b2 = st.columns(2)
        b1.button("Delete subset", on_click=_delete, args=(registry, name, opened), icon=":material/delete:")
        b2.download_button(
            "Export this subset (CSV)", registry.to_csv(meta, [name]),
            file_name=f"{ctx.workspace.name}-{_slug(name)}.csv", mime="text/csv",
        )

    st.markdown("**All saved subsets**")
    st.dataframe(registry.summary().fillna(DASH).replace("", DASH), hide_index=True,
                 column_config={"detail": st.column_config.TextColumn(help=f"{DASH} = no query or detail"),
                                "note": st.column_config.TextColumn(help=f"{DASH} = no note")})
    e1, e2, e3 = st.columns(3)
    e1.download_button(
        "Export all subsets (CSV)", lambda: registry.to_csv(meta),
        file_name=f"{ctx.workspace.name}-subsets.csv", mime="text/csv", on_click="ignore",
    )
    e2.download_button(
        "Findings report (HTML)", _report(ctx, meta, registry, "html"),
        file_name=f"{ctx.workspace.name}-findings.html", mime="text/html", on_click="ignore",
    )
    e3.download_button(
        "Findings report (Markdown)", _report(ctx, meta, registry, "markdown"),
        file_name=f"{ctx.workspace.name}-findings.md", mime="text/markdown", on_click="ignore",
    )
    how_to_read("the report is one file: each subset's origin, note, size, accuracy with its interval, "
                "largest classes, top lift values and its highest-loss thumbnails.")


def _add_classes(registry: SubsetRegistry, meta: pd.DataFrame) -> None:
    """One subset per class, all saved or none (``add_many``); a class name too long for a
    subset name is shortened the same way every time (``fitted_name``)."""
    specs = [
        {"name": fitted_name(label, "class: "), "rows": group["row"], "origin": "class",
         "detail": f"label = {sql_literal(label)}"}
        for label, group in meta.groupby("label", observed=True)
    ]
    try:
        registry.add_many(specs, overwrite=True)
    except BiasLensError as exc:
        _tell("error", f"No class subset was saved: {exc}")
        return
    _tell("success", f"Saved {len(specs)} class subsets (one per class).")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:60] or "subset"
