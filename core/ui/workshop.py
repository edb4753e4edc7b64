"""Workshop mode in the app: hide the ground truth until the instructor reveals it, the
instructor's sidebar panel, the guided steps and "Check my finding".

**Reveal is per server.** The state is core/services/server.py's ``SERVER.workshop``, a plain object of
the server process shared by every session (never a Streamlit cache, which any client can
clear): when the instructor presses "Reveal" every open page follows within about
``POLL_S`` seconds, and "Hide" or "Reset" hides it for everyone again. A sidebar fragment
polls the state's version: a change reruns the page, except a reveal on a page whose
ground-truth sections are all ``live_section``s (the Overview), which redraw themselves on
their own poll, so a reveal redraws those sections only, not whole pages in every browser.
The polls never lose a click: see core/ui/context.py ``deliver_finished_runs``. Restarting the server hides it: the state
fails closed. Reset also pins workshop mode to what it is, so it never reveals by turning the
mode off.

Workshop mode is on when the settings say so (``[settings] workshop = true`` or
``BIASLENS_WORKSHOP=1``, core/services/workspace.py) unless the instructor switched it for the server
in the sidebar. The instructor unlocks the panel with the passphrase
(``instructor_passphrase`` or ``BIASLENS_INSTRUCTOR_PASSPHRASE``), compared with
``hmac.compare_digest``; it is never shown, and failed attempts are throttled per visitor
and per server (``SERVER.throttle``). Without a passphrase nobody can reveal from the app.

Each student's steps are kept server-side in their visitor record (core/ui/visitor.py), so
a reload keeps them; Reset clears them for everyone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import BiasLensError
from core.methods.records import WorkshopStep, method_records
from core.services.server import SERVER, WorkshopSnapshot
from core.services.workshop import random_baseline, score_finding, student_view
from core.services.workspace import Workspace, WorkspaceList
from core.ui import cache, visitor
from core.ui.keys import DETAIL_DRAWN, DETAIL_REQUEST, state_key
from core.ui.listing import (
    ground_truth_hidden,
    hidden_notice,  # noqa: F401  (re-exported: views and pages import it from here)
    visible_columns,  # noqa: F401  (re-exported: views and pages import it from here)
    workshop_on,
    workshop_state,
)
from core.ui.page import PageContext
from core.ui.widgets import how_to_read, percent

UNLOCKED = state_key("workshop", "unlocked")
EPOCH = state_key("workshop", "epoch")
VISITED = state_key("workshop", "visited")
PASSPHRASE_BOX = state_key("workshop", "passphrase")
REFUSED = state_key("workshop", "refused")
SEEN = state_key("workshop", "seen")  # the workshop state this page shows
LIVE_PAGE = state_key("workshop", "live_page")  # this page's ground truth is all in live sections
NUDGED = state_key("workshop", "nudged")  # the last details request a poll reran the page for


def check_key(workspace_key: str) -> str:
    """Where the last checked finding of a workspace is kept (per workspace: a finding
    checked on one workspace must never show, or be scored again, on another)."""
    return state_key("workshop", "check", workspace_key)

PAGE_PATH = "pages/workshop.py"


# --------------------------------------------------------------------------- server-wide state


POLL_S = 2.0  # how often an open page checks for the instructor's changes


# Workshop mode and the hidden ground truth are read in core/ui/listing.py (re-exported here:
# workshop_on, ground_truth_hidden, visible_columns, hidden_notice), below the loaders.


# --------------------------------------------------------------------------- sidebar


def _passphrase_ok(entered: str, expected: str) -> bool:
    if not expected or not entered:
        return False
    return hmac.compare_digest(entered.encode(), expected.encode())


def _token(passphrase: str) -> str:
    """What a session keeps once unlocked: a digest, so a changed passphrase locks it again."""
    return hashlib.sha256(b"biaslens-instructor:" + passphrase.encode()).hexdigest()


def _unlock(expected: str) -> None:
    """The Unlock button's callback: compare, then empty the box (the text is never kept).
    A visitor who failed too often, or a server that saw too many failures lately, waits."""
    entered = st.session_state.get(PASSPHRASE_BOX, "")
    st.session_state[PASSPHRASE_BOX] = ""
    who = visitor.visitor_key()
    wait = SERVER.throttle.wait_s(who)
    if wait > 0:
        st.session_state[REFUSED] = f"Too many wrong passphrases: try again in {max(1, round(wait))} s."
    elif _passphrase_ok(entered, expected):
        SERVER.throttle.succeeded(who)
        st.session_state[UNLOCKED] = _token(expected)
    else:
        SERVER.throttle.failed(who)
        st.session_state[REFUSED] = "Wrong passphrase."


# Session keys a step is read from: a reset forgets them, so no step stays ticked from before it.
STEP_SOURCES = ("workshop.", "spotlight.run:", "spotlight.panel", "subgroups.run:", "detail.")


def _apply_reset() -> None:
    """Bring this session up to the server's reset count: forget its workshop progress (the
    visitor's record was cleared by the reset itself) and what its steps were read from."""
    state = workshop_state()
    if st.session_state.get(EPOCH, 0) == state.epoch:
        return
    for key in [k for k in st.session_state if str(k).startswith(STEP_SOURCES) and k not in (UNLOCKED, EPOCH)]:
        del st.session_state[key]
    if state.clear_subsets:
        for key in [k for k in st.session_state if str(k).startswith("subsets:")]:
            del st.session_state[key]
    st.session_state[EPOCH] = state.epoch


