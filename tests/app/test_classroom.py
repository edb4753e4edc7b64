"""A class on one hosted server (issue 21): what every visitor shares survives a client's
clear-cache message, Reset never reveals, a student's work survives a reload, steps tick from
their actions, passphrase guesses are throttled. Each of these failed on the code before
core/services/server.py (state in Streamlit's caches, steps and subsets in the session)."""

from __future__ import annotations

import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.services.server import SERVER
from core.ui import cache
from tests.app.conftest import REPO, write_workspaces
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_workshop_page import PASSPHRASE, all_text, assert_hidden, click, unlock
from tests.support import slots_held


def clear_cache_message() -> None:
    """What Streamlit does on a client's clear-cache message (AppSession._handle_clear_cache_request
    in local mode): every st.cache_data and st.cache_resource entry of the server goes."""
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def class_off_in_file(tmp_path, monkeypatch):
    """The issue's setup: ``workshop = false`` in the file, a passphrase, the demo."""
    settings = tmp_path / "workspaces.toml"
    settings.write_text(f'[settings]\nworkshop = false\ninstructor_passphrase = "{PASSPHRASE}"\n')
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(settings))
    for name in ("BIASLENS_WORKSHOP", "BIASLENS_INSTRUCTOR_PASSPHRASE", "BIASLENS_HOSTED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)
    return lambda: AppTest.from_file(str(REPO / "app.py"), default_timeout=300)


def teacher_session(new_app) -> AppTest:
    return unlock(new_app().run(), PASSPHRASE)


def workshop_switched_on(new_app) -> AppTest:
    teacher = teacher_session(new_app)
    teacher.toggle(key="workshop.mode_toggle").set_value(True).run()
    no_exception(teacher)
    return teacher


def test_a_clear_cache_message_changes_nothing_visitors_share(class_off_in_file):
    workshop_switched_on(class_off_in_file)
    student = class_off_in_file().run()
    assert_hidden(student)
    clear_cache_message()
    student = class_off_in_file().run()  # the student reloads after sending it
    no_exception(student)
    assert_hidden(student)
    student.switch_page("pages/cohorts.py").run()
    next(t for t in student.text_input if t.label == "WHERE").input("slice_marked_sandals").run()
    assert student.error and "not found" in student.error[0].value  # the slice stays unqueryable


def test_reset_hides_the_truth_whatever_the_file_says(class_off_in_file):
    teacher = workshop_switched_on(class_off_in_file)
    click(teacher_session(class_off_in_file), "Reveal the ground truth")
    assert "marked_sandals" in all_text(class_off_in_file().run())
    click(teacher_session(class_off_in_file), "Reset the workshop")
    student = class_off_in_file().run()
    assert_hidden(student)  # before: Reset cleared the switch, the file's "false" won, the slices showed
    assert any("Workshop steps" in e.label for e in student.sidebar.expander)
    assert teacher.run().toggle(key="workshop.mode_toggle").value


def test_a_clear_cache_message_does_not_reset_the_run_queue():
    queue = cache.run_queue()
    with slots_held(queue):  # a training visitor's run
        clear_cache_message()
        after = cache.run_queue()
        assert after is queue and after.running == 1  # still held: the next run waits its turn
        assert cache.run_queue(cache.LIGHT) is not queue  # light work has its own lane
    assert queue.peak_running <= queue.slots


def test_a_hosted_server_ignores_the_clear_cache_message(tmp_path, monkeypatch):
    from streamlit.runtime.app_session import AppSession

    from core.ui.context import ignore_clear_cache_when_hosted

    monkeypatch.setenv("BIASLENS_WORKSPACES", str(tmp_path / "none.toml"))
    calls = []
    monkeypatch.setattr(AppSession, "_handle_clear_cache_request", lambda session: calls.append(session))
    ignore_clear_cache_when_hosted()
    monkeypatch.setenv("BIASLENS_HOSTED", "1")
    AppSession._handle_clear_cache_request("a visitor")
    assert calls == []
    monkeypatch.setenv("BIASLENS_HOSTED", "0")
    AppSession._handle_clear_cache_request("a local user")
    assert calls == ["a local user"]


@pytest.fixture
def tiny_class(tmp_path, tiny_files, monkeypatch):
    """The tiny workspaces in workshop mode with a passphrase (hosted mode refuses their
    entry-point model; workshop mode alone keeps subsets per visitor the same way)."""
    extra = f'[settings]\nworkshop = true\ninstructor_passphrase = "{PASSPHRASE}"\n'
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    for name in ("BIASLENS_WORKSHOP", "BIASLENS_INSTRUCTOR_PASSPHRASE", "BIASLENS_HOSTED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)
    new_app = lambda: AppTest.from_file(str(REPO / "app.py"), default_timeout=240)  # noqa: E731
    build_tiny(new_app())
    return new_app


def steps_label(at: AppTest) -> str:
    return next(e.label for e in at.sidebar.expander if e.label.startswith("Workshop steps"))


def student(new_app, key: str | None = None) -> AppTest:
    at = new_app()
    at.session_state["app.workspace"] = "tiny"
    if key:
        at.query_params["v"] = key  # the URL of a reloaded page
    return at.run()


def test_a_reload_keeps_the_students_subsets_and_steps(tiny_class):
    at = student(tiny_class)
    no_exception(at)
    key = at.session_state["app.visitor"]
    assert at.query_params["v"] in (key, [key])  # written to the URL
    at.switch_page("pages/cohorts.py").run()
    next(t for t in at.text_input if t.label == "WHERE").input("label = '3'").run()
    assert steps_label(at).startswith("Workshop steps (1 of 6")  # typing a filter is not the step's action
    next(t for t in at.text_input if t.label == "Subset name").input("threes")
    click(at, "Save as subset")
    at.switch_page("pages/overview.py").run()
    done = steps_label(at)
    assert done.startswith("Workshop steps (2 of 6")  # Overview, cohort
    reloaded = student(tiny_class, key)
    no_exception(reloaded)
    reloaded.switch_page("pages/cohorts.py").run()
    assert "threes" in all_text(reloaded)  # the saved subsets' table
    assert steps_label(reloaded) == done
    stranger = student(tiny_class)  # another student: a new key, none of it
    assert stranger.session_state["app.visitor"] != key
    stranger.switch_page("pages/cohorts.py").run()
    assert "threes" not in all_text(stranger)
    # a malformed key in the URL is replaced, never used
    forged = student(tiny_class, "../../x")
    assert forged.session_state["app.visitor"] != "../../x"


def test_cam_on_subgroups_ticks_its_step_and_reset_clears_every_step(tiny_class):
    at = student(tiny_class)
    at.switch_page("pages/spotlight.py").run()
    [b for b in at.button if b.label == "Run"][0].click().run()
    no_exception(at)
    at.switch_page("pages/subgroups.py").run()
    at.segmented_control(key="subgroups.threshold_choice").set_value("0.66 (UDIS code)").run()
    no_exception(at)
    record = SERVER.visitors.get(at.session_state["app.visitor"])
    cam = [b for b in at.button if b.label == "CAM" and (b.key or "").startswith("under:")]
    assert cam
    cam[0].click().run()  # opens the details dialog with Grad-CAM (a fragment's rerun)
    no_exception(at)
    workspace = at.session_state["app.workspace"]
    assert any(k.endswith(":grad-cam") for k in record.steps), record.steps  # step 5, Grad-CAM and neurons
    at.run()
    ticked = int(steps_label(at).split("(")[1].split(" ")[0])
    assert ticked >= 2, (workspace, record.steps)  # Spotlight, Grad-CAM and neurons
    click(teacher_session(tiny_class), "Reset the workshop")
    at.switch_page("pages/subgroups.py").run()
    no_exception(at)
    assert steps_label(at).startswith("Workshop steps (0 of 6"), steps_label(at)  # step 2 used to stay ticked


def test_passphrase_guesses_are_throttled(tiny_class):
    key = student(tiny_class).session_state["app.visitor"]
    for _ in range(SERVER.throttle.free):
        guess = unlock(student(tiny_class, key), "not-it")
        assert [e.value for e in guess.sidebar.error] == ["Wrong passphrase."]
    blocked = unlock(student(tiny_class, key), PASSPHRASE)  # even the right one waits now
    assert "workshop.unlocked" not in blocked.session_state
    assert blocked.sidebar.error[0].value.startswith("Too many wrong passphrases: try again in")


def test_the_server_caps_guesses_spread_over_many_visitors():
    throttle = SERVER.throttle
    for i in range(throttle.server_limit):
        assert throttle.wait_s(f"visitor-{i}", now=100.0) == 0
        throttle.failed(f"visitor-{i}", now=100.0)
    assert throttle.wait_s("a fresh visitor", now=101.0) == pytest.approx(throttle.window_s - 1)
    assert throttle.wait_s("a fresh visitor", now=100.0 + throttle.window_s) == 0


def test_grad_cam_draws_while_every_heavy_place_is_taken(tiny_class):
    """Light work never waits behind heavy work: with every heavy place held (students training
    probes), a CAM click on Subgroups draws its Grad-CAM at once, on a private model copy."""
    at = student(tiny_class)
    at.switch_page("pages/subgroups.py").run()
    at.segmented_control(key="subgroups.threshold_choice").set_value("0.66 (UDIS code)").run()
    no_exception(at)  # the clustering (a heavy run) is done before the places are taken
    cam = [b for b in at.button if b.label == "CAM" and (b.key or "").startswith("under:")]
    heavy = cache.run_queue(cache.HEAVY)
    with slots_held(heavy, heavy.slots):
        began = time.monotonic()
        cam[0].click().run()
        waited = time.monotonic() - began
    no_exception(at)
    assert any(m.value.startswith("**Grad-CAM**") for m in at.markdown)
    assert not [i for i in at.info if "ahead of yours" in i.value]
    assert waited < 20, waited  # the held places are released after 30 s
    assert sum(SERVER.copies.made(key) for key in list(SERVER.copies._free)) == 1


def _click_then_old_dismissal() -> None:
    """What one folded run does when "close the dialog, press CAM" reach the server together:
    the CAM callback first (widget order), then the old dialog's dismissal (see image_detail)."""
    import streamlit as st

    from core.ui import image_detail

    image_detail.request("gallery", 1)  # the first CAM click; its dialog is drawn
    st.session_state[image_detail.DRAWN] = st.session_state[image_detail.REQUEST]
    image_detail.request("gallery", int(st.session_state.get("next_row", 2)))  # the next CAM click
    image_detail._dismissed()  # the first dialog's dismissal, in the same run
    st.write(f"asked: {st.session_state.get(image_detail.REQUEST)}")
    st.session_state[image_detail.DRAWN] = st.session_state[image_detail.REQUEST]  # the gallery draws it
    image_detail._dismissed()  # its own dismissal, later: the request goes
    st.write(f"after closing: {st.session_state.get(image_detail.REQUEST)}")


@pytest.mark.parametrize("next_row", [2, 1])  # another image, then the same image again
def test_a_dialogs_dismissal_never_swallows_a_newer_click(next_row, monkeypatch):
    at = AppTest.from_function(_click_then_old_dismissal)
    at.session_state["next_row"] = next_row
    at.run()
    no_exception(at)
    texts = [m.value for m in at.markdown]
    assert texts[0].startswith(f"asked: ('gallery', {next_row}, 2)"), texts  # before: None, the click lost
    assert texts[1] == "after closing: None"


def test_a_reveal_reruns_only_pages_whose_truth_is_not_all_live(class_off_in_file):
    """The sidebar's poll reruns the whole page on any change, except a reveal on a page whose
    ground truth is all in live sections (the Overview: its planted slices redraw themselves);
    a hide, a mode switch or a reset always reruns the page."""
    from core.services.server import WorkshopSnapshot
    from core.ui import workshop

    workshop_switched_on(class_off_in_file)
    at = class_off_in_file().run()
    no_exception(at)
    assert at.session_state[workshop.LIVE_PAGE] is True  # the demo's Overview
    at.switch_page("pages/cohorts.py").run()
    assert at.session_state[workshop.LIVE_PAGE] is False

    hidden = WorkshopSnapshot(override=None, revealed=False, epoch=0, clear_subsets=False, version=3)
    revealed = WorkshopSnapshot(override=None, revealed=True, epoch=0, clear_subsets=False, version=4)
    switched = WorkshopSnapshot(override=True, revealed=True, epoch=0, clear_subsets=False, version=4)
    reset = WorkshopSnapshot(override=None, revealed=False, epoch=1, clear_subsets=False, version=5)
    assert not workshop.page_rerun_needed(hidden, hidden, live_page=False)  # nothing changed
    assert not workshop.page_rerun_needed(hidden, revealed, live_page=True)
    assert workshop.page_rerun_needed(hidden, revealed, live_page=False)
    assert workshop.page_rerun_needed(revealed, hidden, live_page=True)  # a hide
    assert workshop.page_rerun_needed(hidden, switched, live_page=True)
    assert workshop.page_rerun_needed(revealed, reset, live_page=True)
