"""AppTest: the Findings page through app.py: it pools the methods on open (with progress), shows
ranked finding cards, switches to the representation alone, links a finding to Cohorts, says
plainly when nothing fails, and stays hidden for students in workshop mode."""

from __future__ import annotations

import re

import pytest

from core.services.workspace import load_workspaces
from core.ui.keys import state_key
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_workshop_page import assert_hidden, workshop_app  # noqa: F401  (a fixture)

PAGE = "pages/findings.py"
MARKS = (":material/error:", ":material/help:")


def open_findings(at):
    at.switch_page(PAGE).run()
    no_exception(at)
    return at


def cards(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith(MARKS)]


@pytest.mark.slow
def test_findings_rank_the_demo_failures_and_link_them(demo_app):
    at = open_findings(demo_app.run())
    assert not at.error
    heading = [s.value for s in at.subheader if "finding(s)" in s.value]
    assert heading and "candidate groups" in heading[0]
    shown = cards(at)
    assert len(shown) == 10 and shown[0].split("**#")[1].startswith("1 · ")  # ranked from 1, the first 10 shown
    assert any(m.label == "Worse on the held-out half" and m.value.startswith("+") for m in at.metric)
    assert any(" AND " in c or "label = " in c for c in shown)  # described by attribute values
    # the representation alone: no attribute in any description
    next(t for t in at.toggle if "metadata out" in t.label).set_value(True).run()
    no_exception(at)
    assert cards(at) and not any(a in c for c in cards(at) for a in ("marker", "tint", "pattern", "brightness"))
    first, second = (re.search(r"mostly (.+?) \(", c).group(1) for c in cards(at)[:2])
    assert first != second  # a second part of the first failure waits behind the next distinct failure
    # a finding opens as a cohort
    next(b for b in at.button if b.label == "Open as cohort").click().run()
    no_exception(at)
    assert any(s.label == "Within" for s in at.selectbox)
    # ... and as a row of ActiVis' matrix, beside one row per class
    at = open_findings(at)
    next(b for b in at.button if b.label == "Open in ActiVis as a row").click().run()
    no_exception(at)
    assert at.main.title[0].value.startswith("ActiVis")
    rows = at.session_state[state_key("activis", "rows", load_workspaces().workspaces["demo"].key())]
    assert rows[-1]["kind"] == "group" and rows[-1]["name"] == "finding 1" and len(rows) == 11  # 10 classes + the finding


def test_a_model_where_nothing_fails_significantly_says_so(app):
    at = open_findings(build_tiny(app))  # a random tiny CNN: its errors are spread evenly
    assert not at.error
    assert any("No significant failure found" in s.value for s in at.success)
    assert not cards(at)
    assert any("Spotlight's gradient search" in c.value and "another machine" in c.value for c in at.caption)  # issue 24 item 4


def test_findings_are_hidden_from_students_until_the_reveal(workshop_app):  # noqa: F811
    at = workshop_app().run()
    at.switch_page(PAGE).run()
    no_exception(at)
    assert any("hidden during the workshop" in i.value for i in at.info)
    assert not [s for s in at.subheader if "finding(s)" in s.value]
    assert_hidden(at)
