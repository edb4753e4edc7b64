"""The Subgroups page in a real Chromium on the demo: it loads, selecting a subgroup, the
Grad-CAM window, no exception box."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HEADER = re.compile(r"^(▶ )?#(\d+) · accuracy")
NEURON = re.compile(r"^\d+: \d\.\d\d\/\d\.\d\d$")  # 'channel: under/well' buttons


def subgroup_headers(page) -> list[tuple[bool, int]]:
    """(selected, id) of each row of the under-performing list, in order."""
    out = []
    for text in page.locator("[data-testid='stMarkdownContainer']").all_inner_texts():
        match = HEADER.match(text.strip())
        if match:
            out.append((bool(match.group(1)), int(match.group(2))))
    return out


def no_exception_box(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0


def test_subgroups_page_select_and_grad_cam(app_url, page):
    page.goto(app_url)  # Overview builds the demo store on first open; metrics show once it exists
    page.locator("[data-testid='stMetric']").first.wait_for(timeout=240_000)
    wait_idle(page)
    page.locator("[data-testid='stSidebar']").get_by_role("link", name="Subgroups").click()
    page.get_by_text("Under-performing subgroups").first.wait_for(timeout=240_000)
    wait_idle(page)
    no_exception_box(page)
    assert page.get_by_role("heading", name="Subgroups").count() >= 1
    page.get_by_text("Neuron activation panel").first.wait_for()
    page.get_by_text("Scorecard: planted slices").first.wait_for()
    page.locator("[data-testid='stVegaLiteChart']").first.wait_for()  # confusion matrices
    headers = subgroup_headers(page)
    assert len(headers) >= 2 and [s for s, _ in headers] == [True] + [False] * (len(headers) - 1)
    first, second = headers[0][1], headers[1][1]
    page.get_by_text(f"Under-performing #{first} ·").first.wait_for()
    screenshot(page, "subgroups")

    # select the second subgroup: it becomes the marked one and the comparison follows it
    page.get_by_role("button", name="Select", exact=True).nth(1).click()
    wait_idle(page)
    page.get_by_text(f"Under-performing #{second} ·").first.wait_for()
    no_exception_box(page)
    headers = subgroup_headers(page)
    assert [g for s, g in headers if s] == [second]
    assert page.get_by_text(f"Under-performing #{first} ·").count() == 0
    assert page.get_by_text(f"Confusion matrix of #{second}").count() == 1

    # the Grad-CAM window of one image of the selected subgroup
    page.get_by_role("button", name="CAM", exact=True).first.click()
    dialog = page.locator("[data-testid='stDialog']")
    dialog.get_by_text("Image details").first.wait_for(timeout=120_000)
    dialog.get_by_text("Predicted:").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert dialog.get_by_text("True:").count() >= 1
    assert dialog.get_by_text(re.compile(r"label .* predicted")).count() >= 1
    assert dialog.locator("[data-testid='stImage']").count() == 3
    no_exception_box(page)
    assert page.locator("[data-testid='stAlertContentError']").count() == 0
    screenshot(page, "subgroups-gradcam")
    maps = dialog.locator("img").evaluate_all("images => images.map(i => i.src)")
    assert dialog.get_by_role("combobox", name="Layer").input_value() == "block3"
    # another layer: the window re-runs on its own and stays open
    dialog.locator("[data-testid='stSelectbox']").click()
    page.get_by_role("option", name="block1", exact=True).click()
    wait_idle(page)
    dialog.get_by_text("Predicted:").first.wait_for()
    assert dialog.get_by_role("combobox", name="Layer").input_value() == "block1"
    page.wait_for_function(  # the two Grad-CAM maps are redrawn
        "before => { const now = [...document.querySelectorAll(\"[data-testid='stDialog'] img\")]"
        ".map(i => i.src); return now.length === 3 && now[1] !== before[1] && now[2] !== before[2]; }",
        arg=maps, timeout=60_000,
    )
    assert dialog.locator("[data-testid='stImage']").count() == 3
    no_exception_box(page)
    # closing the window leaves the page as it was
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached", timeout=30_000)
    wait_idle(page)
    no_exception_box(page)
    assert [g for s, g in subgroup_headers(page) if s] == [second]

    # the neuron panel: open one neuron's concept window
    page.get_by_text("Neuron activation panel").first.scroll_into_view_if_needed()
    neuron = page.get_by_role("button", name=NEURON).first
    label = neuron.inner_text().strip()
    neuron.click()
    dialog.get_by_text("Neuron concept window").first.wait_for(timeout=120_000)
    dialog.get_by_text("Top images").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert dialog.get_by_text("Concept patches").count() >= 1
    assert dialog.locator("[data-testid='stImage']").count() >= 2
    no_exception_box(page)
    screenshot(page, "subgroups-neuron")
    page.keyboard.press("Escape")  # closing re-runs the page: the neuron is now highlighted
    dialog.wait_for(state="detached", timeout=30_000)
    wait_idle(page)
    no_exception_box(page)
    highlighted = page.locator("[data-testid='stBaseButton-primary']").filter(has_text=NEURON)
    assert label in [t.strip() for t in highlighted.all_inner_texts()]
    page.get_by_text("Neuron activation panel").first.scroll_into_view_if_needed()
    screenshot(page, "subgroups-neuron-panel")
