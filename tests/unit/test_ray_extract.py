"""core/store/ray_source.py: the Ray Data output source gives the local path's outputs and store.

One local Ray (2 CPUs) for the module; each RaySource call starts one CPU actor.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("ray")

import ray  # noqa: E402

from core.data.sources import DatasetSpec, build_dataset  # noqa: E402
from core.errors import StoreError  # noqa: E402
from core.models.loading import load_model, make_transform  # noqa: E402
from core.services.workspace import Workspace  # noqa: E402
from core.store.hooks import ActivationRecorder  # noqa: E402
from core.store.ray_source import RaySource, _consecutive_runs, init_local_ray  # noqa: E402
from tests.support import digits_arrays, tiny_model_spec  # noqa: E402

pytestmark = pytest.mark.slow

LAYERS = ["block1", "block2"]
N = 200


@pytest.fixture(scope="module")
def local_ray():
    init_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def _folder(root: Path, n: int) -> Path:
    images, labels, _ = digits_arrays(n)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = _folder(tmp_path_factory.mktemp("ray_digits") / "images", N)
    return Workspace(
        name="raytiny", title="Tiny digits (Ray)", model=tiny_model_spec(),
        dataset=DatasetSpec(kind="imagefolder", root=str(root)),
    )


@pytest.fixture(scope="module")
def reference(ws) -> dict[str, np.ndarray]:
    """The local path's outputs for every row: the model per batch with ActivationRecorder."""
    model = load_model(ws.model, "cpu")
    dataset = build_dataset(ws.dataset)
    transform = make_transform(model.input_size, model.mean, model.std)
    recorder = ActivationRecorder(model, LAYERS, want_embedding=True)
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for first in range(0, len(dataset), 64):
            batch = torch.stack([transform(dataset.load_image(r)) for r in range(first, min(first + 64, len(dataset)))])
            recorder.captured.clear()
            logits = model.module(batch)
            outputs = {**recorder.captured, "logits": logits}
            for key, value in outputs.items():
                parts.setdefault(key, []).append(value.float().numpy())
    recorder.close()
    return {key: np.concatenate(value) for key, value in parts.items()}


def _gather(source, start: int) -> tuple[list[int], dict[str, dict[int, np.ndarray]]]:
    """Rows yielded (each once per yielded row) and the outputs by key and row."""
    rows: list[int] = []
    by_key: dict[str, dict[int, np.ndarray]] = {}
    for first, outputs in source(LAYERS, True, start):
        lengths = {value.shape[0] for value in outputs.values()}
        assert len(lengths) == 1
        count = lengths.pop()
        rows += range(first, first + count)
        for key, value in outputs.items():
            assert value.dtype == np.float32 and value.ndim == 2
            for i in range(count):
                by_key.setdefault(key, {})[first + i] = value[i]
    return rows, by_key


def test_consecutive_runs():
    assert _consecutive_runs(np.array([3, 4, 5, 9, 10, 2])) == [(0, 3), (3, 5), (5, 6)]
    assert _consecutive_runs(np.array([7])) == [(0, 1)]


def test_ray_outputs_equal_local(local_ray, ws, reference):
    rows, by_key = _gather(RaySource(ws, batch_size=64), start=0)
    assert sorted(rows) == list(range(N))  # every row exactly once
    assert set(by_key) == set(reference) == {"logits", "embedding", *(f"{ly}.{p}" for ly in LAYERS for p in ("mean", "max"))}
    for key, expected in reference.items():
        got = np.stack([by_key[key][r] for r in range(N)])
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=key)


@pytest.mark.timeout(300)  # the bug was a hang: fail instead
def test_as_many_cpu_actors_as_cpus_share_them_and_finish(local_ray, ws, reference):
    """Two actors on a 2-CPU Ray used to take both CPUs and leave none to Ray Data's read
    tasks: the build waited forever. The rows now come as in-memory blocks (no read tasks),
    and more actors than CPUs share them."""
    for actors in (2, 3):
        rows, by_key = _gather(RaySource(ws, batch_size=32, actors=actors), start=0)
        assert sorted(rows) == list(range(N))
        np.testing.assert_allclose(np.stack([by_key["logits"][r] for r in range(N)]), reference["logits"], atol=1e-5)


