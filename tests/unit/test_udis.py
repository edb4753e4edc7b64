"""UDIS subgroups: Ward trees (exact and two-stage), the size-range cut, the rules on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from core.methods.subgroups.udis import (
    UDIS,
    SubgroupError,
    WardTree,
    _summarise,
    cut_labels,
    descend,
    similar_well_performing,
    subgroup_confusion,
    subgroups_csv,
    top_loss_rows,
    ward_tree,
    weighted_ward,
)
from core.scoring.stats import binary_bootstrap_ci, bootstrap_ci


def test_weighted_ward_with_unit_weights_is_scipys_ward():
    x = np.random.default_rng(0).normal(size=(120, 4))
    z = linkage(x, "ward")
    merges, heights = weighted_ward(x, np.ones(len(x)))
    assert np.allclose(heights, z[:, 2])
    assert np.array_equal(merges, np.sort(z[:, :2].astype(np.int64), axis=1))


def test_weighted_ward_treats_a_weight_as_that_many_identical_points():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(30, 3))
    weights = rng.integers(1, 4, size=30)
    expanded = np.repeat(centres, weights, axis=0) + rng.normal(scale=1e-9, size=(weights.sum(), 3))
    _, heights = weighted_ward(centres, weights.astype(float))
    z = linkage(expanded, "ward")
    # merging the copies costs ~0; the rest of the tree is the weighted one
    assert np.allclose(np.sort(z[:, 2])[-(len(centres) - 1):], heights, atol=1e-6)


def blobs(n: int = 1200, centers: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=n, centers=centers, n_features=8, cluster_std=0.6, random_state=seed)
    return x, y


@pytest.mark.parametrize("exact_limit", [5000, 100])  # exact tree, then the two-stage tree
def test_clustering_recovers_synthetic_blobs(exact_limit):
    x, y = blobs()
    correct = np.random.default_rng(0).random(len(x)) < 0.5  # nothing perfect: every node may split
    result = UDIS(min_size=5, max_size=250, exact_limit=exact_limit, micro_clusters=300, max_cuts=40).fit(x, correct)
    # every subgroup lies inside one blob, and each blob is cut in few pieces
    for g in range(len(result.subgroups_)):
        assert len(np.unique(y[result.rows(g)])) == 1
    assert adjusted_rand_score(y, result.labels_) > 0.5
    assert ("exact" in result.method_) == (exact_limit == 5000)
    assert (result.subgroups_["size"] >= 5).all() and result.subgroups_["size"].sum() == len(x)


def test_a_failing_blob_becomes_an_under_performing_subgroup():
    x, y = blobs(centers=5, seed=3)
    rng = np.random.default_rng(0)
    correct = np.where(y == 2, rng.random(len(x)) < 0.1, rng.random(len(x)) < 0.97)
    result = UDIS(max_size=300, stop_at_perfect=False).fit(x, correct)
    under = result.under_performing(0.5)
    assert len(under) >= 1
    for g in under["subgroup"]:
        assert (y[result.rows(g)] == 2).mean() > 0.9
    # the similar well-performing subgroup of each is a well-performing one
    for g in under["subgroup"]:
        similar = result.subgroups_.loc[g, "similar"]
        assert result.subgroups_.loc[similar, "accuracy"] >= result.overall_accuracy_


def tiny_tree(correct: list[bool]) -> WardTree:
    """Four points on a line: 0, 1 | 10, 11 (leaves 0..3); merges (0,1)->4, (2,3)->5, (4,5)->6."""
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    tree, _ = ward_tree(x, np.array(correct), UDIS())
    return tree


def test_descent_respects_min_size_and_perfect_nodes():
    tree = tiny_tree([True, False, True, True])
    # min size 1: the root splits, then node (0,1) (imperfect); (2,3) is perfect and stays whole
    splits, first = descend(tree, UDIS(min_size=1, max_size=2, stop_at_perfect=True))
    assert list(splits) == [6, 4]
    assert first == 1  # after one split no splittable subgroup has more than 2 images
    labels = cut_labels(tree, splits, 2)
    assert labels[0] != labels[1] and labels[2] == labels[3]
    # without the perfect rule (2,3) splits too; with min size 2 nothing below pairs splits
    splits, _ = descend(tree, UDIS(min_size=1, max_size=2, stop_at_perfect=False))
    assert sorted(splits) == [4, 5, 6]
    splits, _ = descend(tree, UDIS(min_size=2, max_size=3, stop_at_perfect=False))
    assert list(splits) == [6]
    assert list(cut_labels(tree, splits, 0)) == [6, 6, 6, 6]


def hand_made(accuracy: list[float], sizes: list[int]) -> UDIS:
    """A UDIS fitted by hand: subgroups with given accuracies and sizes, centroids on a line at 0, 1, 2, ..."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    correct = np.concatenate([np.arange(s) < round(a * s) for a, s in zip(accuracy, sizes, strict=True)])
    x = labels[:, None].astype(float)
    udis = UDIS()
    udis.labels_ = labels
    udis.subgroups_, udis.centroids_, udis.overall_accuracy_ = _summarise(x, correct, labels)
    return udis


