"""Benchmark: comparing two models (issue 25). A = the demo's control model (no plants,
``demo-control``), B = the planted demo model, on the same 10,000 test images: the planted
slices are where B got worse, so the ranked regression slices should find them.

Keys (JSON line last):
- ``compare_cold_s_demo``: ``compare_stores(control, demo)`` in this process, stores read from disk;
- ``regressions_first5_identified`` / ``..._first10_...``: planted slices identified (P@10 >= 0.8,
  ``core.scoring.scorecard.budget_scorecard``) by one of the first 5 / 10 ranked regression
  slices (each its rows by l_B - l_A); ``first_hit_<slice>``: the rank of the first that does;
- ``baseline_first5_identified``: the same for B alone's confusion cells (``baseline_groups``,
  largest cell first, the same budget); ``flip_cells_first5_identified``: the confusion cells of
  the images A got right and B wrong (B's true -> predicted), largest first;
- ``significant_regressions``, ``overall_difference``, ``mcnemar_p``;
- ``null_false_alarm_rate``: share of null runs (A and B exchanged per image at random: no
  real difference) that report a significant regression slice; each null run is a random
  subsample of NULL_N images with a quicker Spotlight (the zero start only, NULL_STEPS Adam steps) and the same
  UDIS; ``null_table_false_alarm_rate``: the share with a class / attribute value significantly
  worse (target for both: <= 0.07, like bench/scorecard.py's).

    .venv/bin/python bench/compare.py [--null-runs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import demo_parts, machine_figures, workspace_parts  # noqa: E402
from core.methods import Spotlight  # noqa: E402
from core.methods.spotlight.record import default_size  # noqa: E402
from core.scoring.scorecard import baseline_groups, budget_scorecard, confusion_cell_groups  # noqa: E402
from core.services.compare import PairedData, compare, compare_stores, paired_from_stores  # noqa: E402
from core.services.workspace import control_workspace  # noqa: E402

NULL_RUNS, NULL_N, NULL_STEPS = 100, 2000, 200
TARGETS = {"null_false_alarm_rate": 0.05, "regressions_first5_identified": 4}  # issue 25: 4 of 4 planted slices, at most 5% of null runs


def control_store():
    """The control workspace's store, built first if missing."""
    return workspace_parts(control_workspace())[2]


def identified(truth: np.ndarray, rankings: list[np.ndarray], names: list[str]) -> tuple[int, int, dict[str, float]]:
    """(slices identified within 5, within 10, first hit per slice) of a ranked list of groups."""
    card = budget_scorecard(truth, rankings, names)
    firsts = {f"first_hit_{s}": (None if np.isnan(v) else int(v)) for s, v in zip(card["slice"], card["first hit"], strict=True)}
    return int(card["within 5"].sum()), int(card["within 10"].sum()), firsts


