"""The activation store: round trip, fingerprints, resume, lock, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from filelock import FileLock
from PIL import Image

import core.store.build
from core.data.manifest import CsvManifestDataset
from core.data.sources import ArrayDataset
from core.errors import DataError, StoreError
from core.models.loading import make_transform
from core.store.build import build_store
from core.store.pipeline import QUEUE_BATCHES
from core.store.read import (
    RESERVED_COLUMNS,
    find_store,
    metadata_attribute_names,
    open_store,
    store_dir,
    store_fingerprint,
)
from tests.support import digits_arrays, digits_dataset, tiny_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def dataset():
    return digits_dataset(240)


def _reference(model, dataset, rows):
    """Forward the rows by hand, capturing the head's input and the block outputs."""
    captured = {}
    handles = [
        model.module.head.register_forward_pre_hook(lambda m, a: captured.__setitem__("emb", a[0])),
        model.module.block1.register_forward_hook(lambda m, a, o: captured.__setitem__("block1", o)),
    ]
    transform = make_transform(model.input_size, model.mean, model.std)
    batch = torch.stack([transform(dataset.load_image(r)) for r in rows])
    with torch.no_grad():
        logits = model.module(batch)
    for h in handles:
        h.remove()
    return logits, captured


def test_round_trip(tmp_path, model, dataset):
    store = build_store("t", model, dataset, ["block1", "block2"], batch_size=64, root=tmp_path)
    assert store.n == 240 and store.layers == ["block1", "block2"]
    meta = store.meta()
    assert list(meta["row"]) == list(range(240))
    assert list(meta["id"]) == dataset.ids
    assert {"label", "pred", "correct", "loss", "confidence", "tint", "parity"} <= set(meta.columns)
    rows = [0, 17, 239]
    logits, captured = _reference(model, dataset, rows)
    np.testing.assert_allclose(store.logits()[rows], logits.numpy(), rtol=1e-5, atol=1e-5)
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(dataset.labels[rows]), reduction="none")
    np.testing.assert_allclose(meta["loss"].to_numpy()[rows], expected_loss.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.embedding()[rows], captured["emb"].numpy(), rtol=1e-5, atol=1e-5)
    block1 = captured["block1"]
    np.testing.assert_allclose(store.pooled("block1", "mean")[rows], block1.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store.pooled("block1", "max")[rows], block1.amax((2, 3)).numpy(), rtol=1e-5, atol=1e-5)
    assert meta["correct"].equals(meta["pred_idx"] == meta["label_idx"])
    # a second build opens the same store without extracting again
    calls = []
    again = build_store("t", model, dataset, ["block1", "block2"], root=tmp_path, progress=lambda *a: calls.append(a))
    assert again.path == store.path and calls == []
    assert find_store("t", model, dataset, root=tmp_path).path == store.path


def test_missing_layer_is_a_clear_error(tmp_path, model, dataset):
    store = build_store("t", model, dataset, ["block1"], root=tmp_path)
    with pytest.raises(StoreError, match="block2.*stored: block1"):
        store.pooled("block2")
    with pytest.raises(StoreError, match="pick from"):
        build_store("t", model, dataset, ["nope"], root=tmp_path)


def test_representations_by_name(tmp_path, model, dataset):
    store = build_store("t", model, dataset, ["block2", "block1"], root=tmp_path)
    assert store.representations() == {
        "embedding": (240, 12),
        "block1:mean": (240, 8),
        "block1:max": (240, 8),
        "block2:mean": (240, 16),
        "block2:max": (240, 16),
    }
    assert list(store.representations()) == [
        "embedding", "block1:mean", "block1:max", "block2:mean", "block2:max",
    ]  # embedding first, then layers in network order, mean before max
    embedding = store.representation("embedding")
    assert isinstance(embedding, np.memmap) and embedding.shape == (240, 12)
    np.testing.assert_array_equal(embedding, store.embedding())
    for layer in ("block1", "block2"):
        for pool in ("mean", "max"):
            array = store.representation(f"{layer}:{pool}")
            assert isinstance(array, np.memmap)
            np.testing.assert_array_equal(array, store.pooled(layer, pool))
    for name in ("block3:mean", "block1:median", "block1", "fc1", "", "embedding:mean"):
        with pytest.raises(StoreError, match=rf"Unknown representation '{name}'.*embedding, block1:mean"):
            store.representation(name)


