"""Significance of discovered groups: known answers, calibration under the null, a planted effect."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from core.scoring.significance import benjamini_hochberg, group_tests, newcombe_interval, split_half


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """30 images: group = rows 0-9 with 3 correct; the other 20 rows have 16 correct."""
    correct = np.zeros(30, dtype=bool)
    correct[[0, 4, 7]] = True
    correct[10:26] = True
    return correct, np.arange(10)


def test_hand_computed_two_by_two():
    correct, group = _hand_case()
    row = group_tests(correct, [group], names=["G"]).iloc[0]
    assert (row["group"], row["n"], row["rest n"]) == ("G", 10, 20)
    assert (row["accuracy"], row["rest accuracy"], row["gap"]) == pytest.approx((0.3, 0.8, -0.5))
    assert row["p"] == pytest.approx(stats.fisher_exact([[3, 7], [16, 4]]).pvalue)
    assert row["q"] == pytest.approx(row["p"]) and row["significant"] == (row["p"] < 0.05)
    assert row["low"] < -0.5 < row["high"] < 0 and row["note"] == ""
    # the same group as a boolean mask, with its rows repeated: the same row
    mask = np.zeros(30, dtype=bool)
    mask[group] = True
    again = group_tests(correct, [mask, np.r_[group, group]])
    assert again["p"].tolist() == pytest.approx([row["p"]] * 2)


def test_newcombe_interval_matches_the_published_examples():
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10
    low, high = newcombe_interval(np.array([56, 5]), np.array([70, 56]), np.array([48, 0]), np.array([80, 29]))
    np.testing.assert_allclose(low, [0.0524, -0.0381], atol=1e-4)
    np.testing.assert_allclose(high, [0.3339, 0.1926], atol=1e-4)


def test_benjamini_hochberg_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.5 -> p * 4 / rank = 0.04, 0.06, 0.0533, 0.5 -> running min from the top
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(benjamini_hochberg([np.nan, 0.01])[0])


def test_groups_of_every_row_or_none_and_bad_input():
    correct, _ = _hand_case()
    out = group_tests(correct, [np.arange(30), np.array([], dtype=np.int64), np.arange(10)])
    assert out["p"].tolist()[:2] == [1.0, 1.0] and out["note"].tolist() == ["covers every row", "empty group", ""]
    assert np.isnan(out["gap"].iat[0]) and np.isnan(out["gap"].iat[1])
    assert group_tests(correct, []).empty
    with pytest.raises(ValueError, match="outside"):
        group_tests(correct, [np.array([3, 30])])
    with pytest.raises(ValueError, match="method"):
        group_tests(correct, [np.arange(3)], method="bootstrap")
    with pytest.raises(ValueError, match="one name per group"):
        group_tests(correct, [np.arange(3)], names=["a", "b"])


def test_no_false_alarms_under_the_null():
    """Correctness independent of the features: few runs may flag any of their 10 groups.

    Under the complete null every flag is false, so BH at 5% bounds the share of runs with
    any flag by 0.05; Fisher's test is conservative, so the share is lower.
    """
    rng = np.random.default_rng(1)
    runs, alarms = 200, 0
    for _ in range(runs):
        correct = rng.random(400) < 0.8
        x = rng.standard_normal((400, 5))
        low, high = np.quantile(x, [0.1, 0.9], axis=0)
        members = [np.flatnonzero(x[:, j] < low[j]) for j in range(5)]
        members += [np.flatnonzero(x[:, j] > high[j]) for j in range(5)]
        alarms += bool((group_tests(correct, members)["q"] < 0.05).any())
    print(f"false-alarm rate under the null: {alarms / runs:.3f} ({alarms} of {runs} runs)")
    assert alarms / runs <= 0.10


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """400 images; the 40 lowest of a feature x have accuracy 0.4 (16 correct), the rest 0.9."""
    rng = np.random.default_rng(seed)
    x = rng.random(400)
    order = np.argsort(x)
    correct = np.zeros(400, dtype=bool)
    correct[order[:40][rng.permutation(40) < 16]] = True
    correct[order[40:][rng.permutation(360) < 324]] = True
    return correct, x, float(x[order[39]])


def test_a_planted_group_is_flagged_and_holds_out():
    correct, x, cut = _planted()
    out = group_tests(correct, [np.flatnonzero(x <= cut), np.flatnonzero(x > 0.5)], names=["planted", "other"])
    assert out["significant"].tolist()[0] and out["gap"].iat[0] == pytest.approx(0.4 - 0.9)
    held = split_half(correct, lambda rows: {"planted": lambda r: x[r] <= cut}).iloc[0]
    assert held["discovery n"] + held["held-out n"] == 40
    assert held["held-out gap"] < -0.3 and held["held-out high"] < 0 and held["held-out q"] < 0.05


def test_a_group_selected_by_chance_shrinks_on_the_held_out_half():
    """Pure noise: the worst of 20 random groups on the discovery half looks bad there, but its
    held-out gap is near 0 (its interval covers 0 in most of 10 repetitions)."""
    covered, discovered, held_out = 0, [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        correct = rng.random(400) < 0.8
        groups = [np.flatnonzero(rng.random(400) < 0.1) for _ in range(20)]  # rules over all rows

        def worst(rows: np.ndarray, correct=correct, groups=groups) -> list[np.ndarray]:
            inside = [np.isin(rows, g) for g in groups]
            gaps = [correct[rows][m].mean() - correct[rows][~m].mean() for m in inside]
            return [groups[int(np.argmin(gaps))]]

        row = split_half(correct, worst, seed=seed).iloc[0]
        covered += bool(row["held-out low"] <= 0 <= row["held-out high"])
        discovered.append(row["discovery gap"])
        held_out.append(row["held-out gap"])
    print(f"mean gap: discovery {np.mean(discovered):.3f}, held out {np.mean(held_out):.3f}; 0 covered {covered}/10")
    assert np.mean(discovered) < -0.15 and abs(np.mean(held_out)) < 0.08 and covered >= 8


def test_split_half_notes_groups_without_held_out_members():
    correct, x, cut = _planted()
    out = split_half(correct, lambda rows: [rows[x[rows] <= cut]])  # discovery rows only: nothing to confirm
    assert out["held-out n"].iat[0] == 0 and out["note"].iat[0] == "held-out: empty group"
    assert out["discovery n"].iat[0] > 0


def test_permutation_p_is_close_to_fishers():
    correct = np.zeros(300, dtype=bool)
    correct[:200] = True
    group = np.r_[np.arange(60), np.arange(200, 240)]  # 60 of 100 correct against 140 of 200
    exact = group_tests(correct, [group])["p"].iat[0]
    shuffled = group_tests(correct, [group], method="permutation", n_permutations=20_000)["p"].iat[0]
    assert 0.05 < exact < 0.2 and shuffled == pytest.approx(exact, abs=0.02)
