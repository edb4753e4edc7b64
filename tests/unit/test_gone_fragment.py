"""A click in a fragment the session no longer holds runs the page instead of being dropped
(core/ui/context.py ``as_full_run_if_fragment_gone``, patched into AppSession.request_rerun).

Streamlit ignores a rerun of a fragment its session no longer holds; a fragment's id hashes the
path of its container, so a notice appearing above a gallery between two runs re-identifies it,
and a CAM click on the thumbnails the browser still showed was lost (issue 21's class)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.runtime.app_session import AppSession, AppSessionState

from core.ui.context import as_full_run_if_fragment_gone, deliver_finished_runs


def click(fragment_id: str, auto: bool = False) -> ClientState:
    state = ClientState(fragment_id=fragment_id, is_auto_rerun=auto, page_script_hash="page")
    widget = state.widget_states.widgets.add()
    widget.id, widget.trigger_value = "$$ID-cam-key-row7", True  # the CAM button's click
    return state


def session(held: set[str]) -> SimpleNamespace:
    """What AppSession.request_rerun reads of its session, recording the runs it starts."""
    started: list = []
    return SimpleNamespace(_state=AppSessionState.APP_IS_RUNNING, has_fragment=lambda f: f in held,
                           _client_state=ClientState(), _scriptrunner=None, _create_scriptrunner=started.append,
                           started=started)


@pytest.mark.parametrize(("held", "auto", "fragment"), [
    ({"old"}, False, "old"),  # the fragment is still there: a fragment run, as Streamlit does
    (set(), True, "old"),  # a run_every poll of a gone fragment: left to Streamlit (ignored)
])
def test_what_is_left_alone(held, auto, fragment):
    state = click(fragment, auto)
    assert as_full_run_if_fragment_gone(session(held), state) is state


def test_a_click_in_a_gone_fragment_becomes_a_full_run_with_its_click():
    state = click("old")
    full = as_full_run_if_fragment_gone(session({"new"}), state)
    assert full.fragment_id == "" and state.fragment_id == "old"  # a copy; the original untouched
    assert full.widget_states == state.widget_states and full.page_script_hash == "page"


def test_the_patched_session_runs_the_click_instead_of_dropping_it():
    deliver_finished_runs()  # patches AppSession once per process
    visitor = session({"new"})
    AppSession.request_rerun(visitor, click("old"))
    [run] = visitor.started  # Streamlit alone starts nothing: "The fragment ... does not exist anymore"
    assert run.fragment_id is None and run.widget_states.widgets[0].trigger_value
    poll = session({"new"})
    AppSession.request_rerun(poll, click("old", auto=True))
    assert poll.started == []  # a stale poll stays ignored