def instructor_panel(listing: WorkspaceList, clear_subsets: Any = None) -> None:
    """The sidebar's workshop box: the mode for everyone, the instructor's controls behind the
    passphrase. ``clear_subsets()`` deletes the current workspace's saved subsets (reset option)."""
    on = workshop_on(listing)
    if not on and not listing.passphrase:
        return
    state = workshop_state()
    with st.sidebar.expander("Instructor", icon=":material/lock:"):
        if not listing.passphrase:
            st.caption("No instructor passphrase is set on this server, so the ground truth cannot be revealed "
                       "from the app.")
            return
        if st.session_state.get(UNLOCKED) != _token(listing.passphrase):
            st.text_input("Instructor passphrase", type="password", key=PASSPHRASE_BOX)
            st.button("Unlock", icon=":material/lock_open:", on_click=_unlock, args=(listing.passphrase,))
            refused = st.session_state.pop(REFUSED, None)
            if refused:
                st.error(refused)
            return
        mode = st.toggle("Workshop mode (everyone)", value=on, key=state_key("workshop", "mode_toggle"),
                         help="Switches workshop mode for every session of this server.")
        if mode != on:
            SERVER.workshop.set_mode(mode)
            st.rerun()
        if on:
            if state.revealed:
                if st.button("Hide the ground truth", icon=":material/visibility_off:"):
                    SERVER.workshop.set_revealed(False)
                    st.rerun()
            elif st.button("Reveal the ground truth", icon=":material/visibility:", type="primary"):
                SERVER.workshop.set_revealed(True)
                st.rerun()
        wipe = st.checkbox("Reset also deletes the saved subsets", key=state_key("workshop", "reset_subsets"))
        if st.button("Reset the workshop", icon=":material/restart_alt:",
                     help="Hides the ground truth, clears every student's steps and checks"
                          " (and their subsets, if ticked). Workshop mode stays as it is."):
            SERVER.workshop.reset(listing.workshop, wipe)
            SERVER.visitors.reset(wipe)
            if wipe and clear_subsets is not None:
                clear_subsets()
            st.toast("Workshop reset.")
            st.rerun()
        if st.button("Lock", icon=":material/lock:"):
            st.session_state.pop(UNLOCKED, None)
            st.rerun()


# --------------------------------------------------------------------------- guided steps


# The steps that are no method's; each method's record adds its own (core.methods.records).
FIXED_STEPS = (
    WorkshopStep("overview", "Overview", "Read overall accuracy, then the Attributes tab: which attribute values sit below "
                 "the dashed line?", "pages/overview.py", 0),
    WorkshopStep("cohort", "Confirm as a cohort", "On Cohorts, type a WHERE filter from what the lift suggests (e.g. "
                 "label = '...' AND attribute = '...'); check its accuracy and save it as a subset.", "pages/cohorts.py", 3),
    WorkshopStep("check", "Check my finding", "On Workshop, check your subset or filter against the hidden planted slices.",
                 PAGE_PATH, 9),
)
COHORT_STEP, GRAD_CAM_STEP = "cohort", "grad-cam"  # ticked where they happen (note_step)


def steps() -> tuple[WorkshopStep, ...]:
    """The guided steps in order: the fixed ones and every registered method's."""
    return tuple(sorted(FIXED_STEPS + tuple(s for r in method_records() for s in r.steps), key=lambda s: s.order))


def note_step(workspace_key: str, step: str) -> None:
    """Tick the step keyed ``step`` for this visitor: for actions that happen where the steps
    panel cannot see them (a cohort saved as a subset, a Grad-CAM opened in a fragment's
    dialog); the panel shows it on its next poll."""
    visitor.record().steps[f"{workspace_key}:{step}"] = True


