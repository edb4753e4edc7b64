"""Statistics against known answers."""

import numpy as np
import pandas as pd
import pytest

from core.scoring.stats import accuracy_by, bootstrap_ci, slice_accuracy


def test_bootstrap_interval_matches_binomial_width():
    # 400 trials at p = 0.8: the normal approximation gives 0.8 +- 1.96 * 0.02 = [0.761, 0.839].
    values = np.r_[np.ones(320), np.zeros(80)]
    mean, low, high = bootstrap_ci(values, n_resamples=4000)
    assert mean == pytest.approx(0.8)
    assert low == pytest.approx(0.761, abs=0.01)
    assert high == pytest.approx(0.839, abs=0.01)


def test_bootstrap_degenerate_cases():
    assert bootstrap_ci(np.ones(7)) == (1.0, 1.0, 1.0)
    mean, low, high = bootstrap_ci(np.array([0.0]))
    assert mean == 0.0 and np.isnan(low) and np.isnan(high)
    assert all(np.isnan(v) for v in bootstrap_ci(np.array([])))


def test_bootstrap_is_reproducible():
    values = np.random.default_rng(1).random(50) > 0.3
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)


def test_accuracy_by_hand_computed():
    meta = pd.DataFrame({"tint": ["red", "red", "red", "blue", "blue"], "correct": [1, 0, 0, 1, 1]}).astype(
        {"correct": bool}
    )
    table = accuracy_by(meta, "tint")
    assert list(table["value"]) == ["red", "blue"]  # sorted by accuracy, worst first
    assert table.loc[0, "accuracy"] == pytest.approx(1 / 3)
    assert list(table["n"]) == [3, 2]
    assert table.loc[1, "low"] == table.loc[1, "high"] == 1.0


def test_slice_accuracy_and_gap():
    meta = pd.DataFrame(
        {
            "correct": [True] * 8 + [False, False],
            "slice_a": [False] * 6 + [True] * 4,
            "slice_empty": [False] * 10,
        }
    )
    table = slice_accuracy(meta, ["slice_a", "slice_empty"])
    a = table.set_index("slice").loc["a"]
    assert a["n"] == 4 and a["accuracy"] == pytest.approx(0.5) and a["gap"] == pytest.approx(0.3)
    assert table.set_index("slice").loc["empty", "n"] == 0
