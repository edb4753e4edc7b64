"""`python -m core prepare`: every step with a line and its time, skipped when done, resumed
or restarted cleanly when interrupted, --only / --skip, one-line errors; the prepared probes
and layout read back as the Intersectional page would fit them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.__main__ import main
from core.data.sources import build_dataset
from core.methods import LinearProbes, TopographicLayout
from core.methods.intersectional.features import PROBES_DIR, default_probe_layers
from core.methods.intersectional.groups import build_groups, capped_rows
from core.methods.records import method_record, setting_defaults
from core.models.loading import load_model
from core.services import prepare
from core.services.workspace import load_workspaces
from core.store.read import Store, find_store
from tests.support import digits_arrays

MODEL = (
    '{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, '
    "mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }"
)


def workspace_file(root: Path) -> Path:
    """A CSV workspace of 200 tinted digits with two attribute columns (tint, parity)."""
    images, labels, attributes = digits_arrays(200)
    lines = ["path,label,tint,parity"]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
        lines.append(f"images/{label}/{i}.png,{label},{attributes.loc[i, 'tint']},{attributes.loc[i, 'parity']}")
    (root / "digits.csv").write_text("\n".join(lines) + "\n")
    path = root / "ws.toml"
    path.write_text(f'[workspace.tiny]\nmodel = {MODEL}\ndataset = {{ kind = "csv", csv = "{root / "digits.csv"}" }}\n')
    return path


def opened(ws_file: Path, cache: Path) -> tuple[Store, object, object]:
    ws = load_workspaces(ws_file).workspaces["tiny"]
    model, dataset = load_model(ws.model, "cpu"), build_dataset(ws.dataset)
    store = find_store("tiny", model, dataset, cache)
    assert store is not None
    return store, model, dataset


def page_defaults(store: Store, model: object) -> tuple:
    """The Intersectional page's first groups, probe sample, layers and probes."""
    groups = build_groups(store.meta(), prepare.default_columns(store), min_size=prepare.MIN_GROUP_SIZE)
    probes = prepare.default_probes()
    rows = capped_rows(groups, probes.per_group, probes.seed)
    layers = prepare.default_probe_choice(default_probe_layers(store, model), hosted=True)
    return groups, rows, layers, probes


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, str]:
    """The tiny workspace prepared once (every step), with what the CLI printed."""
    root = tmp_path_factory.mktemp("prepare")
    ws_file, cache = workspace_file(root), root / "cache"
    capture = root / "out.txt"
    import contextlib

    with capture.open("w") as out, contextlib.redirect_stdout(out):
        assert main(["--file", str(ws_file), "prepare", "tiny", "--cache", str(cache)]) == 0
    return ws_file, cache, capture.read_text()


def test_the_default_probes_are_linear_probes_own_and_the_pages():
    """One copy of the probes' defaults: prepare fits LinearProbes() as it is (epochs 50, 5 seeds,
    128 images per group, seed 0), the Intersectional page's widgets start from the same values,
    and prepare keeps no constants of its own for them."""
    assert prepare.default_probes().get_params() == LinearProbes().get_params()
    probes = prepare.default_probes()
    assert (probes.epochs, probes.n_seeds, probes.per_group, probes.seed) == (50, 5, 128, 0)
    assert setting_defaults(method_record("intersectional"), 200) == {"per_group": 128, "seed": 0, "n_seeds": 5, "epochs": 50}
    assert not {"PROBE_SEEDS", "PROBE_EPOCHS", "PROBE_CAP", "SAMPLING_SEED"} & set(vars(prepare))


def test_every_step_says_what_it_does_and_its_time(prepared):
    _, _, out = prepared
    for i, step in enumerate(prepare.STEPS, 1):
        assert f"[{i}/4] {step}: " in out
    assert "the activation store of 200 images; expected: about" in out
    assert "probes of 4 groups (tint, parity) on 200 images, layers input, block1, block2, block3, embedding, 5 seeds x 50 epochs" in out
    assert out.count("      done in ") == 4 and "prepared 'tiny' in" in out


