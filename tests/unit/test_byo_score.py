"""Scorecards of whole groups (hand-computed P@25, P@100, AUROC), the default spotlight size on
small data, and the held-out check on the smallest datasets the README promises (40 images)."""

from __future__ import annotations

import numpy as np
import pytest

import core.methods.spotlight.record
import core.scoring.scorecard
import core.services.score
from core.data.sources import ArrayDataset
from core.errors import DataError
from core.methods import Spotlight
from core.scoring.scorecard import domino_scorecard
from core.store.build import build_store
from tests.support import digits_arrays, tiny_model


def hand_case() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """200 images; group A = rows 0-59 ranked by loss in row order, group B = rows 60-199 (loss 0);
    the slice = rows 0-39 (inside A) and rows 100-109 (inside B): 50 images."""
    losses = np.zeros(200)
    losses[:60] = 10 - 0.1 * np.arange(60)
    truth = np.zeros((200, 1), dtype=bool)
    truth[:40, 0] = truth[100:110, 0] = True
    return losses, truth, [np.arange(60)[::-1].copy(), np.arange(60, 200)]  # members in any order


def test_whole_group_rankings_give_the_hand_computed_scorecard():
    losses, truth, members = hand_case()
    rankings = core.scoring.scorecard.loss_rankings(members, losses)
    assert rankings[0].tolist() == list(range(60))  # highest loss first
    card = domino_scorecard(truth, rankings, ["s"], ["A", "B"], members=members).iloc[0]
    assert card["best group"] == "A"
    assert (card["P@10"], card["P@25"], card["P@100"]) == (1.0, 1.0, 0.40)  # 40 slice images in A's first 100 places
    assert card["recall"] == pytest.approx(40 / 50)
    # AUROC by hand: A's score is 60 - place (slice rows 60..21, other rows 20..1), 0 outside A.
    # The 40 slice rows in A beat all 150 non-slice rows; the 10 outside A tie with the 130
    # non-slice rows outside A (half a win each) and lose to the 20 in A: (6000 + 650) / 7500.
    assert card["AUROC"] == pytest.approx(6650 / 7500)


def test_a_ranking_cut_to_ten_caps_the_deeper_measures():
    """What the Subgroups page reported before: each group's 10 highest-loss images only."""
    losses, truth, members = hand_case()
    cut = [r[:10] for r in core.scoring.scorecard.loss_rankings(members, losses)]
    card = domino_scorecard(truth, cut, ["s"], ["A", "B"], members=members).iloc[0]
    assert (card["P@25"], card["P@100"]) == (0.40, 0.10) and card["AUROC"] == pytest.approx(4500 / 7500)


@pytest.mark.parametrize(("n", "share", "count"), [
    (200, 0.125, 25), (50, 0.25, 12), (40, 0.25, 10), (300, 0.0834, 25), (1250, 0.02, 25), (10_000, 0.02, 200),
])
def test_default_size_is_two_percent_but_at_least_25_images(n, share, count):
    assert core.methods.spotlight.record.default_size(n) == pytest.approx(share)
    assert round(core.methods.spotlight.record.default_size(n) * n) == count


def small_store(n: int, tmp_path):
    images, labels, attributes = digits_arrays(n)
    dataset = ArrayDataset(images, labels, [str(d) for d in range(10)], attributes=attributes, name=f"d{n}")
    return build_store(f"d{n}", tiny_model(), dataset, [], root=tmp_path)


@pytest.mark.parametrize("n", [40, 50])
def test_held_out_runs_on_the_smallest_promised_datasets(n, tmp_path):
    tables = core.services.score.held_out_tables(small_store(n, tmp_path), ["spotlight", "udis"])
    spot = tables["spotlight"]
    assert list(spot["group"]) == [f"Spotlight {i}" for i in range(1, 6)]
    assert (spot["discovery n"] == round(core.methods.spotlight.record.default_size(n) * (n // 2))).all()  # each its top S on the half


def test_held_out_on_39_images_names_the_minimum(tmp_path):
    with pytest.raises(DataError, match=r"at least 40 images, and this set has 39"):
        core.services.score.held_out_tables(small_store(39, tmp_path), ["spotlight"])


def test_a_page_size_too_small_for_a_half_says_what_to_set():
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    losses, correct = np.abs(x[:, 0]), x[:, 1] > 0
    with pytest.raises(DataError, match=r"S = 1% covers 0.3 images.*Raise Size S to at least 3.34% on the Spotlight page"):
        core.methods.spotlight.record.spotlight_held_out(x, losses, correct, Spotlight(size=0.01))
    with pytest.raises(DataError, match=r"covers all of them. Lower Size S"):
        core.methods.spotlight.record.spotlight_held_out(x, losses, correct, Spotlight(size=30))
    table = core.methods.spotlight.record.spotlight_held_out(x, losses, correct, Spotlight(size=0.0334, n_spotlights=1, steps=50))
    assert table["discovery n"].tolist() == [1]


def test_cli_held_out_on_50_demo_images(tmp_path, capsys):
    """`python -m core score WS --held-out` on 50 images: the tables, not "Increase the size"."""
    from core.__main__ import main

    path = tmp_path / "workspaces.toml"
    path.write_text('[workspace.d50]\nmodel = { kind = "demo" }\ndataset = { kind = "demo", limit = 50 }\n')
    cache = str(tmp_path / "cache")
    assert main(["--file", str(path), "build", "d50", "--cache", cache]) == 0
    capsys.readouterr()
    assert main(["--file", str(path), "score", "d50", "--held-out", "--cache", cache]) == 0
    out = capsys.readouterr()
    assert "spotlight: found on a random half, measured on the other" in out.out
    assert "udis: found on a random half" in out.out and "Increase the size" not in out.out + out.err
