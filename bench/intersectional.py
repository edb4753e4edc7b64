"""Benchmark: intersectional NAPs and topographic layouts (core.methods.intersectional.naps).

Keys (CPU):
- ``topomap_s_512``, ``topomap_s_2048``: seconds of ``TopographicLayout().fit`` (seeded UMAP
  + 1000 relaxation steps) on random NAPs of 126 groups x 512 / 2048 channels, warm: after
  one small layout in the same process has compiled UMAP's and the relaxation's numba code.
  ``*_umap_s`` and ``*_relax_s`` split each into its two stages. Targets: <= 2 s, <= 15 s.
- ``umap_cold_s``: the first UMAP call in a fresh process (import + first fit_transform of a
  small 126-dimensional set), i.e. what the first layout of a session pays on top;
  ``umap_import_s`` is the import alone. numba caches part of UMAP's code on disk, so only
  the very first run on a machine is slower still.
- ``nap_s_1m``: seconds of ``NAPs().fit`` over a 1,000,000 x 2048 float16 memmap (written
  to a temporary folder and deleted after; the page cache holds it, as it would a store
  read twice) with 126 groups and a tenth of the rows left out. Target <= 10 s.

- ``probes_s_demo``: seconds of the probes on the demo grouped by tint x brightness (at most
  128 per group): the reduced activations of every default layer (a forward pass, then kept
  with the store) and ``LinearProbes`` (5 seeds, 50 epochs, with the shuffled control) on
  each. Target <= 120 s.
- ``demo_marker_probe_margin``: the demo grouped by ``marker`` (4 values): the best layer's
  mean validation accuracy minus chance (the majority share), with the layer, and the
  largest shuffled-labels accuracy minus chance over the layers (should stay near 0).

    .venv/bin/python bench/intersectional.py [--quick]

``--quick`` shrinks the memmap to 100,000 rows. Prints a summary, then, last, one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import core.demo  # noqa: E402, F401  (registers the demo model and dataset kinds)
from bench.common import machine_figures  # noqa: E402
from core.data.sources import DatasetSpec, build_dataset  # noqa: E402
from core.methods import LinearProbes, NAPs, TopographicLayout  # noqa: E402
from core.methods.intersectional.features import default_probe_layers, reduced_activations  # noqa: E402
from core.methods.intersectional.groups import build_groups, capped_rows  # noqa: E402
from core.models.loading import ModelSpec, load_model  # noqa: E402
from core.store.build import build_store  # noqa: E402

N_GROUPS = 126  # FairFace: 7 races x 9 ages x 2 genders

_UMAP_COLD = """
import time
start = time.perf_counter()
import numpy as np
import umap
imported = time.perf_counter()
umap.UMAP(n_components=2, random_state=0).fit_transform(np.random.default_rng(0).normal(size=(300, 126)))
print(imported - start, time.perf_counter() - start)
"""


def layout_figures() -> dict:
    """Warm layouts of 512 and 2048 channels over 126 groups."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    TopographicLayout(iterations=2).fit(rng.normal(size=(N_GROUPS, 64)))  # compiles UMAP + kernel
    print(f"warm-up layout (64 channels, 2 steps, compiles): {time.perf_counter() - start:.1f} s")
    figures: dict = {}
    for channels in (512, 2048):
        naps = rng.normal(size=(N_GROUPS, channels))
        start = time.perf_counter()
        layout = TopographicLayout().fit(naps)
        seconds = time.perf_counter() - start
        figures[f"topomap_s_{channels}"] = round(seconds, 2)
        figures[f"topomap_s_{channels}_umap_s"] = round(layout.umap_seconds_, 2)
        figures[f"topomap_s_{channels}_relax_s"] = round(layout.relax_seconds_, 2)
        print(f"layout of {channels} channels x {N_GROUPS} groups: {seconds:.2f} s "
              f"(UMAP {layout.umap_seconds_:.2f} s, 1000 relaxation steps {layout.relax_seconds_:.2f} s)")
    return figures