def _seen(workspace_key: str) -> dict[str, bool]:
    """The steps session state shows done: the Overview visited, a spotlight run, a spotlight's
    panel opened, a finding checked. The others are ticked by note_step."""
    state = st.session_state
    ran_spotlight = state.get(state_key("spotlight", "run", workspace_key)) is not None
    return {
        "overview": bool(state.get(VISITED)),
        "spotlight-run": ran_spotlight,
        "spotlight-lift": ran_spotlight and str(state.get(state_key("spotlight", "panel"), "")).startswith("Spotlight"),
        "check": state.get(check_key(workspace_key)) is not None,
    }


def steps_done(workspace_key: str) -> list[bool]:
    """Which steps (in ``steps()`` order) this visitor has done: read from session state and
    kept in the visitor's server-side record, where a step once done stays done (across pages
    and reloads) until the instructor's Reset."""
    seen = _seen(workspace_key)
    sticky = visitor.record().steps
    done = [bool(seen.get(step.key) or sticky.get(f"{workspace_key}:{step.key}")) for step in steps()]
    sticky.update({f"{workspace_key}:{step.key}": True for step, d in zip(steps(), done, strict=True) if d})
    return done


def steps_panel(workspace_key: str) -> None:
    """The guided steps, marked from what this visitor has done."""
    done, guided = steps_done(workspace_key), steps()
    following = next((i for i, d in enumerate(done) if not d), None)
    with st.expander(f"Workshop steps ({sum(done)} of {len(guided)} done)", expanded=True, icon=":material/checklist:"):
        for i, (step, ok) in enumerate(zip(guided, done, strict=True)):
            mark = ":material/check_circle:" if ok else ":material/radio_button_unchecked:"
            st.markdown(f"{mark} {i + 1}. **{step.title}**" if i == following else f"{mark} {i + 1}. {step.title}")
        if following is not None:
            st.caption(f"Next: {guided[following].hint}")


def _clear_subsets(workspace: Workspace, listing: WorkspaceList) -> None:
    """Delete the saved subsets of ``workspace`` in its shared file (the visitors' own were
    cleared with their records)."""
    key = workspace.key()
    try:
        ctx = PageContext(workspace, listing.hosted, cache.model_for(workspace, key, listing.hosted),
                          cache.dataset_for(workspace, key), cache.store_for(workspace, key, listing.hosted))
        registry = ctx.subsets()
        for name in registry.names():
            registry.remove(name)
    except BiasLensError as exc:
        st.sidebar.error(f"The subsets could not be deleted: {exc}")


def mark_visited() -> None:
    """Step 1 is done: the Overview was opened (its page calls this)."""
    st.session_state[VISITED] = True


def page_rerun_needed(seen: WorkshopSnapshot, now: WorkshopSnapshot, live_page: bool) -> bool:
    """Whether a page drawn with the workshop state ``seen`` must rerun to show ``now``: on any
    change, except a reveal alone on a ``live_page`` (its live sections show it themselves)."""
    if now.version == seen.version:
        return False
    only_revealed = now.revealed and not seen.revealed and (now.override, now.epoch) == (seen.override, seen.epoch)
    return not (live_page and only_revealed)


@st.fragment(run_every=POLL_S)
def _live(listing: WorkspaceList, workspace_key: str) -> None:
    """Polls the server's workshop state. When the instructor changed it since this page was
    drawn, the whole page reruns (a reveal, hide, mode switch or reset reaches every open page
    without a reload), unless it is a reveal and the page's ground truth lives in
    ``live_section``s, which show it on their own poll. A details request no run drew is drawn
    by one page rerun. Otherwise only the steps (a step ticked in a dialog shows) and the
    workshop caption are redrawn."""
    now = workshop_state()
    seen = st.session_state.setdefault(SEEN, now)
    st.session_state[SEEN] = now
    if page_rerun_needed(seen, now, bool(st.session_state.get(LIVE_PAGE))):
        st.rerun(scope="app")
    asked = st.session_state.get(DETAIL_REQUEST)
    if asked and asked != st.session_state.get(DETAIL_DRAWN) and asked != st.session_state.get(NUDGED):
        # a safety net: a CAM click whose callback ran but whose dialog no run drew (a path of
        # lost clicks still seen in the classroom bench, not explained yet) is drawn by one page rerun
        st.session_state[NUDGED] = asked
        st.rerun(scope="app")
    if workshop_on(listing):
        steps_panel(workspace_key)
        st.caption(":material/school: Workshop mode: the ground truth is "
                   + ("**revealed**." if now.revealed else "hidden until the instructor reveals it."))


def live_section(draw: Callable[[bool], None]) -> None:
    """Draw a section of the page that shows or hides the ground truth: ``draw(hidden)``.
    In workshop mode it redraws itself every ``POLL_S`` seconds, so a reveal shows in it
    without rerunning the page. A page whose every ground-truth part is a live section (and
    nothing else differs once revealed) lets the sidebar's poll skip its rerun on a reveal;
    a hide, a mode switch or a reset still reruns the whole page."""
    st.session_state[LIVE_PAGE] = True
    poll = POLL_S if workshop_on() else None
    st.fragment(run_every=poll)(_draw_live)(draw)


