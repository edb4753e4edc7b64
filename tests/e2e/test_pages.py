"""Every page in a real Chromium: loads with no exception box, and one click flow each."""

from __future__ import annotations

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
