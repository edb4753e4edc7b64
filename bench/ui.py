"""UI speed on the warm demo: reruns, page switches, the Grad-CAM window and subgroup selection.

Builds the demo's and its control's stores with the CLI (`python -m core build demo`,
`... demo-control`) into a temporary cache, starts `streamlit run app.py` on the demo (no
workspaces file), and drives it with Debian's Chromium through Playwright. A warm-up pass opens
every page once (Spotlight with a default run, Compare models in both embeddings), so every
figure below is warm: nothing needs computing but the page itself. `--pages` measures only the
pages named (and the Overview, where every session lands); their warm-up is all that runs.

Timing: a MutationObserver records each change of the app's script state
(`data-test-script-state`) with the page's clock. An action starts at t0 (read in the page
just before the click); it ends at the last change to `notRunning` once the script has
stayed idle for 0.5 s (and, where named, once an expected element is visible).

- rerun_s: page -> median of 5 reruns by a widget that needs no new computation: Overview
  the confusion matrix's "as shares" toggle; Findings the "Findings shown" box (10 <-> 11);
  Compare models the "Search in the embedding of" switch between B and A (both comparisons
  made in the warm-up); Cohorts & subsets a rerun (the `r` key) with a
  WHERE filter shown; Spotlight the panel switch between Spotlight 1 and 2; Subgroups the
  threshold switch between 0.5 and 0.66; Filter saliency the masking panel's control toggle
  (both variants computed in the warm-up, which also builds the demo's saliency profiles);
  Intersectional the maps' colour-scale clip toggle (tint x pattern, block3); ActiVis the
  graph's detail switch between Blocks and Sub-blocks (both traced in the warm-up).
- switch_s: page -> median of 5 arrivals on the page through the sidebar navigation.
- cam_open_s: median of 5 Grad-CAM windows (5 images, each computed on first open), from
  the CAM click until the window shows its maps; subgroup_select_s: median of 5 "Select"
  clicks on other subgroups.
Targets: every rerun and switch <= 1 s, cam_open_s <= 2 s, subgroup_select_s <= 1 s.
Prints progress to stderr, then LAST a JSON line of figures on stdout.

    .venv/bin/python bench/ui.py [--repeats 5] [--keep-logs] [--pages "Compare models,Findings"]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine_figures, start_server, stop_server
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from core.methods.records import method_records

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
PAGES = ["Overview", "Findings", "Compare models", "Cohorts & subsets", *[record.title for record in method_records()]]
COHORT = "label = 'Sandal' AND marker = 'square'"
TARGET_S, CAM_TARGET_S = 1.0, 2.0
# Records every script-state change with the page's clock, across in-app navigation.
OBSERVER = """
window.__states = [];
const watch = () => {
  const app = document.querySelector("[data-testid='stApp']");
  if (!app) { setTimeout(watch, 20); return; }
  window.__states.push([performance.now(), app.getAttribute('data-test-script-state')]);
  new MutationObserver(() => window.__states.push([performance.now(), app.getAttribute('data-test-script-state')]))
    .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
};
watch();
"""


def log(message: str) -> None:
    print(f"[ui {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)








def now(page: Page) -> float:
    return page.evaluate("performance.now()")


def settled(page: Page, t0: float, quiet_ms: float = 500, timeout_s: float = 120) -> float:
    """Seconds from t0 to the last change to notRunning, once idle for ``quiet_ms`` after a run
    began; 0 when no run was seen within 3 s and the app is idle (the caller then relies on
    the expected element)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = page.evaluate("window.__states")
        after = [(t, s) for t, s in states if t >= t0]
        ran = any(s != "notRunning" for _, s in after)
        idle = page.locator(IDLE).count() > 0
        elapsed = now(page) - t0
        if ran and idle and now(page) - after[-1][0] >= quiet_ms:
            return (after[-1][0] - t0) / 1000
        if not ran and idle and elapsed >= 3000:
            log("  no script run was seen for this action (its figure is the expected element's time)")
            return 0.0
        time.sleep(0.05)
    raise TimeoutError(f"the app did not settle; last states {page.evaluate('window.__states')[-6:]}")


