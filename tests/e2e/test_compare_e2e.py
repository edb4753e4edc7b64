"""The Compare page in a real Chromium: the planted demo against its control model, no exception
box, regression slices shown, an image of the first one opened in the two-model dialog (both
Grad-CAMs side by side), then the slice opened as a cohort."""

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
    picker = page.get_by_role("combobox", name="Image details (A and B)").first
    picker.scroll_into_view_if_needed()
    picker.click()
    page.get_by_role("option").first.click()
    dialog = page.locator("[data-testid='stDialog']")
    dialog.get_by_text("Grad-CAM for the class").first.wait_for(timeout=120_000)
    dialog.locator("[data-testid='stImage']").nth(2).wait_for(timeout=120_000)
    wait_idle(page)
    assert dialog.locator("[data-testid='stImage']").count() == 3  # the image, A's Grad-CAM, B's
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "compare-image-details")
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden", timeout=60_000)
    wait_idle(page)
    page.get_by_role("button", name="Open as cohort").first.click()
    page.get_by_label("WHERE").first.wait_for(timeout=60_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "compare-cohort")
