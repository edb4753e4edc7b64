"""Workshop scoring, checked against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import BiasLensError
from core.services.workshop import random_baseline, score_finding, student_view, top_by_loss

# 30 images; loss = 30 - row, so a lower row has a higher loss.
N = 30
LOSS = np.arange(N, 0, -1).astype(float)
# slice a: rows 0..11 (12 images); slice b: rows 20..24 (5 images)
TRUTH = np.zeros((N, 2), dtype=bool)
TRUTH[0:12, 0] = True
TRUTH[20:25, 1] = True
NAMES = ["a", "b"]


def test_top_by_loss_ranks_within_the_group_and_breaks_ties_by_row():
    assert top_by_loss(np.array([5, 3, 9]), LOSS, 2).tolist() == [3, 5]
    flat = np.ones(N)
    assert top_by_loss(np.array([7, 2, 4]), flat, 2).tolist() == [2, 4]


def test_a_finding_inside_a_slice_is_identified():
    # rows 0..9 and 25..29: the 10 highest-loss rows are 0..9, all in a -> P@10 1.0; recall 10/12
    score = score_finding(list(range(10)) + list(range(25, 30)), LOSS, TRUTH, NAMES)
    assert (score.size, score.p_at_k, score.best, score.identified) == (15, 1.0, "a", True)
    assert score.recall == pytest.approx(10 / 12)


def test_p_at_10_counts_the_top_by_loss_not_the_whole_group():
    # rows 4..11 (8 in a) + 12..19 (8 outside): top 10 by loss = rows 4..13 -> 8/10 in a
    score = score_finding(range(4, 20), LOSS, TRUTH, NAMES)
    assert score.p_at_k == pytest.approx(0.8) and score.identified and score.best == "a"
    assert score.recall == pytest.approx(8 / 12)
    # rows 5..11 (7 in a) + 12..19: P@10 0.7, not identified; the name is then hidden
    miss = score_finding(range(5, 20), LOSS, TRUTH, NAMES)
    assert miss.p_at_k == pytest.approx(0.7) and not miss.identified
    assert student_view(miss)["slice"] == "(hidden until identified)"
    assert student_view(miss)["matches a planted slice"] == "no"


def test_a_small_finding_counts_missing_slots_as_misses():
    # all 5 of slice b, nothing else: P@10 = 5/10, recall 1.0
    score = score_finding(range(20, 25), LOSS, TRUTH, NAMES)
    assert (score.p_at_k, score.recall, score.best, score.identified) == (0.5, 1.0, "b", False)


def test_ties_in_p_at_10_go_to_the_higher_recall():
    # rows 10, 11 (a) and 20..24 (b) and 26, 27, 28: top 10 = all 10 rows; a: 2/10, b: 5/10
    score = score_finding([10, 11, 20, 21, 22, 23, 24, 26, 27, 28], LOSS, TRUTH, NAMES)
    assert score.best == "b" and score.p_at_k == pytest.approx(0.5)
    # equal P@10 (1/10 each): a's recall 1/12 < b's 1/5 -> b
    tie = score_finding([11, 20, 12, 13, 14, 15, 16, 17, 18, 19], LOSS, TRUTH, NAMES)
    assert tie.best == "b" and tie.p_at_k == pytest.approx(0.1) and tie.recall == pytest.approx(0.2)


def test_student_view_shows_only_the_identified_slice():
    view = student_view(score_finding(range(10), LOSS, TRUTH, NAMES))
    assert view == {"matches a planted slice": "yes", "P@10": 1.0, "recall": pytest.approx(10 / 12),
                    "slice": "a", "images": 10}
    assert "b" not in {str(v) for v in view.values()}


def test_bad_findings_are_refused():
    with pytest.raises(BiasLensError, match="empty"):
        score_finding([], LOSS, TRUTH, NAMES)
    with pytest.raises(BiasLensError, match="outside"):
        score_finding([0, N], LOSS, TRUTH, NAMES)
    with pytest.raises(BiasLensError, match="ground truth"):
        score_finding([0], LOSS, TRUTH, ["a"])


def test_random_baseline_by_hand_and_seeded():
    # the whole dataset as the "random" subset: top 10 = rows 0..9 -> P@10 1.0 for a, recall 1.0
    whole = random_baseline(N, LOSS, TRUTH, draws=5)
    assert (whole.p_at_k, whole.recall, whole.identified_share) == (1.0, 1.0, 1.0)
    # one image: P@10 is 0.1 when it is in a slice (17 of 30), else 0 -> mean near 17/300
    one = random_baseline(1, LOSS, TRUTH, draws=3000, seed=1)
    assert one.p_at_k == pytest.approx(17 / 300, abs=0.01) and one.identified_share == 0.0
    assert random_baseline(8, LOSS, TRUTH, seed=3) == random_baseline(8, LOSS, TRUTH, seed=3)
    with pytest.raises(BiasLensError):
        random_baseline(0, LOSS, TRUTH)