def test_ray_start_offset(local_ray, ws, reference):
    rows, by_key = _gather(RaySource(ws, batch_size=48), start=100)
    assert sorted(rows) == list(range(100, N))
    got = np.stack([by_key["logits"][r] for r in range(100, N)])
    np.testing.assert_allclose(got, reference["logits"][100:], atol=1e-5)


def test_corrupt_image_is_a_store_error(local_ray, tmp_path):
    root = _folder(tmp_path / "images", 40)
    victim = sorted(root.rglob("*.png"))[5]
    victim.write_bytes(victim.read_bytes()[:60])  # header intact, pixel data truncated
    bad = Workspace(
        name="raybad", title="bad", model=tiny_model_spec(),
        dataset=DatasetSpec(kind="imagefolder", root=str(root)),
    )
    with pytest.raises(StoreError) as info:
        list(RaySource(bad, batch_size=16)(LAYERS, True, 0))
    message = str(info.value)
    assert "The Ray build failed on images" in message and victim.name in message
    assert "Traceback" not in message


def test_without_ray_is_a_store_error(ws, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(StoreError, match=r"Ray is not installed: pip install -e '\.\[scale\]'"):
        RaySource(ws)


class _Stop(Exception):
    pass


def test_build_store_with_ray_source_equals_local(local_ray, ws, tmp_path):
    from core.store.build import build_store

    if "source" not in inspect.signature(build_store).parameters:
        pytest.skip("core/store/build.py's build_store does not accept source= yet")
    model = load_model(ws.model, "cpu")
    dataset = build_dataset(ws.dataset)
    local = build_store(ws.name, model, dataset, LAYERS, batch_size=64, root=tmp_path / "local")

    # A Ray build, interrupted (its source stops after two batches of 32), then resumed by a
    # plain RaySource from the checkpointed prefix, gives the local store.
    def stopping(layers, want_core, start):
        for k, item in enumerate(RaySource(ws, batch_size=32)(layers, want_core, start)):
            if k == 2:
                raise _Stop
            yield item

    with pytest.raises(_Stop):
        build_store(ws.name, model, dataset, LAYERS, batch_size=32, root=tmp_path / "ray", source=stopping)
    assert json.loads((tmp_path / "ray" / "stores" / local.path.name / "progress.json").read_text())["rows_done"] == 64
    store = build_store(ws.name, model, dataset, LAYERS, batch_size=32, root=tmp_path / "ray",
                        source=RaySource(ws, batch_size=32))
    assert not (store.path / "progress.json").exists()
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["last_build"]["source"] == "RaySource" and manifest["last_build"]["images"] == N - 64

    assert store.path.name == local.path.name  # the directory name holds the fingerprint
    ref_manifest = json.loads((local.path / "manifest.json").read_text())
    for key in ("fingerprint", "n", "classes", "layers", "layer_channels", "embedding_dim", "attribute_columns"):
        assert manifest[key] == ref_manifest[key], key
    files = sorted(p.relative_to(local.path) for p in local.path.rglob("*.npy"))
    assert files == sorted(p.relative_to(store.path) for p in store.path.rglob("*.npy"))
    for rel in files:
        np.testing.assert_allclose(np.load(store.path / rel), np.load(local.path / rel), atol=1e-5, err_msg=str(rel))
    a, b = pd.read_parquet(local.path / "meta.parquet"), pd.read_parquet(store.path / "meta.parquet")
    pd.testing.assert_frame_equal(a.drop(columns=["loss", "confidence", "p_true"]), b.drop(columns=["loss", "confidence", "p_true"]))
    np.testing.assert_allclose(a[["loss", "confidence", "p_true"]], b[["loss", "confidence", "p_true"]], atol=1e-5)
