"""Precision-at-k of discovered groups against planted slices, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from core.scorecard import precision_at_k, precision_matrix, scorecard, top_k

# 20 images; slice A = rows 0-9, slice B = rows 10-14
TRUTH = np.zeros((20, 2), dtype=bool)
TRUTH[:10, 0] = True
TRUTH[10:15, 1] = True


def test_top_k_breaks_ties_by_row():
    assert top_k(np.array([0.5, 0.9, 0.5, 0.1]), 3).tolist() == [1, 0, 2]
    assert top_k(np.array([1.0, 2.0]), 0).tolist() == []


def test_precision_at_k_from_scores_by_hand():
    scores = np.zeros(20)
    scores[[0, 1, 2, 3, 4, 5, 6, 15, 16, 17]] = np.linspace(1, 0.1, 10)  # 7 of the top 10 in A
    assert precision_at_k(TRUTH[:, 0], scores, k=10) == pytest.approx(0.7)
    assert precision_at_k(TRUTH[:, 0], scores, k=5) == pytest.approx(1.0)
    assert precision_at_k(TRUTH[:, 1], scores, k=10) == 0.0


def test_precision_at_k_from_a_ranking():
    ranking = np.array([10, 11, 0, 12, 13, 14, 19, 18, 17, 16])  # 5 of 10 in B
    assert precision_at_k(TRUTH[:, 1], ranking, k=10) == pytest.approx(0.5)
    # a ranking shorter than k: the missing places count as misses
    assert precision_at_k(TRUTH[:, 1], np.array([10, 11, 12]), k=10) == pytest.approx(0.3)


def test_precision_matrix_and_scorecard_pick_the_best_group():
    in_a = TRUTH[:, 0].astype(float)  # every top-10 row in A
    half_b = np.zeros(20)
    half_b[[10, 11, 12, 13, 14, 0, 1, 2, 3, 4]] = 1 + np.arange(10)[::-1]  # 5 in B, 5 in A
    noise = np.arange(20, dtype=float)  # top 10 = rows 19..10: 5 in B
    matrix = precision_matrix(TRUTH, [in_a, half_b, noise])
    np.testing.assert_allclose(matrix, [[1.0, 0.5, 0.0], [0.0, 0.5, 0.5]])
    card = scorecard(TRUTH, [in_a, half_b, noise], slice_names=["A", "B"], group_names=["g1", "g2", "g3"])
    assert card.to_dict("records") == [
        {"slice": "A", "images": 10, "best group": "g1", "P@10": 1.0, "identified": True},
        {"slice": "B", "images": 5, "best group": "g2", "P@10": 0.5, "identified": False},  # tie: the first
    ]


def test_scorecard_without_groups_and_bad_input():
    card = scorecard(TRUTH, [])
    assert card["P@10"].tolist() == [0.0, 0.0] and card["best group"].isna().all()
    with pytest.raises(ValueError, match="one value per image"):
        precision_at_k(TRUTH[:, 0], np.zeros(5))
    with pytest.raises(ValueError, match="outside"):
        precision_at_k(TRUTH[:, 0], np.array([3, 25]))
    with pytest.raises(ValueError, match="boolean matrix"):
        precision_matrix(TRUTH[:, 0], [np.zeros(20)])
    with pytest.raises(ValueError, match="one name per slice"):
        scorecard(TRUTH, [np.zeros(20)], slice_names=["only one"])
