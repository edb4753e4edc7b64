"""What a page needs to start: the chosen workspace, its model, dataset and store.

Pages call ``page_context()``; on any user-facing problem it shows ``st.error`` with what
to do and stops the page, so no page renders a traceback for a bad workspace.
"""

from __future__ import annotations

import weakref
from typing import Any

import streamlit as st

from core.errors import BiasLensError, redact_paths
from core.services.server import clicks_traced, trace_click
from core.services.workspace import (
    DEMO_NAME,
    Workspace,
    default_workspaces_file,
    load_workspaces,
)
from core.ui import cache, workshop
from core.ui.keys import state_key
from core.ui.listing import workspace_list
from core.ui.page import PageContext

WORKSPACE_KEY = state_key("app", "workspace")
ROUTED_KEY = state_key("app", "routed")  # set by a session's first run (see through_app)


def sidebar_picker() -> Workspace:
    """The sidebar workspace picker; the choice persists across pages in session state."""
    listing = workspace_list()
    names = list(listing.workspaces)
    widget = state_key("app", "workspace_widget")
    wanted = st.session_state.get(WORKSPACE_KEY, DEMO_NAME)
    if st.session_state.get(widget) not in names or (
        wanted != st.session_state.get(widget) and wanted in names
    ):
        # first run, a workspace removed from the file, or a page set WORKSPACE_KEY
        st.session_state[widget] = wanted if wanted in names else DEMO_NAME
    st.sidebar.selectbox(
        "Workspace",
        names,
        key=widget,
        format_func=lambda n: listing.workspaces[n].title,
        help="A workspace is a model + a dataset, listed in workspaces.toml (see the README).",
        on_change=lambda: st.session_state.update({WORKSPACE_KEY: st.session_state[widget]}),
    )
    st.session_state[WORKSPACE_KEY] = st.session_state[widget]
    st.sidebar.caption(listing.workspaces[st.session_state[WORKSPACE_KEY]].title)  # in full: the box cuts long titles
    for problem in listing.problems:
        st.sidebar.warning(redact_paths(problem) if listing.hosted else problem)
    if listing.hosted:
        st.sidebar.caption("Hosted mode: registered workspaces only; stores are built ahead of time.")
    return listing.workspaces[st.session_state[WORKSPACE_KEY]]


def through_app() -> None:
    """Make a page opened by its own URL run through app.py.

    Streamlit routes by the ``pages/`` folder (its first multipage mode) until a script calls
    ``st.navigation``, once per server process. So on a fresh server a visitor who opens a
    page's URL (a bookmark, a shared link) before anyone opened the root runs that page file
    alone: no page config (a narrow layout), no sidebar (menu, workspace picker, workshop
    steps), for every visitor until the root is opened. Leaving that mode and rerunning sends
    the run through app.py, whose ``st.navigation`` then opens the page asked for.

    Only a session's first run checks: once any run has called ``st.navigation`` the mode is
    off for the whole process, so a later run cannot find it on, except under AppTest, which
    turns it back on before every run and runs a switched page alone (the page tests are
    written for that).
    """
    from streamlit.runtime.pages_manager import PagesManager

    first = not st.session_state.get(ROUTED_KEY)
    st.session_state[ROUTED_KEY] = True
    if first and PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def ignore_clear_cache_when_hosted() -> None:
    """Make a hosted server ignore Streamlit's clear-cache message.

    Any browser can send it (the menu's "Clear cache", or by hand over the page's WebSocket),
    and it empties every cache of the server for all visitors, so a visitor could make the
    server recompute everything. Nothing a visitor shares lives in those caches (core/services/server.py),
    so this is defence in depth. Local mode keeps the menu item. Patched once per process.
    """
    from streamlit.runtime.app_session import AppSession

    original = getattr(AppSession, "_handle_clear_cache_request", None)
    if original is None or getattr(original, "biaslens_guard", False):
        return

    def handle(session: AppSession) -> None:
        if not load_workspaces(default_workspaces_file()).hosted:
            original(session)

    handle.biaslens_guard = True  # type: ignore[attr-defined]
    AppSession._handle_clear_cache_request = handle  # type: ignore[method-assign]


