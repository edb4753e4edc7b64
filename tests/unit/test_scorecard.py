"""Precision-at-k of discovered groups against planted slices, checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.scoring.scorecard import (
    baseline_groups,
    compare_with_baseline,
    domino_scorecard,
    membership_score,
    precision_at_k,
    precision_matrix,
    scorecard,
    top_k,
)

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


# --- Domino's measures, the baseline and the comparison ---------------------------------

# 200 images; slice S = rows 0-29, slice T = rows 100-104
BIG = np.zeros((200, 2), dtype=bool)
BIG[:30, 0] = True
BIG[100:105, 1] = True
# a ranking of 20 rows: 10 slice rows, then 5 slice rows among 5 others
RANKED = np.array([*range(10), 10, 150, 11, 151, 12, 152, 13, 153, 14, 154])


def test_domino_measures_by_hand():
    scores = np.zeros(200)
    scores[100:105] = 1.0  # every T image first, then rows 0.. by row order (ties)
    card = domino_scorecard(BIG, [RANKED, scores], slice_names=["S", "T"], group_names=["ranked", "scored"],
                            members=[RANKED, np.arange(100, 105)])
    s, t = card.to_dict("records")
    assert s["best group"] == "ranked" and s["images"] == 30
    # P@25 and P@100 of a 20-row ranking: the missing places are misses, as in precision_at_k
    assert (s["P@10"], s["P@25"], s["P@100"]) == pytest.approx((1.0, 15 / 25, 15 / 100))
    assert s["P@25"] == pytest.approx(precision_at_k(BIG[:, 0], RANKED, 25))
    assert s["recall"] == pytest.approx(15 / 30) and s["identified"]
    assert s["AUROC"] == pytest.approx(roc_auc_score(BIG[:, 0], membership_score(RANKED, 200)))
    # T: the scores group; its top 10 = rows 100-104 then rows 0-4 (ties by row)
    assert t["best group"] == "scored" and t["P@10"] == pytest.approx(0.5) and not t["identified"]
    assert (t["P@25"], t["P@100"], t["recall"], t["AUROC"]) == pytest.approx((5 / 25, 5 / 100, 1.0, 1.0))


def test_membership_score_and_auroc_against_sklearn():
    ranking = np.array([3, 0, 5, 3])  # row 3 keeps its first place
    np.testing.assert_array_equal(membership_score(ranking, 6), [3, 0, 0, 4, 0, 2])
    truth = np.array([[1], [0], [0], [1], [1], [0]], dtype=bool)
    card = domino_scorecard(truth, [ranking], ks=(2,))
    assert card["AUROC"].iat[0] == pytest.approx(roc_auc_score(truth[:, 0], [3, 0, 0, 4, 0, 2]))
    assert card["recall"].isna().all()  # no members given
    full = np.ones((6, 1), dtype=bool)  # a slice of every image has no AUROC
    assert np.isnan(domino_scorecard(full, [ranking], ks=(2,))["AUROC"].iat[0])


def test_domino_best_by_measure_and_no_groups():
    long_ranking = np.r_[np.arange(5), np.arange(150, 155), np.arange(5, 30)]  # P@10 0.5, P@100 0.3
    card = domino_scorecard(BIG[:, :1], [RANKED, long_ranking])
    assert card["best group"].iat[0] == "group 1" and card["P@100"].iat[0] == pytest.approx(0.15)
    each = domino_scorecard(BIG[:, :1], [RANKED, long_ranking], best_by_measure=True)
    assert each["best group"].iat[0] == "group 1" and each["P@100"].iat[0] == pytest.approx(0.30)
    empty = domino_scorecard(BIG, [])
    assert empty["P@10"].tolist() == [0.0, 0.0] and empty["AUROC"].isna().all() and empty["best group"].isna().all()
    with pytest.raises(ValueError, match="members of every group"):
        domino_scorecard(BIG, [RANKED], members=[])


def _toy_meta() -> tuple[pd.DataFrame, np.ndarray]:
    """60 images of 4 classes. Slice "one cell": 12 class-0 images all predicted as 1 (high loss);
    slice "spread": 12 class-2 images predicted as 0, 1 and 3 (4 each); 6 other errors 3 -> 1."""
    label = np.repeat([0, 1, 2, 3], 15)
    pred = label.copy()
    pred[0:12] = 1
    pred[30:42] = np.repeat([0, 1, 3], 4)
    pred[45:51] = 1
    loss = np.where(label != pred, 2.0, 0.1) + np.linspace(0, 0.5, 60)
    names = np.array(["cat", "dog", "fox", "owl"])
    meta = pd.DataFrame({"label_idx": label, "pred_idx": pred, "loss": loss,
                         "label": names[label], "pred": names[pred]})
    truth = np.zeros((60, 2), dtype=bool)
    truth[0:12, 0] = True
    truth[30:42, 1] = True
    return meta, truth


def test_baseline_finds_a_slice_in_one_confusion_cell_only():
    meta, truth = _toy_meta()
    names, rankings, members = baseline_groups(meta)
    assert names[0] == "cat → dog" and len(rankings[0]) == 12  # largest cell first
    assert rankings[0].tolist() == list(range(11, -1, -1))  # by loss, highest first
    assert set(names) == {"cat → dog", "owl → dog", "fox → cat", "fox → dog", "fox → owl"}
    card = domino_scorecard(truth, rankings, ["one cell", "spread"], names, members)
    assert card["P@10"].tolist() == pytest.approx([1.0, 0.4])
    assert card["identified"].tolist() == [True, False]
    assert card["recall"].tolist() == pytest.approx([1.0, 4 / 12])


def test_compare_with_baseline():
    meta, truth = _toy_meta()
    names, rankings, _ = baseline_groups(meta)
    method = [np.arange(30, 42), np.arange(0, 12)]  # finds both slices
    out = compare_with_baseline(truth, method, rankings, ["one cell", "spread"], ["m1", "m2"], names)
    assert out["method P@10"].tolist() == pytest.approx([1.0, 1.0])
    assert out["baseline P@10"].tolist() == pytest.approx([1.0, 0.4])
    assert out["beats_baseline"].tolist() == [False, True]
    assert out["method group"].tolist() == ["m2", "m1"] and out["baseline group"].iat[1] == "fox → cat"
    # 0.7 against 0.4 is a 0.3 margin despite floating point
    seven = np.r_[np.arange(30, 37), np.arange(50, 53)]
    assert compare_with_baseline(truth[:, 1:], [seven], rankings)["beats_baseline"].iat[0]


def test_a_method_is_scored_on_its_list_in_order_with_a_budget():
    """Issue 24's honest scorecard by hand: slice a is identified by the 7th group listed only
    (outside a budget of 5, inside 10), slice b by the 2nd, slice c by none; a group later in
    the list that also identifies b does not change its first hit."""
    from core.scoring.scorecard import budget_scorecard, flagged_scorecard

    truth = np.zeros((200, 3), dtype=bool)
    truth[:20, 0] = truth[100:110, 1] = truth[150:160, 2] = True
    noise = [np.arange(40 + 10 * i, 50 + 10 * i) for i in range(5)]  # groups of no slice
    rankings = [noise[0], np.arange(100, 110), *noise[1:], np.arange(0, 20), np.arange(100, 110)]
    card = budget_scorecard(truth, rankings, ["a", "b", "c"])
    assert card["first hit"].tolist()[:2] == [7.0, 2.0] and np.isnan(card["first hit"].iloc[2])
    assert card["within 5"].tolist() == [False, True, False]
    assert card["within 10"].tolist() == [True, True, False]
    assert budget_scorecard(truth, [], ["a", "b", "c"])["within 10"].tolist() == [False] * 3
    # P@10 of 0.8 counts, 0.7 does not
    almost = np.r_[np.arange(150, 157), np.arange(40, 43)]
    assert budget_scorecard(truth, [almost], ["a", "b", "c"])["first hit"].isna().all()
    enough = np.r_[np.arange(150, 158), np.arange(40, 42)]
    assert budget_scorecard(truth, [enough], ["a", "b", "c"])["first hit"].tolist()[2] == 1.0
    # the flagged scorecard puts the honest columns first, then the best group's measures
    full = flagged_scorecard(truth, rankings, ["a", "b", "c"], [f"g{i}" for i in range(len(rankings))], members=rankings)
    assert list(full.columns[:5]) == ["slice", "images", "first hit", "within 5", "within 10"]
    assert full.set_index("slice").loc["a", "best group"] == "g6"
