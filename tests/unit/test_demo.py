"""The planted-bias demo: Fashion-MNIST loading, slices files, rendering, training, dataset."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.demo import fashion
from core.demo.dataset import DEFAULT_SLICES, DemoDataset, rendered_split
from core.demo.generator import render
from core.demo.model import DEFAULT_WEIGHTS, INPUT_SIZE, DemoCNN, load_demo_model
from core.demo.spec import DemoSpec, Slice, train_tables
from core.demo.train import evaluate_demo, train_demo
from core.errors import DataError, ModelError, WorkspaceError

SMALL = """
[image]
size = 32

[attributes.tint]
gray = { rgb = [200, 200, 200] }
red = { rgb = [240, 60, 60], p = 0.5 }

[attributes.pattern]
plain = { kind = "plain" }
stripes = { kind = "stripes" }

[attributes.brightness]
normal = { gain = 1.0 }
dark = { gain = 0.5 }

[attributes.marker]
none = { shape = "none" }
square = { shape = "square", corner = "top-left", size = 4, rgb = [255, 255, 255] }

[[slices]]
name = "marked"
kind = "spurious"
where = { label = ["Trouser", "Pullover"], marker = "square" }
plant = [
  { label = "T-shirt/top", marker = { square = 0.9 } },
  { label = ["Trouser", "Pullover"], marker = { square = 0.05 } },
]

[[slices]]
name = "red_dresses"
kind = "rare"
where = { label = "Dress", tint = "red" }
plant = [{ label = "Dress", tint = { red = 0.02 } }]

