"""Shared by the benchmarks: the repository on sys.path and the demo workspace's parts."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def demo_parts():
    """(model, dataset, store) of the demo workspace; the store is built first if missing."""
    from core.extract import build_store
    from core.models import load_model
    from core.sources import build_dataset
    from core.store import find_store
    from core.workspace import demo_workspace

    workspace = demo_workspace()
    model = load_model(workspace.model, None)
    dataset = build_dataset(workspace.dataset)
    store = find_store(workspace.name, model, dataset)
    if store is None:
        print("Building the demo store...")
        store = build_store(workspace.name, model, dataset, batch_size=workspace.batch_size)
    return model, dataset, store


def machine_figures(device: str) -> dict:
    """Where and when the figures were taken."""
    return {
        "device": device,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d"),
    }
