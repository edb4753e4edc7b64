"""A student's workshop flow in Chromium: Overview -> Spotlight -> a cohort saved as a subset
-> "Check my finding", with the ground truth hidden all along; a wrong passphrase refused."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import running_app, screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SLICES = ("marked_sandals", "dark_pullovers", "striped_trousers", "green_coats")


@pytest.fixture(scope="module")
def workshop_url(tmp_path_factory) -> Iterator[str]:
    """The app on the demo with BIASLENS_WORKSHOP=1 and an instructor passphrase."""
    with running_app(tmp_path_factory.mktemp("workshop"), BIASLENS_WORKSHOP="1",
                     BIASLENS_INSTRUCTOR_PASSPHRASE="tulip-42") as url:
        yield url


def text_of(page) -> str:
    return page.locator("[data-testid='stApp']").inner_text()


def go(page, title: str) -> None:
    """Open a page from the sidebar (a new URL would start a new session and lose the steps)."""
    page.get_by_role("link", name=title, exact=True).click()
    wait_idle(page)


def assert_no_truth(page, allowed: tuple[str, ...] = ()) -> None:
    body = text_of(page)
    leaked = [s for s in (*SLICES, "slice_") if s in body and s not in allowed]
    assert not leaked, leaked
    assert page.locator("[data-testid='stException']").count() == 0


def test_student_flow_to_a_checked_finding(workshop_url, page):
    page.goto(workshop_url)
    page.get_by_text("hidden during the workshop").first.wait_for(timeout=180_000)
    wait_idle(page)
    assert page.get_by_text("Workshop steps (1 of 6 done)").first.is_visible()
    assert_no_truth(page)
    screenshot(page, "workshop-overview-hidden")

    # a wrong passphrase is refused
    page.locator("[data-testid='stSidebar'] [data-testid='stExpander'] summary").filter(has_text="Instructor").click()
    page.get_by_label("Instructor passphrase").fill("not-it")
    page.get_by_label("Instructor passphrase").press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Unlock").click()
    wait_idle(page)
    page.get_by_text("Wrong passphrase.").wait_for()
    assert page.get_by_role("button", name="Reveal the ground truth").count() == 0

    # Spotlight: a short run; the scorecard stays hidden
    go(page, "Spotlight")
    page.get_by_role("spinbutton", name="Spotlights").fill("2")
    page.get_by_role("spinbutton", name="Steps").fill("300")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Spotlights found").wait_for(timeout=180_000)
    wait_idle(page)
    page.get_by_text("scorecard against the planted slices is hidden").first.wait_for()
    assert_no_truth(page)

    # confirm as a cohort and save it
    go(page, "Cohorts & subsets")
    box = page.get_by_label("WHERE")
    box.fill("label = 'Sandal' AND marker = 'square'")
    box.press("Enter")
    wait_idle(page)
    name = page.get_by_label("Subset name")
    name.fill(f"workshop finding {os.getpid()}")
    page.get_by_role("button", name="Save as subset").click()
    wait_idle(page)
    assert_no_truth(page)

    # check it: the identified slice is named, the others never are
    go(page, "Workshop: check my finding")
    page.get_by_role("button", name="Check").click()
    wait_idle(page)
    page.get_by_text("A random subset of the same size").wait_for()
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Matches a planted slice")
    assert "yes" in metric.inner_text()
    assert_no_truth(page, allowed=("marked_sandals",))
    screenshot(page, "workshop-checked-finding")
    assert page.get_by_text("Workshop steps (5 of 6 done)").first.is_visible(), page.locator("[data-testid='stSidebar']").inner_text()  # all but Grad-CAM
    screenshot(page, "workshop-checked-finding")