def subsample(data: PairedData, rows: np.ndarray) -> PairedData:
    """The paired data of ``rows`` only (no saved subsets)."""
    def pick(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else np.asarray(values)[rows]

    return PairedData(correct_a=data.correct_a[rows], correct_b=data.correct_b[rows], loss_a=data.loss_a[rows],
                      loss_b=data.loss_b[rows], embedding=np.asarray(data.embedding)[rows], labels=data.labels[rows],
                      attributes=data.attributes.iloc[rows].reset_index(drop=True), ids=pick(data.ids),
                      pred_a=pick(data.pred_a), pred_b=pick(data.pred_b), confidence_a=pick(data.confidence_a),
                      confidence_b=pick(data.confidence_b))


def null_rates(data: PairedData, runs: int, seed: int = 0) -> tuple[float, float, float]:
    """(slice false-alarm rate, table false-alarm rate, seconds per run) over ``runs`` null runs."""
    rng = np.random.default_rng(seed)
    alarms = table_alarms = 0
    began = time.perf_counter()
    spotlight = Spotlight(size=default_size(NULL_N // 2), n_spotlights=5, steps=NULL_STEPS, start="zero")
    for run in range(runs):
        rows = np.sort(rng.choice(data.n, size=min(NULL_N, data.n), replace=False))
        null = subsample(data, rows).swapped(rng.random(len(rows)) < 0.5)
        result = compare(null, seed=run, spotlight=spotlight)
        alarms += bool(result.significant_regressions)
        groups = result.groups
        table_alarms += bool((groups["significant"] & (groups["difference"] < 0)).any())
        if (run + 1) % 10 == 0:
            print(f"  null run {run + 1}/{runs}: {alarms} slice alarm(s), {table_alarms} table alarm(s), "
                  f"{(time.perf_counter() - began) / (run + 1):.1f} s per run", flush=True)
    return alarms / runs, table_alarms / runs, (time.perf_counter() - began) / max(1, runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null-runs", type=int, default=NULL_RUNS)
    args = parser.parse_args(argv)
    _, _, demo = demo_parts()
    control = control_store()
    began = time.perf_counter()
    result = compare_stores(control, demo, name_a="demo-control", name_b="demo")
    cold = time.perf_counter() - began
    print(result.to_text())
    meta = demo.meta()
    names = [c.removeprefix("slice_") for c in demo.slice_columns]
    truth = meta[demo.slice_columns].to_numpy(dtype=bool)
    rankings = [np.asarray(r["rows"], dtype=np.int64) for r in result.regressions]
    first5, first10, firsts = identified(truth, rankings, names)
    _, base_rankings, _ = baseline_groups(meta)
    base5, base10, _ = identified(truth, base_rankings, names)
    control_meta = control.meta()
    flips = np.flatnonzero(control_meta["correct"].to_numpy() & ~meta["correct"].to_numpy())
    delta = meta["loss"].to_numpy() - control_meta["loss"].to_numpy()
    cells = confusion_cell_groups(meta["label_idx"].to_numpy()[flips], meta["pred_idx"].to_numpy()[flips], delta[flips], flips)
    flip5, flip10, _ = identified(truth, [np.asarray(r, dtype=np.int64) for r in cells["rows"]], names)
    out = {
        "compare_cold_s_demo": round(cold, 1),
        "regressions_first5_identified": first5, "regressions_first10_identified": first10, **firsts,
        "slices": len(names),
        "baseline_first5_identified": base5, "baseline_first10_identified": base10,
        "flip_cells_first5_identified": flip5, "flip_cells_first10_identified": flip10,
        "regression_candidates": len(result.regressions),
        "significant_regressions": len(result.significant_regressions),
        "significant_improvements": len(result.significant_improvements),
        "overall_difference": round(result.overall["difference"], 4), "mcnemar_p": result.overall["p"],
        "acc_control": round(result.overall["acc A"], 4), "acc_demo": round(result.overall["acc B"], 4),
    }
    print(f"planted slices identified within the first 5 regression slices: {first5} of {len(names)} "
          f"(B's confusion cells: {base5}; the flips' confusion cells: {flip5})")
    if args.null_runs > 0:
        data = paired_from_stores(control, demo)
        rate, table_rate, per_run = null_rates(data, args.null_runs)
        out.update({"null_false_alarm_rate": rate, "null_table_false_alarm_rate": table_rate, "null_runs": args.null_runs,
                    "null_n": NULL_N, "null_spotlight_steps": NULL_STEPS, "null_s_per_run": round(per_run, 2)})
        print(f"false alarms under the null: {rate:.3f} (slices), {table_rate:.3f} (table) of {args.null_runs} runs")
    targets = {"regressions_first5_identified": first5 >= TARGETS["regressions_first5_identified"]}
    if "null_false_alarm_rate" in out:
        targets["null_false_alarm_rate"] = out["null_false_alarm_rate"] <= TARGETS["null_false_alarm_rate"]
    print(f"targets met: {targets}")
    print(json.dumps({**out, "targets_met": targets, "cpus": os.cpu_count(), **machine_figures("cpu")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
