"""Heavy runs in the app: light work has its own lane, and a cancelled run waits for its
owner's "Start again" instead of restarting on the next rerun."""

from __future__ import annotations

import time

from streamlit.testing.v1 import AppTest

from core.ui import cache
from tests.app.test_app import no_exception
from tests.support import slots_held


def _page() -> None:
    import streamlit as st

    from core.ui import cache

    lane = st.session_state.get("lane", cache.HEAVY)
    try:
        value = cache.computed_once("lane-test", "fp", lane, "The test run", lambda: f"done in {lane}", lane=lane,
                                    expected_s=400)
        st.write(value)
    except cache.RunCancelled as exc:
        st.error(str(exc))


def test_light_work_does_not_wait_behind_heavy_runs():
    heavy = cache.run_queue(cache.HEAVY)
    with slots_held(heavy, heavy.slots):  # every heavy slot is taken
        at = AppTest.from_function(_page, default_timeout=30)
        at.session_state["lane"] = cache.LIGHT
        began = time.monotonic()
        at.run()
        no_exception(at)
        assert [m.value for m in at.markdown] == ["done in light"]
        assert time.monotonic() - began < 10  # before: the same queue, waiting behind the trainers


def test_a_cancelled_run_waits_for_start_again():
    at = AppTest.from_function(_page, default_timeout=30)
    at.session_state[cache._cancel_key("The test run", f"lane-test|fp|{cache.HEAVY}")] = True  # Cancel was pressed
    at.run()
    no_exception(at)
    assert [e.value for e in at.error] == ['You cancelled the test run. Press "Start again" to run it.']
    assert not at.markdown
    at.run()  # a rerun does not start it over
    assert at.error and not at.markdown
    [b for b in at.button if b.label == "Start the test run again"][0].click().run()
    no_exception(at)
    assert [m.value for m in at.markdown] == ["done in heavy"] and not at.error


def test_expected_time_reads_like_speech():
    assert cache.about(0.2) == "about 1 s"
    assert cache.about(40) == "about 40 s"
    assert cache.about(400) == "about 7 min"
    assert cache.about(3 * 3600) == "about 3.0 h"


def test_a_run_that_waits_several_polls_draws_one_cancel_button():
    """The waiting message is redrawn on every poll; the Cancel button was drawn again each time
    (StreamlitDuplicateElementKey: the page crashed whenever a heavy run waited over 0.5 s)."""
    with slots_held(cache.run_queue(cache.HEAVY), release_after_s=2.0):  # several polls of 0.5 s pass
        at = AppTest.from_function(_page, default_timeout=30).run()
        no_exception(at)
        assert [m.value for m in at.markdown] == ["done in heavy"]


def test_a_run_with_an_expected_time_says_what_it_took():
    """Issue 22: expected times are checked against what the run then took, on the page."""
    at = AppTest.from_function(_page, default_timeout=30).run()
    no_exception(at)
    assert [c.value for c in at.caption if "took" in c.value] == [
        ":material/schedule: The test run took 1 s on this server (about 7 min was expected)."
    ]
