"""Seconds from starting the app (after install, empty cache) to the demo Overview being usable.

Starts `streamlit run app.py` as `make run` does, with an empty temporary cache, opens it
in Debian's Chromium and waits until the Overview shows the planted slices and the script
is idle: that includes building the demo's activation store on first open.
Prints a summary, then a JSON line: startup_s (target <= 60), server_s, store_and_render_s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tempfile.mkdtemp(prefix="biaslens-startup-")
    env = {**os.environ, "BIASLENS_CACHE": cache}
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
         "--server.address=127.0.0.1", f"--server.port={port}", "--browser.gatherUsageStats=false"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.1)
        server_s = time.perf_counter() - start
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_text("Planted slices").first.wait_for(timeout=300_000)
            page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=300_000)
            page.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=60_000)
            startup_s = time.perf_counter() - start
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"server healthy after {server_s:.1f} s; Overview with planted slices after {startup_s:.1f} s")
    print(json.dumps({"startup_s": round(startup_s, 1), "server_s": round(server_s, 1),
                      "store_and_render_s": round(startup_s - server_s, 1), "cpus": os.cpu_count(),
                      "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
