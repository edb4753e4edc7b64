"""The ActiVis page in a real Chromium on the demo: it loads with the embedding's panel, a click on
a graph tensor opens its panel, a click on an instance square adds the image as a matrix row, and
no exception box appears."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def no_exception_box(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[data-testid='stAlertContentError']").count() == 0


def hover_until(page, chart, texts: list[str], columns: range, rows: range) -> tuple[float, float]:
    """Move the mouse over a grid of points of ``chart`` (fractions in hundredths of its box)
    until Vega's tooltip shows every one of ``texts``; return that point. Chart marks are drawn on a canvas,
    so the tooltip is the way to know what lies under the mouse."""
    box = chart.bounding_box()
    tooltip = page.locator("#vg-tooltip-element")
    for fx in columns:
        for fy in rows:
            x, y = box["x"] + box["width"] * fx / 100, box["y"] + box["height"] * fy / 100
            page.mouse.move(x, y)
            page.wait_for_timeout(40)
            if tooltip.count() and tooltip.is_visible() and all(t in tooltip.inner_text() for t in texts):
                return x, y
    raise AssertionError(f"no mark with {texts!r} under the mouse")


def test_activis_page_graph_click_and_instance_click(app_url, page):
    page.goto(app_url)  # Overview builds the demo store on first open; metrics show once it exists
    page.locator("[data-testid='stMetric']").first.wait_for(timeout=240_000)
    wait_idle(page)
    page.locator("[data-testid='stSidebar']").get_by_role("link", name="ActiVis", exact=True).click()
    page.get_by_text("t-SNE of 1,000 images").first.wait_for(timeout=240_000)
    wait_idle(page)
    no_exception_box(page)
    assert page.get_by_text("of 128 neurons").count() >= 1  # the embedding's panel
    screenshot(page, "activis")

    # click the graph's block2 tensor: its panel opens below the embedding's
    graph = page.locator("[data-testid='stVegaLiteChart']").first
    x, y = hover_until(page, graph, ["block2", "stored"], range(30, 80, 1), range(20, 80, 4))
    page.mouse.click(x, y)
    page.get_by_text("of 64 neurons").first.wait_for(timeout=120_000)
    wait_idle(page)
    no_exception_box(page)

    # click an instance square: the image becomes a matrix row
    squares = page.locator("[data-testid='stVegaLiteChart']").nth(1)
    x, y = hover_until(page, squares, ["predicted"], range(3, 40, 3), range(1, 12, 1))
    page.mouse.click(x, y)
    page.get_by_text("Matrix rows (11 of at most 50)").first.wait_for(timeout=60_000)
    wait_idle(page)
    no_exception_box(page)
    assert page.get_by_text("image #").count() >= 1
    screenshot(page, "activis-instance")