def umap_cold_figures() -> dict:
    """The first UMAP call in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _UMAP_COLD], capture_output=True, text=True, check=True, cwd=ROOT)
    imported, total = (float(v) for v in out.stdout.split()[-2:])
    print(f"UMAP cold in a fresh process: {total:.1f} s (import {imported:.1f} s)")
    return {"umap_cold_s": round(total, 2), "umap_import_s": round(imported, 2)}


def nap_figures(rows: int, channels: int = 2048) -> dict:
    """NAPs of 126 groups over a rows x channels float16 memmap on disk."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_GROUPS, size=rows)
    labels[rng.random(rows) < 0.1] = -1  # left out (below the minimum size, over the cap...)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pooled.f16"
        memmap = np.memmap(path, dtype=np.float16, mode="w+", shape=(rows, channels))
        start = time.perf_counter()
        step = 65536
        for lo in range(0, rows, step):
            hi = min(lo + step, rows)
            memmap[lo:hi] = rng.random((hi - lo, channels), dtype=np.float32)
        memmap.flush()
        del memmap
        written = time.perf_counter() - start
        activations = np.memmap(path, dtype=np.float16, mode="r", shape=(rows, channels))
        naps = NAPs().fit(activations, labels)
        seconds = naps.fit_seconds_
        del activations, naps
    gb = rows * channels * 2 / 1e9
    print(f"NAPs of {N_GROUPS} groups over {rows:,} x {channels} float16 ({gb:.1f} GB, written in "
          f"{written:.1f} s): {seconds:.2f} s")
    key = "nap_s_1m" if rows == 1_000_000 else f"nap_s_{rows // 1000}k"
    return {key: round(seconds, 2), "nap_memmap_gb": round(gb, 2)}


def probe_figures() -> dict:
    """The probes on the demo: their time (tint x brightness) and the marker's margin."""
    model = load_model(ModelSpec(kind="demo"), "cpu")
    dataset = build_dataset(DatasetSpec(kind="demo", split="test"))
    figures: dict = {}
    with tempfile.TemporaryDirectory() as root:
        store = build_store("bench", model, dataset, list(model.default_layers), batch_size=256, root=Path(root))
        meta, layers = store.meta(), default_probe_layers(store, model)
        for columns, key in ((["tint", "brightness"], "probes"), (["marker"], "marker")):
            groups = build_groups(meta, columns)
            rows = capped_rows(groups, 128, 0)
            start = time.perf_counter()
            features = reduced_activations(store, model, dataset, rows, layers)
            summary = LinearProbes().fit(features, groups.labels[rows], list(groups.names)).summary()
            seconds = time.perf_counter() - start
            best = summary.loc[(summary["val_accuracy"] - summary["chance"]).idxmax()]
            print(f"probes over {' x '.join(columns)} ({len(groups.names)} groups, {len(rows)} images, {len(layers)} "
                  f"layers x 5 seeds): {seconds:.1f} s; best {best['layer']} {best['val_accuracy']:.3f} vs chance "
                  f"{best['chance']:.3f}")
            if key == "probes":
                figures["probes_s_demo"] = round(seconds, 1)
            else:
                figures["demo_marker_probe_margin"] = round(float(best["val_accuracy"] - best["chance"]), 3)
                figures["demo_marker_probe_layer"] = str(best["layer"])
                figures["demo_marker_shuffled_margin_max"] = round(float((summary["shuffled_val_accuracy"] - summary["chance"]).max()), 3)
    return figures


def main() -> int:
    quick = "--quick" in sys.argv
    figures: dict = {}
    figures.update(umap_cold_figures())
    figures.update(layout_figures())
    figures.update(nap_figures(100_000 if quick else 1_000_000))
    figures.update(probe_figures())
    figures.update(machine_figures("cpu"))
    figures["quick"] = quick
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
