"""The Intersectional page in a real Chromium on the demo: groups of two attributes with their
counts, the NAP maps with their unions, one probe run, no exception box."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def no_exception_box(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[data-testid='stAlertContentError']").count() == 0


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def test_intersectional_page_maps_and_probes(app_url, page):
    page.goto(app_url)  # Overview builds the demo store on first open; metrics show once it exists
    page.locator("[data-testid='stMetric']").first.wait_for(timeout=240_000)
    wait_idle(page)
    page.locator("[data-testid='stSidebar']").get_by_role("link", name="Intersectional", exact=True).click()
    page.get_by_role("heading", name="Intersectional").first.wait_for(timeout=120_000)
    page.get_by_text("Compare two groups").first.wait_for(timeout=300_000)  # after the first layout (UMAP compiles)
    wait_idle(page)
    no_exception_box(page)
    assert page.get_by_text("groups over").count() >= 1
    assert page.get_by_text("union", exact=True).count() >= 2  # the margins
    screenshot(page, "intersectional")
    # one probe run: one seed, a few epochs
    set_number(page, "Seeds", 1)
    set_number(page, "Epochs", 5)
    page.get_by_role("button", name="Train the probes").click()
    page.get_by_text("Most frequent errors").first.wait_for(timeout=300_000)
    wait_idle(page)
    no_exception_box(page)
    page.get_by_text("Linear probes per layer").first.scroll_into_view_if_needed()
    screenshot(page, "intersectional-probes")
    page.get_by_text("Compare two groups").first.scroll_into_view_if_needed()
    screenshot(page, "intersectional-compare")
