"""AppTest: a method's record alone puts its page in the app's navigation, and its page can key
its state (core.methods.records). (AppTest shows the sidebar's links on a session's first run
only, so each case starts a fresh session.)"""

from __future__ import annotations

import dataclasses

from streamlit.testing.v1 import AppTest

from core.methods.records import register_method, unregister_method
from core.ui.keys import state_key
from tests.unit.test_method_records import FAKE

METHOD_PAGES = ["Overview", "Findings", "Compare models", "Cohorts & subsets", "Spotlight", "Subgroups", "Filter saliency", "Intersectional", "ActiVis"]


def sidebar_links(at: AppTest) -> list[str]:
    return [e.proto.label for e in at.sidebar if type(e).__name__ == "PageLink"]


def fresh(app: AppTest) -> AppTest:
    at = AppTest.from_file(app._script_path, default_timeout=240)
    at.session_state["app.workspace"] = "tiny"
    return at.run()


def test_a_registered_method_appears_in_the_navigation(app):
    assert sidebar_links(fresh(app)) == METHOD_PAGES
    register_method(dataclasses.replace(FAKE, page="tests/app/pages_fake/highest.py"))
    try:
        at = fresh(app)
        assert sidebar_links(at) == [*METHOD_PAGES, "Highest loss"]
        at.switch_page("tests/app/pages_fake/highest.py").run()
        assert not at.exception
        assert "Highest loss" in [t.value for t in at.main.title]
        assert at.session_state[state_key("highest", "opened")] is True
    finally:
        unregister_method(FAKE.name)
    assert sidebar_links(fresh(app)) == METHOD_PAGES