def deliver_finished_runs() -> None:
    """Make a session deliver the end of a run that finished just before the next rerun request.

    Why (a page's polling fragment lost clicks and form submits under load): a ScriptRunner
    hands its output to the session's event loop as events (AppSession._on_scriptrunner_event,
    call_soon_threadsafe), and once its run is done and nothing is queued it stops for good
    (ScriptRequests.on_scriptrunner_ready sets STOP). A rerun request arriving before the loop
    has worked through those events finds the runner stopped (ScriptRunner.request_rerun
    returns False), so AppSession.request_rerun starts a new runner, and from then on
    _handle_scriptrunner_event_on_event_loop drops every event of the old one ("Ignoring event
    from non-current ScriptRunner"): the end of the finished run (a CAM click's dialog, a saved
    cohort's page) never reaches the browser, and nothing draws it again. A run_every fragment
    sends such a request every POLL_S seconds from every open page, and a loaded server's loop
    lags by hundreds of milliseconds, so about one click in ten was lost.

    The fix: a runner that stopped on its own (not one stopped for a new run, which fastReruns
    does) is remembered when it is replaced, and its remaining events are delivered as if it
    were still current. The same patch runs a visitor's click in a fragment the session no
    longer holds as a full run (``as_full_run_if_fragment_gone``). They all reached the loop before the new runner existed, so they are
    handled before any of the new runner's, in order. Its SHUTDOWN stays ignored (it would
    clear the new runner). Patched once per process; a Streamlit without these internals is
    left as it is (tests/e2e/test_clicks_e2e.py checks this version is patched).
    """
    from streamlit.runtime.app_session import AppSession
    from streamlit.runtime.scriptrunner import ScriptRunnerEvent
    from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequestType

    request_rerun = getattr(AppSession, "request_rerun", None)
    handle_event = getattr(AppSession, "_handle_scriptrunner_event_on_event_loop", None)
    if request_rerun is None or handle_event is None or getattr(request_rerun, "biaslens_guard", False):
        return

    def stopped_on_its_own(runner: Any) -> bool:
        return getattr(getattr(runner, "_requests", None), "_state", None) is ScriptRequestType.STOP

    def request(session: AppSession, client_state: Any) -> None:
        previous = getattr(session, "_scriptrunner", None)
        finished = previous is not None and stopped_on_its_own(previous)
        sent = as_full_run_if_fragment_gone(session, client_state)
        if clicks_traced() and client_state is not None and not client_state.is_auto_rerun:  # off: no work per click
            trace_click("rerun", session=getattr(session, "id", "?"), fragment=client_state.fragment_id,
                        full_run=sent is not client_state, runner="finished" if finished else "none" if previous is None else "running",
                        triggers=[w.id.rsplit("-", 1)[-1] for w in client_state.widget_states.widgets
                                  if w.WhichOneof("value") == "trigger_value" and w.trigger_value])
        request_rerun(session, sent)
        if finished and session._scriptrunner is not previous:
            session.__dict__.setdefault("_biaslens_finished_runners", weakref.WeakSet()).add(previous)

    def handle(session: AppSession, sender: Any, event: Any, *args: Any, **kwargs: Any) -> None:
        current = session._scriptrunner
        finished = session.__dict__.get("_biaslens_finished_runners", ())
        if sender is None or sender is current or event is ScriptRunnerEvent.SHUTDOWN or sender not in finished:
            handle_event(session, sender, event, *args, **kwargs)
            return
        session._scriptrunner = sender  # deliver it as the runner it was when it emitted the event
        try:
            handle_event(session, sender, event, *args, **kwargs)
        finally:
            session._scriptrunner = current

    request.biaslens_guard = True  # type: ignore[attr-defined]
    AppSession.request_rerun = request  # type: ignore[method-assign]
    AppSession._handle_scriptrunner_event_on_event_loop = handle  # type: ignore[method-assign]


def as_full_run_if_fragment_gone(session: Any, client_state: Any) -> Any:
    """A click in a fragment the session no longer holds, as a full run instead of dropped.

    Why (lost CAM clicks in a class): a fragment's id hashes the path of the container it is
    called in, so when something above it comes or goes between two full runs (a queue notice, a
    caption, a status), the next full run registers it under a new id and forgets the old one.
    A click on a button the browser still shows from before (a loaded server, a starved
    browser) names the old id, and Streamlit's ``AppSession.request_rerun`` ignores a rerun of
    a fragment it no longer holds: the click's callback never runs. Here such a rerun, when the
    visitor caused it (not a run_every poll, ``is_auto_rerun``), runs the whole page instead,
    with the click's widget states: slower than the fragment, never lost. Keyed widgets keep
    their ids across positions, so the click reaches its button. Anything else passes as it is.
    """
    fragment_id = getattr(client_state, "fragment_id", "")
    has_fragment = getattr(session, "has_fragment", None)
    if not fragment_id or client_state.is_auto_rerun or has_fragment is None or has_fragment(fragment_id):
        return client_state
    full = type(client_state)()
    full.CopyFrom(client_state)
    full.ClearField("fragment_id")
    return full


def page_context(require_store: bool = True) -> PageContext:
    """Load the current workspace; on a user error show it and stop the page."""
    deliver_finished_runs()
    through_app()
    listing = workspace_list()
    name = st.session_state.get(WORKSPACE_KEY, DEMO_NAME)
    workspace = listing.workspaces.get(name, listing.workspaces[DEMO_NAME])
    key = workspace.key()
    workshop.sidebar(listing, workspace)
    try:
        dataset = cache.dataset_for(workspace, key)
        model = cache.model_for(workspace, key, listing.hosted)
        store = cache.store_for(workspace, key, listing.hosted)
    except BiasLensError as exc:
        message = redact_paths(str(exc)) if listing.hosted else str(exc)
        st.error(f"Workspace '{workspace.title}' cannot be opened: {message}")
        st.stop()
    if require_store and store is None:
        if listing.hosted:
            st.info("This workspace has no activation store on this server yet: see the Overview.")
        else:
            st.info("This workspace has no complete activation store yet (never built, or interrupted or damaged): "
                    "build it on the Overview page.")
        st.page_link("pages/overview.py", label="Go to Overview", icon=":material/dashboard:")
        st.stop()
    return PageContext(workspace, listing.hosted, model, dataset, store)


def workspace_context(workspace: Workspace, hosted: bool) -> PageContext:
    """Another workspace's context beside the page's own (model A on the Compare page): its
    model, dataset and store (None while not built), without drawing anything, so its
    ``run_model()`` lends a private copy of that workspace's model (keyed by that workspace,
    as ``page_context``'s is by its own). Raises the loaders' BiasLensError."""
    key = workspace.key()
    model = cache.model_for(workspace, key, hosted)
    return PageContext(workspace, hosted, model, cache.dataset_for(workspace, key), cache.store_for(workspace, key, hosted))
