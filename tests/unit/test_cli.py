"""The CLI: list, layers, build (with progress), and one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.__main__ import main
from tests.support import digits_arrays

MODEL = (
    '{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, '
    "mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }"
)


def _workspace_file(tmp_path: Path) -> Path:
    images, labels, _ = digits_arrays(60)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    (tmp_path / "images" / "4" / "readme.txt").write_text("not an image")
    path = tmp_path / "ws.toml"
    path.write_text(f'[workspace.tiny]\nmodel = {MODEL}\ndataset = {{ kind = "imagefolder", root = "images" }}\n')
    return path


def test_list_and_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[workspace.x\n")
    assert main(["--file", str(bad), "list"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("demo") and "not valid TOML" in err


def test_unknown_workspace_is_one_line(capsys):
    assert main(["build", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No workspace 'nope'") and "Traceback" not in err


def test_layers_and_build(tmp_path, capsys, monkeypatch):
    path = _workspace_file(tmp_path)
    assert main(["--file", str(path), "layers", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "input of 'head' (12-d)" in out and "block3" in out
    cache = tmp_path / "cache"
    assert main(["--file", str(path), "build", "tiny", "--layers", "block1", "--cache", str(cache)]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 listed file" in captured.err and "readme.txt" in captured.err
    store_dirs = list((cache / "stores").iterdir())
    assert len(store_dirs) == 1 and (store_dirs[0] / "manifest.json").exists()
    assert np.load(store_dirs[0] / "layers" / "block1.max.npy").shape[0] == 60
    assert "extraction: 60 images in" in captured.out and "img/s" in captured.out and "forward" in captured.out
    # score needs ground truth: this workspace has none, and says so in one line
    assert main(["--file", str(path), "score", "tiny", "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "no ground truth" in err and "Traceback" not in err


def test_build_with_ray_but_no_ray_says_how_to_install(tmp_path, capsys, monkeypatch):
    import core.store.ray_source
    from core.errors import StoreError

    def missing():
        raise StoreError(core.store.ray_source._INSTALL)

    monkeypatch.setattr(core.store.ray_source, "_import_ray", missing)
    path = _workspace_file(tmp_path)
    assert main(["--file", str(path), "build", "tiny", "--ray", "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[scale]'" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "stores").exists() or not list((tmp_path / "c" / "stores").rglob("manifest.json"))


def test_corrupt_torchscript_is_one_line(tmp_path, capsys):
    (tmp_path / "m.pt").write_bytes(b"garbage")
    path = _workspace_file(tmp_path)
    path.write_text('[workspace.ts]\nmodel = { kind = "torchscript", weights = "m.pt" }\n'
                    'dataset = { kind = "imagefolder", root = "images" }\n')
    assert main(["--file", str(path), "build", "ts"]) == 2
    err = capsys.readouterr().err
    assert "TorchScript" in err and "Traceback" not in err


def test_demo_train_control_flag_trains_without_the_plants(tmp_path, capsys):
    import json

    out = tmp_path / "control.pt"
    code = main(["demo", "train", "--control", "--limit", "256", "--epochs", "1", "--out", str(out)])
    assert code == 0 and out.is_file()
    assert json.loads(out.with_suffix(".json").read_text())["control"] is True
    assert f"weights: {out}" in capsys.readouterr().out


def test_out_of_range_numbers_are_usage_errors(capsys):
    """Negative or zero batch sizes and worker counts used to reach the model ("The model
    failed on the batch...") or be replaced silently; a huge worker count hung the build."""
    import pytest

    for argv, message in [
        (["build", "demo", "--batch-size", "0"], "--batch-size: 0 is out of range: use 1 to 65536"),
        (["build", "demo", "--batch-size", "-3"], "--batch-size: -3 is out of range"),
        (["build", "demo", "--num-workers", "100000"], "--num-workers: 100000 is out of range: use 0 to 256"),
        (["saliency", "demo", "--batch-size", "abc"], "'abc' is not a whole number"),
        (["demo", "train", "--epochs", "0"], "--epochs: 0 is out of range"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
