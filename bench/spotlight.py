"""Spotlight benchmark: speed at N = 50,000 x d = 512 and recovery of planted slices.

1. Synthetic: 50,000 Gaussian 512-d embeddings with one planted blob of 2% high-loss
   images. Seconds per spotlight at the default parameters (the median of three fits after
   a warm-up fit that pays torch's one-time optimiser import), and the P@10 of the blob.
2. Demo: the planted-bias demo store (built first if missing), five spotlights at the
   default parameters, timed; for each planted slice the best spotlight's P@10. For each
   slice it also prints how contiguous the slice is in the representation (the share of
   slice members among each member's 10 nearest images) and the P@10 of a spotlight
   centred on the slice's centroid: for a spherical kernel the top-10 are the 10 images
   nearest the centre, so this shows what a spotlight placed on the slice can reach.

Prints a summary, then LAST one JSON line: s_per_spotlight_50k, synthetic_p10, demo_p10
(slice -> best P@10), demo_s_total, and details.

    .venv/bin/python bench/spotlight.py
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import demo_parts, machine_figures

from core.errors import BiasLensError  # noqa: E402
from core.methods import Spotlight  # noqa: E402
from core.scoring.scorecard import precision_at_k, precision_matrix  # noqa: E402

N, D = 50_000, 512


def synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian embeddings, exponential losses (mean 0.3), one blob of 2% with losses ~2."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D), dtype=np.float32)
    losses = rng.exponential(0.3, size=N)
    blob = rng.choice(N, N // 50, replace=False)
    centre = rng.standard_normal(D)
    x[blob] = (6 * centre / np.linalg.norm(centre) + 0.7 * rng.standard_normal((blob.size, D))).astype(np.float32)
    losses[blob] = 1.5 + rng.exponential(0.5, size=blob.size)
    truth = np.zeros(N, dtype=bool)
    truth[blob] = True
    return x, losses, truth


def bench_synthetic() -> dict:
    x, losses, truth = synthetic()
    started = time.perf_counter()
    cold = Spotlight().fit(x, losses)
    cold_s = time.perf_counter() - started
    times, results = [], []
    for _ in range(3):
        started = time.perf_counter()
        results.append(Spotlight().fit(x, losses))
        times.append(time.perf_counter() - started)
    fit = results[-1].spotlights_[0]
    p10 = precision_at_k(truth, fit.weights, 10)
    print(f"Synthetic {N:,} x {D}: {statistics.median(times):.2f} s per spotlight (runs {', '.join(f'{t:.2f}' for t in times)}; "
          f"first fit in the process {cold_s:.2f} s), centre searched in {results[-1].search_dims_} principal directions + starts")
    print(f"  blob of {truth.sum():,}: P@10 {p10:.1f}, weighted mean loss {fit.mean_loss:.3f} vs {results[-1].mean_loss_:.3f} overall, "
          f"effective size {fit.size:.0f} (S = {results[-1].size_}), start kept: {fit.start}")
    return {
        "s_per_spotlight_50k": round(statistics.median(times), 3),
        "synthetic_p10": p10,
        "runs_s": [round(t, 3) for t in times],
        "cold_s": round(cold_s, 3),
        "same_weights_every_run": all(np.array_equal(r.spotlights_[0].weights, fit.weights) for r in results + [cold]),
    }


def slice_evidence(x: np.ndarray, truth: np.ndarray) -> dict:
    """10-NN purity of each slice and the P@10 of a spotlight centred on its centroid."""
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=10).fit(x)
    members = np.flatnonzero(truth)
    _, around_members = nearest.kneighbors(x[members])
    _, around_centroid = nearest.kneighbors(x[members].mean(0, keepdims=True))
    return {
        "knn10_purity": round(float(truth[around_members].mean()), 3),
        "centroid_p10": round(float(truth[around_centroid[0]].mean()), 3),
    }


def bench_demo() -> dict:
    _, _, store = demo_parts()
    meta = store.meta()
    x = np.asarray(store.embedding(), dtype=np.float32)
    losses = meta["loss"].to_numpy()
    started = time.perf_counter()
    result = Spotlight(n_spotlights=5).fit(x, losses)
    seconds = time.perf_counter() - started
    truth = meta[store.slice_columns].to_numpy()
    matrix = precision_matrix(truth, [fit.weights for fit in result.spotlights_])
    names = [c.removeprefix("slice_") for c in store.slice_columns]
    print(f"Demo: {store.n:,} images, {x.shape[1]}-d embedding, accuracy {meta['correct'].mean():.3f}, "
          f"mean loss {result.mean_loss_:.3f}; 5 spotlights in {seconds:.1f} s")
    for fit in result.spotlights_:
        top = meta.iloc[fit.top_rows(result.size_)]
        print(f"  spotlight {fit.index + 1}: mean loss {fit.mean_loss:.3f}, size {fit.size:.0f}, top-S accuracy "
              f"{top['correct'].mean():.2f}, most common (label -> pred) {top.groupby(['label', 'pred']).size().idxmax()}, start {fit.start}")
    evidence = {}
    for i, name in enumerate(names):
        evidence[name] = {**slice_evidence(x, truth[:, i]), "mean_loss": round(float(losses[truth[:, i]].mean()), 3),
                          "accuracy": round(float(meta.loc[truth[:, i], "correct"].mean()), 3)}
        best = int(np.argmax(matrix[i]))
        print(f"  {name:<18} best P@10 {matrix[i, best]:.1f} (spotlight {best + 1}); 10-NN purity "
              f"{evidence[name]['knn10_purity']:.2f}, centroid-centred P@10 {evidence[name]['centroid_p10']:.1f}, "
              f"slice mean loss {evidence[name]['mean_loss']:.2f}")
    return {
        "demo_p10": {name: float(matrix[i].max()) for i, name in enumerate(names)},
        "demo_best_spotlight": {name: int(np.argmax(matrix[i])) + 1 for i, name in enumerate(names)},
        "demo_s_total": round(seconds, 2),
        "demo_spotlight_mean_loss": [round(f.mean_loss, 3) for f in result.spotlights_],
        "demo_slice_evidence": evidence,
    }


def main() -> None:
    figures = bench_synthetic()
    try:
        figures |= bench_demo()
    except BiasLensError as exc:
        print(f"Demo skipped: {exc}")
        figures |= {"demo_p10": None, "demo_s_total": None, "demo_error": str(exc)}
    figures |= machine_figures(
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {os.cpu_count()} cores, fits on 1 thread"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