def _draw_live(draw: Callable[[bool], None]) -> None:
    draw(ground_truth_hidden())


def sidebar(listing: WorkspaceList, workspace: Workspace) -> None:
    """Everything workshop mode adds to the sidebar (nothing when it is off and no passphrase
    is set). Drawn by each page (``page_context``), after the page's own progress is known."""
    _apply_reset()
    st.session_state[SEEN] = workshop_state()  # this run draws the state as it is now
    st.session_state[LIVE_PAGE] = False  # until the page draws a live section
    if workshop_on(listing) or listing.passphrase:
        with st.sidebar:
            _live(listing, workspace.key())
    instructor_panel(listing, lambda: _clear_subsets(workspace, listing))


# --------------------------------------------------------------------------- check my finding


@st.cache_data(show_spinner=False, max_entries=256)
def _baseline(size: int, fingerprint: str, _loss: np.ndarray, _truth: np.ndarray) -> Any:
    return random_baseline(size, _loss, _truth)


def check_finding_section(ctx: Any, meta: pd.DataFrame) -> None:
    """A student picks a saved subset or types a WHERE filter; it is scored against the
    planted slices without naming any slice it does not identify."""
    store = ctx.store
    st.subheader("Check my finding")
    if not store.slice_columns:
        st.info("This workspace has no planted slices to check a finding against.")
        return
    registry = ctx.subsets()
    names = registry.names()
    source = st.radio("Finding", ["A saved subset", "A WHERE filter"], horizontal=True,
                      key=state_key("workshop", "source"), index=0 if names else 1)
    with st.form(state_key("workshop", "check_form")):
        if source == "A saved subset":
            chosen = st.selectbox("Subset", names, key=state_key("workshop", "subset"),
                                  placeholder="Save a subset first (Cohorts or a method page)")
            where = ""
        else:
            chosen = None
            where = st.text_input("WHERE", key=state_key("workshop", "where"),
                                  placeholder="label = 'Sneaker' AND tint = 'red'")
        pressed = st.form_submit_button("Check", type="primary", icon=":material/fact_check:")
    if pressed:
        try:
            if source == "A saved subset":
                if not chosen:
                    raise BiasLensError("No saved subset yet: save a cohort or a group first.")
                rows, label = list(registry.get(chosen).rows), f"subset '{chosen}'"
            else:
                rows, label = cache.cohort_view_for(store).rows(where), f"filter `{where.strip()}`"
            truth = meta[store.slice_columns].to_numpy(dtype=bool)
            names_ = [c.removeprefix("slice_") for c in store.slice_columns]
            score = score_finding(rows, meta["loss"].to_numpy(), truth, names_)
            st.session_state[check_key(ctx.key)] = {"label": label, "view": student_view(score)}
            st.rerun()  # so the sidebar's steps count the check
        except BiasLensError as exc:
            st.error(str(exc))
    result = st.session_state.get(check_key(ctx.key))
    if result is None:
        return
    view = result["view"]
    st.markdown(f"**Your finding**: {result['label']} ({view['images']:,} images)")
    base = _baseline(int(view["images"]), store.fingerprint, meta["loss"].to_numpy(),
                     meta[store.slice_columns].to_numpy(dtype=bool))
    c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
    c1.metric("Matches a planted slice", view["matches a planted slice"])
    c2.metric("P@10", f"{view['P@10']:.1f}", f"{view['P@10'] - base.p_at_k:+.2f} vs random", delta_color="normal")
    c3.metric("Recall", percent(view["recall"]), f"{100 * (view['recall'] - base.recall):+.1f} pts vs random")
    c4.metric("Slice", view["slice"])
    st.caption(
        f"A random subset of the same size ({base.draws} draws) scores P@10 {base.p_at_k:.2f} and recall "
        f"{percent(base.recall)} on average, and matches a slice {percent(base.identified_share)} of the time."
    )
    if not ground_truth_hidden():
        st.caption("The ground truth is revealed: compare with the Overview's planted slices and the scorecards.")
    if view["images"] < 10:
        st.caption("Fewer than 10 images: the missing places in the top 10 count as misses.")
    how_to_read(
        "your finding's 10 highest-loss images are compared with each hidden planted slice. P@10 is the share of "
        "them in the best-matching slice, recall the share of that slice your finding holds. At P@10 ≥ 0.8 the "
        "finding matches and the slice is named; below, the slice stays hidden. The other slices are never shown."
    )
