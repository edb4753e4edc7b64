"""Subgroups benchmark: UDIS clustering at 50k and 200k images, neuron scores, concept patches, demo P@10.

1. Clustering: N synthetic 512-d features (200 Gaussian clusters of different sizes and
   spreads, 10% of them under-performing), UDIS with the default parameters. Each size
   runs in a fresh subprocess so that its peak resident memory (ru_maxrss, features
   included) is its own.
2. Neuron scores: on the demo store (built first if missing), the highly-activated
   neurons of every image at every stored layer (3% rule) and every subgroup's
   activation scores.
3. Concept patches: one neuron of the demo's last conv block, cold (no cache), CPU.
4. Demo P@10: for each planted slice, the best under-performing subgroup's P@10 (its 10
   highest-loss members) at the VisCUIT threshold 0.5, and its recall; also at 0.66.

Prints a summary, then LAST one JSON line: cluster_s_50k, cluster_gb_50k, cluster_s_200k,
cluster_gb_200k, neuron_scores_s, concept_patches_s, demo_p10, and details.

    .venv/bin/python bench/subgroups.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from common import ROOT, demo_parts, machine_figures

from core.methods import (
    UDIS,
    UDIS_THRESHOLD,
    VISCUIT_THRESHOLD,
    ConceptPatchFinder,
    NeuronSelector,
    top_loss_rows,
)
from core.scoring.scorecard import precision_at_k

D = 512


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``n`` images in 200 clusters, and their correctness (20 clusters at ~35%)."""
    rng = np.random.default_rng(seed)
    k = 200
    centres = rng.normal(0, 4, size=(k, D)).astype(np.float32)
    sizes = rng.dirichlet(np.ones(k)) * n
    which = rng.choice(k, size=n, p=sizes / sizes.sum())
    spread = rng.uniform(0.5, 1.5, size=k).astype(np.float32)
    x = centres[which] + rng.normal(size=(n, D)).astype(np.float32) * spread[which, None]
    accuracy = np.where(np.arange(k) < 20, 0.35, 0.92)
    correct = rng.random(n) < accuracy[which]
    return x, correct


def cluster_child(n: int) -> None:
    """Run in a subprocess: time UDIS on n points and print seconds and peak RSS."""
    x, correct = synthetic(n)
    started = time.perf_counter()
    result = UDIS().fit(x, correct)
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"s": round(seconds, 2), "gb": round(peak_gb, 3), "subgroups": len(result.subgroups_),
                      "under": len(result.under_performing()), "method": result.method_, "data_gb": round(x.nbytes / 1024**3, 3)}))


def bench_cluster(n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--cluster", str(n)], capture_output=True, text=True, cwd=ROOT, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"UDIS on {n:,} x {D}: {figures['s']} s, peak {figures['gb']} GB, {figures['subgroups']} subgroups "
          f"({figures['under']} under-performing), {figures['method']}")
    return figures


def bench_demo() -> dict:
    model, dataset, store = demo_parts()
    meta = store.meta()
    correct, losses = meta["correct"].to_numpy(), meta["loss"].to_numpy()
    started = time.perf_counter()
    result = UDIS().fit(store.embedding(), correct)
    demo_cluster_s = time.perf_counter() - started
    print(f"Demo UDIS: {len(result.subgroups_)} subgroups in {demo_cluster_s:.1f} s ({result.method_})")

    started = time.perf_counter()
    for layer in store.layers:
        chosen = NeuronSelector(mass=0.03).fit(store.pooled(layer, "max"))
        for g in range(len(result.subgroups_)):
            chosen.activation_scores(result.rows(g))
    neuron_s = time.perf_counter() - started
    print(f"Neuron scores, {len(store.layers)} layers x {len(result.subgroups_)} subgroups: {neuron_s:.2f} s")

    layer = model.conv_layers[-1]
    started = time.perf_counter()
    patches = ConceptPatchFinder().fit(model, dataset, [(layer, 0)], lambda name: store.pooled(name, "max")).patches_
    patches_s = time.perf_counter() - started
    print(f"Concept patches of ({layer}, 0): {patches_s:.2f} s, top activation {patches[(layer, 0)].patch_activations[0]:.2f}")

    figures: dict = {"demo_cluster_s": round(demo_cluster_s, 2), "neuron_scores_s": round(neuron_s, 3), "concept_patches_s": round(patches_s, 3)}
    for threshold, key in ((VISCUIT_THRESHOLD, "demo_p10"), (UDIS_THRESHOLD, "demo_p10_at_066")):
        under = [int(g) for g in result.under_performing(threshold)["subgroup"]]
        figures[key], recall = {}, {}
        for column in store.slice_columns:
            truth = meta[column].to_numpy(dtype=bool)
            scored = [(precision_at_k(truth, top_loss_rows(result.rows(g), losses)), g) for g in under]
            best, g = max(scored, default=(0.0, -1))
            name = column.removeprefix("slice_")
            figures[key][name] = best
            recall[name] = round(float(truth[result.rows(g)].sum() / truth.sum()), 3) if g >= 0 else 0.0
            if threshold == VISCUIT_THRESHOLD:
                print(f"  {name:18s} best P@10 {best:.1f} (subgroup #{g}, recall {recall[name]:.2f})")
        figures[key.replace("p10", "recall")] = recall
        figures[key.replace("p10", "under")] = len(under)
    return figures


def main() -> None:
    figures: dict = {}
    for n, key in ((50_000, "50k"), (200_000, "200k")):
        run = bench_cluster(n)
        figures |= {f"cluster_s_{key}": run["s"], f"cluster_gb_{key}": run["gb"], f"cluster_method_{key}": run["method"]}
    figures |= bench_demo()
    figures |= machine_figures(f"cpu, {os.cpu_count()} cores")
    print(json.dumps(figures))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--cluster":
        cluster_child(int(sys.argv[2]))
    else:
        main()
