"""Load benchmark: N concurrent Chromium visitors on the hosted demo, and CohortView under threads.

1. Builds the demo store with the CLI (`python -m core build demo`) into a temporary cache,
   then starts `streamlit run app.py` as the hosted demo would (BIASLENS_HOSTED=1, no
   workspaces file), so the app only reads.
2. Cohorts, in this process: a CohortView over the store's metadata answers 8 threads x
   150 queries at once (10 filters in turn); `cohort_threads_wrong` counts answers whose
   rows differ from pandas' (count or content), `cohort_threads_failed` queries that raised.
3. One warm-up visitor (not counted, it fills the shared caches), then rounds of N
   concurrent visitors (N = 1, 4, 8), each in its own context of one Debian Chromium: the
   Overview (its Accuracy metric), Spotlight via the navigation with default settings (Run,
   until "Spotlights found"), then Subgroups via the navigation (its subgroup list). A
   visitor succeeds when each step finishes within --timeout seconds and shows no exception
   box (`errors` counts them). Per N: wall_s, from the round's start until its last visitor
   finished; rss_mb_after, the server's resident memory with the N visitors still
   connected; rss_mb_peak, the highest sampled during the round; server_cpu_s and
   browser_cpu_s, CPU seconds used by the server and by Chromium (with Playwright's driver).

Prints progress to stderr (failures with a screenshot path), then LAST one JSON line on
stdout: sessions_ok, wall_s, errors, peak_rss_mb (the server's VmHWM, children included),
mb_per_visitor ((rss_mb_after[8] - rss_mb_after[1]) / 7), the per-N figures, cohort_threads_wrong,
cohort_threads_failed, failures and targets_met. Targets: every visitor succeeds, errors == 0,
wall_s[8] <= 2 x wall_s[1] (warm caches), cohort_threads_wrong == 0. Only 127.0.0.1 is contacted.

    .venv/bin/python bench/load.py [--sessions 1 4 8] [--timeout 300] [--keep-logs]

Classroom (--classroom, issue 21): a workshop class on one hosted server (BIASLENS_HOSTED=1,
BIASLENS_WORKSHOP=1, an instructor passphrase, no workspaces file, a cache of its own). The CLI
prepares the demo first, as `make serve` does (`prepare demo` where the CLI has it: store, saliency
profiles, the Intersectional defaults' probes and layout; else `build` and `saliency`). The server runs `streamlit run app.py` through a
small launcher whose thread reads core.services.server.SERVER in the server's own process (its run queues,
its reveal state, how late it gets the GIL back) and dumps every thread's stack on SIGUSR1 (sent at
the first failed step); --no-probe-queue starts it plainly. One Debian Chromium then holds:
- the instructor, who first does the students' steps once (the shared results are computed, as
  after a first visit) and unlocks the sidebar's Instructor panel with the passphrase;
- --trainers visitors (2) training the Intersectional probes with the page's defaults but k + 1
  epochs fewer (the defaults' own are prepared; each is its own run; within the hosted caps), and --saliency-visitors (2)
  turning filters off over many errors (Filter saliency's aggregate; visitor k: twice the images,
  capped); they start --heavy-lead s before the students;
- --students (20), arriving --stagger s apart, at most --active (5) working at once, each in its own
  context: Overview; Spotlight Run with defaults and the "Spotlight 2" panel; Cohorts, a WHERE filter
  saved as a subset; Subgroups, Select a subgroup, CAM under an image (the Grad-CAM dialog); Workshop,
  Check; then back to the Overview, left open (no reload) for the reveal;
- a hostile visitor who, --hostile-after s after the first student, sends Streamlit's clear-cache
  BackMsg over its own page's WebSocket (Playwright's WebSocket route) 3 times, reloads, once more.
Figures: light_wait_p95_s (95th percentile over students, from the CAM click to the dialog's image
and two Grad-CAM maps decoded; a Grad-CAM not drawn within 60 s counts as 60 s and as a failed step),
errors (exception boxes anywhere, failed steps, the instructor's failures), reveal_reach_s (from the
instructor's Reveal click until the last open student Overview shows a planted slice's name; with
the probe, also from the server's change), hide_reach_s, hidden_before_reveal (open Overviews still
hiding the slices after the hostile visitor), queue_bypassed (the heavy lane's peak running runs
above its slots, from the app's $BIASLENS_STATS_FILE JSON {"heavy_peak", "heavy_slots"} when the app
writes it, else from the probe; null without either), the heavy runs' times, the server's HTTP
answer times for a new visitor, memory and CPU. Targets: light_wait_p95_s <= 3, errors == 0,
reveal_reach_s <= 5, queue_bypassed == 0. The class phase is bounded by --students-budget and
--budget; the last stdout line is the JSON.

The server traces clicks to <logs>/clicks.jsonl ($BIASLENS_CLICK_LOG: one JSON line per visitor
rerun that reaches it and per details request, core.services.server.trace_click), so a CAM click
never drawn can be told apart: never sent, never run, or run and not drawn.

--browser-nice N starts Chromium at CPU nice N through a small wrapper script (0, the default:
as the server). The idea: in a class every student's browser runs on their own laptop, so the
server, what an operator provisions, should get the cores first. Measured on 2026-12-07 it does
not make the figure fairer: at load 13-19 niced pages starve and lose more CAM clicks (4 of 19
and 5 of the first 12, against 1 of 13 un-niced), so it stays off. The JSON says which
(browser_nice); the definitions stay as above.

    .venv/bin/python bench/load.py --classroom [--students 20] [--active 5] [--trainers 2]
        [--saliency-visitors 2] [--browser-nice 0] [--cache DIR] [--keep-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from common import ROOT, demo_parts, machine_figures, start_server, stop_server
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from playwright.async_api import Error as PlaywrightError

from core.services.cohorts import CohortView

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # many pages at once: keep every one of them running at full speed
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows", "--disable-dev-shm-usage",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
EXCEPTION = "[data-testid='stException']"
THREADS, QUERIES = 8, 150
# (cohort filter, the same filter in pandas)
FILTERS: list[tuple[str, Callable[[pd.DataFrame], pd.Series]]] = [
    ("correct = false", lambda m: ~m["correct"]),
    ("label = 'Sneaker'", lambda m: m["label"] == "Sneaker"),
    ("loss > 1 AND tint = 'red'", lambda m: (m["loss"] > 1) & (m["tint"] == "red")),
    ("NOT correct AND loss > 2", lambda m: ~m["correct"] & (m["loss"] > 2)),
    ("label = 'Pullover' AND brightness = 'dark'", lambda m: (m["label"] == "Pullover") & (m["brightness"] == "dark")),
    ("confidence < 0.6", lambda m: m["confidence"] < 0.6),
    ("pred = 'Shirt' AND label <> 'Shirt'", lambda m: (m["pred"] == "Shirt") & (m["label"] != "Shirt")),
    ("row % 7 = 0", lambda m: m["row"] % 7 == 0),
    ("tint IN ('blue', 'green') AND pattern = 'stripes'", lambda m: m["tint"].isin(["blue", "green"]) & (m["pattern"] == "stripes")),
    ("marker = 'square' OR p_true < 0.1", lambda m: (m["marker"] == "square") | (m["p_true"] < 0.1)),
]


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- cohorts under threads


def cohort_threads(meta: pd.DataFrame) -> dict[str, object]:
    """8 threads x 150 queries on one CohortView: answers that differ from pandas, and raised queries."""
    view = CohortView(meta)
    expected = [sorted(int(r) for r in meta.loc[mask(meta), "row"]) for _, mask in FILTERS]
    wrong = failed = 0
    messages: set[str] = set()
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def worker(offset: int) -> None:
        nonlocal wrong, failed
        start.wait()
        for i in range(QUERIES):
            k = (offset + i) % len(FILTERS)
            try:
                ok = view.rows(FILTERS[k][0]) == expected[k]
                with lock:
                    wrong += not ok
            except Exception as exc:  # every failure counts, whatever it is
                with lock:
                    failed += 1
                    messages.add(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"cohort_threads_wrong": wrong, "cohort_threads_failed": failed,
            "cohort_threads_s": round(time.perf_counter() - began, 2), "cohort_threads_messages": sorted(messages)[:5]}


# --------------------------------------------------------------------------- server and its memory




def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants that are alive."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def memory_mb(pid: int, field_name: str) -> float:
    """Sum of a /proc status field (VmRSS now, VmHWM peak) over ``pid``'s process tree, in MB."""
    total_kb = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(f"{field_name}:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return round(total_kb / 1024, 1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and of their children they have reaped."""
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def browser_processes(server_pid: int) -> list[int]:
    """This process's descendants outside the server: Playwright's driver and Chromium."""
    server = set(process_tree(server_pid))
    return [p for p in process_tree(os.getpid()) if p not in server and p != os.getpid()]






# --------------------------------------------------------------------------- one visitor


@dataclass
class Visit:
    """What happened to one visitor."""

    name: str
    ok: bool = False
    errors: int = 0
    failure: str | None = None
    steps: dict[str, float] = field(default_factory=dict)


def spent(pid: int, server_cpu: float, browser_cpu: float) -> dict[str, float]:
    """CPU seconds the server and the browser used since the readings given, and the server's RSS now."""
    return {
        "server_cpu_s": round(cpu_seconds(process_tree(pid)) - server_cpu, 1),
        "browser_cpu_s": round(cpu_seconds(browser_processes(pid)) - browser_cpu, 1),
        "rss_mb_after": memory_mb(pid, "VmRSS"),
    }


async def wait_idle(page: Page) -> None:
    """The script has finished (checked twice, 0.5 s apart, as the e2e tests do)."""
    await page.wait_for_selector(IDLE)
    await page.wait_for_timeout(500)
    await page.wait_for_selector(IDLE)


async def exception_texts(page: Page) -> list[str]:
    """The text of each exception box on the page (none if the page cannot be read)."""
    try:
        texts = await page.locator(EXCEPTION).all_inner_texts()
    except PlaywrightError:
        return []
    return [" ".join(t.split())[:300] for t in texts]


async def navigate(page: Page, title: str) -> None:
    await page.locator("[data-testid='stSidebar']").get_by_role("link", name=title).click()


async def overview(page: Page, url: str) -> None:
    await page.goto(url)
    await page.locator("[data-testid='stMetric']").filter(has_text="Accuracy").first.wait_for()
    await wait_idle(page)


async def spotlight(page: Page) -> None:
    await navigate(page, "Spotlight")
    await page.get_by_text("to find spotlights among").first.wait_for()
    await wait_idle(page)
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.get_by_text("Spotlights found").first.wait_for()
    await wait_idle(page)


async def subgroups(page: Page) -> None:
    await navigate(page, "Subgroups")
    await page.get_by_text("Under-performing subgroups").first.wait_for()
    await wait_idle(page)
    await page.get_by_role("button", name="Select", exact=True).first.wait_for()


async def visit(context: BrowserContext, url: str, name: str, timeout_s: float, shots: Path) -> Visit:
    """Overview, Spotlight with defaults, Subgroups; each step within ``timeout_s``, no exception box."""
    result = Visit(name)
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("overview", lambda: overview(page, url)), ("spotlight", lambda: spotlight(page)), ("subgroups", lambda: subgroups(page)),
    ]
    for step, run in steps:
        began = time.perf_counter()
        try:
            await asyncio.wait_for(run(), timeout_s)
        except (PlaywrightError, TimeoutError) as exc:
            detail = (str(exc).splitlines() or [f"not done within {timeout_s:g} s"])[0][:200]
            result.failure = f"{step}: {type(exc).__name__}: {detail}"
        result.steps[step] = round(time.perf_counter() - began, 1)
        boxes = await exception_texts(page)
        result.errors += len(boxes)
        if boxes and result.failure is None:
            result.failure = f"{step}: {len(boxes)} exception box(es): {' | '.join(boxes)}"
        if result.failure:
            shot = shots / f"{name}-{step}.png"
            with contextlib.suppress(PlaywrightError):
                await page.screenshot(path=str(shot), full_page=True, timeout=60_000)
            log(f"{name} failed at {result.failure} (screenshot {shot})")
            return result
    result.ok = True
    return result


