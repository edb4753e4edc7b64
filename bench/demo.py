"""Benchmark: does the committed demo CNN show every planted slice on the test split?

Trains nothing: loads core/demo/weights/demo_cnn.pt, renders the planted-bias test split
from core/demo/slices.toml and prints accuracy overall and per planted slice, then, last,
one JSON line: overall_acc, slice_acc, min_gap (smallest overall-minus-slice gap),
n_test, slice_sizes, weights_match_slices, seconds.

    .venv/bin/python bench/demo.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.demo.dataset import DEFAULT_SLICES, rendered_split  # noqa: E402
from core.demo.model import DEFAULT_WEIGHTS, load_demo_model  # noqa: E402
from core.demo.spec import DemoSpec  # noqa: E402
from core.demo.train import evaluate_demo  # noqa: E402
from core.errors import BiasLensError  # noqa: E402


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main() -> int:
    """Evaluate the committed weights; exit status 2 with a message if something is missing."""
    torch.set_num_threads(2)
    started = time.perf_counter()
    try:
        spec = DemoSpec.from_toml(DEFAULT_SLICES)
        test = rendered_split("test")
        figures = evaluate_demo(load_demo_model(), test)
    except BiasLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sidecar = DEFAULT_WEIGHTS.with_suffix(".json")
    trained_on = json.loads(sidecar.read_text()).get("slices_sha256") if sidecar.is_file() else None
    match = trained_on == spec.sha256

    print(f"Planted-bias demo, test split: {len(test.labels)} images")
    print(f"  overall accuracy  {figures['overall_acc']:.3f}")
    for s in spec.slices:
        acc, n = figures["slice_acc"][s.name], figures["slice_sizes"][s.name]
        if acc is None:
            print(f"  {s.name:<22} {s.kind:<9} no test image")
            continue
        gap = figures["overall_acc"] - acc
        print(f"  {s.name:<22} {s.kind:<9} acc {acc:.3f}  gap {gap:+.3f}  (n={n})")
    if not match:
        print("  warning: the weights were trained on a different slices file (see demo_cnn.json)")
    result = {
        "overall_acc": _round(figures["overall_acc"]),
        "slice_acc": {k: _round(v) for k, v in figures["slice_acc"].items()},
        "min_gap": _round(figures["min_gap"]),
        "n_test": len(test.labels),
        "slice_sizes": figures["slice_sizes"],
        "weights_match_slices": match,
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
