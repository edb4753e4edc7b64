"""Benchmark: the discovery methods against the demo's planted slices, beside the trivial
baseline, and the false-alarm rate of the significance test (issue 15).

Keys (JSON line last):
- ``<method>_<slice>_{p10,p100,recall,auroc}`` for spotlight, udis and the confusion-cell
  baseline on every demo slice (``core.services.score.score_store``, the pages' default runs);
- ``slices_identified``: slices with P@10 >= 0.8 by at least one method (target: all);
- ``methods_beat_baseline``: slices where the best method's P@10 exceeds the baseline's by
  >= 0.3 (target >= 1);
- ``false_alarm_rate``: share of 200 simulated runs with no planted effect (N = 400 images,
  correctness independent of 5 random features, 10 candidate groups per run: the images
  above each feature's 80th and below its 20th percentile) in which any group has q < 0.05
  (target <= 0.07).

    .venv/bin/python bench/scorecard.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import demo_parts, machine_figures  # noqa: E402
from core.scoring.significance import group_tests  # noqa: E402
from core.services.score import BASELINE, figures, score_store  # noqa: E402

NULL_RUNS, NULL_N, FEATURES = 200, 400, 5
TARGETS = {"false_alarm_rate": 0.07}


def false_alarm_rate(seed: int = 0) -> float:
    """Share of null runs (no planted effect) where any candidate group is flagged at q < 0.05."""
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(NULL_RUNS):
        correct = rng.random(NULL_N) < 0.85
        features = rng.normal(size=(NULL_N, FEATURES))
        groups = []
        for f in features.T:
            low, high = np.quantile(f, [0.2, 0.8])
            groups += [np.flatnonzero(f >= high), np.flatnonzero(f <= low)]
        alarms += bool(group_tests(correct, groups)["significant"].any())
    return alarms / NULL_RUNS


def main() -> int:
    _, _, store = demo_parts()
    began = time.perf_counter()
    result = score_store(store)
    seconds = time.perf_counter() - began
    print(result["table"].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    out = figures(result)
    table = result["table"]
    methods = table[table["method"] != BASELINE]
    identified = sorted(methods[methods["P@10"] >= 0.8]["slice"].unique())
    out["slices_identified"] = len(identified)
    out["slices"] = len(store.slice_columns)
    out["score_seconds"] = round(seconds, 1)
    began = time.perf_counter()
    out["false_alarm_rate"] = false_alarm_rate()
    print(f"false alarms under the null: {out['false_alarm_rate']:.3f} of {NULL_RUNS} runs "
          f"({time.perf_counter() - began:.1f} s)")
    targets = {
        "every_slice_identified": out["slices_identified"] == out["slices"],
        "beats_baseline_somewhere": out["methods_beat_baseline"] >= 1,
        "false_alarm_rate": out["false_alarm_rate"] <= TARGETS["false_alarm_rate"],
    }
    print(f"targets met: {targets}")
    print(json.dumps({**out, "targets_met": targets, "cpus": os.cpu_count(), **machine_figures("cpu")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
