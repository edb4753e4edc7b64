"""Expected times of the methods' runs (Spotlight, UDIS, the 2-D maps, ActiVis, NAPs and the
topographic layout, the saliency view's runs) against measured runs on small cases, within
3x: CPU seconds of one thread, as core/estimates.py is calibrated."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from core import estimates
from core.estimates import (
    failure_modes_seconds,
    image_fine_tune_seconds,
    image_saliency_seconds,
    map_seconds,
    masking_seconds,
    matrix_seconds,
    model_cost,
    naps_seconds,
    neighbours_seconds,
    norms_seconds,
    projection_seconds,
    reference_seconds,
    saliency_means_seconds,
    spotlight_held_out_seconds,
    spotlight_seconds,
    topomap_seconds,
    udis_held_out_seconds,
    udis_seconds,
    umap_seconds,
)
from core.filters import conv_filters
from core.methods import (
    UDIS,
    ActivationMatrix,
    FailureModes,
    FilterSaliency,
    FineTuneCheck,
    MaskingExperiment,
    NAPs,
    Projection,
    Spotlight,
    TopographicLayout,
)
from core.models import make_transform
from core.saliency_store import SaliencyProfiles, nearest, row_norms
from core.score import spotlight_held_out, udis_held_out
from core.summary import project_2d
from tests.support import digits_dataset, fastest, tiny_model, within


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Runs measured as the estimates are calibrated: one torch thread, one BLAS and OpenMP
    thread, CPU seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)




def clusters(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n points of d dims in 10 Gaussian clusters, exponential losses, 80% correct."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, d)).astype(np.float32) * 3
    x = (centres[rng.integers(0, 10, n)] + rng.normal(size=(n, d))).astype(np.float32)
    return x, rng.exponential(size=n), rng.random(n) < 0.8


@pytest.mark.parametrize(
    "params",
    [{"n_spotlights": 2, "steps": 200}, {"steps": 100, "precision": "diagonal"}, {"steps": 100, "pca": 16, "start": "zero"}],
)
def test_spotlight_search_estimate(params):
    x, losses, _ = clusters(3000, 64)
    spotlight = Spotlight(**params)
    measured = fastest(lambda: spotlight.fit(x, losses))
    assert within(spotlight_seconds(*x.shape, **spotlight.get_params()), measured)


def test_spotlight_search_in_principal_directions_estimate():
    x, losses, _ = clusters(12000, 400)  # 4.8 M values: the centre is searched in 79 + 2 directions
    spotlight = Spotlight(steps=100)
    measured = fastest(lambda: spotlight.fit(x, losses), 2)
    assert spotlight.search_dims_ is not None
    assert within(spotlight_seconds(*x.shape, **spotlight.get_params()), measured)


def test_spotlight_held_out_estimate():
    x, losses, correct = clusters(3000, 64)
    spotlight = Spotlight(n_spotlights=2, steps=200)
    measured = fastest(lambda: spotlight_held_out(x, losses, correct, spotlight))
    assert within(spotlight_held_out_seconds(*x.shape, **spotlight.get_params()), measured)


def test_udis_estimates_exact_and_two_stage():
    x, _, correct = clusters(1000, 64)
    udis = UDIS()
    assert within(udis_seconds(*x.shape, **udis.get_params()), fastest(lambda: udis.fit(x, correct)))
    x, _, correct = clusters(3000, 96)
    udis = UDIS(exact_limit=1000, micro_clusters=512, silhouette_sample=1500)
    measured = fastest(lambda: udis.fit(x, correct), 2)
    assert udis.method_.startswith("two-stage")
    assert within(udis_seconds(*x.shape, **udis.get_params()), measured)


def test_udis_held_out_estimate():
    x, _, correct = clusters(1600, 64)
    udis = UDIS()
    measured = fastest(lambda: udis_held_out(x, correct, udis, 0.5), 2)
    assert within(udis_held_out_seconds(*x.shape, **udis.get_params()), measured)


def test_map_estimates():
    x, _, _ = clusters(2000, 256)
    assert within(map_seconds(*x.shape, "pca"), fastest(lambda: project_2d(x, "pca")))
    x = x[:600, :32]
    project_2d(x[:50], "umap")  # umap imported and compiled: the estimate is then a warm one
    assert umap_seconds(600, 32) == umap_seconds(600, 32, first=False)
    assert umap_seconds(600, 32, first=True) - umap_seconds(600, 32, first=False) == estimates.UMAP_FIRST_S
    assert within(map_seconds(*x.shape, "umap"), fastest(lambda: project_2d(x, "umap"), 2))


@pytest.mark.parametrize("method", ["tsne", "umap", "pca"])
def test_activis_projection_estimate(method):
    x, _, _ = clusters(2500, 128)
    params = {"method": method, "max_points": 700, "seed": 0}
    Projection(**{**params, "max_points": 50}).fit(x)  # the first umap compiles
    measured = fastest(lambda: Projection(**params).fit(x), 2)
    assert within(projection_seconds(*x.shape, **params), measured)


def test_activis_matrix_and_naps_estimates():
    a = np.random.default_rng(0).normal(size=(40000, 256)).astype(np.float16)  # 20 MB: past the caches, as a store is
    members = [np.arange(j, len(a), 10) for j in range(10)]
    assert within(matrix_seconds(*a.shape), fastest(lambda: ActivationMatrix().fit(a, members)))
    labels = np.arange(len(a)) % 12
    assert within(naps_seconds(*a.shape), fastest(lambda: NAPs().fit(a, labels)))


def test_topographic_layout_estimate():
    naps = np.random.default_rng(0).normal(size=(12, 192))
    TopographicLayout(iterations=2).fit(naps[:, :32])  # umap and the relaxation kernel compiled
    measured = fastest(lambda: TopographicLayout().fit(naps), 2)
    assert within(topomap_seconds(*naps.shape), measured)


def stub_profiles(n: int, n_filters: int) -> SimpleNamespace:
    """What the passes over stored profiles read: n, n_filters, rows(), the manifest."""
    values = np.random.default_rng(0).random((n, n_filters)).astype(np.float16)
    return SimpleNamespace(n=n, n_filters=n_filters, rows=lambda rows: values[rows], manifest={"key": "stub"}, path=SimpleNamespace(name="stub"),
                           values=values)


def test_saliency_passes_over_the_profiles(monkeypatch):
    from core.ui import cache, saliency_view

    monkeypatch.setattr(cache, "computed_once", lambda kind, fingerprint, key, label, compute, **_: compute())
    profiles = stub_profiles(12000, 1500)
    correct = np.random.default_rng(1).random(profiles.n) < 0.8
    store = SimpleNamespace(fingerprint="stub")
    means = fastest(lambda: saliency_view.mean_profiles(store, profiles, correct))
    assert within(saliency_means_seconds(profiles.n, profiles.n_filters), means)
    rows = np.arange(0, profiles.n, 2)
    reference = fastest(lambda: SaliencyProfiles.reference_stats(profiles, rows))
    assert within(reference_seconds(len(rows), profiles.n_filters), reference)
    affine = (np.ones(profiles.n_filters, dtype=np.float32), np.zeros(profiles.n_filters, dtype=np.float32))
    query = profiles.values[0].astype(np.float32)
    for columns in (np.arange(profiles.n_filters), np.arange(300, 1050)):  # every layer, a range of layers
        assert within(norms_seconds(profiles.n, profiles.n_filters), fastest(lambda c=columns: row_norms(profiles.values, c, affine)))
        norms = row_norms(profiles.values, columns, affine)
        near = fastest(lambda c=columns, r=norms: nearest(profiles.values, query, k=10, columns=c, affine=affine, norms=r))
        assert within(neighbours_seconds(profiles.n, profiles.n_filters, len(columns)), near)


def test_failure_modes_estimate():
    z = np.random.default_rng(0).normal(size=(600, 800)).astype(np.float32)
    measured = fastest(lambda: FailureModes().fit(z, np.arange(len(z))))
    assert within(failure_modes_seconds(*z.shape), measured)


def test_one_image_saliency_runs():
    model, dataset = tiny_model(), digits_dataset(24)
    index = conv_filters(model.module)
    mu, sigma = np.zeros(index.n_filters), np.ones(index.n_filters)
    cost = model_cost(model)
    image = dataset.load_image(0)
    fitted = FilterSaliency().fit(model, image, 0, mu, sigma, index)
    assert within(image_saliency_seconds(cost), fastest(lambda: FilterSaliency().fit(model, image, 0, mu, sigma, index)))
    masking = fastest(lambda: MaskingExperiment().fit(model, image, 0, fitted.map_, mu, sigma, index, fitted.top_))
    assert within(masking_seconds(cost), masking)
    transform = make_transform(model.input_size, model.mean, model.std)
    x = torch.stack([transform(dataset.load_image(i)) for i in range(11)])
    z = np.random.default_rng(0).normal(size=index.n_filters)
    check = fastest(lambda: FineTuneCheck().fit(model, x[:1], int(dataset.labels[0]), z, index, x[1:], dataset.labels[1:11]))
    assert within(image_fine_tune_seconds(cost, 10), check)