# --------------------------------------------------------------------------- rounds


async def sample_peak(pid: int, stop: asyncio.Event, peak: list[float]) -> None:
    """Keep the highest resident memory of the server seen until ``stop`` is set."""
    while not stop.is_set():
        peak[0] = max(peak[0], memory_mb(pid, "VmRSS"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def run_round(browser: Browser, url: str, n: int, name: str, timeout_s: float, shots: Path, pid: int) -> tuple[list[Visit], dict[str, float]]:
    """N visitors at once; their contexts stay open until the server's memory is read.

    Returns the visits and the round's figures: sessions_ok, wall_s, errors, rss_mb_after,
    rss_mb_peak, and the CPU seconds the server and the browser (with Playwright's driver) used.
    """
    contexts = [await browser.new_context(viewport={"width": 1400, "height": 1600}) for _ in range(n)]
    stop, peak = asyncio.Event(), [0.0]
    sampler = asyncio.create_task(sample_peak(pid, stop, peak))
    server_cpu, browser_cpu = cpu_seconds(process_tree(pid)), cpu_seconds(browser_processes(pid))
    began = time.perf_counter()
    try:
        visits = await asyncio.gather(*(visit(c, url, f"{name}-s{i + 1}", timeout_s, shots) for i, c in enumerate(contexts)))
        figures = {"wall_s": round(time.perf_counter() - began, 1), **spent(pid, server_cpu, browser_cpu)}
    finally:
        stop.set()
        await sampler
        for context in contexts:
            await context.close()
    figures |= {"rss_mb_peak": max(peak[0], figures["rss_mb_after"]), "sessions_ok": sum(v.ok for v in visits),
                "errors": sum(v.errors for v in visits)}
    return list(visits), figures


async def drive(url: str, pid: int, sessions: list[int], timeout_s: float, shots: Path) -> dict[str, object]:
    """The warm-up visitor, then a round per N: each round figure as an object N -> value."""
    per_n: dict[str, dict[str, float]] = {}
    failures: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            log("warm-up visitor (not counted)...")
            (warm,), warm_figures = await run_round(browser, url, 1, "warmup", timeout_s, shots, pid)
            log(f"warm-up: {'ok' if warm.ok else 'FAILED'} in {warm_figures['wall_s']} s, steps {warm.steps}")
            failures += [f"warm-up: {warm.failure}"] if warm.failure else []
            load_before = [round(v, 2) for v in os.getloadavg()]
            for n in sessions:
                log(f"round N={n}...")
                visits, figures = await run_round(browser, url, n, f"n{n}", timeout_s, shots, pid)
                for key, value in figures.items():
                    per_n.setdefault(key, {})[str(n)] = value
                failures += [f"N={n} {v.name}: {v.failure}" for v in visits if v.failure]
                slowest = max(visits, key=lambda v: sum(v.steps.values()))
                log(f"N={n}: {figures}; slowest visitor's steps {slowest.steps}")
        finally:
            await browser.close()
    return {**per_n, "warmup_s": warm_figures["wall_s"], "warmup_ok": warm.ok, "failures": failures,
            "load_average_before_rounds": load_before}


# --------------------------------------------------------------------------- classroom (issue 21)
#
# A class on one hosted + workshop server: students follow the workshop steps while other
# visitors keep the heavy lane busy, a hostile visitor sends Streamlit's clear-cache message,
# and the instructor reveals then hides the ground truth. See the module docstring.

PASSPHRASE = "bench-classroom-tulip"
HIDDEN_TEXT = "hidden during the workshop"
# one finding per student, in turn: each a cohort a student could read off a spotlight's lift
FINDINGS = ("label = 'Sandal' AND marker = 'square'", "label = 'Pullover' AND brightness = 'dark'",
            "label = 'Trouser' AND pattern = 'stripes'", "label = 'Coat' AND tint = 'green'")
STATS_ENV = "BIASLENS_STATS_FILE"
CAM_TIMEOUT_S = 60.0  # a Grad-CAM not drawn by then counts as a failed step (and this wait)
TARGETS = {"light_wait_p95_s": 3.0, "errors": 0, "reveal_reach_s": 5.0, "queue_bypassed": 0}
# the time of the last pointer press, in the page's clock (performance.now(), ms)
CLICK_CLOCK = "document.addEventListener('pointerdown', () => { window.__down = performance.now(); }, true);"
# the image-details dialog shows its image and the two Grad-CAM maps, all three decoded
CAM_DRAWN = """() => {
  const dialog = document.querySelector("[data-testid='stDialog']");
  if (!dialog) return false;
  if (dialog.querySelector("[data-testid='stException'], [data-testid='stAlertContentError']")) return -1;
  const images = [...dialog.querySelectorAll("[data-testid='stImage'] img")];
  return images.length >= 3 && images.every(i => i.complete && i.naturalWidth > 0) ? performance.now() : false;
}"""
APP_TEXT = "(document.querySelector(\"[data-testid='stApp']\") || document.body).textContent"
SLICES_SHOWN = f"names => {{ const t = {APP_TEXT}; return names.filter(n => t.includes(n)); }}"
REVEALED = f"names => {{ const t = {APP_TEXT}; return names.some(n => t.includes(n)) ? Date.now() : false; }}"
HIDDEN_AGAIN = (f"([names, hidden]) => {{ const t = {APP_TEXT}; "
                "return t.includes(hidden) && !names.some(n => t.includes(n)) ? Date.now() : false; }")
# The server, started through this code so that a thread of its own process can read the run
# queues (core/services/server.py) and write what it saw to a JSON file: the app has no such hook yet.
PROBED_SERVER = r"""
import json, os, sys, threading, time
path = sys.argv[1]

import gc
from collections import Counter
pauses = {"total_s": 0.0, "max_ms": 0.0, "full": 0, "began": 0.0}

def timed_gc(phase, info):  # every collection's pause (the event loop stops while one runs)
    if phase == "start":
        pauses["began"] = time.perf_counter()
    else:
        pause = time.perf_counter() - pauses["began"]
        pauses["total_s"] += pause
        pauses["max_ms"] = max(pauses["max_ms"], 1000 * pause)
        pauses["full"] += info["generation"] == 2

gc.callbacks.append(timed_gc)

def watch():
    from core.services import server as shared  # the module the app imports: the same SERVER
    last_write, last_census, census = 0.0, 0.0, {}
    episodes, over, samples, last, revealed, changes = 0, False, 0, 0.0, False, []
    lags = [0.0]
    while True:
        heavy, light = shared.SERVER.heavy, shared.SERVER.light
        now_over = heavy.running > heavy.slots
        episodes += now_over and not over
        over, samples = now_over, samples + 1
        if shared.SERVER.workshop.snapshot().revealed != revealed:  # when the server's reveal state changed
            revealed = not revealed
            changes.append([time.time(), revealed])
        if time.monotonic() - last >= 0.5 or changes and changes[-1][0] > last_write:
            last = time.monotonic()
            last_write = time.time()
            if time.monotonic() - last_census >= 30:  # what the collector walks through
                # never gc.get_objects() here: it hands out references to tuples other threads are still
                # building (tuple(generator)), whose resize then fails: "SystemError: Objects/tupleobject.c:
                # bad argument to internal function" in the app's runs (exception boxes in the class)
                slots = list(getattr(shared.SERVER.results, "_slots", {}))  # the shared results kept, by kind
                census = {"gc_counts": gc.get_count(), "frozen": gc.get_freeze_count(),
                          "result_slots": len(slots), "result_slots_by_kind": Counter(k[0] for k in slots).most_common(12)}
                last_census = time.monotonic()
            with open(path + ".tmp", "w") as out:
                json.dump({"heavy_peak": heavy.peak_running, "heavy_slots": heavy.slots, "heavy_over_episodes": episodes,
                           "light_peak": light.peak_running, "light_slots": light.slots, "samples": samples,
                           "reveal_changes": changes,
                           "wakeup_lag_ms_p50": round(1000 * sorted(lags)[len(lags) // 2], 1),
                           "wakeup_lag_ms_p95": round(1000 * sorted(lags)[int(len(lags) * 0.95)], 1),
                           "gc_total_s": round(pauses["total_s"], 1), "gc_max_pause_ms": round(pauses["max_ms"], 1),
                           "gc_full_collections": pauses["full"], **census}, out)
            os.replace(path + ".tmp", path)
        due = time.monotonic() + 0.02
        time.sleep(0.02)
        lags.append(time.monotonic() - due)  # how late this thread got the CPU and the GIL back after its sleep
        del lags[:-3000]

threading.Thread(target=watch, daemon=True, name="bench-queue-probe").start()
import faulthandler, signal
faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to the log
from streamlit.web import cli
sys.argv = ["streamlit", *sys.argv[2:]]
cli.main()
"""


@dataclass
class Student(Visit):
    """One student's visit: the Visit's figures, plus the Grad-CAM wait and the steps ticked."""

    light_wait_s: float | None = None
    cam_clicked_at: float | None = None  # time.time() of the CAM click
    steps_ticked: int | None = None
    url_keeps_visitor: bool | None = None
    page: Page | None = None


@dataclass
class Heavy:
    """A visitor who starts one heavy run (probes or a saliency aggregate) and waits for it."""

    name: str
    kind: str
    setting: str = ""
    errors: int = 0
    failure: str | None = None
    pressed_at: float | None = None  # time.time() of the button press
    done_at: float | None = None
    page_s: float | None = None  # the page's load, before the button (its own heavy runs included)

    @property
    def run_s(self) -> float | None:
        return round(self.done_at - self.pressed_at, 1) if self.done_at and self.pressed_at else None


DUMPED: dict[str, object] = {"pid": None, "done": False}


def dump_server_stacks(who: str) -> None:
    """On the first failed step: have the probed server write every thread's stack to its log."""
    if DUMPED["pid"] and not DUMPED["done"]:
        DUMPED["done"] = True
        with contextlib.suppress(OSError):
            os.kill(DUMPED["pid"], signal.SIGUSR1)
            log(f"{who} failed: the server's thread stacks are in its log")


async def count_exceptions(page: Page, who: str, where: str) -> int:
    boxes = await exception_texts(page)
    if boxes:
        log(f"{who}: {len(boxes)} exception box(es) at {where}: {' | '.join(boxes)}")
    return len(boxes)


async def shoot(page: Page, path: Path) -> None:
    with contextlib.suppress(PlaywrightError):
        await page.screenshot(path=str(path), full_page=True, timeout=60_000)


async def step(result: Student | Heavy, page: Page, name: str, action: Callable[[], Awaitable[None]], timeout_s: float,
               shots: Path, steps: dict[str, float] | None = None) -> bool:
    """Run one step within ``timeout_s``; a failure or an exception box is recorded (with a screenshot)."""
    began = time.perf_counter()
    try:
        await asyncio.wait_for(action(), timeout_s)
    except (PlaywrightError, TimeoutError) as exc:
        detail = (str(exc).splitlines() or [f"not done within {timeout_s:g} s"])[0][:200]
        result.failure = f"{name}: {type(exc).__name__}: {detail}"
    if steps is not None:
        steps[name] = round(time.perf_counter() - began, 1)
    boxes = await count_exceptions(page, result.name, name)
    result.errors += boxes
    if boxes and result.failure is None:
        result.failure = f"{name}: {boxes} exception box(es)"
    if result.failure:
        dump_server_stacks(result.name)
        shot = shots / f"{result.name}-{name}.png"
        await shoot(page, shot)
        log(f"{result.name} failed at {result.failure} (screenshot {shot}); steps {steps}")
        return False
    return True


class AppException(PlaywrightError):
    """The page shows an exception box where the bench waited for something else."""


async def expect(page: Page, locator, timeout_s: float | None = None) -> None:
    """Wait for ``locator`` (its first match) or an exception box, whichever comes first; raise on the box."""
    await locator.first.or_(page.locator(EXCEPTION).first).first.wait_for(
        timeout=None if timeout_s is None else timeout_s * 1000)
    if await page.locator(EXCEPTION).count():
        raise AppException("an exception box instead of the expected element")


async def on_overview(page: Page, url: str | None = None) -> None:
    """Open (``url``) or come back to the Overview, ground truth hidden; wait until it is drawn."""
    if url is None:
        await navigate(page, "Overview")
    else:
        await page.goto(url)
    await expect(page, page.get_by_text(HIDDEN_TEXT))
    await expect(page, page.locator("[data-testid='stMetric']").filter(has_text="Accuracy"))
    await wait_idle(page)


async def student(context: BrowserContext, url: str, i: int, result: Student, timeout_s: float, shots: Path) -> Student:
    """The workshop's steps, as a student does them; ends back on the Overview, left open."""
    page = result.page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    await page.add_init_script(CLICK_CLOCK)
    subset = f"finding of student {i + 1}"

    async def spotlight_panel() -> None:
        await navigate(page, "Spotlight")
        await expect(page, page.get_by_text("to find spotlights among"))
        await wait_idle(page)
        await page.get_by_role("button", name="Run", exact=True).click()  # the defaults
        await expect(page, page.get_by_text("Spotlights found"))
        await wait_idle(page)
        await page.get_by_role("radio", name="Spotlight 2", exact=True).first.click()  # another spotlight's panel
        await wait_idle(page)
        await expect(page, page.get_by_text("Top-weighted images"))

    async def cohort_subset() -> None:
        await navigate(page, "Cohorts & subsets")
        await expect(page, page.get_by_text("Columns you can filter on"))
        await wait_idle(page)
        box = page.get_by_label("WHERE", exact=True)
        await box.fill(FINDINGS[i % len(FINDINGS)])
        await box.press("Enter")
        name = page.get_by_label("Subset name", exact=True)
        await expect(page, name)
        await wait_idle(page)
        await name.fill(subset)
        await page.get_by_role("button", name="Save as subset").click()
        await wait_idle(page)
        await expect(page, page.get_by_text("Open subset"))  # the subsets section lists it

    async def subgroup_cam() -> None:
        await navigate(page, "Subgroups")
        await expect(page, page.get_by_text("Under-performing subgroups"))
        await wait_idle(page)
        select = page.get_by_role("button", name="Select", exact=True)
        await select.first.wait_for()
        await select.nth(i % await select.count()).click()
        await wait_idle(page)
        cams = page.get_by_role("button", name="CAM", exact=True)
        await expect(page, cams)
        cam = cams.nth((5 * i) % await cams.count())  # each student another image: a Grad-CAM of its own
        for attempt in range(3):  # the thumbnails may be redrawn meanwhile
            try:
                await cam.scroll_into_view_if_needed()
                break
            except PlaywrightError:
                if attempt == 2:
                    raise
                await wait_idle(page)
        await wait_idle(page)
        result.cam_clicked_at = time.time()
        await cam.click()
        try:
            drawn = await page.wait_for_function(CAM_DRAWN, polling=50, timeout=CAM_TIMEOUT_S * 1000)
        except PlaywrightError:
            result.light_wait_s = CAM_TIMEOUT_S  # counted at the limit: a lower bound
            opened = await page.locator("[data-testid='stDialog']").count()
            raise AppException(f"no Grad-CAM drawn within {CAM_TIMEOUT_S:g} s of the CAM click "
                               f"({'the dialog opened' if opened else 'no dialog opened'})") from None
        done, down = await drawn.json_value(), await page.evaluate("window.__down")
        if done < 0:
            result.light_wait_s = CAM_TIMEOUT_S  # never drawn: counted at the limit, as a lost one
            text = await page.locator("[data-testid='stDialog']").inner_text()
            raise AppException(f"the image-details dialog shows an error: {' '.join(text.split())[-300:]}")
        result.light_wait_s = round((done - down) / 1000, 3)
        await wait_idle(page)
        await page.keyboard.press("Escape")
        await page.locator("[data-testid='stDialog']").wait_for(state="detached")
        await wait_idle(page)

    async def check_finding() -> None:
        await navigate(page, "Workshop: check my finding")
        await expect(page, page.get_by_role("button", name="Check", exact=True))
        await wait_idle(page)
        await page.get_by_role("button", name="Check", exact=True).click()
        await expect(page, page.get_by_text("A random subset of the same size"))
        await wait_idle(page)

    async def back_home() -> None:
        await on_overview(page)
        ticked = await page.get_by_text(re.compile(r"Workshop steps \(\d of \d done\)")).first.inner_text()
        result.steps_ticked = int(re.search(r"\((\d) of", ticked).group(1))
        result.url_keeps_visitor = "v=" in page.url

    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("overview", lambda: on_overview(page, url)), ("spotlight", spotlight_panel), ("cohort", cohort_subset),
        ("subgroup_cam", subgroup_cam), ("check", check_finding), ("overview_again", back_home),
    ]
    for name, action in steps:
        if not await step(result, page, name, action, timeout_s, shots, result.steps):
            return result
    result.ok = True
    log(f"{result.name} done: steps {result.steps}, Grad-CAM {result.light_wait_s} s, {result.steps_ticked} of 6 ticked")
    return result


async def trainer(context: BrowserContext, url: str, k: int, timeout_s: float, heavy_timeout_s: float, shots: Path) -> Heavy:
    """Intersectional: train the probes with the page's defaults, except trainer k trains k + 1 epochs
    fewer (the defaults' probes are prepared on the server, so they would not train; and each trainer's
    is a run of its own, not another's shared result); within the hosted caps (fewer epochs if refused)."""
    result = Heavy(f"trainer{k + 1}", "probes")
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    began = time.perf_counter()

    async def load() -> None:
        await on_overview(page, url)
        await navigate(page, "Intersectional")
        await expect(page, page.get_by_text("Linear probes per layer"))
        await wait_idle(page)
        epochs = page.get_by_role("spinbutton", name="Epochs")
        train = page.get_by_role("button", name="Train the probes")
        await expect(page, epochs)  # the defaults' probes may be prepared: then no button until epochs change
        value = max(1, int(await epochs.input_value()) - k - 1)
        await epochs.fill(str(value))
        await epochs.press("Enter")
        await wait_idle(page)
        await expect(page, page.get_by_text(re.compile(rf"seed\(s\) × {value} epochs")))
        await expect(page, train)
        while await train.is_disabled() and value > 1:  # a hosted cap refuses it: the largest allowed
            value = max(1, value // 2)
            log(f"{result.name}: the probe run is refused ({await page.locator('[data-testid=stAlert]').first.inner_text()}); "
                f"trying {value} epochs")
            await epochs.fill(str(value))
            await epochs.press("Enter")
            await wait_idle(page)
        seeds = await page.get_by_role("spinbutton", name="Seeds").input_value()
        result.setting = f"{seeds} seeds x {value} epochs"
        result.page_s = round(time.perf_counter() - began, 1)

    async def train() -> None:
        await page.get_by_role("button", name="Train the probes").click()
        result.pressed_at = time.time()
        log(f"{result.name}: training the probes ({result.setting})")
        await expect(page, page.get_by_text("Most frequent errors"), heavy_timeout_s)
        result.done_at = time.time()

    if await step(result, page, "page", load, timeout_s, shots):
        await step(result, page, "train", train, heavy_timeout_s, shots)
    log(f"{result.name}: {'done' if result.done_at else 'NOT done'}, page {result.page_s} s, run {result.run_s} s")
    return result


async def saliency_visitor(context: BrowserContext, url: str, k: int, timeout_s: float, heavy_timeout_s: float,
                           shots: Path) -> Heavy:
    """Filter saliency: turn filters off over many misclassified images (the aggregate section); visitor
    k > 0 asks for more images (the most a hosted server allows), so each is a run of its own."""
    result = Heavy(f"saliency{k + 1}", "saliency aggregate")
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    began = time.perf_counter()
    # the aggregate's own box (keyed saliency.agg_cap): the page's per-group section has one of the same name
    cap_box = page.locator("[class*='agg_cap']").get_by_role("spinbutton", name="At most (highest loss first)")
    button = page.get_by_role("button", name=re.compile(r"^Turn filters off on"))

    async def set_cap(value: int) -> None:
        await cap_box.fill(str(value))
        await cap_box.press("Enter")
        await wait_idle(page)
        await expect(page, page.get_by_role("button", name=re.compile(rf"^Turn filters off on {value:,} images")))

    async def load() -> None:
        await on_overview(page, url)
        await navigate(page, "Filter saliency")
        await expect(page, page.get_by_text("Turning filters off over many errors"))
        await wait_idle(page)
        await expect(page, button)
        if k:
            most = await cap_box.get_attribute("max")
            await set_cap(min(int(float(most)) if most else 10**9, 2 * int(await cap_box.input_value())))
        result.page_s = round(time.perf_counter() - began, 1)

    async def run() -> None:
        for _ in range(4):
            result.setting = (await button.inner_text()).strip()
            await button.click()
            result.pressed_at = time.time()
            log(f"{result.name}: {result.setting}")
            done = page.get_by_text("mean confidence over").first
            refused = page.get_by_text("cannot be computed").first
            await expect(page, done.or_(refused), heavy_timeout_s)
            if await done.is_visible():
                result.done_at = time.time()
                return
            log(f"{result.name}: refused ({(await refused.inner_text())[:200]}); halving the images")
            await set_cap(max(2, int(await cap_box.input_value()) // 2))
        raise TimeoutError("every image count was refused")

    if await step(result, page, "page", load, timeout_s, shots):
        await step(result, page, "run", run, heavy_timeout_s, shots)
    log(f"{result.name}: {'done' if result.done_at else 'NOT done'}, page {result.page_s} s, run {result.run_s} s")
    return result


async def hostile(browser: Browser, url: str, messages: int, timeout_s: float) -> dict[str, object]:
    """A visitor who sends Streamlit's clear-cache BackMsg over its own page's WebSocket, as the
    frontend's "Clear caches" does (the keyboard shortcut is not offered on a hosted server)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: TID251 - the bench speaks Streamlit's protocol

    context = await browser.new_context(viewport={"width": 1400, "height": 1600})
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    sockets: list = []
    # every message still goes both ways: connect_to_server() forwards them, send() adds ours
    await page.route_web_socket(re.compile(r".*/_stcore/stream"), lambda ws: sockets.append(ws.connect_to_server()))
    try:
        await on_overview(page, url)
        message = BackMsg(clear_cache=True).SerializeToString()
        for _ in range(messages):
            sockets[-1].send(message)
            await page.wait_for_timeout(1000)
        await page.reload()  # and once more from a fresh session
        await page.get_by_text(HIDDEN_TEXT).first.wait_for()
        sockets[-1].send(message)
        await page.wait_for_timeout(1000)
        return {"sent": messages + 1, "at": time.time(), "errors": len(await exception_texts(page))}
    finally:
        await context.close()


async def unlock(page: Page, url: str) -> None:
    """The instructor opens the Overview and unlocks the sidebar's Instructor panel."""
    await on_overview(page, url)
    await page.locator("[data-testid='stSidebar'] [data-testid='stExpander'] summary").filter(has_text="Instructor").click()
    await page.get_by_label("Instructor passphrase").fill(PASSPHRASE)
    await page.get_by_role("button", name="Unlock").click()
    await page.get_by_role("button", name="Reveal the ground truth").wait_for()
    await wait_idle(page)


async def reach(instructor: Page, button: str, pages: list[Page], script: str, arg: object, wait_s: float,
                probe_file: Path, revealed: bool) -> dict[str, object]:
    """Press the instructor's ``button``; seconds until the last of ``pages`` shows it (``script``
    returns Date.now() once it does), and how many pages did not within ``wait_s``. With the
    bench's probe in the server: when the server's state changed, and the reach from then."""
    watches = [asyncio.ensure_future(p.wait_for_function(script, arg=arg, polling=100, timeout=wait_s * 1000)) for p in pages]
    await asyncio.sleep(0.3)  # the watches are installed
    pressed = time.time()
    await instructor.get_by_role("button", name=button).click()
    seen, missed = [], 0
    for outcome in await asyncio.gather(*watches, return_exceptions=True):
        if isinstance(outcome, BaseException):
            missed += 1
        else:
            seen.append(await outcome.json_value() / 1000)
    figures: dict[str, object] = {"reach_s": round(max(seen) - pressed, 2) if seen else None, "missed": missed,
                                  "median_s": percentile([t - pressed for t in seen], 50)}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        changes = json.loads(probe_file.read_text())["reveal_changes"]
        changed = next((t for t, state in changes if state == revealed and t >= pressed - 1), None)
        if changed is None:
            raise ValueError("the probe saw no change")
        figures |= {"server_changed_s": round(changed - pressed, 2),
                    "reach_from_server_s": round(max(seen) - changed, 2) if seen else None}
    return figures


async def slices_shown(pages: list[Page], names: list[str]) -> list[list[str]]:
    """The slice names each page shows (none while the ground truth is hidden)."""
    shown = []
    for page in pages:
        try:
            shown.append(await page.evaluate(SLICES_SHOWN, names))
        except PlaywrightError:
            shown.append([])
    return shown


def queue_stats(app_file: Path, probe_file: Path) -> tuple[dict[str, int] | None, str | None]:
    """The server's run-queue figures: the app's own hook ($BIASLENS_STATS_FILE, when the app writes
    it) first, else what this bench's probe thread in the server process saw; (None, None) without either."""
    for path, source in ((app_file, "app"), (probe_file, "bench-probe")):
        try:
            stats = json.loads(path.read_text())
            if isinstance(stats.get("heavy_peak"), int) and isinstance(stats.get("heavy_slots"), int):
                return stats, source
        except (OSError, ValueError, AttributeError):
            continue
    return None, None


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, as numpy's default); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (at - low), 3)


async def http_probe(url: str, stop: asyncio.Event, samples: list[float]) -> None:
    """Every 2 s until ``stop``: seconds the server takes to answer /_stcore/health and the page's
    HTML (a new visitor's first requests; 30 s = no answer)."""
    def fetch(path: str) -> float:
        began = time.perf_counter()
        try:
            urllib.request.urlopen(f"{url}{path}", timeout=30).read()
        except OSError:
            return 30.0
        return time.perf_counter() - began

    while not stop.is_set():
        samples.append(max(await asyncio.to_thread(fetch, "/_stcore/health"), await asyncio.to_thread(fetch, "/")))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2)


async def classroom_drive(url: str, pid: int, args: argparse.Namespace, slice_names: list[str], shots: Path,
                          stats_files: tuple[Path, Path]) -> dict[str, object]:
    """The class, in order: the instructor's warm-up and unlock, the heavy visitors, then the
    students (the hostile visitor among them), the reveal and the hide, and the heavy runs' end."""
    began = time.monotonic()
    deadline = began + args.budget
    failures: list[str] = []
    figures: dict[str, object] = {}
    view = {"viewport": {"width": 1400, "height": 1600}}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=niced_chromium(shots.parent, args.browser_nice), headless=True,
                                          args=BROWSER_ARGS)
        stop, peak, http = asyncio.Event(), [0.0], []
        sampler = asyncio.create_task(sample_peak(pid, stop, peak))
        http_sampler = asyncio.create_task(http_probe(url, stop, http))
        server_cpu, browser_cpu = cpu_seconds(process_tree(pid)), cpu_seconds(browser_processes(pid))
        try:
            # the instructor tries the students' flow before class (the shared results are computed
            # then, as after `make serve` and a first visit), and unlocks the Instructor panel
            log("instructor: warm-up (the students' steps, on images and a subgroup no student picks), then unlock...")
            warm_context = await browser.new_context(**view)
            warm = await student(warm_context, url, -1, Student("warmup"), args.timeout, shots)
            await warm_context.close()
            figures["warmup_s"] = round(sum(warm.steps.values()), 1)
            failures += [f"warm-up: {warm.failure}"] if warm.failure else []
            instructor_context = await browser.new_context(**view)
            instructor = await instructor_context.new_page()
            instructor.set_default_timeout(args.timeout * 1000)
            await unlock(instructor, url)
            log(f"warm-up {'ok' if warm.ok else 'FAILED'} in {figures['warmup_s']} s {warm.steps}; instructor unlocked")

            heavy_contexts = [await browser.new_context(**view) for _ in range(args.trainers + args.saliency_visitors)]
            heavy_tasks = [asyncio.create_task(trainer(c, url, k, args.timeout, args.heavy_timeout, shots))
                           for k, c in enumerate(heavy_contexts[: args.trainers])]
            heavy_tasks += [asyncio.create_task(saliency_visitor(c, url, k, args.timeout, args.heavy_timeout, shots))
                            for k, c in enumerate(heavy_contexts[args.trainers:])]
            log(f"{args.trainers} trainer(s) and {args.saliency_visitors} saliency visitor(s) started; "
                f"students in {args.heavy_lead:g} s")
            await asyncio.sleep(args.heavy_lead)

            log(f"{args.students} students, {args.stagger:g} s apart, at most {args.active} working at once "
                "(the others wait for their turn, or sit on their Overview when done)...")
            students_began = time.monotonic()
            students = [Student(f"student{i + 1:02d}") for i in range(args.students)]
            turn = asyncio.Semaphore(args.active)

            async def late(i: int) -> Student:
                await asyncio.sleep(i * args.stagger)
                async with turn:
                    context = await browser.new_context(**view)  # stays open: the page waits for the reveal
                    return await student(context, url, i, students[i], args.timeout, shots)

            student_tasks = [asyncio.create_task(late(i)) for i in range(args.students)]

            async def attack() -> dict[str, object]:
                await asyncio.sleep(args.hostile_after)
                log("hostile visitor: clear-cache messages over its page's WebSocket...")
                sent = await hostile(browser, url, 3, args.timeout)
                await asyncio.sleep(2 * 2.5)  # two polls of the open pages
                shown = await slices_shown([s.page for s in students if s.page is not None], slice_names)
                sent["student_pages_checked"] = len(shown)
                sent["student_pages_showing_slices"] = sum(bool(s) for s in shown)
                log(f"hostile visitor: {sent}")
                return sent

            hostile_task = asyncio.create_task(attack()) if args.hostile_after >= 0 else None
            _, late_ones = await asyncio.wait(student_tasks, timeout=args.students_budget + args.students * args.stagger)
            for task in late_ones:
                task.cancel()
            await asyncio.gather(*late_ones, return_exceptions=True)
            for s in students:
                if not s.ok and s.failure is None:
                    s.failure = f"not done within the students' budget ({args.students_budget:g} s); steps {s.steps}"
            figures["students_wall_s"] = round(time.monotonic() - students_began, 1)
            if hostile_task is not None:
                try:
                    figures["hostile"] = await hostile_task
                except (PlaywrightError, TimeoutError) as exc:
                    failures.append(f"hostile visitor: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    figures["hostile"] = None
            # the hostile task checks the pages of students that are still on their way: check them all now
            open_pages = [s.page for s in students if s.ok and s.page is not None]
            shown = await slices_shown(open_pages, slice_names)
            figures["hidden_before_reveal"] = sum(not s for s in shown)
            figures["students_on_overview"] = len(open_pages)
            log(f"students done in {figures['students_wall_s']} s: {sum(s.ok for s in students)} ok; "
                f"{figures['hidden_before_reveal']} of {len(open_pages)} open Overviews hide the slices")

            figures |= {"reveal_reach_s": None, "reveal_missed": None, "hide_reach_s": None}
            reveal_errors = 0
            instructor.set_default_timeout(60_000)
            try:
                log("instructor: Reveal the ground truth...")
                revealed = await reach(instructor, "Reveal the ground truth", open_pages, REVEALED, slice_names, 60,
                                       stats_files[1], True)
                figures |= {"reveal_reach_s": revealed["reach_s"], "reveal_missed": revealed["missed"], "reveal": revealed}
                await wait_idle(instructor)
                await asyncio.sleep(3)
                log(f"revealed: the last of {len(open_pages)} open pages showed the slices: {revealed}")
                hidden = await reach(instructor, "Hide the ground truth", open_pages, HIDDEN_AGAIN,
                                     [slice_names, HIDDEN_TEXT], 60, stats_files[1], False)
                figures |= {"hide_reach_s": hidden["reach_s"], "hide": hidden}
                log(f"hidden again: {hidden}")
            except PlaywrightError as exc:
                reveal_errors += 1
                failures.append(f"instructor: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                log(f"the instructor's reveal/hide failed: {failures[-1]}")
                await shoot(instructor, shots / "instructor-reveal.png")
            reveal_errors += sum([await count_exceptions(pg, "student", "reveal/hide") for pg in [instructor, *open_pages]])

            left = max(0.0, deadline - time.monotonic())
            log(f"waiting for the heavy runs (at most {left:.0f} s more)...")
            done, pending = await asyncio.wait(heavy_tasks, timeout=left) if heavy_tasks else (set(), set())
            for task in pending:
                task.cancel()
            heavy = [t.result() for t in heavy_tasks if t in done and t.exception() is None]
            failures += [f"a heavy visitor raised {t.exception()!r}" for t in done if t.exception() is not None]
            unfinished = len(pending) + sum(h.done_at is None for h in heavy)
            figures |= spent(pid, server_cpu, browser_cpu)
        finally:
            stop.set()
            await sampler
            await http_sampler
            await browser.close()

    waits = [s.light_wait_s for s in students if s.light_wait_s is not None]
    heavy_windows = [(h.pressed_at, h.done_at or time.time()) for h in heavy if h.pressed_at]
    cams_during_heavy = sum(any(a <= s.cam_clicked_at <= b for a, b in heavy_windows) for s in students if s.cam_clicked_at)
    failures += [f"{s.name}: {s.failure}" for s in students if s.failure]
    failures += [f"{h.name}: {h.failure}" for h in heavy if h.failure]
    failures += [f"{len(pending)} heavy visitor(s) still running at the deadline"] if pending else []
    stats, source = queue_stats(*stats_files)
    hostile_errors = (figures.get("hostile") or {}).get("errors", 0)
    return {
        **figures,
        "light_wait_p95_s": percentile(waits, 95),
        "light_wait_median_s": percentile(waits, 50),
        "light_wait_max_s": max(waits) if waits else None,
        "light_wait_s": sorted(waits),
        "cams_while_heavy_ran": cams_during_heavy,
        "http_first_request_p95_s": percentile(http, 95), "http_first_request_max_s": round(max(http), 2) if http else None,
        "errors": sum(s.errors + (not s.ok and s.errors == 0) for s in students) + sum(h.errors for h in heavy)
                  + int(bool(warm.failure)) + reveal_errors + hostile_errors,
        "students_ok": sum(s.ok for s in students),
        "students_all_steps_ticked": sum(s.steps_ticked == 6 for s in students),
        "students_url_keeps_visitor": sum(bool(s.url_keeps_visitor) for s in students),
        "student_steps_max_s": {k: max(s.steps.get(k, 0) for s in students) for k in dict.fromkeys(k for s in students for k in s.steps)},
        "student_steps_median_s": {k: percentile([s.steps[k] for s in students if k in s.steps], 50)
                                   for k in dict.fromkeys(k for s in students for k in s.steps)},
        "heavy": [{"name": h.name, "kind": h.kind, "setting": h.setting, "page_s": h.page_s, "run_s": h.run_s,
                   "ok": h.done_at is not None and h.failure is None} for h in heavy],
        "heavy_unfinished": unfinished,
        "queue_bypassed": max(0, stats["heavy_peak"] - stats["heavy_slots"]) if stats else None,
        "queue_stats": stats, "queue_stats_source": source,
        "rss_mb_peak": max(peak[0], figures.get("rss_mb_after", 0.0)),
        "classroom_s": round(time.monotonic() - began, 1),
        "failures": failures,
    }


def prepare_demo(env: dict[str, str]) -> str:
    """The demo prepared with the CLI as `make serve` does: `prepare demo` where the CLI has it (store,
    saliency profiles, the Intersectional page's default probes with their activations, layouts),
    else `build` then `saliency`. Returns what ran."""
    help_text = subprocess.run([sys.executable, "-m", "core", "--help"], cwd=ROOT, env=env, capture_output=True, text=True).stdout
    if re.search(r"\bprepare\b", help_text):
        command = [sys.executable, "-m", "core", "prepare", "demo"]
        log(f"preparing the demo: {' '.join(command[2:])}")
        if subprocess.run(command, cwd=ROOT, env=env, stdout=sys.stderr).returncode == 0:
            return "prepare demo"
        log("`prepare` failed: building the store and the saliency profiles instead")
    for command in (["build", "demo"], ["saliency", "demo", "--yes"]):
        log(f"python -m core {' '.join(command)}")
        subprocess.run([sys.executable, "-m", "core", *command], cwd=ROOT, env=env, check=True, stdout=sys.stderr)
    return "build demo; saliency demo --yes"


def niced_chromium(folder: Path, nice: int) -> str:
    """Chromium's path, or at ``nice`` > 0 a script in ``folder`` that starts it at that CPU
    priority (its renderers inherit it), to give Playwright as its executable."""
    if nice <= 0:
        return CHROMIUM
    wrapper = folder / "chromium-niced"
    wrapper.write_text(f'#!/bin/sh\nexec nice -n {int(nice)} "{CHROMIUM}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def classroom(args: argparse.Namespace) -> None:
    """The classroom run: set up the server, drive the class, print the figures as one JSON line."""
    keep_cache = args.cache is not None
    cache = Path(args.cache) if keep_cache else Path(tempfile.mkdtemp(prefix="biaslens-class-cache-"))
    out = Path(tempfile.mkdtemp(prefix="biaslens-class-"))
    shots = out / "screenshots"
    shots.mkdir()
    app_stats, probe_stats = out / "stats.json", out / "probe-stats.json"
    os.environ.update({
        "BIASLENS_HOSTED": "1", "BIASLENS_WORKSHOP": "1", "BIASLENS_INSTRUCTOR_PASSPHRASE": PASSPHRASE,
        "BIASLENS_WORKSPACES": str(out / "no-workspaces.toml"), "BIASLENS_CACHE": str(cache), STATS_ENV: str(app_stats),
        "BIASLENS_CLICK_LOG": str(out / "clicks.jsonl"),
    })
    server: subprocess.Popen | None = None
    finished = False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so that `finally` stops the server
    try:
        began = time.perf_counter()
        prepared = prepare_demo(dict(os.environ))
        prepare_s = round(time.perf_counter() - began, 1)
        store = demo_parts()[2]
        slice_names = [c.removeprefix("slice_") for c in store.slice_columns]
        launcher = [sys.executable, "-c", PROBED_SERVER, str(probe_stats)] if args.probe_queue else None
        server, url = start_server(out / "streamlit.log", launcher=launcher, flags=tuple(args.streamlit_flag))
        DUMPED["pid"] = server.pid if args.probe_queue else None
        log(f"server {url} (pid {server.pid}), log {out / 'streamlit.log'}; prepared in {prepare_s} s ({prepared})")
        figures = asyncio.run(classroom_drive(url, server.pid, args, slice_names, shots, (app_stats, probe_stats)))
        figures["peak_rss_mb"] = memory_mb(server.pid, "VmHWM")
        if server.poll() is not None:
            figures["failures"].append(f"the server exited with status {server.returncode}")
        log_text = (out / "streamlit.log").read_text(errors="replace")
        figures["server_tracebacks"] = log_text.count("Traceback (most recent call last)")
        finished = True
    finally:
        if server is not None:
            stop_server(server)
        if not keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
        if args.keep_logs or not finished or any(shots.iterdir()) or (finished and figures["server_tracebacks"]):
            log(f"kept the server log and screenshots in {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)

    met = {
        "light_wait_p95_le_3s": figures["light_wait_p95_s"] is not None and figures["light_wait_p95_s"] <= TARGETS["light_wait_p95_s"],
        "no_errors": figures["errors"] == 0 and figures["students_ok"] == args.students,
        "reveal_reach_le_5s": figures["reveal_reach_s"] is not None and figures["reveal_missed"] == 0
                              and figures["reveal_reach_s"] <= TARGETS["reveal_reach_s"],
        "hidden_until_reveal": figures["students_on_overview"] > 0
                               and figures["hidden_before_reveal"] == figures["students_on_overview"]
                               and not (figures.get("hostile") or {}).get("student_pages_showing_slices"),
        "queue_not_bypassed": None if figures["queue_bypassed"] is None else figures["queue_bypassed"] == 0,
    }
    log(f"light wait p95 {figures['light_wait_p95_s']} s, errors {figures['errors']}, reveal {figures['reveal_reach_s']} s, "
        f"queue bypassed {figures['queue_bypassed']} ({figures['queue_stats_source']}); targets met: {met}")
    print(json.dumps({
        "mode": "classroom", "streamlit_flags": args.streamlit_flag, "students": args.students, "active": args.active, "trainers": args.trainers, "saliency_visitors": args.saliency_visitors,
        "browser_nice": args.browser_nice,
        **{k: figures.pop(k) for k in ("light_wait_p95_s", "errors", "reveal_reach_s", "queue_bypassed")},
        **figures, "prepared_with": prepared, "prepare_s": prepare_s, "targets": TARGETS, "targets_met": met,
        "timeout_s": args.timeout, "cpus": os.cpu_count(), **machine_figures("cpu"),
    }))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8], help="concurrent visitors per round")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for each step of a visit")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server log and screenshots folder")
    group = parser.add_argument_group("classroom (issue 21): a workshop class on one hosted server")
    group.add_argument("--classroom", action="store_true", help="run the classroom instead of the rounds")
    group.add_argument("--students", type=int, default=20, help="students following the workshop steps")
    group.add_argument("--trainers", type=int, default=2, help="visitors training the Intersectional probes")
    group.add_argument("--saliency-visitors", type=int, default=2, help="visitors turning filters off over many images")
    group.add_argument("--stagger", type=float, default=1.0, help="seconds between two students' arrivals")
    group.add_argument("--heavy-lead", type=float, default=20.0, help="seconds the heavy visitors start before the students")
    group.add_argument("--heavy-timeout", type=float, default=900.0, help="seconds allowed for one heavy run")
    group.add_argument("--hostile-after", type=float, default=30.0,
                       help="seconds after the first student when the hostile visitor clears the caches (< 0: none)")
    group.add_argument("--active", type=int, default=5,
                       help="students working at once (each in its own browser context; 20 at once do not fit on 2 cores)")
    group.add_argument("--students-budget", type=float, default=720.0,
                       help="seconds for the students' steps (after the last one arrived); the late ones count as failed")
    group.add_argument("--budget", type=float, default=780.0,
                       help="seconds for the class after the server is up; heavy runs still going then are left")
    group.add_argument("--browser-nice", type=int, default=0,
                       help="CPU nice of the class's Chromium (0: as the server), see the docstring")
    group.add_argument("--cache", default=None, help="cache folder to use and keep (default: a temporary one)")
    group.add_argument("--streamlit-flag", action="append", default=[], metavar="--OPTION=VALUE",
                       help="another `streamlit run` option for the server, e.g. --streamlit-flag=--runner.postScriptGC=false")
    group.add_argument("--no-probe-queue", dest="probe_queue", action="store_false",
                       help="start the server plainly: no probe thread reading its run queues")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"Debian chromium is not installed ({CHROMIUM}); `make browser` installs it")
    if args.classroom:
        classroom(args)
        return

    cache = Path(tempfile.mkdtemp(prefix="biaslens-load-cache-"))
    out = Path(tempfile.mkdtemp(prefix="biaslens-load-"))
    shots = out / "screenshots"
    shots.mkdir()
    # the hosted demo: demo workspace only (the file does not exist), a cache of its own
    os.environ.update({"BIASLENS_HOSTED": "1", "BIASLENS_WORKSPACES": str(out / "no-workspaces.toml"), "BIASLENS_CACHE": str(cache)})
    server: subprocess.Popen | None = None
    finished = False
    try:
        log(f"building the demo store in {cache} with the CLI...")
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "core", "build", "demo"], cwd=ROOT, check=True, stdout=sys.stderr)
        build_s = time.perf_counter() - began

        log(f"cohorts: {THREADS} threads x {QUERIES} queries on one CohortView...")
        meta = demo_parts()[2].meta()
        cohorts = cohort_threads(meta)
        log(f"cohorts: {cohorts['cohort_threads_wrong']} wrong, {cohorts['cohort_threads_failed']} failed "
            f"in {cohorts['cohort_threads_s']} s {cohorts['cohort_threads_messages']}")

        server, url = start_server(out / "streamlit.log")
        log(f"server {url} (pid {server.pid}), log {out / 'streamlit.log'}")
        figures = asyncio.run(drive(url, server.pid, args.sessions, args.timeout, shots))
        peak_rss = memory_mb(server.pid, "VmHWM")
        if server.poll() is not None:
            figures["failures"].append(f"the server exited with status {server.returncode}")
        finished = True
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(cache, ignore_errors=True)
        if args.keep_logs or not finished or any(shots.iterdir()):
            log(f"kept the server log and screenshots in {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)

    errors_by_round, sessions_ok = figures.pop("errors"), figures.pop("sessions_ok")
    rss, wall = figures["rss_mb_after"], figures["wall_s"]
    errors = sum(errors_by_round.values())
    low, high = min(args.sessions), max(args.sessions)
    mb_per_visitor = round((rss[str(high)] - rss[str(low)]) / (high - low), 1) if high > low else None
    targets = {
        "all_sessions_ok": all(sessions_ok[str(n)] == n for n in args.sessions),
        "no_errors": errors == 0,
        "wall_8_within_2x_of_1": wall["8"] <= 2 * wall["1"] if {"1", "8"} <= wall.keys() else None,
        "cohort_threads_ok": cohorts["cohort_threads_wrong"] == 0,
    }
    log(f"sessions ok {sessions_ok}, wall {wall} s, errors {errors}, peak RSS {peak_rss} MB, "
        f"{mb_per_visitor} MB per visitor, store build {build_s:.1f} s; targets met: {targets}")
    print(json.dumps({
        "sessions_ok": sessions_ok, "wall_s": wall, "errors": errors, "errors_by_round": errors_by_round,
        "peak_rss_mb": peak_rss, "mb_per_visitor": mb_per_visitor, **figures, "store_build_s": round(build_s, 1),
        **cohorts, "cohort_queries": THREADS * QUERIES, "targets_met": targets, "timeout_s": args.timeout,
        "cpus": os.cpu_count(), **machine_figures("cpu"),
    }))


if __name__ == "__main__":
    main()
