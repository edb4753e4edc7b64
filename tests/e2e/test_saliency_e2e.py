"""The Filter saliency page in a real Chromium on the demo: it loads, the profiles get built
(from the page, unless an earlier run left them in the shared cache), picking a
misclassified image shows its input-space map, no exception box."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROW = re.compile(r"^Image .* \(row (\d+)\)$")


def no_exception_box(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[data-testid='stAlertContentError']").count() == 0


def picked_row(page) -> int:
    for text in page.get_by_role("heading").all_inner_texts():
        match = ROW.match(text.strip())
        if match:
            return int(match.group(1))
    raise AssertionError("no picked image heading")


def test_saliency_page_build_pick_and_map(app_url, page):
    page.goto(app_url)  # Overview builds the demo store on first open; metrics show once it exists
    page.locator("[data-testid='stMetric']").first.wait_for(timeout=240_000)
    wait_idle(page)
    page.locator("[data-testid='stSidebar']").get_by_role("link", name="Filter saliency", exact=True).click()
    page.get_by_role("heading", name="Filter saliency").first.wait_for(timeout=120_000)
    wait_idle(page)
    no_exception_box(page)
    build = page.get_by_role("button", name="Compute saliency profiles")
    if build.count():  # not built by an earlier run: the size comes first, then the build
        assert page.get_by_text("about", exact=False).filter(has_text="on disk (float16)").count() >= 1
        screenshot(page, "saliency-build")
        build.click()
        page.get_by_text("Pick an image").first.wait_for(timeout=300_000)
    page.get_by_text("Pick an image").first.wait_for(timeout=300_000)
    wait_idle(page, 300_000)
    no_exception_box(page)
    page.get_by_text("Failure modes", exact=True).first.wait_for(timeout=120_000)
    wait_idle(page)
    assert page.get_by_text("Input-space saliency of the top 10 filters").count() == 1
    assert page.locator("[data-testid='stVegaLiteChart']").count() >= 3
    first = picked_row(page)
    screenshot(page, "saliency")

    # pick the third misclassified image of the gallery: its map is drawn
    maps = page.locator("[data-testid='stImage'] img").evaluate_all("images => images.map(i => i.src)")
    page.get_by_role("button", name="Select", exact=True).nth(2).click()
    wait_idle(page, 120_000)
    page.wait_for_function(
        "before => [...document.querySelectorAll(\"[data-testid='stImage'] img\")].some((img, i) => img.src !== before[i])",
        arg=maps, timeout=60_000,
    )
    wait_idle(page)
    no_exception_box(page)
    assert picked_row(page) != first
    assert page.get_by_text("✗ misclassified").count() >= 1
    assert page.get_by_text("Input-space saliency of the top 10 filters").count() == 1
    page.get_by_text("Input-space saliency of the top 10 filters").first.scroll_into_view_if_needed()
    screenshot(page, "saliency-picked")

    # the lower panels: masking, fine-tuning, neighbours, failure modes
    page.get_by_text("Masking the salient pixels").first.scroll_into_view_if_needed()
    screenshot(page, "saliency-masking")
    page.get_by_text("Saliency-space neighbours").first.scroll_into_view_if_needed()
    assert page.get_by_text("Fine-tuning check", exact=True).count() == 1
    screenshot(page, "saliency-neighbours")
    page.get_by_text("Failure modes", exact=True).first.scroll_into_view_if_needed()
    assert page.get_by_text(re.compile(r"^Mode #0 · ")).count() == 1
    screenshot(page, "saliency-modes")
    no_exception_box(page)
    page.get_by_text("Scorecard: planted slices").first.scroll_into_view_if_needed()  # the demo has planted slices
    assert page.get_by_text("Baseline: the 10 highest-loss images", exact=False).count() == 1
    screenshot(page, "saliency-scorecard")