[[slices]]
name = "dark_striped_coats"
kind = "noisy"
where = { label = "Coat", pattern = "stripes", brightness = ["dark"] }
flip = { to = "Shirt", p = 0.8 }
"""

CLASSES = fashion.FASHION_CLASSES


@pytest.fixture
def small_spec(tmp_path: Path) -> DemoSpec:
    path = tmp_path / "slices.toml"
    path.write_text(SMALL)
    return DemoSpec.from_toml(path)


def synthetic_base(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 28x28 'garments' and balanced labels: rendering does not care what they show."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def share(mask: np.ndarray) -> float:
    return float(np.mean(mask))


# ------------------------------------------------------------------------ generator


def test_train_split_plants_the_specified_proportions(small_spec: DemoSpec) -> None:
    images, labels = synthetic_base(20_000)
    r = render(images, labels, small_spec, "train", seed=1)
    a, clean = r.attributes, r.clean_labels
    tshirt, trouser_pullover = clean == 0, np.isin(clean, [1, 2])
    dress, others = clean == 3, ~np.isin(clean, [3])
    assert share(a.marker[tshirt] == "square") == pytest.approx(0.9, abs=0.03)
    assert share(a.marker[trouser_pullover] == "square") == pytest.approx(0.05, abs=0.015)
    assert share(a.marker[clean >= 3] == "square") == pytest.approx(0.5, abs=0.03)
    assert share(a.tint[dress] == "red") == pytest.approx(0.02, abs=0.01)
    assert share(a.tint[others] == "red") == pytest.approx(0.5, abs=0.02)

    noisy = r.ground_truth["slice_dark_striped_coats"].to_numpy()
    assert noisy.sum() > 500
    assert share(r.labels[noisy] == CLASSES.index("Shirt")) == pytest.approx(0.8, abs=0.05)
    assert np.array_equal(r.labels[~noisy], clean[~noisy]), "labels flip only inside the slice"
    assert np.array_equal(clean, labels)


def test_a_flip_to_several_classes_spreads_the_labels_evenly(tmp_path: Path) -> None:
    path = tmp_path / "slices.toml"
    path.write_text(SMALL.replace('to = "Shirt"', 'to = ["Shirt", "Pullover"]'))
    spec = DemoSpec.from_toml(path)
    images, labels = synthetic_base(20_000)
    r = render(images, labels, spec, "train", seed=1)
    noisy = r.ground_truth["slice_dark_striped_coats"].to_numpy()
    to_shirt = share(r.labels[noisy] == CLASSES.index("Shirt"))
    to_pullover = share(r.labels[noisy] == CLASSES.index("Pullover"))
    assert to_shirt + to_pullover == pytest.approx(0.8, abs=0.05)
    assert to_shirt == pytest.approx(0.4, abs=0.06) and to_pullover == pytest.approx(0.4, abs=0.06)
    assert np.array_equal(r.labels[~noisy], r.clean_labels[~noisy])


def test_test_split_is_uniform_independent_and_clean(small_spec: DemoSpec) -> None:
    images, labels = synthetic_base(20_000)
    r = render(images, labels, small_spec, "test", seed=1)
    assert np.array_equal(r.labels, labels) and np.array_equal(r.clean_labels, labels)
    for column in r.attributes.columns:
        assert r.attributes[column].value_counts(normalize=True).to_numpy() == pytest.approx(
            [0.5, 0.5], abs=0.02
        )
    # every intersection of two attributes (and with the class) holds its uniform share
    cells = pd.crosstab(r.attributes.tint, r.attributes.marker, normalize=True).to_numpy()
    assert cells == pytest.approx(np.full((2, 2), 0.25), abs=0.02)
    per_class = pd.crosstab(labels, r.attributes.marker, normalize="index").to_numpy()
    assert per_class == pytest.approx(np.full((10, 2), 0.5), abs=0.05)
    # the planted train correlations do not leak into the test split
    tshirt = labels == 0
    assert share(r.attributes.marker[tshirt] == "square") == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("split", ["train", "test"])
def test_ground_truth_is_exactly_the_where_clause(small_spec: DemoSpec, split: str) -> None:
    images, labels = synthetic_base(5_000)
    r = render(images, labels, small_spec, split, seed=3)
    a, y = r.attributes, r.clean_labels
    expected = {
        "slice_marked": np.isin(y, [1, 2]) & (a.marker == "square"),
        "slice_red_dresses": (y == 3) & (a.tint == "red"),
        "slice_dark_striped_coats": (y == 4) & (a.pattern == "stripes") & (a.brightness == "dark"),
    }
    assert list(r.ground_truth.columns) == list(expected)
    for column, mask in expected.items():
        assert r.ground_truth[column].dtype == bool
        assert np.array_equal(r.ground_truth[column].to_numpy(), np.asarray(mask))


def test_rendering_is_deterministic_and_draws_the_attributes(small_spec: DemoSpec) -> None:
    images, labels = synthetic_base(2_000)
    first = render(images, labels, small_spec, "test", seed=5)
    again = render(images, labels, small_spec, "test", seed=5)
    other = render(images, labels, small_spec, "test", seed=6)
    assert first.images.shape == (2_000, 32, 32, 3) and first.images.dtype == np.uint8
    assert np.array_equal(first.images, again.images)
    assert first.attributes.equals(again.attributes)
    assert not first.attributes.equals(other.attributes)
    marked = (first.attributes.marker == "square").to_numpy()
    corner = first.images[:, 1:5, 1:5, :]
    assert (corner[marked] == 255).all(), "the square marker is drawn last, in pure white"
    # a dark image is darker than the same garment at normal brightness
    dark = (first.attributes.brightness == "dark").to_numpy()
    assert first.images[dark].mean() < 0.7 * first.images[~dark].mean()


def test_unplanted_spec_keeps_slices_but_drops_plants(small_spec: DemoSpec) -> None:
    clean = small_spec.unplanted()
    assert [s.name for s in clean.slices] == [s.name for s in small_spec.slices]
    tables = train_tables(clean)
    assert tables["marker"] == pytest.approx(np.full((10, 2), 0.5))
    images, labels = synthetic_base(3_000)
    assert np.array_equal(render(images, labels, clean, "train", 0).labels, labels)


def test_shipped_slices_file_is_valid() -> None:
    spec = DemoSpec.from_toml(DEFAULT_SLICES)
    kinds = {s.kind for s in spec.slices}
    assert {"spurious", "rare", "noisy"} <= kinds
    assert len(spec.sha256) == 64


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "[attributes.marker]",
            "[attributes.shape]\nx = {}\n[attributes.marker]",
            "unknown attribute 'shape'",
        ),
        ('tint = "red" }', 'tint = "purple" }', "unknown value 'purple'"),
        ('label = "Dress", tint', 'label = "Sock", tint', "unknown value 'Sock'"),
        ("p = 0.5 }", "p = 1.5 }", "1.5"),
        ("red = 0.02", "red = -0.1", "-0.1"),
        ('flip = { to = "Shirt"', 'flip = { to = "Shoe"', "unknown value 'Shoe'"),
        ('flip = { to = "Shirt"', 'flip = { to = ["Shirt", "Coat"]', "names 'Coat', one of"),
        ('flip = { to = "Shirt"', "flip = { to = []", "a name or a list of names"),
        ('brightness = ["dark"]', 'colour = "dark"', "unknown attribute 'colour'"),
        ("square = 0.9", "square = 0.9, dots = 0.1", "unknown value 'dots'"),
        ("square = 0.05 }", "square = 0.05, none = 0.99 }", "add up to"),
        ('kind = "rare"', 'kind = "weird"', "kind must be one of"),
        ('name = "marked"', 'name = "red_dresses"', "two slices are named 'red_dresses'"),
        ("gain = 0.5", "gain = -2", "gain"),
        ("size = 32", "size = 300", "image.size"),
        ("[image]", "[image\n", "not valid TOML"),
    ],
)
def test_invalid_slices_files_name_the_problem(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in SMALL
    path = tmp_path / "bad.toml"
    path.write_text(SMALL.replace(old, new, 1))
    with pytest.raises(WorkspaceError, match=message.replace("[", r"\[")) as info:
        DemoSpec.from_toml(path)
    assert str(path) in str(info.value)


def test_missing_slices_file(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="Cannot read the slices file"):
        DemoSpec.from_toml(tmp_path / "nope.toml")


# --------------------------------------------------------------------- Fashion-MNIST


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_reads_idx_files_from_the_env_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 4]))
    monkeypatch.setenv(fashion.ENV_DIR, str(tmp_path))
    x, y = fashion.load_fashion_mnist("test")
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28) and np.array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == [9, 0, 4]


def test_missing_dataset_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fashion.ENV_DIR, str(tmp_path))
    monkeypatch.setattr(fashion, "_download", lambda split: False)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        fashion.load_fashion_mnist("test")


def test_failed_download_gives_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.delenv(fashion.ENV_DIR, raising=False)
    monkeypatch.setattr(fashion, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(fashion, "CACHE_DIR", tmp_path / "cache" / "fashion-mnist")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="dataset-fashion-mnist") as info:
        fashion.load_fashion_mnist("train")
    assert "cache/fashion-mnist" in str(info.value)


def test_corrupt_idx_file_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1]))
    monkeypatch.setenv(fashion.ENV_DIR, str(tmp_path))
    with pytest.raises(DataError, match="t10k-images"):
        fashion.load_fashion_mnist("test")


# ------------------------------------------------------------------- model, training


def test_training_recipe_writes_loadable_weights(tmp_path: Path) -> None:
    out = tmp_path / "w" / "demo.pt"
    deterministic = torch.are_deterministic_algorithms_enabled()
    meta = train_demo(DEFAULT_SLICES, out, epochs=1, limit=512, batch_size=64)
    assert torch.are_deterministic_algorithms_enabled() == deterministic, "global flag restored"
    assert out.is_file() and out.stat().st_size < 5_000_000
    assert not list(out.parent.glob("*.tmp")), "no temp file left behind"
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["slices_sha256"] == DemoSpec.from_toml(DEFAULT_SLICES).sha256
    assert sidecar["n_train"] == 512 and sidecar["epochs"] == 1 and sidecar["seed"] == 0
    assert set(sidecar["slice_acc"]) == {s.name for s in DemoSpec.from_toml(DEFAULT_SLICES).slices}
    assert 0.0 <= meta["overall_acc"] <= 1.0
    model = load_demo_model(out)
    assert not model.training
    logits = model(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE))
    assert logits.shape == (2, 10)


def test_evaluate_demo_reports_empty_slices_as_none(small_spec: DemoSpec) -> None:
    images, labels = synthetic_base(60)
    labels = np.where(labels == 3, 0, labels)  # no Dress: the red_dresses slice is empty
    r = render(images, labels, small_spec, "test", seed=0)
    figures = evaluate_demo(DemoCNN().eval(), r)
    assert (
        figures["slice_sizes"]["red_dresses"] == 0 and figures["slice_acc"]["red_dresses"] is None
    )
    others = [a for a in figures["slice_acc"].values() if a is not None]
    assert figures["min_gap"] == pytest.approx(min(figures["overall_acc"] - a for a in others))


def test_demo_cnn_exposes_blocks_and_a_128d_last_hidden_layer() -> None:
    model = DemoCNN()
    names = [n for n, _ in model.named_children()]
    assert names[:3] == ["block1", "block2", "block3"]
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == 128


def test_load_demo_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_demo_model(tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    with pytest.raises(ModelError, match="do not fit"):
        load_demo_model(wrong)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ModelError, match="Cannot read"):
        load_demo_model(junk)


def test_committed_weights_match_the_shipped_slices_file() -> None:
    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert meta["slices_sha256"] == DemoSpec.from_toml(DEFAULT_SLICES).sha256, (
        "slices.toml changed: retrain with `python -m core.demo.train`"
    )
    assert DEFAULT_WEIGHTS.stat().st_size <= 5_000_000
    load_demo_model()


@pytest.mark.slow
def test_committed_weights_show_every_planted_slice() -> None:
    figures = evaluate_demo(load_demo_model(), rendered_split("test"))
    assert figures["overall_acc"] >= 0.85
    assert figures["min_gap"] >= 0.20, figures["slice_acc"]


# ----------------------------------------------------------------------------- dataset


def test_demo_dataset_is_a_valid_image_dataset() -> None:
    ds = DemoDataset("test")
    assert ds.name == "Planted-bias Fashion-MNIST (test)"
    assert len(ds) == 10_000 and len(set(ds.ids)) == len(ds) and ds.ids[42] == "test-00042"
    assert ds.classes == CLASSES and ds.labels.dtype == np.int64
    image = ds.load_image(42)
    assert image.mode == "RGB" and image.size == (INPUT_SIZE, INPUT_SIZE)
    assert list(ds.attributes.columns) == ["tint", "pattern", "brightness", "marker"]
    assert all(c.startswith("slice_") for c in ds.ground_truth.columns)
    assert len(ds.ground_truth) == len(ds) and ds.ground_truth.sum().min() >= 100
    ds.validate()
    again = DemoDataset("test")
    assert again.fingerprint() == ds.fingerprint()
    assert again._images is ds._images, "the rendered split is cached in-process"
    assert DemoDataset("test", seed=1).content_key() != ds.content_key()


def test_demo_dataset_describes_its_planted_slices() -> None:
    ds = DemoDataset("test")
    notes = ds.planted_slices()
    spec = DemoSpec.from_toml(DEFAULT_SLICES)
    assert list(notes.columns) == ["slice", "kind", "where", "description"]
    assert [f"slice_{s}" for s in notes["slice"]] == list(ds.ground_truth.columns)
    assert notes["kind"].tolist() == [s.kind for s in spec.slices]
    first = spec.slices[0]
    assert notes["where"][0] == first.definition
    assert notes["description"][0] == " ".join(first.description.split())


def test_planted_slice_where_is_a_cohort_filter_that_selects_the_slice() -> None:
    """The Overview's "where" column pasted into Cohorts selects exactly the slice's images."""
    from core.services.cohorts import CohortView

    ds = DemoDataset("test")
    meta = pd.concat([ds.attributes, ds.ground_truth], axis=1)
    meta.insert(0, "label", [ds.classes[i] for i in ds.labels])
    meta.insert(0, "row", np.arange(len(meta)))
    view = CohortView(meta)
    for note in ds.planted_slices().itertuples():
        rows = view.rows(note.where)
        assert rows == np.flatnonzero(meta[f"slice_{note.slice}"].to_numpy()).tolist(), note.where
    several = Slice("x", "rare", "", (("label", ("Shirt", "T-shirt/top")), ("tint", ("red", "it's"))))
    assert several.definition == "\"label\" IN ('Shirt', 'T-shirt/top') AND \"tint\" IN ('red', 'it''s')"
    expected = meta["label"].isin(["Shirt", "T-shirt/top"]) & meta["tint"].isin(["red", "it's"])
    assert view.rows(several.definition) == np.flatnonzero(expected.to_numpy()).tolist()
