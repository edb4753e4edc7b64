"""Shared by the benchmarks: the repository on sys.path and the demo workspace's parts."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def workspace_parts(workspace):
    """(model, dataset, store) of a workspace; the store is built first if missing."""
    from core.data.sources import build_dataset
    from core.models.loading import load_model
    from core.store.build import build_store
    from core.store.read import find_store

    model = load_model(workspace.model, None)
    dataset = build_dataset(workspace.dataset)
    store = find_store(workspace.name, model, dataset)
    if store is None:
        print(f"Building the {workspace.name} store...")
        store = build_store(workspace.name, model, dataset, batch_size=workspace.batch_size)
    return model, dataset, store


def demo_parts():
    """(model, dataset, store) of the demo workspace; the store is built first if missing."""
    from core.services.workspace import demo_workspace

    return workspace_parts(demo_workspace())


def machine_figures(device: str) -> dict:
    """Where and when the figures were taken."""
    return {
        "device": device,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d"),
    }


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log_path: Path, launcher: list[str] | None = None, flags: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` headless on a free loopback port; returns it once /_stcore/health answers.

    ``launcher`` replaces ``python -m streamlit`` (it gets ``run app.py ...`` as its arguments);
    ``flags`` are more Streamlit options (``--runner.postScriptGC=false``)."""
    port = free_port()
    with log_path.open("w") as out:
        server = subprocess.Popen(
            [*(launcher or [sys.executable, "-m", "streamlit"]), "run", "app.py", "--server.headless=true",
             "--server.address=127.0.0.1", f"--server.port={port}", "--browser.gatherUsageStats=false",
             "--server.fileWatcherType=none", *flags],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return server, url
        except OSError:
            time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"streamlit did not start: {log_path.read_text()[-2000:]}")


def stop_server(server: subprocess.Popen) -> None:
    """Terminate the server's process group (it was started in its own session); kill it if it lingers."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