def timed(page: Page, action, expect: str | None = None) -> float:
    """Seconds from just before ``action()`` until the app has settled (and ``expect`` is visible)."""
    page.wait_for_selector(IDLE)
    t0 = now(page)
    action()
    seen = 0.0
    if expect:
        page.locator(expect).first.wait_for(state="visible", timeout=300_000)
        seen = (now(page) - t0) / 1000
    return round(max(settled(page, t0), seen), 3)


def navigate(page: Page, title: str) -> None:
    page.locator("[data-testid='stSidebar']").get_by_role("link", name=title, exact=True).click()


def wait_ready(page: Page, text: str) -> None:
    log(f"  waiting for '{text}'")
    page.get_by_text(text).first.wait_for(timeout=300_000)
    page.wait_for_selector(IDLE, timeout=300_000)
    page.wait_for_timeout(500)
    page.wait_for_selector(IDLE, timeout=300_000)


READY = {"Overview": "Planted slices", "Findings": "significant finding(s) of", "Compare models": "Where B got worse",
         "Cohorts & subsets": "Columns you can filter on",
         "Spotlight": "Spotlights found", "Subgroups": "Under-performing subgroups",
         "Filter saliency": "Masking the salient pixels", "Intersectional": "Compare two groups",
         "ActiVis": "t-SNE of"}
SALIENCY_TOGGLE = "least salient (control)"
CLIP_TOGGLE = "Clip the colour scale to the 0.5–99.5th percentile"
SHOWN_BOX = "Findings shown"
EMBEDDINGS = ("A", "B")  # the Compare page's "Search in the embedding of" choices, B last (the page's default)


def embedding_choice(page: Page, embedding: str) -> None:
    """Click an option of the Compare page's embedding switch by its text (its hidden radio input
    is covered by the option's label, so a click on the input itself never lands)."""
    page.get_by_role("radiogroup", name="Search in the embedding of").get_by_text(embedding, exact=True).click()


def warm_cohorts(page: Page) -> None:
    box = page.get_by_label("WHERE")
    box.fill(COHORT)
    box.press("Enter")
    wait_ready(page, "95% bootstrap interval of the cohort")


def warm_spotlight(page: Page) -> None:
    wait_ready(page, "to find spotlights among")
    for attempt in range(3):  # a click while the form is still being drawn can be lost
        page.get_by_role("button", name="Run", exact=True).click()
        try:
            page.get_by_text(READY["Spotlight"]).first.wait_for(timeout=180_000)
            break
        except PlaywrightTimeout:
            log(f"  no spotlights after Run (attempt {attempt + 1}); clicking again")
    wait_ready(page, READY["Spotlight"])
    for panel in ("Spotlight 2", "Spotlight 1"):
        page.get_by_role("radio", name=panel, exact=True).first.click()
        wait_ready(page, "Top-weighted images")


def warm_subgroups(page: Page) -> None:
    wait_ready(page, READY["Subgroups"])
    for choice in ("0.66 (UDIS code)", "0.5 (VisCUIT paper)"):
        page.get_by_role("radio", name=choice, exact=True).click()
        wait_ready(page, READY["Subgroups"])


def warm_saliency(page: Page) -> None:
    wait_ready(page, "Profiles of the dataset")
    page.get_by_role("button", name="Compute saliency profiles").click()  # the demo's 10k profiles
    wait_ready(page, READY["Filter saliency"])
    for _ in range(2):  # both masking variants computed once
        page.get_by_text(SALIENCY_TOGGLE, exact=True).click()
        wait_ready(page, READY["Filter saliency"])


def warm_intersectional(page: Page) -> None:
    wait_ready(page, READY["Intersectional"])  # the first layout compiles UMAP
    for _ in range(2):  # both colour scales drawn once
        page.get_by_text(CLIP_TOGGLE, exact=True).click()
        wait_ready(page, READY["Intersectional"])


