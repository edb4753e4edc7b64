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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from common import ROOT, demo_parts, machine_figures, start_server, stop_server
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from playwright.async_api import Error as PlaywrightError

from core.cohorts import CohortView

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
        figures = {
            "wall_s": round(time.perf_counter() - began, 1),
            "server_cpu_s": round(cpu_seconds(process_tree(pid)) - server_cpu, 1),
            "browser_cpu_s": round(cpu_seconds(browser_processes(pid)) - browser_cpu, 1),
            "rss_mb_after": memory_mb(pid, "VmRSS"),
        }
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


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8], help="concurrent visitors per round")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for each step of a visit")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server log and screenshots folder")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"Debian chromium is not installed ({CHROMIUM}); `make browser` installs it")

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
