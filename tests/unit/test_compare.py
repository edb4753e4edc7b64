"""Comparing two models (core/services/compare.py): the paired statistics against hand-computed
answers, a planted regression found first and identified, nothing found when nothing changed,
and the refusals of stores that do not hold the same images."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from core.data.sources import ArrayDataset
from core.errors import DataError
from core.methods import Spotlight
from core.scoring.scorecard import precision_at_k
from core.services.compare import (
    PairedData,
    check_comparable,
    compare,
    compare_stores,
    describe,
    group_table,
    mcnemar_exact,
    paired_difference,
    paired_from_stores,
    paired_table,
)
from core.store.build import build_store
from tests.support import digits_arrays, tiny_model

# --------------------------------------------------------------------------- statistics by hand


def test_mcnemar_exact_by_hand():
    # b = 1, c = 7: two-sided binomial tail 2 * P(X <= 1 | 8, 1/2) = 2 * (1 + 8) / 256
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 8) == pytest.approx(2 / 256)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_table_and_difference_by_hand():
    a = np.array([1, 1, 1, 1, 0, 0, 0, 1, 1, 1], dtype=bool)
    b = np.array([1, 0, 1, 1, 1, 1, 0, 1, 0, 1], dtype=bool)
    assert paired_table(a, b) == {"both right": 5, "A right, B wrong": 2, "A wrong, B right": 2, "both wrong": 1}
    # b = 1, c = 7 on n = 20: difference (7 - 1) / 20; Bonett-Price: p_b = 2/22, p_c = 8/22
    diff, low, high = paired_difference(1, 7, 20)
    pb, pc = 2 / 22, 8 / 22
    half = 1.959963984540054 * math.sqrt((pb + pc - (pc - pb) ** 2) / 22)
    assert diff == pytest.approx(0.3)
    assert (low, high) == (pytest.approx(pc - pb - half), pytest.approx(pc - pb + half))
    assert low == pytest.approx(0.01508, abs=1e-4) and high == pytest.approx(0.53037, abs=1e-4)
    # nothing changed: the interval is centred on 0 and narrows with n
    d0, l0, h0 = paired_difference(0, 0, 100)
    assert d0 == 0 and l0 == pytest.approx(-h0) and 0 < h0 < 0.05
    assert all(math.isnan(v) for v in paired_difference(0, 0, 0))


def test_group_table_paired_differences_and_bh():
    # four groups of 20 with known discordant counts (b, c): McNemar p 1/128, 1/16, 9/128, 1
    plan = [(0, 8), (0, 5), (1, 7), (3, 3)]
    ca, cb, groups = [], [], []
    for g, (b, c) in enumerate(plan):
        a = np.ones(20, dtype=bool)
        bb = np.ones(20, dtype=bool)
        bb[:b] = False  # A right, B wrong
        a[b:b + c] = False  # A wrong, B right
        ca.append(a)
        cb.append(bb)
        groups.append(("subset", f"g{g}", np.arange(20 * g, 20 * g + 20)))
    table = group_table(np.concatenate(ca), np.concatenate(cb), groups)
    assert list(table["p"]) == pytest.approx([2 / 256, 2 / 32, 18 / 256, 1.0])
    # Benjamini-Hochberg by hand over 4: sorted p * 4 / rank, then the running minimum from the top
    assert list(table["q"]) == pytest.approx([0.03125, 0.09375, 0.09375, 1.0])
    assert list(table["significant"]) == [True, False, False, False]
    assert list(table["difference"]) == pytest.approx([8 / 20, 5 / 20, 6 / 20, 0.0])
    assert list(table["acc A"]) == pytest.approx([12 / 20, 15 / 20, 13 / 20, 17 / 20])


def test_describe_finds_the_planted_conjunction():
    rng = np.random.default_rng(0)
    values = pd.DataFrame({"colour": rng.choice(["red", "blue", "green"], 600),
                           "shape": rng.choice(["square", "round"], 600), "size": rng.choice(["s", "m", "l"], 600)})
    members = ((values["colour"] == "red") & (values["shape"] == "round")).to_numpy()
    text, precision, recall = describe(members, values)
    assert set(text.split(" AND ")) == {"colour = red", "shape = round"}
    assert precision == pytest.approx(1.0) and recall == pytest.approx(1.0)


# --------------------------------------------------------------------------- a planted regression


def planted_pair(n: int = 1200, seed: int = 0) -> tuple[PairedData, np.ndarray]:
    """Two models on n points of 8 Gaussian clusters in 16-d; B fails on (cluster 3, red): 70%
    of what A got right there flips to wrong; elsewhere 2% flip each way (no net change)."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 8, n)
    centres = rng.normal(0, 4, (8, 16))
    x = (centres[cluster] + rng.normal(0, 1, (n, 16))).astype(np.float32)
    colour = rng.choice(["red", "blue"], n)
    shape = rng.choice(["square", "round", "star"], n)
    labels = np.array([f"class {c % 4}" for c in cluster])
    planted = (cluster == 3) & (colour == "red")
    x[planted] += 1.5 * rng.normal(0, 1, 16).astype(np.float32)  # the slice sits in its own corner
    correct_a = rng.random(n) < 0.9
    loss_a = np.where(correct_a, rng.gamma(1, 0.1, n), 1 + rng.gamma(2, 0.5, n))
    correct_b, loss_b = correct_a.copy(), loss_a.copy()
    worse = planted & correct_a & (rng.random(n) < 0.7)
    noise = rng.random(n)
    worse |= ~planted & correct_a & (noise < 0.02)
    better = ~planted & ~correct_a & (noise < 0.18)  # 2% of the images, as many as got worse outside the slice
    correct_b[worse], loss_b[worse] = False, 1 + rng.gamma(2, 0.5, worse.sum())
    correct_b[better], loss_b[better] = True, rng.gamma(1, 0.1, better.sum())
    loss_b[~worse & ~better] += rng.normal(0, 0.02, (~worse & ~better).sum()).clip(-0.05, 0.05)
    loss_b = np.clip(loss_b, 0, None)
    attributes = pd.DataFrame({"colour": colour, "shape": shape})
    data = PairedData(correct_a=correct_a, correct_b=correct_b, loss_a=loss_a, loss_b=loss_b, embedding=x,
                      labels=labels, attributes=attributes, subsets={"cluster 3": np.flatnonzero(cluster == 3)})
    return data, planted