def test_adding_a_layer_extracts_only_that_layer(tmp_path, model, dataset):
    store = build_store("t", model, dataset, ["block1"], root=tmp_path)
    embedding_mtime = (store.path / "embedding.npy").stat().st_mtime_ns
    bigger = build_store("t", model, dataset, ["block1", "block2"], root=tmp_path)
    assert bigger.layers == ["block1", "block2"]
    assert (store.path / "embedding.npy").stat().st_mtime_ns == embedding_mtime
    assert bigger.pooled("block2").shape == (240, 16)


def test_a_hidden_linear_layer_can_be_stored(tmp_path, model, dataset):
    """ActiVis compares a hidden linear layer with the blocks: its (N, D) output is stored as it is
    (mean and max over no space are the values), after the blocks in network order."""
    assert model.linear_layers == ["fc1"] and model.storable_layers[-1] == "fc1"
    store = build_store("t", model, dataset, ["fc1", "block1"], root=tmp_path)
    assert store.layers == ["block1", "fc1"] and store.manifest["layer_channels"]["fc1"] == 12
    rows = [3, 100]
    captured = {}
    handle = model.module.fc1.register_forward_hook(lambda m, a, o: captured.__setitem__("fc1", o))
    _reference(model, dataset, rows)
    handle.remove()
    for pool in ("mean", "max"):
        np.testing.assert_allclose(store.pooled("fc1", pool)[rows], captured["fc1"].numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(StoreError, match="pick from: block1, block2, block3, fc1"):
        build_store("t", model, dataset, ["head"], root=tmp_path)  # the final linear: its output is the logits


def test_fingerprint_follows_weights_and_data(model, dataset):
    base = store_fingerprint(model, dataset)
    assert store_fingerprint(model, digits_dataset(240)) == base
    images, labels, attributes = digits_arrays(240)
    images[5, 0, 0, 0] ^= 1
    changed_data = ArrayDataset(images, labels, [str(d) for d in range(10)], attributes=attributes, name="digits")
    assert store_fingerprint(model, changed_data) != base
    other = tiny_model()
    with torch.no_grad():
        other.module.fc1.weight[0, 0] += 1e-3
    from core.models.loading import weights_fingerprint

    other.weights_fingerprint = weights_fingerprint(other.module)
    assert store_fingerprint(other, dataset) != base


def test_interrupted_build_resumes(tmp_path, model, dataset):
    seen = []

    def interrupt(done, total, message):
        seen.append(done)
        if done >= 96:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_store("t", model, dataset, ["block1"], batch_size=32, root=tmp_path, progress=interrupt)
    directory = store_dir("t", store_fingerprint(model, dataset), tmp_path)
    assert not (directory / "manifest.json").exists()  # never looks complete
    with pytest.raises(StoreError):
        open_store(directory)
    # the writer thread finishes the batches already handed to it (at most its queue's and the
    # one it writes: how many depends on how far it lagged, more on a loaded machine)
    done = json.loads((directory / "progress.json").read_text())["rows_done"]
    assert done % 32 == 0 and 96 <= done <= 96 + (QUEUE_BATCHES + 1) * 32, done
    starts = []
    store = build_store(
        "t", model, dataset, ["block1"], batch_size=32, root=tmp_path, progress=lambda d, t, m: starts.append(d)
    )
    assert starts[0] == done  # resumed, not restarted
    fresh = build_store("t", model, dataset, ["block1"], batch_size=32, root=tmp_path / "fresh")
    np.testing.assert_array_equal(store.embedding(), fresh.embedding())
    np.testing.assert_array_equal(store.pooled("block1", "max"), fresh.pooled("block1", "max"))
    assert store.meta().equals(fresh.meta())
    assert not (directory / "progress.json").exists()


class _BrokenAt(ArrayDataset):
    def load_image(self, index):
        if index == 150:
            raise DataError("Cannot read image 'x.png': truncated. Fix or remove the file.")
        return super().load_image(index)


def test_unreadable_image_stops_cleanly_and_resumes(tmp_path, model):
    images, labels, attributes = digits_arrays(240)
    broken = _BrokenAt(images, labels, [str(d) for d in range(10)], attributes=attributes, name="digits")
    with pytest.raises(DataError, match="x.png.*stopped at image 128 of 240"):
        build_store("t", model, broken, ["block1"], batch_size=32, root=tmp_path)
    directory = store_dir("t", store_fingerprint(model, broken), tmp_path)
    assert not (directory / "manifest.json").exists()
    assert json.loads((directory / "progress.json").read_text())["rows_done"] == 128


def test_labels_beyond_model_outputs(tmp_path, model):
    images, labels, _ = digits_arrays(40)
    labels = labels.copy()
    labels[0] = 11
    data = ArrayDataset(images, labels, [str(d) for d in range(12)], name="twelve")
    with pytest.raises(StoreError, match="only 10 outputs"):
        build_store("t", model, data, root=tmp_path)


def test_lock_held_elsewhere_times_out_clearly(tmp_path, model, dataset):
    directory = store_dir("t", store_fingerprint(model, dataset), tmp_path)
    directory.mkdir(parents=True)
    messages = []
    with FileLock(str(directory / ".lock")), pytest.raises(StoreError, match="Another process"):
        build_store("t", model, dataset, root=tmp_path, lock_timeout=2, progress=lambda d, t, m: messages.append(m))
    assert any("Waiting" in m for m in messages)


def _clashing_dataset(n=40):
    images, labels, _ = digits_arrays(n)
    rng = np.random.default_rng(1)
    attributes = pd.DataFrame(
        {
            "correct": rng.choice(["yes", "no"], n),
            "attr_correct": np.arange(n),
            "Label": rng.choice(["a", "b"], n),
            "slice_x": np.arange(n) % 3 == 0,
            "Tint": rng.choice(["red", "blue"], n),
            "tint": np.arange(n) * 0.5,
            7: np.arange(n) % 2,
            "": ["?"] * n,
            "mixed": [1, "a", 2.5, None] * (n // 4),
        }
    )
    ground_truth = pd.DataFrame({"slice_x": np.arange(n) % 5 == 0})
    data = ArrayDataset(
        images, labels, [str(d) for d in range(10)], attributes=attributes,
        ground_truth=ground_truth, name="clash",
    )
    return data, attributes


CLASH_NAMES = [
    "attr_correct_2", "attr_correct", "attr_Label", "attr_slice_x", "Tint", "attr_tint", "7",
    "attr_column_8", "mixed",
]


def test_metadata_attribute_names_never_clash():
    data, _ = _clashing_dataset()
    names = metadata_attribute_names(data)
    assert names == CLASH_NAMES
    every = [*RESERVED_COLUMNS, "slice_x", *names]
    assert len({c.lower() for c in every}) == len(every)  # unique ignoring case
    assert metadata_attribute_names(data) == names  # the same on every call
    # without ground truth a `slice_` attribute is renamed too: the prefix marks ground truth
    # everywhere (workshop mode hides it, exports leave it out), so an attribute never takes it
    images, labels, _ = digits_arrays(12)
    plain = ArrayDataset(images, labels, [str(d) for d in range(10)],
                         attributes=pd.DataFrame({"slice_x": ["a", "b"] * 6, "Slice_Y": range(12)}))
    assert metadata_attribute_names(plain) == ["attr_slice_x", "attr_Slice_Y"]


def test_clashing_attribute_names_build_and_query(tmp_path, model):
    data, attributes = _clashing_dataset()
    store = build_store("t", model, data, ["block1"], root=tmp_path)
    assert store.attribute_columns == CLASH_NAMES
    assert store.slice_columns == ["slice_x"]
    meta = store.meta()
    assert list(meta.columns) == [*RESERVED_COLUMNS, *CLASH_NAMES, "slice_x"]
    assert meta["attr_correct_2"].tolist() == attributes["correct"].tolist()
    assert meta["attr_correct"].tolist() == list(range(40))
    assert meta["attr_tint"].tolist() == [i * 0.5 for i in range(40)]
    assert meta["7"].sum() == 20
    assert meta["attr_slice_x"].sum() == 14 and meta["slice_x"].sum() == 8
    assert meta["mixed"].tolist()[:3] == ["1", "a", "2.5"]  # mixed types: stored as text
    assert meta["mixed"].isna().sum() == 10  # None stays missing
    assert meta["correct"].equals(meta["pred_idx"] == meta["label_idx"])
    con = duckdb.connect()
    con.register("source", meta)
    con.execute("CREATE TABLE meta AS SELECT * FROM source")  # names unique ignoring case
    assert con.execute("SELECT count(*) FROM meta WHERE attr_Label = 'a'").fetchone()[0] == int(
        (attributes["Label"] == "a").sum()
    )


def test_csv_attributes_named_like_store_columns(tmp_path, model):
    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    csv = tmp_path / "m.csv"
    csv.write_text(
        "path,label,correct,attr_correct,Label,LOSS,\n"
        + "".join(f"{i}.png,{i % 2},c{i},{i},L{i},{i / 2},u{i}\n" for i in range(6))
    )
    data = CsvManifestDataset(csv)
    store = build_store("csv", model, data, [], root=tmp_path / "stores")
    expected = ["attr_correct_2", "attr_correct", "attr_Label", "attr_LOSS", "attr_column_7"]
    assert store.attribute_columns == expected
    meta = store.meta()
    assert list(meta.columns) == [*RESERVED_COLUMNS, *expected]
    assert meta["attr_correct_2"].tolist() == [f"c{i}" for i in range(6)]
    assert meta["attr_LOSS"].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert meta["label"].tolist() == ["0", "1", "0", "1", "0", "1"]


def test_ground_truth_clash_is_refused_before_extraction(tmp_path, model):
    images, labels, _ = digits_arrays(20)
    data = ArrayDataset(
        images, labels, [str(d) for d in range(10)],
        ground_truth=pd.DataFrame({"slice_a": [True] * 20, "SLICE_A": [False] * 20}),
    )
    with pytest.raises(DataError, match="ground-truth column 'SLICE_A' that clashes with 'slice_a'"):
        build_store("t", model, data, root=tmp_path)
    assert not (tmp_path / "stores").exists()  # nothing extracted, nothing half-written


def test_failed_metadata_write_recovers(tmp_path, model, dataset, monkeypatch):
    original = core.store.build._write_meta
    calls = []

    def fail_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return original(*args)

    monkeypatch.setattr(core.store.build, "_write_meta", fail_once)
    with pytest.raises(StoreError, match="meta.parquet.*No space left.*run the build again"):
        build_store("t", model, dataset, ["block1"], batch_size=64, root=tmp_path)
    directory = store_dir("t", store_fingerprint(model, dataset), tmp_path)
    assert not (directory / "manifest.json").exists()
    assert json.loads((directory / "progress.json").read_text())["rows_done"] == 240
    seen = []
    store = build_store(
        "t", model, dataset, ["block1"], batch_size=64, root=tmp_path,
        progress=lambda d, t, m: seen.append((d, m)),
    )
    assert seen == [(240, "Resuming extraction")]  # no image is read again
    assert len(calls) == 2
    assert (directory / "manifest.json").exists() and not (directory / "progress.json").exists()
    assert store.n == 240 and store.attribute_columns == ["tint", "parity"]
    fresh = build_store("t", model, dataset, ["block1"], root=tmp_path / "fresh")
    assert store.meta().equals(fresh.meta())
    np.testing.assert_array_equal(store.pooled("block1"), fresh.pooled("block1"))


def test_store_with_old_clashing_names_is_repaired_without_extraction(tmp_path, model):
    data, attributes = _clashing_dataset()
    store = build_store("t", model, data, ["block1"], root=tmp_path)
    # What an older version wrote: 'Label' next to 'label', which DuckDB cannot load.
    old_names = ["attr_correct", "attr_correct", "Label", "slice_x", "Tint", "tint", "7", "", "mixed"]
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["attribute_columns"] = old_names
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    assert find_store("t", model, data, root=tmp_path) is None  # stale: offered a build
    embedding_mtime = (store.path / "embedding.npy").stat().st_mtime_ns
    seen = []
    repaired = build_store("t", model, data, ["block1"], root=tmp_path, progress=lambda *a: seen.append(a))
    assert seen == []  # no extraction pass
    assert (store.path / "embedding.npy").stat().st_mtime_ns == embedding_mtime
    assert repaired.attribute_columns == CLASH_NAMES
    assert list(repaired.meta().columns) == [*RESERVED_COLUMNS, *CLASH_NAMES, "slice_x"]
    assert find_store("t", model, data, root=tmp_path).path == store.path


def test_damaged_complete_store_is_rebuilt(tmp_path, model, dataset):
    store = build_store("t", model, dataset, ["block1"], root=tmp_path)
    (store.path / "meta.parquet").unlink()
    assert find_store("t", model, dataset, root=tmp_path) is None
    rebuilt = build_store("t", model, dataset, ["block1"], root=tmp_path)
    assert rebuilt.n == 240 and len(rebuilt.meta()) == 240




def _truncate(path: Path, share: float = 0.8) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])


