"""The Compare page in a real Chromium: the planted demo against its control model, no exception
box, regression slices shown, one opened as a cohort."""

from __future__ import annotations

import pytest

from tests.app.test_compare_page import control_store  # noqa: F401  (a fixture: the control model's store)
from tests.e2e.conftest import screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_compare_finds_where_the_planted_model_got_worse(app_url, page, control_store):  # noqa: F811
    page.goto(app_url)  # Overview builds the demo store on first open; metrics show once it exists
    page.locator("[data-testid='stMetric']").first.wait_for(timeout=240_000)
    page.goto(f"{app_url}/compare")
    page.get_by_text("Where B got worse").first.wait_for(timeout=300_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.get_by_text("#1 · ").count() >= 1
    page.locator("[data-testid='stImage']").first.wait_for()
    screenshot(page, "compare")
    page.get_by_role("button", name="Open as cohort").first.click()
    page.get_by_label("WHERE").first.wait_for(timeout=60_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "compare-cohort")