@pytest.fixture(scope="module")
def planted():
    data, truth = planted_pair()
    return data, truth, compare(data, seed=0)


def test_the_planted_regression_comes_first_and_is_identified(planted):
    data, truth, result = planted
    first = result.regressions[0]
    assert first["significant"] and not first["duplicate of"]
    assert precision_at_k(truth, np.asarray(first["rows"]), 10) >= 0.8
    assert "colour = red" in first["description"]
    assert first["held-out difference"] < 0 and first["acc B"] < first["acc A"]
    # its rows come highest loss difference first
    delta = data.loss_b - data.loss_a
    assert np.all(np.diff(delta[first["rows"]]) <= 1e-12)
    # the significant regressions come before the others, and every significant one is in the slice mostly
    flags = [r["significant"] for r in result.regressions if not r["duplicate of"]]
    assert flags == sorted(flags, reverse=True)
    for r in result.significant_regressions:
        assert truth[r["rows"][:10]].mean() >= 0.5
    # the saved subset that holds the slice shows up in the table as worse
    row = result.groups[(result.groups["kind"] == "subset") & (result.groups["group"] == "cluster 3")].iloc[0]
    assert row["difference"] < 0 and row["significant"]
    # overall figures and flips
    assert result.overall["table"]["A right, B wrong"] == len(result.worse)
    assert result.overall["table"]["A wrong, B right"] == len(result.better)
    assert list(result.worse.columns[:3]) == ["row", "id", "label"]


def test_reports_render(planted):
    _, _, result = planted
    out = result.to_json()
    assert out["regressions"][0]["rows"][:3] == [int(r) for r in result.regressions[0]["rows"][:3]]
    assert out["overall"]["table"]["A right, B wrong"] == len(result.worse)
    import json

    json.dumps(out)  # plain JSON
    text = result.to_markdown()
    assert text.startswith("# B compared with A") and "Regression slices" in text and "| A right |" in text
    assert "regressions" in result.to_text()


def test_a_null_pair_flags_no_regression():
    data, _ = planted_pair(seed=1)
    rng = np.random.default_rng(5)
    null = data.swapped(rng.random(data.n) < 0.5)  # A and B exchanged at random per image: no real change
    result = compare(null, seed=0, spotlight=Spotlight(size=25, n_spotlights=5, steps=300))  # a quicker search
    assert result.significant_regressions == [] and result.significant_improvements == []


def test_comparing_a_model_with_itself_finds_nothing():
    data, _ = planted_pair()
    same = replace(data, correct_b=data.correct_a, loss_b=data.loss_a)
    result = compare(same)
    assert result.identical and result.regressions == [] and result.improvements == []
    assert not result.groups["significant"].any() and len(result.worse) == len(result.better) == 0
    assert "nothing to find" in result.summary()


