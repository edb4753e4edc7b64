"""The dataset's saliency profiles beside the store: values, statistics, resume, layers,
size estimate, reference statistics, neighbours and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from core.__main__ import main
from core.errors import DataError, ModelError, StoreError
from core.methods.saliency.filters import FilterIndex, conv_filters, filter_profiles
from core.methods.saliency.profiles import (
    build_profiles,
    find_profiles,
    nearest,
    profile_bytes,
    profile_dir,
    row_norms,
    size_message,
)
from core.store.build import build_store
from core.store.pipeline import image_batches
from tests.support import digits_dataset, tiny_model
from tests.unit.test_cli import _workspace_file

N = 96


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def dataset():
    return digits_dataset(N)


@pytest.fixture(scope="module")
def store(tmp_path_factory, model, dataset):
    return build_store("sal", model, dataset, ["block1"], batch_size=64, root=tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def reference(model, dataset, store):
    """(N, F) float32 profiles of every image, straight from filter_profiles."""
    labels = torch.from_numpy(np.array(store.meta()["label_idx"]))
    x = torch.cat(list(image_batches(dataset, model, 0, 64, 0)))
    return filter_profiles(model.module, x, labels, conv_filters(model.module)).numpy()


@pytest.fixture(scope="module")
def built(store, model, dataset):
    return build_profiles(store, model, dataset, batch_size=20)


def _close_f16(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=2e-3, atol=1e-7 * max(1.0, float(np.abs(expected).max())))


def test_profiles_equal_filter_profiles(built, reference, store):
    assert built.profiles.dtype == np.float16 and built.profiles.shape == reference.shape
    assert built.index == FilterIndex(("block1.0", "block2.0", "block3.0"), (8, 16, 16), (27, 72, 144))
    _close_f16(built.rows(slice(None)), reference)
    assert built.method == "sampler" and built.manifest["n"] == N
    for name in ("manifest.json", "index.json", "stats.npz", "scale.npy", "profiles.f16"):
        assert (built.path / name).exists()
    assert not (built.path / "progress.json").exists()
    assert built.path.parent == store.path / "saliency"


def test_stats_are_numpy_mean_and_std(built, reference):
    np.testing.assert_allclose(built.mu, reference.astype(np.float64).mean(axis=0), rtol=1e-10, atol=0)
    sigma = reference.astype(np.float64).std(axis=0, ddof=1)
    np.testing.assert_allclose(built.sigma, np.where(sigma <= 1e-14, 1.0, sigma), rtol=1e-9, atol=0)
    z = built.z([0, 5])
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, (reference[[0, 5]] - built.mu) / built.sigma, rtol=3e-3, atol=3e-3)


def test_second_build_opens_and_find(built, store, model, dataset):
    calls = []
    again = build_profiles(store, model, dataset, batch_size=20, progress=lambda d, t: calls.append(d))
    assert again.path == built.path and calls == []
    assert find_profiles(store).path == built.path
    assert find_profiles(store, model=model).path == built.path
    assert find_profiles(store, ["block3"]) is None


def test_interrupted_build_resumes_to_identical_files(tmp_path, model, dataset, built):
    fresh = build_store("sal", model, dataset, ["block1"], batch_size=64, root=tmp_path)

    def stop(done: int, total: int) -> None:
        if done >= 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_profiles(fresh, model, dataset, batch_size=20, progress=stop)
    directory = profile_dir(fresh, conv_filters(model.module))
    assert not (directory / "manifest.json").exists()
    assert json.loads((directory / "progress.json").read_text())["rows_done"] == 40
    assert find_profiles(fresh) is None
    seen = []
    resumed = build_profiles(fresh, model, dataset, batch_size=20, progress=lambda d, t: seen.append(d))
    assert seen[0] == 40 and seen[-1] == N
    assert (resumed.path / "profiles.f16").read_bytes() == (built.path / "profiles.f16").read_bytes()
    np.testing.assert_array_equal(resumed.mu, built.mu)
    np.testing.assert_array_equal(resumed.sigma, built.sigma)
    np.testing.assert_array_equal(resumed.scale, built.scale)


def test_layer_restriction(store, model, dataset, built):
    part = build_profiles(store, model, dataset, ["block2"], batch_size=32)
    assert part.index.layers == ("block2.0",) and part.n_filters == 16
    assert part.path != built.path
    cols = built.index.columns(["block2.0"])
    _close_f16(part.rows(slice(None)), built.rows(slice(None))[:, cols])
    np.testing.assert_allclose(part.mu, built.mu[cols], rtol=1e-10)
    assert find_profiles(store, ["block2"]).path == part.path
    assert find_profiles(store, ["block2.0"]).path == part.path
    with pytest.raises(ModelError, match="pick"):
        build_profiles(store, model, dataset, ["nope"])


def test_torchscript_uses_the_loop(tmp_path, model):
    small = digits_dataset(24)
    scripted = dataclasses.replace(model, module=torch.jit.script(model.module))
    fresh = build_store("sal", model, small, ["block1"], batch_size=64, root=tmp_path)
    profiles = build_profiles(fresh, scripted, small, ["block3"], batch_size=12)
    assert profiles.method == "loop"
    x = torch.cat(list(image_batches(small, model, 0, 64, 0)))
    y = torch.from_numpy(np.array(fresh.meta()["label_idx"]))
    expected = filter_profiles(model.module, x, y, conv_filters(model.module, ["block3"]), method="vmap")
    _close_f16(profiles.rows(slice(None)), expected.numpy())


def test_lock_refuses_a_second_builder(tmp_path, model, dataset):
    fresh = build_store("sal", model, dataset, ["block1"], batch_size=64, root=tmp_path)
    directory = profile_dir(fresh, conv_filters(model.module, ["block1"]))
    directory.mkdir(parents=True)
    notes = []
    with FileLock(str(directory / ".lock")), pytest.raises(StoreError, match="Another process"):
        build_profiles(fresh, model, dataset, ["block1"], lock_timeout=1, notice=notes.append)
    assert notes and "Waiting" in notes[0]


def test_size_estimate():
    index = FilterIndex(("a", "b"), (500, 26000), (9, 9))
    assert profile_bytes(50_000, index) == 50_000 * 26_500 * 2 + 26_500 * 20
    message = size_message(50_000, index)
    assert "50,000 images" in message and "26,500 conv filters" in message and "2.7 GB" in message
    assert profile_bytes(0, index) == 26_500 * 20


def test_reference_stats_by_hand(built, reference):
    rows = [3, 5, 7, 11, 5]
    mu, sigma = built.reference_stats(rows, chunk=2)
    subset = built.rows([3, 5, 7, 11]).astype(np.float64)
    np.testing.assert_allclose(mu, subset.mean(axis=0), rtol=1e-9)
    expected = subset.std(axis=0, ddof=1)
    np.testing.assert_allclose(sigma, np.where(expected <= 1e-14, 1.0, expected), rtol=1e-9)
    _close_f16(mu, reference[[3, 5, 7, 11]].mean(axis=0))
    with pytest.raises(DataError, match="at least 2"):
        built.reference_stats([4])
    with pytest.raises(DataError, match="at least 2"):
        built.reference_stats([])


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 40)).astype(np.float16)
    z[7] = 0  # a zero row has similarity 0
    q = rng.normal(size=40).astype(np.float32)
    cols = np.arange(10, 30)
    cand = rng.choice(300, size=80, replace=False)

    def brute(block: np.ndarray, query: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(block, axis=1)
        return block @ query / np.where(norms > 0, norms, 1) / np.linalg.norm(query)

    full = brute(z.astype(np.float32), q)
    rows, sims = nearest(z, q, k=5, chunk=64)
    assert list(rows) == list(np.argsort(-full)[:5])
    np.testing.assert_allclose(sims, np.sort(full)[::-1][:5], rtol=2e-3)  # float16 query
    rows, _ = nearest(z, z[rows[0]].astype(np.float32), k=3, chunk=50, query_row=int(rows[0]))
    assert len(rows) == 3 and rows[0] != np.argsort(-full)[0]
    sub = brute(z[:, cols].astype(np.float32), q[cols])
    rows, sims = nearest(z, q, k=4, columns=cols, rows=cand, chunk=16)
    best = cand[np.argsort(-sub[cand])[:4]]
    assert list(rows) == list(best)
    a, b = rng.uniform(0.5, 2, size=40).astype(np.float32), rng.normal(size=40).astype(np.float32)
    rows, sims = nearest(z, q, k=3, affine=(a, b))
    assert list(rows) == list(np.argsort(-brute(z.astype(np.float32) * a + b, q))[:3])
    assert len(nearest(z, q, k=500, rows=[1, 2], query_row=2)[0]) == 1
    again, _ = nearest(z, q, k=4, columns=cols, rows=cand, norms=row_norms(z, cols, chunk=7))
    assert list(again) == list(best)
    big = np.full(40, 5e4, dtype=np.float32)  # a * q beyond float16's range is rescaled
    rows, _ = nearest(z, q, k=3, affine=(big, b))
    assert list(rows) == list(np.argsort(-brute(z.astype(np.float32) * big + b, q))[:3])


def test_cli_saliency(tmp_path, capsys):
    path = _workspace_file(tmp_path)
    cache = tmp_path / "cache"
    args = ["--file", str(path), "saliency", "tiny", "--cache", str(cache), "--yes"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "python -m core build tiny" in err and "Traceback" not in err
    assert main(["--file", str(path), "build", "tiny", "--layers", "block1", "--cache", str(cache)]) == 0
    capsys.readouterr()
    assert main([*args, "--layers", "block9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: None of block9") and "Traceback" not in err
    assert main([*args, "--layers", "block1,block3", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "60 images over 24 conv filters (2 layers)" in out and "method sampler" in out
    (profiles_dir,) = Path(cache / "stores").glob("*/saliency/*")
    assert json.loads((profiles_dir / "manifest.json").read_text())["layers"] == ["block1.0", "block3.0"]
    assert main(["--file", str(path), "saliency", "nope"]) == 2