DAMAGES = {
    "embedding truncated": lambda p: _truncate(p / "embedding.npy"),
    "layer truncated": lambda p: _truncate(p / "layers" / "block1.max.npy"),
    "logits of another width": lambda p: np.save(p / "logits.npy", np.zeros((240, 3), np.float32)),
    "metadata not parquet": lambda p: (p / "meta.parquet").write_bytes(b"not a parquet file at all"),
    "metadata truncated": lambda p: _truncate(p / "meta.parquet", 0.5),
    "manifest a list": lambda p: (p / "manifest.json").write_text("[]"),
    "manifest empty": lambda p: (p / "manifest.json").write_text("{}"),
    "manifest n not a number": lambda p: (p / "manifest.json").write_text(
        json.dumps({**json.loads((p / "manifest.json").read_text()), "n": "abc"})),
    "manifest n too large": lambda p: (p / "manifest.json").write_text(
        json.dumps({**json.loads((p / "manifest.json").read_text()), "n": 241})),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_store_is_refused_then_rebuilt(tmp_path, model, dataset, damage):
    """A store whose files were cut short or rewritten (found by a hostile-input sweep:
    pages crashed reading it and `build` called it complete) is refused by open_store with
    a message saying to rebuild, is not found by find_store, and the next build rebuilds it."""
    store = build_store("t", model, dataset, ["block1"], root=tmp_path)
    logits = np.array(store.logits())
    DAMAGES[damage](store.path)
    with pytest.raises(StoreError, match="damaged|lacks") as error:
        open_store(store.path)
    assert "rebuild" in str(error.value)
    assert find_store("t", model, dataset, root=tmp_path) is None
    rebuilt = build_store("t", model, dataset, ["block1"], root=tmp_path)
    assert rebuilt.n == 240 and len(rebuilt.meta()) == 240
    assert np.array_equal(np.asarray(rebuilt.logits()), logits)
    assert rebuilt.pooled("block1", "max").shape[0] == 240
BUILD_SCRIPT = """
import sys
from pathlib import Path
from core.store.build import build_store
from tests.support import digits_dataset, tiny_model
store = build_store("t", tiny_model(), digits_dataset(240), ["block1", "block2"], batch_size=16, root=Path(sys.argv[1]))
print(store.path)
"""


@pytest.mark.slow
def test_two_processes_build_the_same_store(tmp_path, model, dataset):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    store = open_store(Path(paths.pop()))
    reference = build_store("t", model, dataset, ["block1", "block2"], root=tmp_path / "ref")
    np.testing.assert_array_equal(store.embedding(), reference.embedding())
    np.testing.assert_array_equal(store.pooled("block2"), reference.pooled("block2"))


def test_non_finite_logits_stop_the_build(tmp_path, dataset):
    """A model returning NaN built a store anyway, and the Overview showed an accuracy made
    from argmax(NaN) (hostile-input sweep). The build stops, naming the first image, and
    leaves no manifest, so nothing reads the store as complete."""
    broken = tiny_model()
    with torch.no_grad():
        broken.module.head.bias[3] = float("nan")
    with pytest.raises(StoreError, match=r"NaN or infinite logits for 64 image\(s\) of the batch from image 0 \(first: image 0\)"):
        build_store("t", broken, dataset, [], batch_size=64, root=tmp_path)
    assert not list(tmp_path.rglob("manifest.json"))
    assert find_store("t", broken, dataset, root=tmp_path) is None
