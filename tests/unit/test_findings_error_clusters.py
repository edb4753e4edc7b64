"""Findings' error-cluster source (core/services/findings.py): the misclassified images of each
class clustered in the embedding, each tested as its region on the held-out half. Known answers:
a planted cluster of errors must be found (and lead the list without attributes); where
correctness is independent of everything, no error cluster may test significant."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.scoring.significance import group_tests
from core.services import findings as F
from core.services.findings import (
    error_cluster_candidates,
    failures_first,
    find_failures,
    nested_clusters,
)
from tests.unit.test_findings import FakeStore

CLASSES = ["Sandal", "Sneaker", "Coat", "Shirt"]


def store(n: int = 2000, seed: int = 0, plant: bool = True) -> FakeStore:
    """n images of 4 classes at 88% accuracy; when ``plant``, 12% of the Coats (3% of the images)
    sit apart in the embedding and fail at 70%. No attribute names them: only the representation
    can find them."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n)
    group = (label == 2) & (rng.random(n) < 0.12) if plant else np.zeros(n, dtype=bool)
    correct = rng.random(n) < np.where(group, 0.3, 0.88)
    pred = np.where(correct, label, (label + rng.integers(1, 4, n)) % 4)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    x[:, :4] += 3 * np.eye(4, dtype=np.float32)[label]
    x[group, 5] += 5
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), pred] += 4
    loss = np.where(correct, rng.random(n) * 0.3, 1 + rng.random(n))
    meta = pd.DataFrame({"row": np.arange(n), "label": np.array(CLASSES)[label], "label_idx": label,
                         "pred": np.array(CLASSES)[pred], "pred_idx": pred, "correct": correct, "loss": loss,
                         "slice_planted": group})
    return FakeStore(meta, x, logits, [])  # no attribute columns


def test_a_planted_error_cluster_is_found_with_its_failures_first():
    fake = store()
    meta = fake.meta()
    truth = meta["slice_planted"].to_numpy()
    discovery, held_out = F.halves(len(meta), 0)
    found = error_cluster_candidates(fake, meta, discovery)
    assert found and all(c.source == "error clusters" for c in found)
    best = max(found, key=lambda c: truth[c.rows[:10]].mean())
    assert truth[best.rows[:10]].mean() >= 0.8  # its P@10
    assert best.name.startswith("Coat errors")
    precision = (best.members & truth).sum() / best.members.sum()
    recall = (best.members & truth).sum() / truth.sum()
    assert precision >= 0.6 and recall >= 0.5
    assert set(meta["label"][best.members]) == {"Coat"}  # a region stays inside its class
    # tested on the half that played no part in finding it, it is clearly worse there
    tests = group_tests(meta["correct"].to_numpy()[held_out], [np.flatnonzero(best.members[held_out])])
    assert tests["q"].iat[0] < 1e-6 and tests["gap"].iat[0] < -0.3


def test_without_attributes_the_planted_cluster_leads_the_findings():
    fake = store()
    truth = fake.meta()["slice_planted"].to_numpy()
    report = find_failures(fake, with_attributes=False)
    first = report.findings[0]
    assert "error clusters" in first.methods and first.significant
    assert truth[first.rows[:10]].mean() >= 0.8
    assert not report.errors


def test_no_error_cluster_is_significant_where_correctness_is_random():
    """The rule is found on half A, tested on half B: with correctness independent of the
    embedding and the labels, no cluster's region fails there (q >= 0.05), for several draws."""
    for seed in range(5):
        fake = store(seed=seed, plant=False)
        meta = fake.meta()
        discovery, held_out = F.halves(len(meta), seed)
        found = error_cluster_candidates(fake, meta, discovery)
        assert len(found) >= 4  # every class with errors gives clusters: the test is not vacuous
        correct = meta["correct"].to_numpy()
        tests = group_tests(correct[held_out], [np.flatnonzero(c.members[held_out]) for c in found])
        assert (tests["q"] >= 0.05).all()


def test_the_region_reads_the_embedding_and_label_never_correctness():
    fake = store()
    meta = fake.meta()
    discovery, _ = F.halves(len(meta), 0)
    flipped = meta.copy()
    held = np.setdiff1d(np.arange(len(meta)), discovery)
    flipped.loc[held, "correct"] = ~flipped.loc[held, "correct"]  # the held-out half's correctness changes
    a = error_cluster_candidates(fake, meta, discovery)
    b = error_cluster_candidates(fake, flipped, discovery)
    assert [c.name for c in a] == [c.name for c in b]
    assert all(np.array_equal(x.members, y.members) for x, y in zip(a, b, strict=True))


def test_nested_clusters_are_every_cut_of_the_ward_tree():
    """Three tight blobs, two of them close: cuts into 1, 2 and 3 clusters give the whole, the
    far blob and the two close ones together, then each close one: 5 distinct masks."""
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.1, (10, 2)), rng.normal((1, 0), 0.1, (8, 2)), rng.normal((20, 0), 0.1, (6, 2))])
    masks = nested_clusters(points, 3)
    sets = [tuple(np.flatnonzero(m)) for m in masks]
    assert sets == [tuple(range(24)), tuple(range(18)), tuple(range(10)), tuple(range(10, 18)), tuple(range(18, 24))]
    assert len(nested_clusters(points, 1)) == 1 and nested_clusters(points, 1)[0].all()


def test_failures_first_orders_errors_then_correct_each_nearest_the_errors_centroid():
    x = np.array([[0.0], [5.0], [1.0], [2.0], [9.0], [3.0]], dtype=np.float32)
    correct = np.array([True, False, False, True, True, False])
    members = np.array([True, True, True, True, False, True])
    # errors 1 (5), 2 (1), 5 (3): centroid 3 -> 5, then 1 and 2 (both 2 away: the lower row)
    assert failures_first(members, x, correct).tolist() == [5, 1, 2, 3, 0]
    assert F.errors_per_cluster(5000) == 25 and F.errors_per_cluster(200) == F.MIN_CLUSTER_ERRORS