def warm_activis(page: Page) -> None:
    wait_ready(page, READY["ActiVis"])
    for detail in ("Blocks", "Sub-blocks"):  # both graphs traced once
        page.locator("[data-testid='stButtonGroup']").get_by_text(detail, exact=True).click()
        wait_ready(page, READY["ActiVis"])


def warm_compare(page: Page) -> None:
    wait_ready(page, READY["Compare models"])  # the comparison in B's embedding
    for embedding in EMBEDDINGS:  # then in A's, and back
        embedding_choice(page, embedding)
        wait_ready(page, READY["Compare models"])


# the first pass's order and what each page computes in it (a page not named is only opened)
WARM_UP = {"Cohorts & subsets": warm_cohorts, "Spotlight": warm_spotlight, "Subgroups": warm_subgroups,
           "Filter saliency": warm_saliency, "Intersectional": warm_intersectional, "ActiVis": warm_activis,
           "Compare models": warm_compare}


def warm_up(page: Page, url: str, pages: list[str]) -> None:
    """Open the Overview, then every page of ``pages`` once, computing what its figures need,
    then a second pass over them: every page's own caches are filled."""
    page.goto(url)
    wait_ready(page, READY["Overview"])
    first = [t for t in WARM_UP if t in pages] + [t for t in pages if t not in WARM_UP and t != "Overview"]
    for title in first:
        navigate(page, title)
        if title in WARM_UP:
            WARM_UP[title](page)
        else:
            wait_ready(page, READY[title])
    for title in pages:
        navigate(page, title)
        wait_ready(page, READY[title])


def rerun_action(page: Page, title: str, i: int):
    if title == "Overview":
        return lambda: page.get_by_text("Confusion matrix as shares of each true class").click()
    if title == "Findings":
        def shown() -> None:
            box = page.get_by_label(SHOWN_BOX)
            box.fill(str(11 - i % 2))
            box.press("Enter")
        return shown
    if title == "Compare models":
        return lambda: embedding_choice(page, EMBEDDINGS[i % 2])
    if title == "Cohorts & subsets":
        def rerun() -> None:
            page.locator("h1").first.click()
            page.keyboard.press("r")
        return rerun
    if title == "Spotlight":
        return lambda: page.get_by_role("radio", name=f"Spotlight {2 - i % 2}", exact=True).first.click()
    if title == "Filter saliency":
        return lambda: page.get_by_text(SALIENCY_TOGGLE, exact=True).click()
    if title == "Intersectional":
        return lambda: page.get_by_text(CLIP_TOGGLE, exact=True).click()
    if title == "ActiVis":
        return lambda: page.locator("[data-testid='stButtonGroup']").get_by_text("Blocks" if i % 2 == 0 else "Sub-blocks", exact=True).click()
    choice = "0.66 (UDIS code)" if i % 2 == 0 else "0.5 (VisCUIT paper)"
    return lambda: page.get_by_role("radio", name=choice, exact=True).click()


def close_dialog(page: Page) -> None:
    page.keyboard.press("Escape")
    page.locator("[role='dialog']").first.wait_for(state="hidden", timeout=60_000)
    page.wait_for_selector(IDLE)


