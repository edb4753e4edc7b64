"""The Spotlight page in a real Chromium on the demo: it loads, one run, no exception box."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def test_spotlight_page_runs_on_the_demo(app_url, page):
    page.goto(app_url)  # Overview builds the demo store on first open; metrics show once it exists
    page.locator("[data-testid='stMetric']").first.wait_for(timeout=240_000)
    page.goto(f"{app_url}/spotlight")
    wait_idle(page)
    page.get_by_text("to find spotlights among").first.wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    set_number(page, "Spotlights", 2)
    set_number(page, "Steps", 300)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Spotlights found").first.wait_for(timeout=240_000)
    wait_idle(page)
    page.get_by_text("Scorecard: planted slices").first.wait_for()
    page.locator("[data-testid='stImage']").first.wait_for()
    page.locator("[data-testid='stVegaLiteChart']").first.wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "spotlight")
    # click flow: show the second spotlight's panel
    page.locator("[data-testid='stButtonGroup']").get_by_text("Spotlight 2", exact=True).click()
    wait_idle(page)
    page.get_by_text("Effective size (sum of weights)").first.wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    # the map: drag a box over its middle to select images, then open one image's details
    chart = page.locator("[data-testid='stVegaLiteChart']").last
    chart.scroll_into_view_if_needed()
    wait_idle(page)
    box = chart.locator("canvas, svg").first.bounding_box()
    assert box is not None
    x0, y0 = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.8, steps=8)
    page.mouse.up()
    page.get_by_text("images in the box").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "spotlight-map-box")
    picker = page.get_by_role("combobox", name="Image details").last
    picker.scroll_into_view_if_needed()
    picker.click()
    page.get_by_role("option").first.click()
    dialog = page.locator("[data-testid='stDialog']")
    dialog.get_by_text("Image details").first.wait_for(timeout=120_000)
    dialog.get_by_text("Predicted:").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert dialog.locator("[data-testid='stImage']").count() == 3
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "spotlight-image-details")
