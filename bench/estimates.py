"""Expected run times (core/services/estimates.py) against measured runs on this machine.

Every heavy run states its expected time before it starts; the estimates are CPU seconds of
one thread, calibrated on the project's 2-core VM. This bench runs each estimated operation on
a small case (one torch, BLAS and OpenMP thread, the fewest CPU seconds of a few runs) and
prints, per operation, the estimate, the measured time and their ratio. A machine faster or
slower than the calibration one shifts every ratio alike; an estimate whose ratio stands apart
from the rest has the wrong shape. (These checks were unit tests until a faster CI machine ran
one 3.1x under its estimate: timings belong in a bench.)

Prints one line per operation, then LAST one JSON line: ratios (operation -> estimate /
measured), within_3x (how many of them lie within 3x), count, median_ratio, and the machine.

    .venv/bin/python bench/estimates.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from common import machine_figures
from threadpoolctl import threadpool_limits

from core.methods import (
    UDIS,
    ActivationMatrix,
    FailureModes,
    FilterSaliency,
    FilterTurnOff,
    FineTuneCheck,
    LinearProbes,
    MaskingExperiment,
    NAPs,
    Projection,
    Spotlight,
    TopographicLayout,
)
from core.methods.saliency.filters import conv_filters
from core.methods.saliency.profiles import SaliencyProfiles, build_profiles, nearest, row_norms
from core.methods.spotlight.record import spotlight_held_out
from core.methods.subgroups.record import udis_held_out
from core.models.loading import make_transform
from core.scoring.summary import project_2d
from core.services import estimates as e
from core.store.build import build_store
from tests.support import digits_dataset, tiny_model

Case = tuple[str, float, float]  # operation, expected seconds, measured seconds


def fastest(run: Callable[[], object], repeats: int = 3) -> float:
    """The fewest CPU seconds of a few runs (other processes on the machine do not count)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def clusters(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n points of d dims in 10 Gaussian clusters, exponential losses, 80% correct."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, d)).astype(np.float32) * 3
    x = (centres[rng.integers(0, 10, n)] + rng.normal(size=(n, d))).astype(np.float32)
    return x, rng.exponential(size=n), rng.random(n) < 0.8


def spotlight_cases() -> Iterator[Case]:
    x, losses, correct = clusters(3000, 64)
    for params in ({"n_spotlights": 2, "steps": 200}, {"steps": 100, "precision": "diagonal"}, {"steps": 100, "pca": 16, "start": "zero"}):
        spotlight = Spotlight(**params)
        yield f"spotlight {params}", e.spotlight_seconds(*x.shape, **spotlight.get_params()), fastest(lambda s=spotlight: s.fit(x, losses))
    spotlight = Spotlight(n_spotlights=2, steps=200)
    yield ("spotlight held-out", e.spotlight_held_out_seconds(*x.shape, **spotlight.get_params()),
           fastest(lambda: spotlight_held_out(x, losses, correct, spotlight)))
    big, big_losses, _ = clusters(12000, 400)  # 4.8 M values: the centre is searched in principal directions
    spotlight = Spotlight(steps=100)
    yield "spotlight principal directions", e.spotlight_seconds(*big.shape, **spotlight.get_params()), fastest(lambda: spotlight.fit(big, big_losses), 2)


def udis_cases() -> Iterator[Case]:
    x, _, correct = clusters(1000, 64)
    udis = UDIS()
    yield "udis exact", e.udis_seconds(*x.shape, **udis.get_params()), fastest(lambda: udis.fit(x, correct))
    x, _, correct = clusters(3000, 96)
    udis = UDIS(exact_limit=1000, micro_clusters=512, silhouette_sample=1500)
    yield "udis two-stage", e.udis_seconds(*x.shape, **udis.get_params()), fastest(lambda: udis.fit(x, correct), 2)
    x, _, correct = clusters(1600, 64)
    udis = UDIS()
    yield "udis held-out", e.udis_held_out_seconds(*x.shape, **udis.get_params()), fastest(lambda: udis_held_out(x, correct, udis, 0.5), 2)


def map_cases() -> Iterator[Case]:
    x, _, _ = clusters(2000, 256)
    yield "map pca", e.map_seconds(*x.shape, "pca"), fastest(lambda: project_2d(x, "pca"))
    small = x[:600, :32]
    project_2d(small[:50], "umap")  # umap imported and compiled: the estimate is then a warm one
    yield "map umap", e.map_seconds(*small.shape, "umap"), fastest(lambda: project_2d(small, "umap"), 2)
    x, _, _ = clusters(2500, 128)
    for method in ("tsne", "umap", "pca"):
        params = {"method": method, "max_points": 700, "seed": 0}
        yield f"activis projection {method}", e.projection_seconds(*x.shape, **params), fastest(lambda p=params: Projection(**p).fit(x), 2)


def activis_cases() -> Iterator[Case]:
    a = np.random.default_rng(0).normal(size=(40000, 256)).astype(np.float16)  # 20 MB: past the caches, as a store is
    members = [np.arange(j, len(a), 10) for j in range(10)]
    yield "activis matrix", e.matrix_seconds(*a.shape), fastest(lambda: ActivationMatrix().fit(a, members))
    labels = np.arange(len(a)) % 12
    yield "naps", e.naps_seconds(*a.shape), fastest(lambda: NAPs().fit(a, labels))
    naps = np.random.default_rng(0).normal(size=(12, 192))
    TopographicLayout(iterations=2).fit(naps[:, :32])  # umap and the relaxation kernel compiled
    yield "topographic layout", e.topomap_seconds(*naps.shape), fastest(lambda: TopographicLayout().fit(naps), 2)


def probe_cases() -> Iterator[Case]:
    rng = np.random.default_rng(0)
    widths, groups, n = [192, 512, 1024], 8, 480
    features = {f"l{d}": rng.normal(size=(n, d)).astype(np.float32) for d in widths}
    labels = np.arange(n) % groups
    probes = LinearProbes(epochs=15, n_seeds=3, per_group=1000)
    yield ("probe training", e.probe_seconds(n, widths, groups, seeds=3, epochs=15),
           fastest(lambda: probes.fit(features, labels, [str(g) for g in range(groups)])))


def saliency_cases() -> Iterator[Case]:
    model, dataset = tiny_model(), digits_dataset(240)
    cost = e.model_cost(model)
    with tempfile.TemporaryDirectory() as root:
        store = build_store("estimates", model, dataset, None, batch_size=64, root=Path(root))

        def profiles() -> None:
            shutil.rmtree(store.path / "saliency", ignore_errors=True)
            build_profiles(store, model, dataset, None, batch_size=32)

        yield "saliency profiles", e.profile_seconds(cost, store.n), fastest(profiles)
        index = conv_filters(model.module)
        transform = make_transform(model.input_size, model.mean, model.std)
        x = torch.stack([transform(dataset.load_image(i)) for i in range(21)])
        labels = dataset.labels[:21]
        z = np.random.default_rng(0).normal(size=(21, index.n_filters))
        yield ("turning filters off", e.turn_off_seconds(cost, 10, max_k=30),
               fastest(lambda: FilterTurnOff().explain(model, x[:10], labels[:10], z=z[:10], index=index)))
        check = FineTuneCheck()
        yield ("fine-tuning check", e.fine_tune_seconds(cost, 3, index.n_filters, store.n),
               fastest(lambda: [check.explain(model, x[i : i + 1], int(labels[i]), z=z[i], index=index, neighbours=x[11:21],
                                              neighbour_targets=labels[11:21]) for i in range(3)]))
        mu, sigma = np.zeros(index.n_filters), np.ones(index.n_filters)
        image = dataset.load_image(0)
        explained = FilterSaliency().explain(model, image, 0, mu=mu, sigma=sigma, index=index)
        yield ("one image's saliency", e.image_saliency_seconds(cost),
               fastest(lambda: FilterSaliency().explain(model, image, 0, mu=mu, sigma=sigma, index=index)))
        yield ("masking experiment", e.masking_seconds(cost),
               fastest(lambda: MaskingExperiment().explain(model, image, 0, saliency_map=explained.map, top=explained.top,
                                                           mu=mu, sigma=sigma, index=index)))
        yield ("one image's fine-tuning check", e.image_fine_tune_seconds(cost, 10),
               fastest(lambda: check.explain(model, x[:1], int(dataset.labels[0]), z=z[0], index=index, neighbours=x[1:11],
                                             neighbour_targets=dataset.labels[1:11])))

    n, n_filters = 12000, 1500
    values = np.random.default_rng(0).random((n, n_filters)).astype(np.float16)
    stub = SimpleNamespace(n=n, n_filters=n_filters, rows=lambda rows: values[rows])
    correct = np.random.default_rng(1).random(n) < 0.8
    yield "saliency means", e.saliency_means_seconds(n, n_filters), fastest(lambda: SaliencyProfiles.mean_by_outcome(stub, correct))
    rows = np.arange(0, n, 2)
    yield "reference statistics", e.reference_seconds(len(rows), n_filters), fastest(lambda: SaliencyProfiles.reference_stats(stub, rows))
    affine = (np.ones(n_filters, dtype=np.float32), np.zeros(n_filters, dtype=np.float32))
    query = values[0].astype(np.float32)
    for name, columns in (("every layer", np.arange(n_filters)), ("a range of layers", np.arange(300, 1050))):
        yield f"profile norms ({name})", e.norms_seconds(n, n_filters), fastest(lambda c=columns: row_norms(values, c, affine))
        norms = row_norms(values, columns, affine)
        yield (f"saliency neighbours ({name})", e.neighbours_seconds(n, n_filters, len(columns)),
               fastest(lambda c=columns, r=norms: nearest(values, query, k=10, columns=c, affine=affine, norms=r)))
    z = np.random.default_rng(0).normal(size=(600, 800)).astype(np.float32)
    yield "failure modes", e.failure_modes_seconds(*z.shape), fastest(lambda: FailureModes().fit(z, np.arange(len(z))))


def main() -> None:
    torch.set_num_threads(1)
    ratios: dict[str, float] = {}
    with threadpool_limits(1):
        for cases in (spotlight_cases, udis_cases, map_cases, activis_cases, probe_cases, saliency_cases):
            for name, expected, measured in cases():
                ratios[name] = round(expected / measured, 3)
                print(f"{name:45s} expected {expected:9.4f} s  measured {measured:9.4f} s  ratio {ratios[name]:.2f}", flush=True)
    within = sum(1 / 3 <= r <= 3 for r in ratios.values())
    print(json.dumps({"ratios": ratios, "within_3x": within, "count": len(ratios),
                      "median_ratio": round(statistics.median(ratios.values()), 3), **machine_figures("cpu")}))


if __name__ == "__main__":
    main()