def measure(url: str, repeats: int, shot: Path, pages: list[str]) -> dict[str, object]:
    """The figures of ``pages`` (in PAGES order, the Overview first); the subgroup selection
    and Grad-CAM windows when Subgroups is one of them."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(300_000)
        page.add_init_script(OBSERVER)
        log(f"warm-up: {', '.join(pages)} once (a default Spotlight run, the subgroups, both comparisons...)")
        began = time.perf_counter()
        try:
            warm_up(page, url, pages)
        except Exception:
            page.screenshot(path=str(shot), full_page=True)
            log(f"warm-up failed: screenshot {shot}")
            raise
        log(f"warm-up done in {time.perf_counter() - began:.1f} s")

        switch: dict[str, list[float]] = {t: [] for t in pages}
        for r in range(repeats):
            for title in pages[1:] + pages[:1]:
                switch[title].append(timed(page, lambda t=title: navigate(page, t), f"text={READY[title]}"))
            log(f"switch round {r + 1}: {({t: v[-1] for t, v in switch.items()})}")

        rerun: dict[str, list[float]] = {}
        for title in pages:
            navigate(page, title)
            wait_ready(page, READY[title])
            rerun[title] = [timed(page, rerun_action(page, title, i)) for i in range(repeats)]
            log(f"rerun {title}: {rerun[title]}")

        select: list[float] = []
        cam: list[float] = []
        if "Subgroups" in pages:  # on Subgroups: select other subgroups, then open Grad-CAM windows
            navigate(page, "Subgroups")
            wait_ready(page, READY["Subgroups"])
            buttons = page.get_by_role("button", name="Select", exact=True)
            secondary = "[data-testid='stBaseButton-secondary']"
            for _ in range(repeats):
                target = page.locator(secondary).filter(has_text="Select").first
                select.append(timed(page, target.click))
            log(f"subgroup select: {select} ({buttons.count()} subgroups)")
            for i in range(repeats):
                button = page.get_by_role("button", name="CAM", exact=True).nth(i)
                cam.append(timed(page, button.click, "[role='dialog'] [data-testid='stImage'] img >> nth=2"))
                close_dialog(page)
            log(f"Grad-CAM window: {cam}")
        browser.close()

    med = lambda values: round(statistics.median(values), 3)  # noqa: E731
    return {
        "rerun_s": {t: med(v) for t, v in rerun.items()},
        "switch_s": {t: med(v) for t, v in switch.items()},
        "cam_open_s": med(cam) if cam else None,
        "subgroup_select_s": med(select) if select else None,
        "samples": {"rerun": rerun, "switch": switch, "cam": cam, "select": select},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--pages", default=",".join(PAGES),
                        help="comma-separated page titles to measure (default: every page); the Overview always is")
    args = parser.parse_args()
    chosen = {t.strip() for t in args.pages.split(",") if t.strip()}
    if chosen - set(PAGES):
        sys.exit(f"unknown page(s) {', '.join(sorted(chosen - set(PAGES)))}: use titles of {', '.join(PAGES)}")
    pages = [t for t in PAGES if t == "Overview" or t in chosen]
    if not Path(CHROMIUM).exists():
        sys.exit(f"Debian chromium is not installed ({CHROMIUM}); `make browser` installs it")
    cache = Path(tempfile.mkdtemp(prefix="biaslens-ui-cache-"))
    out = Path(tempfile.mkdtemp(prefix="biaslens-ui-"))
    os.environ.update({"BIASLENS_WORKSPACES": str(out / "no-workspaces.toml"), "BIASLENS_CACHE": str(cache)})
    server = None
    try:
        for workspace in ("demo", "demo-control"):  # the control is model A on the Compare page
            log(f"building the {workspace} store in {cache} with the CLI...")
            subprocess.run([sys.executable, "-m", "core", "build", workspace], cwd=ROOT, check=True, stdout=sys.stderr)
        server, url = start_server(out / "streamlit.log")
        log(f"server {url}, log {out / 'streamlit.log'}")
        figures = measure(url, args.repeats, out / "failure.png", pages)
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(cache, ignore_errors=True)
        if not args.keep_logs and not (out / "failure.png").exists():
            shutil.rmtree(out, ignore_errors=True)
    targets = {
        "rerun": all(v <= TARGET_S for v in figures["rerun_s"].values()),
        "switch": all(v <= TARGET_S for v in figures["switch_s"].values()),
    }
    if figures["cam_open_s"] is not None:
        targets["cam_open"] = figures["cam_open_s"] <= CAM_TARGET_S
        targets["subgroup_select"] = figures["subgroup_select_s"] <= TARGET_S
    log(f"rerun {figures['rerun_s']}, switch {figures['switch_s']}, CAM {figures['cam_open_s']} s, "
        f"select {figures['subgroup_select_s']} s; targets met: {targets}")
    print(json.dumps({**figures, "targets_met": targets, "cpus": os.cpu_count(), **machine_figures("cpu")}))


if __name__ == "__main__":
    main()