def test_under_performing_rule_on_a_hand_made_case():
    # overall accuracy = (2 + 8 + 40 + 3) / (10 + 10 + 50 + 5) = 53 / 75
    result = hand_made([0.2, 0.8, 0.8, 0.6], [10, 10, 50, 5])
    assert result.overall_accuracy_ == pytest.approx(53 / 75)
    under = result.under_performing(0.5)  # 0.5 * 0.7067 = 0.353: only subgroup 0
    assert list(under["subgroup"]) == [0]
    # 0.66 x 0.7067 = 0.466: still only 0; the 5-image subgroup (0.6) is never listed (> 5 needed)
    assert list(result.under_performing(0.66)["subgroup"]) == [0]
    assert list(result.under_performing(1.0)["subgroup"]) == [0]
    assert result.suggest_threshold() == 0.29  # 0.2 / 0.7067 = 0.283, the next step up
    assert result.under_performing(0.28).empty
    with pytest.raises(SubgroupError):
        result.under_performing(0.0)


def test_suggested_threshold_lists_the_worst_subgroup():
    result = hand_made([0.5, 0.9, 0.9], [10, 20, 20])  # overall 0.82; worst 0.5 = 0.61 x overall
    assert result.under_performing(0.5).empty
    t = result.suggest_threshold()
    assert t == pytest.approx(0.61)
    assert list(result.under_performing(t)["subgroup"]) == [0]


def test_similar_subgroup_is_the_nearest_well_performing_one():
    centroids = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.5, 0.0], [10.0, 0.0]])
    accuracy = np.array([0.2, 0.9, 0.95, 0.3, 0.99])
    size = np.array([10, 10, 10, 10, 3])  # subgroup 4 is too small to compare with
    similar = similar_well_performing(centroids, accuracy, size, overall=0.8)
    # 0 -> 1 (3 is nearer but under-performing); 1 -> 2 (never itself); 4 -> 2 (its own size doesn't matter)
    assert list(similar) == [1, 2, 1, 1, 2]
    assert list(similar_well_performing(centroids, accuracy, size, overall=1.0)) == [-1] * 5


def test_confusion_of_a_single_class_subgroup_and_top_loss_ranking():
    matrix = subgroup_confusion(np.array([2, 2, 2]), np.array([2, 0, 0]), 3)
    assert matrix.tolist() == [[0, 0, 0], [0, 0, 0], [2, 0, 1]]
    losses = np.array([0.1, 5.0, 0.3, 2.0, 9.0])
    assert list(top_loss_rows(np.array([0, 1, 2, 3]), losses, k=2)) == [1, 3]


def test_bad_inputs_are_refused_with_clear_messages():
    with pytest.raises(SubgroupError, match="at least 20"):
        UDIS().fit(np.zeros((10, 3)), np.ones(10, bool))
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[3, 1] = np.nan
    with pytest.raises(SubgroupError, match="NaN"):
        UDIS().fit(x, np.ones(50, bool))
    with pytest.raises(SubgroupError, match="one correctness flag"):
        UDIS().fit(np.zeros((50, 3)), np.ones(49, bool))
    with pytest.raises(SubgroupError, match="min size"):
        UDIS(min_size=10, max_size=5).fit(np.random.default_rng(0).normal(size=(50, 3)), np.ones(50, bool))


def test_identical_points_and_a_perfect_model_still_give_subgroups():
    result = UDIS().fit(np.zeros((40, 4)), np.ones(40, bool))
    assert result.subgroups_["size"].sum() == 40 and result.under_performing().empty
    assert result.suggest_threshold() is None


def test_csv_export_lists_every_subgroup_with_its_images():
    result = hand_made([0.2, 0.8], [10, 12])
    text = subgroups_csv(result, np.array([f"img{i}" for i in range(22)]), 0.5).decode()
    lines = text.strip().splitlines()
    assert lines[0].startswith("subgroup,size,correct,accuracy,low,high,similar,under_performing,image_ids")
    assert len(lines) == 3 and lines[1].split(",")[-2] == "True" and "img0;img1" in lines[1]


def test_binary_bootstrap_matches_the_resampling_bootstrap():
    successes, sizes = np.array([7, 30, 0, 1]), np.array([20, 40, 8, 1])
    low, high = binary_bootstrap_ci(successes, sizes, n_resamples=20_000)
    for k, n, lo, hi in zip(successes[:2], sizes[:2], low[:2], high[:2], strict=True):
        _, ref_lo, ref_hi = bootstrap_ci(np.arange(n) < k, n_resamples=20_000)
        assert lo == pytest.approx(ref_lo, abs=0.051) and hi == pytest.approx(ref_hi, abs=0.051)
    assert low[2] == high[2] == 0.0  # all wrong: a zero-width interval
    assert np.isnan(low[3]) and np.isnan(high[3])  # one image: no interval
