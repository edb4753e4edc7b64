"""A small class in Chromium on a hosted + workshop server (issue 21): two students' open
Overviews follow the instructor's Reveal within 5 s and hide again after Hide, without a
reload; a student's saved subset and ticked steps survive a reload (the URL keeps ?v=)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import REPO, running_app, screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PASSPHRASE = "tulip-classroom-42"
SLICES = ["marked_sandals", "dark_pullovers", "striped_trousers", "green_coats"]
HIDDEN = "hidden during the workshop"
REVEAL_WITHIN_S = 5.0
# Installed in a page before the instructor acts: records (Date.now()) the first moment the
# page shows what is awaited, checked every 100 ms; a Streamlit rerun keeps the document.
WATCH = """([names, hidden, wanted]) => {
  window.__seenAt = null;
  const timer = setInterval(() => {
    const text = document.querySelector("[data-testid='stApp']").textContent;
    const shown = names.some(n => text.includes(n));
    if (wanted === "revealed" ? shown : (!shown && text.includes(hidden))) {
      window.__seenAt = Date.now();
      clearInterval(timer);
    }
  }, 100);
}"""


@pytest.fixture(scope="module")
def class_url(tmp_path_factory) -> Iterator[str]:
    """The hosted demo in workshop mode with an instructor passphrase; the CLI builds the store
    first (a hosted app never builds one), as `make serve` does."""
    folder = tmp_path_factory.mktemp("classroom")
    settings = {"BIASLENS_HOSTED": "1", "BIASLENS_WORKSHOP": "1", "BIASLENS_INSTRUCTOR_PASSPHRASE": PASSPHRASE}
    subprocess.run([sys.executable, "-m", "core", "build", "demo"], cwd=REPO,
                   env={**os.environ, "BIASLENS_WORKSPACES": str(folder / "none.toml"), **settings}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with running_app(folder, **settings) as url:
        yield url


def new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(120_000)
    return context, page


def go(page, title: str) -> None:
    """Open a page from the sidebar (a new URL would start a new session)."""
    page.locator("[data-testid='stSidebar']").get_by_role("link", name=title, exact=True).click()
    wait_idle(page)


def open_overview(page, url: str | None = None) -> None:
    if url is None:
        go(page, "Overview")
    else:
        page.goto(url)
    page.get_by_text(HIDDEN).first.wait_for()
    page.locator("[data-testid='stMetric']").filter(has_text="Accuracy").first.wait_for()
    wait_idle(page)


def steps_done(page) -> str:
    text = page.get_by_text(re.compile(r"Workshop steps \(\d of \d done\)")).first.inner_text()
    return re.search(r"\d of \d", text).group(0)


def shown_slices(page) -> list[str]:
    text = page.locator("[data-testid='stApp']").text_content()
    return [name for name in SLICES if name in text]


def no_exception(*pages) -> None:
    for page in pages:
        assert page.locator("[data-testid='stException']").count() == 0


def press_and_time(instructor, button: str, pages: list, wanted: str, within_s: float) -> list[float]:
    """Press the instructor's button; seconds until each open page shows ``wanted`` (no reload)."""
    for page in pages:
        page.evaluate(WATCH, [SLICES, HIDDEN, wanted])
    pressed = time.time()
    instructor.get_by_role("button", name=button).click()
    times = []
    for page in pages:
        page.wait_for_function("() => window.__seenAt !== null", timeout=(within_s + 30) * 1000)
        times.append(page.evaluate("window.__seenAt") / 1000 - pressed)
    return times


def test_reveal_reaches_open_pages_and_work_survives_a_reload(class_url, browser):
    contexts = []
    try:
        (c1, alice), (c2, bob), (c3, instructor) = (new_page(browser) for _ in range(3))
        contexts += [c1, c2, c3]

        # Alice: a cohort saved as a subset, then checked; steps 1, 4 and 6 are ticked
        open_overview(alice, class_url)
        key = re.search(r"[?&]v=([A-Za-z0-9_-]+)", alice.url).group(1)
        go(alice, "Cohorts & subsets")
        box = alice.get_by_label("WHERE", exact=True)
        box.fill("label = 'Sandal' AND marker = 'square'")
        box.press("Enter")
        wait_idle(alice)
        alice.get_by_label("Subset name", exact=True).fill("alice's sandals")
        alice.get_by_role("button", name="Save as subset").click()
        wait_idle(alice)
        alice.get_by_text("Open subset").first.wait_for()
        go(alice, "Workshop: check my finding")
        alice.get_by_role("button", name="Check", exact=True).click()
        alice.get_by_text("A random subset of the same size").first.wait_for()
        wait_idle(alice)
        assert steps_done(alice) == "3 of 6"

        # a reload is a new Streamlit session: the URL's visitor key finds her work again
        alice.reload()
        alice.get_by_role("button", name="Check", exact=True).wait_for()
        wait_idle(alice)
        assert re.search(r"[?&]v=([A-Za-z0-9_-]+)", alice.url).group(1) == key
        assert steps_done(alice) == "3 of 6"
        assert alice.get_by_role("combobox", name="Subset").input_value() == "alice's sandals"
        screenshot(alice, "classroom-after-reload")

        # both students sit on their Overviews, the ground truth hidden
        open_overview(alice)
        open_overview(bob, class_url)
        assert shown_slices(alice) == shown_slices(bob) == []

        # the instructor unlocks the panel and reveals: both open pages follow without a reload
        open_overview(instructor, class_url)
        instructor.locator("[data-testid='stSidebar'] [data-testid='stExpander'] summary").filter(
            has_text="Instructor").click()
        instructor.get_by_label("Instructor passphrase").fill(PASSPHRASE)
        instructor.get_by_role("button", name="Unlock").click()
        instructor.get_by_role("button", name="Reveal the ground truth").wait_for()
        wait_idle(instructor)
        times = press_and_time(instructor, "Reveal the ground truth", [alice, bob], "revealed", REVEAL_WITHIN_S)
        assert max(times) <= REVEAL_WITHIN_S, times
        wait_idle(alice)
        wait_idle(bob)
        assert set(shown_slices(alice)) == set(shown_slices(bob)) == set(SLICES)
        screenshot(bob, "classroom-revealed")

        # Hide: both pages hide the slices again, still without a reload
        instructor.get_by_role("button", name="Hide the ground truth").wait_for()
        wait_idle(instructor)
        times = press_and_time(instructor, "Hide the ground truth", [alice, bob], "hidden", REVEAL_WITHIN_S)
        assert max(times) <= REVEAL_WITHIN_S + 5, times
        wait_idle(alice)
        wait_idle(bob)
        assert shown_slices(alice) == shown_slices(bob) == []
        no_exception(alice, bob, instructor)
    finally:
        for context in contexts:
            context.close()