def test_a_second_run_skips_every_step_and_rewrites_nothing(prepared, capsys):
    ws_file, cache, _ = prepared
    manifests = {p: p.stat().st_mtime_ns for p in cache.rglob("manifest.json")}
    assert len(manifests) >= 5  # store, saliency, probe activations, probes, layout
    assert main(["--file", str(ws_file), "prepare", "tiny", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.count("already prepared, skipped") == 4 and "(0 step(s) run, 4 already done)" in out
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("manifest.json")} == manifests


def test_prepared_probes_and_layout_are_what_the_page_would_fit(prepared):
    ws_file, cache, _ = prepared
    store, model, dataset = opened(ws_file, cache)
    groups, rows, layers, probes = page_defaults(store, model)
    key = prepare.probes_key(store.fingerprint, groups, rows, layers, prepare.PROBE_MODE, probes.get_params())
    loaded = prepare.load_probes(store, key)
    assert loaded is not None and loaded.get_params() == probes.get_params()
    fresh = prepare.fit_probes(store, model, dataset, groups, rows, layers, prepare.PROBE_MODE, probes)
    pd.testing.assert_frame_equal(loaded.summary(), fresh.summary())
    assert loaded.errors("block3").equals(fresh.errors("block3"))
    assert [tuple(v) for v in loaded.group_values_] == [tuple(v) for v in fresh.group_values_]
    # a sample or a parameter the page did not default to is not prepared
    other = LinearProbes(epochs=3)
    assert prepare.load_probes(store, prepare.probes_key(store.fingerprint, groups, rows, layers, "subsample", other.get_params())) is None
    layer = prepare.map_layers(store)[-1]
    nap_rows = capped_rows(groups, prepare.NAP_CAP, probes.seed)
    params = TopographicLayout(seed=probes.seed).get_params()
    layout = prepare.load_layout(store, prepare.layout_key(store.fingerprint, groups, nap_rows, layer, params))
    assert layout is not None and layout.positions_.shape == (16, 2)
    assert layout.positions_.min() >= 0.0 and layout.positions_.max() <= 1.0


def test_only_and_skip_choose_steps_and_bad_names_are_one_line(prepared, capsys):
    ws_file, cache, _ = prepared
    assert main(["--file", str(ws_file), "prepare", "tiny", "--cache", str(cache), "--only", "probes,store"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] store: " in out and "[2/2] probes: " in out and "saliency" not in out
    assert main(["--file", str(ws_file), "prepare", "tiny", "--only", "store,bogus"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: Unknown step(s) bogus: use store, saliency, probes, layouts."
    assert main(["--file", str(ws_file), "prepare", "tiny", "--only", "store", "--skip", "probes"]) == 2
    assert capsys.readouterr().err.startswith("error: Give --only or --skip, not both")


def test_a_step_without_its_store_fails_in_one_line_saying_what_to_do(tmp_path, capsys):
    ws_file = workspace_file(tmp_path)
    assert main(["--file", str(ws_file), "prepare", "tiny", "--cache", str(tmp_path / "cache"), "--skip", "store"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: Step 'saliency' failed: the activation store is not built") and "--skip saliency" in err


def test_an_interrupted_probe_step_resumes_and_never_looks_complete(tmp_path, monkeypatch, capsys):
    """Interrupted while training (after its activations were written), the probes step
    leaves no prepared result; the next run reuses the activations and finishes."""
    ws_file, cache = workspace_file(tmp_path), tmp_path / "cache"

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(LinearProbes, "fit", interrupted)
        assert main(["--file", str(ws_file), "prepare", "tiny", "--cache", str(cache), "--skip", "layouts"]) == 130
    assert "resumes where it stopped" in capsys.readouterr().err
    store, model, _ = opened(ws_file, cache)
    assert not list(store.path.glob(f"{prepare.PREPARED_DIR}/probes/*/manifest.json"))
    features = list((store.path / PROBES_DIR).glob("*/manifest.json"))
    assert len(features) == 1
    assert main(["--file", str(ws_file), "prepare", "tiny", "--cache", str(cache), "--only", "probes"]) == 0
    assert list((store.path / PROBES_DIR).glob("*/manifest.json")) == features  # activations reused
    groups, rows, layers, probes = page_defaults(store, model)
    key = prepare.probes_key(store.fingerprint, groups, rows, layers, prepare.PROBE_MODE, probes.get_params())
    assert prepare.load_probes(store, key) is not None
    assert prepare.visitor_feature_bytes(store) == 0  # the prepared activations are not a visitor's


def test_a_result_cut_off_mid_write_is_never_read_and_is_replaced(prepared, monkeypatch):
    ws_file, cache, _ = prepared
    store, model, _ = opened(ws_file, cache)
    fitted = LinearProbes(epochs=2, n_seeds=2).fit({"a": np.random.default_rng(0).normal(size=(40, 3))},
                                                  np.arange(40) % 2, ["x", "y"])
    key = "0123456789abcdef"

    def cut(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_parquet", cut)
        with pytest.raises(OSError):
            prepare.save_probes(store, key, fitted)
    folder = store.path / prepare.PREPARED_DIR / "probes"
    assert not (folder / key).exists() and not list(folder.glob(f".{key}.partial-*"))
    assert prepare.load_probes(store, key) is None
    # a folder without its manifest (a crash in another layout) is not read, and is replaced
    (folder / key).mkdir()
    (folder / key / "state.json").write_text("{}")
    stale = folder / f".{key}.partial-{os.getpid() + 1}"
    stale.mkdir()
    assert prepare.load_probes(store, key) is None
    prepare.save_probes(store, key, fitted)
    loaded = prepare.load_probes(store, key)
    assert loaded is not None and loaded.summary().equals(fitted.summary()) and not stale.exists()
