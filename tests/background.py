"""`make prepare` for the hosted e2e, started in the background when the session begins.

The hosted e2e (tests/e2e/test_hosted_e2e.py) serves the demo as `make serve` does, and
`make serve` first prepares it: the demo's store, then minutes of saliency profiles and probe
training. Run in the test's own time, that was the suite's largest item (215 s of 20 min).
The session starts the same `make prepare` when it collects that test, at the lowest CPU
priority, so it takes what the other tests leave idle (most of them keep one of two cores
busy), on one torch thread, and the test runs last; its `make serve` then finds everything
prepared. The store step runs first at normal priority: every demo test waits on that store's
lock anyway.
The test fails with the log's tail if this prepare failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOSTED_E2E = "tests/e2e/test_hosted_e2e.py"
_RUNNING: list[tuple[subprocess.Popen, Path]] = []


def start_hosted_prepare(cache: str) -> None:
    """Start `make prepare` (store first, the rest at nice 19) into ``cache``, logging beside it."""
    log = Path(cache) / "hosted-prepare.log"
    env = {**os.environ, "BIASLENS_CACHE": cache, "BIASLENS_HOSTED": "1",
           "BIASLENS_WORKSPACES": str(Path(cache) / "no-workspaces.toml")}  # the built-in demo only, as the e2e serves it
    script = (f"{sys.executable} -m core prepare demo --only store && "  # one torch thread: the tests keep theirs
              "exec env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 make --no-print-directory prepare")
    with log.open("w") as out:
        process = subprocess.Popen(["bash", "-c", script], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    _RUNNING.append((process, log))


def wait_hosted_prepare(timeout: float) -> tuple[int | None, str]:
    """Wait for the background prepare: (its exit status, its log); (None, "") when
    none was started (the test then prepares through `make serve` itself)."""
    if not _RUNNING:
        return None, ""
    process, log = _RUNNING[0]
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_hosted_prepare()
        status = -1
    return status, log.read_text(errors="replace")


def stop_hosted_prepare() -> None:
    """Stop the background prepare if it still runs (the session ends before the test did)."""
    for process, _ in _RUNNING:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
