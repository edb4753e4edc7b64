"""Every page in a real Chromium: loads with no exception box, and one click flow each."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_overview_renders_the_demo(app_url, page):
    page.goto(app_url)
    page.get_by_text("Planted slices").first.wait_for(timeout=240_000)  # the store is built on first open
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.get_by_text("Accuracy").first.is_visible()
    page.locator("[data-testid='stVegaLiteChart']").first.wait_for()
    screenshot(page, "overview")
    # click flow: open the gallery tab and show correctly classified images of one class
    page.get_by_role("tab", name="Gallery").click()
    page.locator("[data-testid='stButtonGroup']").get_by_text("correct", exact=True).click()
    wait_idle(page)
    page.locator("[data-testid='stImage']").first.wait_for()
    assert page.get_by_text("✓", exact=False).count() > 0  # correct images are captioned with a tick
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "overview-gallery")


def test_cohort_query_and_subset(app_url, page):
    page.goto(f"{app_url}/cohorts")
    wait_idle(page)
    page.get_by_text("Cohorts & subsets").first.wait_for()
    box = page.get_by_label("WHERE")
    box.fill("NOT correct AND loss > 1")
    box.press("Enter")
    wait_idle(page)
    page.get_by_text("Mean loss").first.wait_for()
    page.get_by_role("button", name="Save as subset").click()
    wait_idle(page)
    page.get_by_text("Export all subsets (CSV)").wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    # a bad filter shows DuckDB's message, not an exception
    box.fill("labl = 'x'")
    box.press("Enter")
    wait_idle(page)
    page.get_by_text("The filter was refused").wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "cohorts")


def test_a_page_opened_by_its_url_on_a_fresh_server_has_the_sidebar_and_wide_layout(tmp_path, browser):
    """Before anyone opens the root, Streamlit routes by the pages/ folder and would run the
    page file alone (no sidebar, a narrow layout); core.ui.context.through_app sends it through app.py."""
    from tests.e2e.conftest import running_app

    with running_app(tmp_path) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1200})
        page = context.new_page()
        page.goto(f"{url}/cohorts")
        sidebar = page.locator("[data-testid='stSidebar']")
        sidebar.wait_for(timeout=240_000)
        wait_idle(page)
        # the Cohorts page itself ran (its heading, or, before the demo's store exists, its note)
        main = page.locator("[data-testid='stMain']")
        main.get_by_text(re.compile("Cohorts & subsets|no complete activation store yet")).first.wait_for(timeout=60_000)
        assert sidebar.count() == 1 and sidebar.get_by_role("link", name="ActiVis", exact=True).count() == 1
        assert page.locator("[data-testid='stMainBlockContainer']").bounding_box()["width"] > 900  # wide, not centered
        context.close()