def test_bad_arrays_are_refused():
    data, _ = planted_pair(n=100)
    with pytest.raises(DataError, match="one value per image"):
        compare(replace(data, loss_b=data.loss_b[:50]))


# --------------------------------------------------------------------------- stores


def _store(tmp_path, name, n=60, classes=None, ids=None, order=None):
    images, labels, attributes = digits_arrays(n)
    if order is not None:
        images, labels, attributes = images[order], labels[order], attributes.iloc[order].reset_index(drop=True)
    dataset = ArrayDataset(images, labels, classes or [str(d) for d in range(10)], attributes=attributes, name=name,
                           ids=ids)
    return build_store(name, tiny_model(), dataset, [], root=tmp_path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    n = 60
    return {
        "base": _store(root, "base", n),
        "short": _store(root, "short", 50),
        "classes": _store(root, "classes", n, classes=[f"digit {d}" for d in range(10)]),
        "order": _store(root, "order", n, ids=[str(i) for i in range(n)][::-1], order=np.arange(n)[::-1]),
        "other": _store(root, "other", n, ids=[f"x{i}" for i in range(n)]),
    }


def test_a_store_compared_with_itself(stores):
    result = compare_stores(stores["base"], stores["base"])
    assert result.identical and result.significant_regressions == []
    assert {"class", "attribute"} <= set(result.groups["kind"])
    assert not any(g.startswith(("slice_", "id", "row")) for g in result.groups["group"])


def test_stores_that_do_not_hold_the_same_images_are_refused(stores):
    base = stores["base"]
    with pytest.raises(DataError, match="different numbers of images"):
        check_comparable(base, stores["short"])
    with pytest.raises(DataError, match="different classes"):
        check_comparable(base, stores["classes"])
    with pytest.raises(DataError, match="different order"):
        check_comparable(base, stores["order"])
    with pytest.raises(DataError, match="different images"):
        check_comparable(base, stores["other"])
    check_comparable(base, base)


# --------------------------------------------------------------------------- the command line


def test_cli_compare(tmp_path, capsys):
    import json

    from PIL import Image

    from core.__main__ import main

    images, labels, _ = digits_arrays(50)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    model = ('{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, '
             "mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }")
    dataset = '{ kind = "imagefolder", root = "images" }'
    path = tmp_path / "ws.toml"
    path.write_text(f"[workspace.old]\nmodel = {model}\ndataset = {dataset}\n\n"
                    f"[workspace.new]\nmodel = {model}\ndataset = {dataset}\n")
    cache = str(tmp_path / "cache")
    base = ["--file", str(path)]
    assert main([*base, "build", "old", "--cache", cache]) == 0
    capsys.readouterr()
    assert main([*base, "compare", "old", "new", "--cache", cache]) == 2  # B was never built: say how
    err = capsys.readouterr().err
    assert "python -m core build new" in err and "Traceback" not in err
    assert main([*base, "build", "new", "--cache", cache]) == 0
    capsys.readouterr()
    assert main([*base, "compare", "old", "new", "--cache", cache, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["A"] == "old" and out["B"] == "new" and out["identical"] and out["images"] == 50
    assert main([*base, "compare", "old", "new", "--cache", cache, "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("# new compared with old")


def test_stores_built_on_another_device_compare_alike(stores, tmp_path):
    """One model run on the GPU, the other on the CPU: the comparison reads only the stores'
    stored predictions, losses and embeddings (numpy), so a store whose manifest says it was
    built on cuda:0 compares exactly as its CPU twin does, with no tensor or device in sight."""
    import json
    import shutil

    from core.store.read import open_store

    base = stores["base"]
    copy = tmp_path / "on-gpu"
    shutil.copytree(base.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["device"] == "cpu"
    manifest["device"] = "cuda:0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    on_gpu = open_store(copy)
    assert on_gpu.manifest["device"] == "cuda:0"
    check_comparable(base, on_gpu)
    data = paired_from_stores(base, on_gpu)
    for name in ("correct_a", "correct_b", "loss_a", "loss_b", "embedding"):
        assert isinstance(getattr(data, name), np.ndarray), name
    mixed, same = compare_stores(base, on_gpu), compare_stores(base, base)
    assert mixed.identical and mixed.overall == same.overall
    pd.testing.assert_frame_equal(mixed.groups, same.groups)
