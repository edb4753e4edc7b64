"""Furniture every method page shares: a run with progress, the last good run kept on failure,
settings widgets drawn from the method's ``Setting``s (in a form that remembers the last run,
or live), an image gallery with error marks, the save-as-subset form, the scorecard.

A method page is one core estimator (core/methods/), one view module (core/ui/<name>_view.py)
holding its cached runs and charts, and one thin page that strings these pieces together.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import BiasLensError
from core.methods.records import Setting
from core.scoring.scorecard import baseline_groups, compare_with_baseline, flagged_scorecard
from core.scoring.significance import HELD_OUT_SHOWN, group_tests
from core.store.read import Store
from core.ui import cache, image_detail
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.widgets import Shown, how_to_read, image_grid, kept, table
from core.ui.workshop import COHORT_STEP, ground_truth_hidden, hidden_notice, note_step, workshop_on

T = TypeVar("T")
Progress = Callable[[int, int, str], None]
GALLERY_THUMB = 96
KEPT_CAPTION = "Below: the last run that succeeded, with its own settings."


def run_with_progress(
    label: str, work: Callable[[Progress], T], done: Callable[[T], str], unit: str | None = "step"
) -> T:
    """Run ``work(progress)`` inside an open st.status with a progress bar.

    ``progress(done, total, message)`` moves the bar; on success the box closes with
    ``done(result)`` as its label; a BiasLensError marks the box failed and propagates,
    for the page to show open with what to do.
    """
    with st.status(label, expanded=True) as status:
        bar = st.progress(0.0, text="Starting...")
        last = {"fraction": -1.0}

        def progress(count: int, total: int, message: str) -> None:
            fraction = min(1.0, count / total) if total else 1.0
            if fraction - last["fraction"] >= 0.01 or count == total:
                last["fraction"] = fraction
                # unit None: the message says where the work is by itself
                bar.progress(fraction, text=message if unit is None else f"{message}: {unit} {count:,} of {total:,}")

        try:
            result = work(progress)
        except BiasLensError:
            status.update(label=f"{label.rstrip('.')} failed", state="error", expanded=False)
            raise
        status.update(label=done(result), state="complete", expanded=False)
    return result


def kept_run(page: str, workspace_key: str, run: Any, scope: tuple[str | None, np.ndarray | None],
             fit: Callable[[Any, np.ndarray | None], T], failed: Callable[[BiasLensError], None]) -> tuple[T, Any, tuple[str | None, np.ndarray | None]]:
    """The result of ``fit(run, scope rows)``; when it raises a BiasLensError, ``failed(error)``
    shows why, and the last run that succeeded on this page stays on screen under a caption
    (its results are cached), so a rejected setting never wipes the results. Without an
    earlier good run (or when the failing run is that run) the page stops after the message.
    Returns (result, the run shown, its scope)."""
    try:
        result = fit(run, scope[1])
        note_good_run(page, workspace_key, (run, scope))
        return result, run, scope
    except BiasLensError as exc:
        failed(exc)
        good = st.session_state.get(state_key(page, "last_good_run", workspace_key))
        if good is None or (good[0] == run and good[1][0] == scope[0]):
            st.stop()
        st.caption(KEPT_CAPTION)
        run, scope = good
        return fit(run, scope[1]), run, scope


def note_good_run(page: str, workspace_key: str, run: Any, slot: str = "") -> None:
    """Remember ``run`` (what the page needs to find its result again in the caches) as the
    last run of this page that succeeded, for ``last_good_result`` (and ``kept_run``); ``slot``
    names the run where a page has several."""
    st.session_state[state_key(page, "last_good_run", workspace_key, *([slot] if slot else []))] = run


def last_good_result(page: str, workspace_key: str, fit: Callable[[Any], T | None], slot: str = "") -> T | None:
    """After a run that failed (the page has shown why): the result of the page's last good run
    (``note_good_run``), ``fit(run)`` from the caches, under a caption saying so; None when
    there is none or it is no longer cached. ``kept_run``'s behaviour for a run that starts on
    a button and may fail without stopping the rest of the page."""
    good = st.session_state.get(state_key(page, "last_good_run", workspace_key, *([slot] if slot else [])))
    result = None if good is None else fit(good)
    if result is not None:
        st.caption(KEPT_CAPTION)
    return result


def remember_settings(page: str, defaults: dict[str, Any], last: dict[str, Any] | None) -> None:
    """Seed the settings form's widget keys (``state_key(page, name)``) once.

    They are seeded from the last run's settings when there is one, else from ``defaults``,
    so coming back to the page shows the settings of the results below it.
    """
    for name, value in defaults.items():
        st.session_state.setdefault(state_key(page, name), (last or {}).get(name, value))


def settings_form(
    page: str,
    form: str,
    settings: Sequence[Setting],
    defaults: Mapping[str, Any],
    *,
    last: Mapping[str, Any] | None,
    columns: Sequence[int | Sequence[float]],
    submit: str,
    primary: bool = False,
    options: Mapping[str, Sequence[Any]] | None = None,
    format_funcs: Mapping[str, Callable[[Any], str]] | None = None,
    hosted: bool = False,
) -> dict[str, Any] | None:
    """A method's settings form drawn from its ``Setting``s (core.methods.records), so the
    widgets follow the estimator's parameters instead of being written out on every page.

    Each widget's key is ``state_key(page, setting.name)``, seeded once by ``remember_settings``
    from ``last`` (the last run's values) or ``defaults`` (the estimator's ``get_params()`` plus
    the page-only settings'), both in parameter units; a remembered choice no longer offered
    (another workspace's representation) falls back to its default. ``columns`` lays the
    settings out in order, one ``st.columns`` spec per row. ``options`` and ``format_funcs``
    give a choice's options and labels where only the page knows them; on a hosted server a
    number's maximum is its ``hosted_high``. Returns the chosen values in parameter units
    when ``submit`` is pressed, else None.
    """
    slots = sum(row if isinstance(row, int) else len(row) for row in columns)
    if slots != len(settings):
        raise ValueError(f"{len(settings)} settings need as many columns; the layout has {slots}.")  # programming error: layout and settings disagree
    choices = {s.name: tuple((options or {}).get(s.name, s.options)) for s in settings if s.kind == "choice"}
    remember_settings(page, {s.name: s.shown(defaults[s.name]) for s in settings},
                      last and {s.name: s.shown(last[s.name]) for s in settings if s.name in last})
    for name, offered in choices.items():
        if st.session_state[state_key(page, name)] not in offered:
            st.session_state[state_key(page, name)] = defaults[name]
    with st.form(form):
        cells = [cell for row in columns for cell in st.columns(row)]
        shown = {s.name: _setting_widget(cell, s, state_key(page, s.name), choices.get(s.name, ()),
                                         (format_funcs or {}).get(s.name), hosted)
                 for cell, s in zip(cells, settings, strict=True)}
        submitted = st.form_submit_button(submit, type="primary" if primary else "secondary")
    return {s.name: s.chosen(shown[s.name]) for s in settings} if submitted else None


def settings_widgets(
    page: str,
    settings: Sequence[Setting],
    defaults: Mapping[str, Any],
    cells: Sequence[Any],
    *,
    options: Mapping[str, Sequence[Any]] | None = None,
    format_funcs: Mapping[str, Callable[[Any], str]] | None = None,
    hosted: bool = False,
) -> dict[str, Any]:
    """The live variant of ``settings_form``: each setting's widget drawn in its cell of
    ``cells`` (a column, a container or ``st``), outside any form, so the page reruns on a
    change. Each widget's key is ``state_key(page, setting.name)``, its value kept across
    pages (``core.ui.widgets.kept``) and first set from ``defaults`` (the owners' ``get_params()``),
    in parameter units; a kept choice no longer offered falls back to its default. ``options``,
    ``format_funcs`` and ``hosted`` as in ``settings_form``. Returns the values in parameter units.
    """
    chosen = {}
    for cell, setting in zip(cells, settings, strict=True):
        key = state_key(page, setting.name)
        offered = tuple((options or {}).get(setting.name, setting.options)) if setting.kind == "choice" else ()
        default = setting.shown(defaults[setting.name])
        if offered and st.session_state.get(f"{key}:kept", default) not in offered:
            st.session_state[f"{key}:kept"] = default
        keep = kept(key, default)
        shown = _setting_widget(cell, setting, key, offered, (format_funcs or {}).get(setting.name), hosted,
                                on_change=keep["on_change"], args=keep["args"])
        chosen[setting.name] = setting.chosen(shown)
    return chosen


def _setting_widget(cell: Any, setting: Setting, key: str, offered: tuple[Any, ...],
                    format_func: Callable[[Any], str] | None, hosted: bool, **callback: Any) -> Any:
    """One setting's widget in ``cell`` (a column), as its kind and ``widget`` ask; returns what it
    shows. ``callback``: a live widget's on_change and args."""
    text = setting.help
    if hosted and setting.hosted_note and setting.hosted_high is not None:
        text = (f"{text} " if text else "") + f"This server allows at most {setting.hosted_high:g}."
    if setting.kind == "choice":
        if setting.widget == "radio":
            return cell.radio(setting.label, offered, key=key, help=text, format_func=format_func or str, horizontal=True,
                              **callback)
        return cell.selectbox(setting.label, offered, key=key, help=text, format_func=format_func or str, **callback)
    if setting.kind == "bool":
        return (cell.toggle if setting.widget == "toggle" else cell.checkbox)(setting.label, key=key, help=text, **callback)
    extra = {name: value for name, value in (("step", setting.step), ("format", setting.format)) if value is not None}
    draw = cell.slider if setting.widget == "slider" else cell.number_input
    return draw(setting.label, setting.low, setting.high_for(hosted), key=key, help=text, **extra, **callback)


def gallery(
    ctx: PageContext,
    meta: pd.DataFrame,
    rows: Sequence[int] | np.ndarray,
    extra: Sequence[str] | None = None,
    columns: int = 8,
    size: int = GALLERY_THUMB,
    below: Callable[[Any, dict[str, Any]], None] | None = None,
    origin: str | None = None,
    details: bool = True,
) -> None:
    """Thumbnails of these store rows, captioned with label / prediction, errors marked in red,
    with an "Image details" select that opens the image-detail dialog (core/ui/image_detail.py).

    ``origin`` names the gallery for that dialog and its select's key (default: from its rows;
    give one where two galleries of a page may show the same rows); ``details=False``
    leaves the select out for galleries that open the dialog their own way.
    """
    part = meta.iloc[np.asarray(rows, dtype=np.int64)]
    shown = tuple(int(r) for r in part["row"])
    pngs = cache.thumbnail_pngs(ctx.dataset, ctx.key, shown, size, tuple(not c for c in part["correct"]))
    image_grid(pngs, part, columns=columns, extra=extra, below=below)
    if details:
        image_detail.details_picker(ctx, meta, shown, origin or f"gallery-{zlib.crc32(np.asarray(shown).tobytes()):08x}")


def save_subset_form(
    ctx: PageContext, rows: Sequence[int] | np.ndarray, default_name: str, origin: str, detail: str, key: str,
    params: dict[str, Any] | None = None,
) -> None:
    """A name box and a button that save ``rows`` as a subset (with its origin: ``detail``
    says how it was found, ``params`` the method's parameters); a taken name is refused."""
    with st.form(key, border=False):
        name = st.text_input("Subset name", default_name, key=f"{key}:name")
        if st.form_submit_button("Save as subset", icon=":material/bookmark_add:"):
            try:
                ctx.subsets().add(name, rows, origin=origin, detail=detail, params=params)
                st.toast(f"Saved subset '{name}' ({len(rows):,} images)")
                if origin == "cohort" and workshop_on():
                    note_step(ctx.key, COHORT_STEP)  # the step's "save it as a subset"
            except BiasLensError as exc:
                st.error(str(exc))


def scorecard_section(
    store: Store,
    rankings: Sequence[np.ndarray],
    group_names: Sequence[str],
    how: str,
    members: Sequence[np.ndarray] | None = None,
) -> None:
    """The planted-slice scorecard, for workspaces whose dataset has ground truth: per slice,
    the method's best group with Domino's measures (P@10, P@25, P@100, recall when the groups
    are sets, AUROC), beside the trivial baseline (the 10 highest-loss images of each
    confusion-matrix cell) measured the same way, so a method is seen to find what the
    confusion matrix does not already show."""
    if not store.slice_columns:
        return
    st.subheader("Scorecard: planted slices")
    if ground_truth_hidden():
        hidden_notice("The scorecard against the planted slices")
        return
    card, base, versus = _scorecards(store, list(rankings), list(group_names), None if members is None else list(members))
    bar = {f"P@{k}": st.column_config.ProgressColumn(f"P@{k}", min_value=0, max_value=1, format="%.2f") for k in (10, 25, 100)}
    columns = {
        "recall": Shown("percent", help="The share of the slice's images that its best group holds.",
                        missing="no members to count (the groups are rankings only) or the slice is empty."),
        "AUROC": Shown("number", 2, help="How well the best group's score separates the slice from the rest (0.5 = chance).",
                       missing="undefined: the slice holds every image or none."),
        "first hit": Shown("number", 0, help="The place, in the order listed, of the first group that identifies the slice "
                                             "(P@10 ≥ 0.8): how far a reader goes before finding it.",
                           missing="no listed group identifies the slice."),
    }
    st.markdown("**This method**")
    table(card, columns, hide_index=True, column_config=bar)
    st.markdown("**Baseline: the 10 highest-loss images of each confusion cell (true → predicted)**")
    table(base, columns, hide_index=True, column_config=bar)
    beaten = versus[versus["beats_baseline"]]["slice"].tolist()
    st.caption(
        "The method beats the baseline by ≥ 0.3 in P@10 on: " + ", ".join(beaten) + "." if beaten else
         "The method beats the baseline by ≥ 0.3 in P@10 on no slice: what it found, the confusion matrix already shows."
    )
    how_to_read("First hit: the place, in the order the page lists the groups, of the first group that identifies the "
                "slice; within 5 / 10: whether a reader of the first 5 / 10 groups meets it (the baseline's list is its "
                "cells, largest first). The best group's measures follow: " + how + " P@25 and P@100 rank deeper into the same group; recall is the share of the slice the group "
                "holds; AUROC how well the group's score separates the slice from the rest (0.5 = chance).")


def significance_section(
    store: Store, members: Sequence[np.ndarray], names: Sequence[str], what: str,
    held_out: tuple[pd.DataFrame | None, Callable[[], pd.DataFrame]] | None = None,
) -> None:
    """Is each discovered group's accuracy gap evidence or chance? Fisher's exact test of the
    group against the rest, Newcombe's 95% interval of the gap, and Benjamini-Hochberg q-values
    over every candidate of the run (core/scoring/significance.py). ``held_out`` (a cached table or
    None, and the run that computes it) adds the split-half confirmation on a button."""
    with st.expander(f"Significance of the {len(names)} {what}", icon=":material/functions:"):
        if held_out is not None:
            _held_out_table(*held_out)
        no_rest = "the group holds every image (no rest to compare with) or none."
        table(_group_tests(store, list(members), list(names)), {
            "accuracy": Shown("percent", missing="the group is empty."),
            "rest accuracy": Shown("percent", missing=no_rest),
            "gap": Shown("points", missing=no_rest), "low": Shown("points", label="gap 95% low", missing=no_rest),
            "high": Shown("points", label="gap 95% high", missing=no_rest),
            "p": Shown("general", 2), "q": Shown("general", 2, missing="no test: " + no_rest),
        }, hide_index=True)
        how_to_read(
            "gap = the group's accuracy minus the rest's, in percentage points, with Newcombe's 95% interval; p = Fisher's exact test of "
            "\"same accuracy as the rest\"; q = Benjamini-Hochberg over all the groups listed (many candidates make "
            "some small p certain by chance); significant = q < 0.05. A threshold on the gap alone is not evidence."
        )


def _held_out_table(cached: pd.DataFrame | None, run: Callable[[], pd.DataFrame]) -> None:
    held = cached
    if held is None and st.button("Confirm on a held-out half", icon=":material/call_split:",
                                   help="Find the groups again on a random half of the images, then measure them on the other half."):
        with st.spinner("Finding the groups on one half, measuring them on the other..."):
            try:
                held = run()
            except BiasLensError as error:
                st.error(str(error))
                return
    if held is None:
        return
    st.markdown("**Held-out confirmation** (found on one random half, measured on the other)")
    empty = "the group has no image on this half, or every one."
    table(held[[c for c in HELD_OUT_SHOWN if c in held.columns]], {
        **{c: Shown("points", missing=empty) for c in ("discovery gap", "held-out gap", "held-out low", "held-out high")},
        "held-out q": Shown("general", 2, missing="no test: " + empty),
    }, hide_index=True)
    how_to_read("the gap on the half that found the group is optimistic (it was picked there); a real failure keeps its "
                "gap on the held-out half (interval away from 0), one selected by chance shrinks towards 0.")


@st.cache_data(show_spinner=False, max_entries=8, hash_funcs=cache.STORE_HASH)
def _baseline(store: Store) -> tuple[list[str], list[np.ndarray], pd.DataFrame]:
    """The confusion-cell baseline's groups and scorecard, once per store (about 0.7 s on the demo)."""
    meta = cache.meta_for(store)
    truth = meta[store.slice_columns].to_numpy(dtype=bool)
    names, cells, members = baseline_groups(meta)
    slices = [c.removeprefix("slice_") for c in store.slice_columns]
    return names, cells, flagged_scorecard(truth, cells, slices, names, members=members)


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs=cache.STORE_HASH)
def _scorecards(
    store: Store, rankings: list[np.ndarray], group_names: list[str], members: list[np.ndarray] | None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(the method's scorecard, the baseline's, the comparison), once per store and groups, so
    a rerun of the page does not score again."""
    meta = cache.meta_for(store)
    truth = meta[store.slice_columns].to_numpy(dtype=bool)
    slices = [c.removeprefix("slice_") for c in store.slice_columns]
    names, cells, base = _baseline(store)
    card = flagged_scorecard(truth, rankings, slices, group_names, members=members)
    return card, base, compare_with_baseline(truth, rankings, cells, slices, group_names, names)


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs=cache.STORE_HASH)
def _group_tests(store: Store, members: list[np.ndarray], names: list[str]) -> pd.DataFrame:
    """group_tests once per store and groups."""
    return group_tests(cache.meta_for(store)["correct"].to_numpy(dtype=bool), [np.asarray(m) for m in members], names)
