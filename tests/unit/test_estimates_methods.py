"""Expected times of the methods' runs: finite, positive, and growing with the data as the
runs do. How close they come to measured runs is machine-dependent and lives in
bench/estimates.py (timings belong in a bench; a faster CI machine ran one 3.1x under its
estimate)."""

from __future__ import annotations

import math

import pytest

from core.methods import UDIS, Spotlight
from core.services import estimates as e
from core.services.estimates import ModelCost

SMALL = ModelCost(macs=10**6)
LARGE = ModelCost(macs=4 * 10**9)  # a resnet50 at 224 px

# operation -> expected seconds for a data size n (images or rows), at the page defaults
BY_SIZE = {
    # all coordinates searched: on large problems "auto" searches fewer, so time need not grow
    "spotlight": lambda n: e.spotlight_seconds(n, 512, **{**Spotlight().get_params(), "search_dims": None}),
    "spotlight held-out": lambda n: e.spotlight_held_out_seconds(n, 512, **{**Spotlight().get_params(), "search_dims": None}),
    "udis": lambda n: e.udis_seconds(n, 512, **UDIS().get_params()),
    "udis held-out": lambda n: e.udis_held_out_seconds(n, 512, **UDIS().get_params()),
    "map pca": lambda n: e.map_seconds(n, 512, "pca"),
    "map umap": lambda n: e.map_seconds(n, 512, "umap"),
    "projection tsne": lambda n: e.projection_seconds(n, 512, "tsne", max_points=n),
    "matrix": lambda n: e.matrix_seconds(n, 512),
    "naps": lambda n: e.naps_seconds(n, 512),
    "saliency means": lambda n: e.saliency_means_seconds(n, 4800),
    "reference statistics": lambda n: e.reference_seconds(n, 4800),
    "failure modes": lambda n: e.failure_modes_seconds(n, 4800),
    "norms": lambda n: e.norms_seconds(n, 4800),
    "neighbours": lambda n: e.neighbours_seconds(n, 4800),
    "profiles": lambda n: e.profile_seconds(LARGE, n),
    "turning filters off": lambda n: e.turn_off_seconds(LARGE, n),
    "fine-tuning check": lambda n: e.fine_tune_seconds(LARGE, n, 4800, 10000),
    "probes": lambda n: e.probe_seconds(n, [512, 1024], 36, seeds=5, epochs=50),
}


@pytest.mark.parametrize("operation", sorted(BY_SIZE))
def test_an_estimate_is_positive_and_grows_with_the_data(operation):
    seconds = [BY_SIZE[operation](n) for n in (1_000, 10_000, 100_000)]
    assert all(math.isfinite(s) and s > 0 for s in seconds)
    assert seconds[0] < seconds[1] < seconds[2]


def test_per_image_runs_grow_with_the_model():
    for estimate in (e.image_saliency_seconds, e.masking_seconds, lambda cost: e.image_fine_tune_seconds(cost, 10)):
        assert 0 < estimate(SMALL) < estimate(LARGE)


def test_more_work_asked_is_more_time_expected():
    assert e.spotlight_seconds(10_000, 512, n_spotlights=5) > e.spotlight_seconds(10_000, 512, n_spotlights=1)
    assert e.spotlight_seconds(10_000, 512, steps=2000) > e.spotlight_seconds(10_000, 512, steps=500)
    assert e.probe_seconds(4608, [512], 36, seeds=5, epochs=100) > e.probe_seconds(4608, [512], 36, seeds=5, epochs=50)
    assert e.probe_seconds(4608, [512], 36, seeds=10, epochs=50) > e.probe_seconds(4608, [512], 36, seeds=5, epochs=50)
    assert e.topomap_seconds(36, 2048) > e.topomap_seconds(36, 512)


def test_a_large_spotlight_search_in_principal_directions_is_expected_to_be_quicker():
    params = Spotlight().get_params()
    assert e.spotlight_seconds(100_000, 512, **params) < e.spotlight_seconds(100_000, 512, **{**params, "search_dims": None})
    assert e.spotlight_seconds(1_000, 64, **params) == e.spotlight_seconds(1_000, 64, **{**params, "search_dims": None})


def test_umap_states_its_first_compile_once():
    e.umap_seconds(600, 32, first=False)
    assert e.umap_seconds(600, 32, first=True) - e.umap_seconds(600, 32, first=False) == e.UMAP_FIRST_S
