"""Issue 22: damaged saliency profiles are refused (never opened, never an IndexError), named
as damaged, and rebuilt by the next build and by ``python -m core saliency --yes``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.__main__ import main
from core.errors import StoreError
from core.methods.saliency.profiles import (
    PROFILES_FILE,
    build_profiles,
    find_profiles,
    open_profiles,
    profile_problem,
)
from core.store.build import build_store
from core.store.read import open_store
from tests.support import digits_dataset, tiny_model
from tests.unit.test_cli import _workspace_file

N = 40


def _manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, **changes}))


def _stats(path: Path, name: str, value: float) -> None:
    with np.load(path / "stats.npz") as saved:
        stats = dict(saved)
    stats[name] = stats[name].copy()
    stats[name][0] = value
    np.savez(path / "stats.npz", **stats)


def _profile_value(path: Path, value: float) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    profiles = np.memmap(path / PROFILES_FILE, dtype=np.float16, mode="r+", shape=(manifest["n"], manifest["n_filters"]))
    profiles[3, 2] = value
    profiles.flush()


def _fewer_rows(path: Path) -> None:
    """A manifest and a file that agree with each other on 4 rows fewer than the store."""
    manifest = json.loads((path / "manifest.json").read_text())
    n, f = manifest["n"] - 4, manifest["n_filters"]
    with open(path / PROFILES_FILE, "r+b") as handle:
        handle.truncate(n * f * 2)
    _manifest(path, n=n)


def _other_layers(path: Path) -> None:
    index = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**index, "layers": [f"other{i}" for i in range(len(index["layers"]))]}))


def _inf_scale(path: Path) -> None:
    scale = np.load(path / "scale.npy")
    scale[1] = np.inf
    np.save(path / "scale.npy", scale)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "manifest n larger than the file": lambda p: _manifest(p, n=N + 7),
    "manifest n smaller than the file": lambda p: _manifest(p, n=N - 3),
    "fewer rows than the store": _fewer_rows,
    "NaN profile": lambda p: _profile_value(p, np.nan),
    "infinite profile": lambda p: _profile_value(p, np.inf),
    "zero sigma": lambda p: _stats(p, "sigma", 0.0),
    "NaN sigma": lambda p: _stats(p, "sigma", np.nan),
    "NaN mu": lambda p: _stats(p, "mu", np.nan),
    "inf scale": _inf_scale,
    "index naming other layers": _other_layers,
}


@pytest.fixture(scope="module")
def parts():
    return tiny_model(), digits_dataset(N)


@pytest.fixture
def built(tmp_path, parts):
    model, dataset = parts
    store = build_store("sal", model, dataset, ["block1"], batch_size=64, root=tmp_path)
    profiles = build_profiles(store, model, dataset, batch_size=20)
    return store, profiles.path, np.asarray(profiles.profiles).copy()


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_profiles_are_refused_then_rebuilt(built, parts, damage):
    model, dataset = parts
    store, path, healthy = built
    DAMAGES[damage](path)
    with pytest.raises(StoreError, match="damaged"):
        open_profiles(path, store.n)
    assert find_profiles(store, model=model) is None and find_profiles(store) is None
    problem = profile_problem(store, model)
    assert problem is not None and "damaged" in problem
    notes: list[str] = []
    rebuilt = build_profiles(store, model, dataset, batch_size=20, notice=notes.append)
    assert any("damaged" in note for note in notes)
    assert rebuilt.n == store.n and np.array_equal(np.asarray(rebuilt.profiles), healthy)
    assert np.isfinite(rebuilt.sigma).all() and (rebuilt.sigma > 0).all() and np.isfinite(rebuilt.scale).all()
    assert profile_problem(store, model) is None
    assert find_profiles(store, model=model) is not None


def test_healthy_profiles_have_no_problem(built, parts):
    store, path, _ = built
    assert profile_problem(store, parts[0]) is None
    assert open_profiles(path, store.n).n == N


def test_cli_rebuilds_damaged_profiles(tmp_path, capsys):
    path = _workspace_file(tmp_path)
    cache = tmp_path / "cache"
    assert main(["--file", str(path), "build", "tiny", "--layers", "block1", "--cache", str(cache)]) == 0
    args = ["--file", str(path), "saliency", "tiny", "--cache", str(cache), "--yes"]
    assert main(args) == 0
    (profiles_dir,) = Path(cache / "stores").glob("*/saliency/*")
    healthy = open_profiles(profiles_dir)
    before = np.asarray(healthy.profiles).copy()
    _profile_value(profiles_dir, np.nan)
    _stats(profiles_dir, "sigma", 0.0)
    capsys.readouterr()
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "damaged" in err and "Traceback" not in err
    again = open_profiles(profiles_dir, len(before))
    assert np.array_equal(np.asarray(again.profiles), before) and (again.sigma > 0).all()
    store = open_store(profiles_dir.parents[1])
    assert again.n == store.n
