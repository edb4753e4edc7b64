"""The Findings page in a real Chromium on the demo: it pools and ranks on open, no exception
box, and a finding opens as a cohort."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_findings_page_ranks_the_demo_failures(app_url, page):
    page.goto(app_url)  # Overview builds the demo store on first open; metrics show once it exists
    page.locator("[data-testid='stMetric']").first.wait_for(timeout=240_000)
    page.goto(f"{app_url}/findings")
    page.get_by_text("significant finding(s) of").first.wait_for(timeout=300_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.get_by_text("#1 · ").count() >= 1
    page.locator("[data-testid='stImage']").first.wait_for()
    screenshot(page, "findings")
    page.get_by_role("button", name="Open as cohort").first.click()
    page.get_by_label("WHERE").first.wait_for(timeout=60_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "findings-cohort")
