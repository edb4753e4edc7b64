"""Benchmark: Findings (issue 24), the pooled, tested and ranked list, scored the honest way.

On the demo store, ``find_failures`` with and without attributes; each list is scored with
``budget_scorecard`` (per planted slice, the rank of the first finding with P@10 >= 0.8), beside
the confusion-cell baseline's list and each source's own list (its candidates in its order,
on the whole store, the score command's runs). Then the false-alarm rate under the null:
``NULL_RUNS`` synthetic stores of ``NULL_N`` images whose correctness is independent of
everything (every source runs, the cheap ones and Spotlight/UDIS alike), the share of runs
that report any finding.

Keys (JSON line last): findings_first5_identified, findings_first_hit (slice -> rank),
findings_first5_identified_without_attributes, findings_first_hit_without_attributes,
baseline_first5_identified,
first5_identified.<method>, null_false_alarm_rate, findings_cold_s_demo.

    .venv/bin/python bench/findings.py
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
import pandas as pd  # noqa: E402

from bench.common import demo_parts, machine_figures  # noqa: E402
from core.methods.records import scored_methods  # noqa: E402
from core.scoring.scorecard import baseline_groups, budget_scorecard  # noqa: E402
from core.services.findings import find_failures  # noqa: E402
from core.services.runs import groups_on_store  # noqa: E402

NULL_RUNS = int(os.environ.get("FINDINGS_NULL_RUNS", 100))
NULL_N = 400


class NullStore:
    """A synthetic store of ``n`` images (4 classes, 2 attributes, an 8-d embedding) whose
    correctness (85%) is independent of everything: any finding is a false alarm."""

    def __init__(self, seed: int, n: int = NULL_N) -> None:
        rng = np.random.default_rng(seed)
        label = rng.integers(0, 4, n)
        correct = rng.random(n) < 0.85
        pred = np.where(correct, label, (label + rng.integers(1, 4, n)) % 4)
        self._x = (rng.normal(size=(n, 8)) + label[:, None]).astype(np.float32)
        self._logits = rng.normal(size=(n, 4))
        self._logits[np.arange(n), pred] += 3
        names = np.array(["a", "b", "c", "d"])
        self._meta = pd.DataFrame({"row": np.arange(n), "id": [f"i{i}" for i in range(n)], "label": names[label],
                                   "label_idx": label, "pred": names[pred], "pred_idx": pred, "correct": correct,
                                   "loss": np.where(correct, rng.random(n) * 0.5, 0.5 + rng.random(n) * 2),
                                   "tint": rng.choice(["red", "blue", "grey"], n), "marker": rng.choice(["x", "o"], n)})
        self.attribute_columns, self.slice_columns, self.n = ["tint", "marker"], [], n

    def meta(self) -> pd.DataFrame:
        return self._meta.copy()

    def representation(self, name: str) -> np.ndarray:
        return self._x

    def logits(self) -> np.ndarray:
        return self._logits


def first5(card: pd.DataFrame) -> int:
    return int(card["within 5"].sum())


def main() -> int:
    _, _, store = demo_parts()
    meta = store.meta()
    names = [c.removeprefix("slice_") for c in store.slice_columns]
    truth = meta[store.slice_columns].to_numpy(dtype=bool)
    began = time.perf_counter()
    report = find_failures(store)
    cold = time.perf_counter() - began
    print(report.to_text())
    card = budget_scorecard(truth, [f.rows for f in report.findings], names)
    print(card.to_string(index=False))
    plain = find_failures(store, with_attributes=False)
    plain_card = budget_scorecard(truth, [f.rows for f in plain.findings], names)
    print("without attributes:\n" + plain_card.to_string(index=False))
    base_card = budget_scorecard(truth, baseline_groups(meta)[1], names)
    print("confusion-cell baseline:\n" + base_card.to_string(index=False))
    per_method = {}
    for name, record in scored_methods().items():
        per_method[name] = first5(budget_scorecard(truth, groups_on_store(record, store, meta)[1], names))
    began = time.perf_counter()
    alarms = sum(bool(find_failures(NullStore(seed), seed=seed).findings) for seed in range(NULL_RUNS))
    null_s = time.perf_counter() - began
    print(f"null: {alarms} of {NULL_RUNS} runs reported a finding ({null_s:.0f} s)")
    out = {
        "findings_first5_identified": first5(card),
        "findings_first_hit": {s: (None if np.isnan(r) else int(r)) for s, r in zip(card["slice"], card["first hit"], strict=True)},
        "findings_first5_identified_without_attributes": first5(plain_card),
        "findings_first_hit_without_attributes": {s: (None if np.isnan(r) else int(r))
                                                  for s, r in zip(plain_card["slice"], plain_card["first hit"], strict=True)},
        "baseline_first5_identified": first5(base_card),
        "first5_identified": per_method,
        "null_false_alarm_rate": alarms / NULL_RUNS,
        "null_runs": NULL_RUNS,
        "findings_cold_s_demo": round(cold, 1),
        "findings": len(report.findings),
        "candidates": report.candidates,
        "slices": len(names),
        "cpus": os.cpu_count(),
        **machine_figures("cpu"),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
