"""ActiVis (core.methods.activis.matrix): S^T A, sorting, the projection and the instance panel,
checked by hand on tiny cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

from core.errors import DataError
from core.methods import ActivationMatrix, Projection, instance_grid, membership_matrix, pages_for
from core.methods.activis.matrix import MAX_ROWS

RNG = np.random.default_rng(0)
A = RNG.normal(size=(30, 7))
MEMBERS = [
    np.arange(0, 12),  # overlaps the next
    np.arange(8, 30, 2),
    np.array([5]),  # a single instance
    np.array([3, 3, 4, 9, 9, 9]),  # duplicates count once
]


def _by_hand(a: np.ndarray, members) -> np.ndarray:
    return np.stack([a[np.unique(m)].mean(axis=0) for m in members])


def test_membership_matrix_normalises_by_subset_size():
    s = membership_matrix(MEMBERS, 30).toarray()
    assert s.shape == (30, 4)
    np.testing.assert_allclose(s.sum(axis=0), 1.0)
    assert s[5, 2] == 1.0 and s[3, 3] == pytest.approx(1 / 3)
    np.testing.assert_allclose(s.T @ A, _by_hand(A, MEMBERS))
    mask = np.zeros(30, dtype=bool)
    mask[[1, 2]] = True
    np.testing.assert_allclose(membership_matrix([mask], 30).toarray()[:, 0], mask / 2)


def test_matrix_equals_subset_means():
    fitted = ActivationMatrix().fit(A, MEMBERS, ["a", "b", "one", "dup"])
    np.testing.assert_allclose(fitted.means_, _by_hand(A, MEMBERS), rtol=1e-5, atol=1e-6)
    assert fitted.sizes_.tolist() == [12, 11, 1, 3]
    assert fitted.names_ == ["a", "b", "one", "dup"]
    assert fitted.nan_rows_ == 0
    np.testing.assert_array_equal(fitted.order_, np.arange(7))
    np.testing.assert_array_equal(fitted.shown_, np.arange(7))  # C <= top_n: all


def test_chunks_and_memmap_give_the_same(tmp_path):
    whole = ActivationMatrix().fit(A, MEMBERS).means_
    np.testing.assert_allclose(ActivationMatrix(chunk=3).fit(A, MEMBERS).means_, whole, rtol=1e-6, atol=1e-7)
    np.save(tmp_path / "a.npy", A.astype(np.float16))
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert mapped.dtype == np.float16
    fitted = ActivationMatrix(chunk=4).fit(mapped, MEMBERS)
    np.testing.assert_allclose(fitted.means_, _by_hand(A.astype(np.float16).astype(np.float64), MEMBERS), rtol=1e-5, atol=1e-6)


def test_refusals():
    with pytest.raises(DataError, match="Row 'empty' has no images"):
        ActivationMatrix().fit(A, [np.arange(3), np.array([], dtype=np.int64)], ["full", "empty"])
    with pytest.raises(DataError, match="Row 'far' names image 30"):
        ActivationMatrix().fit(A, [np.array([1, 30])], ["far"])
    with pytest.raises(DataError, match="image -1"):
        membership_matrix([np.array([-1, 2])], 30)
    with pytest.raises(DataError, match=f"52 rows: at most {MAX_ROWS}; remove some"):
        ActivationMatrix().fit(A, [np.array([i % 30]) for i in range(52)])
    with pytest.raises(DataError, match="sort by another row"):
        ActivationMatrix(sort_by=4).fit(A, MEMBERS)
    with pytest.raises(ValueError):
        ActivationMatrix(top_n=0).fit(A, MEMBERS)
    with pytest.raises(ValueError):
        ActivationMatrix(rank="mean").fit(A, MEMBERS)


def test_nan_cells_are_means_over_finite_values():
    a = np.arange(12, dtype=np.float64).reshape(6, 2)
    a[1, 0] = np.nan
    a[4, :] = np.inf  # row 4 belongs to no subset: never counted
    a[5, 1] = np.nan
    members = [np.array([0, 1, 2]), np.array([5]), np.array([1, 3])]
    for chunk in (2, 100):
        fitted = ActivationMatrix(chunk=chunk).fit(a, members)
        expected = np.array([[(0 + 4) / 2, (1 + 3 + 5) / 3], [10.0, np.nan], [6.0, (3 + 7) / 2]])
        np.testing.assert_allclose(fitted.means_, expected, rtol=1e-6)
        assert fitted.nan_rows_ == 2  # rows 1 and 5; row 4 is in no subset
        assert np.isfinite(fitted.scale_).all() and fitted.scale_ == (2.0, 10.0)


def test_sorting_and_top_n():
    means = np.array(
        [
            [1.0, 5.0, 3.0, 0.0, 4.0],
            [0.0, 0.0, 9.0, -9.0, 0.0],
        ]
    )
    members = [np.array([0]), np.array([1])]
    fitted = ActivationMatrix(sort_by=0).fit(means, members)
    np.testing.assert_array_equal(fitted.order_, [1, 4, 2, 0, 3])
    np.testing.assert_array_equal(fitted.shown_, [1, 4, 2, 0, 3])
    fitted = ActivationMatrix(sort_by=1, top_n=2).fit(means, members)
    np.testing.assert_array_equal(fitted.order_, [2, 0, 1, 4, 3])
    np.testing.assert_array_equal(fitted.shown_, [2, 0])
    # by the first row when unsorted, shown in natural order
    np.testing.assert_array_equal(ActivationMatrix(top_n=2).fit(means, members).shown_, [1, 4])
    # variance across the rows: columns 3 (81) and 2 (9) beat 1 (6.25)
    fitted = ActivationMatrix(top_n=2, rank="variance", sort_by=0).fit(means, members)
    np.testing.assert_array_equal(fitted.shown_, [2, 3])
    frame = fitted.long_frame()
    assert list(frame.columns) == ["row", "row_index", "neuron", "value"]
    assert frame["neuron"].tolist() == [2, 3, 2, 3]
    assert frame["value"].tolist() == [3.0, 0.0, 9.0, -9.0]
    assert fitted.scale_ == (-9.0, 9.0)


# ----------------------------------------------------------------------------- projection


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.data[:1000].astype(np.float32), data.target[:1000]


def _knn_accuracy(embedding: np.ndarray, labels: np.ndarray) -> float:
    half = len(labels) // 2
    classifier = KNeighborsClassifier(5).fit(embedding[:half], labels[:half])
    return classifier.score(embedding[half:], labels[half:])


def test_pca_projection_sample_and_determinism(digits):
    x, _ = digits
    fitted = Projection(method="pca", max_points=300, seed=1).fit(x)
    assert fitted.embedding_.shape == (300, 2) and fitted.embedding_.dtype == np.float32
    assert np.isfinite(fitted.embedding_).all()
    assert fitted.sampled_ and fitted.rows_.size == 300 and (np.diff(fitted.rows_) > 0).all()
    again = Projection(method="pca", max_points=300, seed=1).fit(x)
    np.testing.assert_array_equal(again.rows_, fitted.rows_)
    np.testing.assert_allclose(again.embedding_, fitted.embedding_)
    some = Projection(method="pca").fit(x, rows=np.arange(100, 140))
    assert not some.sampled_ and some.rows_.tolist() == list(range(100, 140))


def test_tsne_groups_classes(digits):
    x, y = digits
    fitted = Projection(method="tsne", max_points=1000).fit(x)
    assert fitted.embedding_.shape == (1000, 2) and np.isfinite(fitted.embedding_).all()
    assert _knn_accuracy(fitted.embedding_, y[fitted.rows_]) > 0.8
    assert fitted.perplexity_ == 30.0


def test_tsne_is_seeded_and_clamps_perplexity(digits):
    x, _ = digits
    first = Projection(method="tsne", max_points=60, seed=3).fit(x)
    second = Projection(method="tsne", max_points=60, seed=3).fit(x)
    np.testing.assert_array_equal(first.rows_, second.rows_)
    np.testing.assert_allclose(first.embedding_, second.embedding_)
    tiny = Projection(method="tsne").fit(x[:7])
    assert tiny.perplexity_ == pytest.approx(2.0) and np.isfinite(tiny.embedding_).all()


@pytest.mark.slow
def test_umap_projection(digits):
    x, _ = digits
    fitted = Projection(method="umap", max_points=200).fit(x)
    assert fitted.embedding_.shape == (200, 2) and np.isfinite(fitted.embedding_).all()
    assert fitted.perplexity_ is None


def test_projection_drops_non_finite_rows_and_refuses_too_few(digits):
    x, _ = digits
    bad = x[:20].copy()
    bad[[2, 7], 5] = np.nan
    bad[11, 0] = np.inf
    fitted = Projection(method="pca").fit(bad)
    assert fitted.dropped_ == 3 and 2 not in fitted.rows_ and fitted.embedding_.shape == (17, 2)
    with pytest.raises(DataError, match="at least 5"):
        Projection(method="pca").fit(x[:4])
    with pytest.raises(DataError, match="dropped"):
        Projection(method="pca").fit(bad[[2, 7, 11, 0, 1, 3]])


# ----------------------------------------------------------------------------- instance panel


def test_instance_grid_layout():
    # class 0: images 0-4, 3 correct (scores .9 .5 .7), 2 wrong; class 1: images 5-6, correct
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    preds = np.array([0, 1, 0, 0, 1, 1, 1])
    scores = np.array([0.9, 0.6, 0.5, 0.7, 0.8, 0.3, 0.4])
    grid = instance_grid(labels, preds, scores, n_classes=3, columns=2)
    assert list(grid.columns) == ["row", "label", "pred", "score", "correct", "x", "y", "class_total", "class_shown"]
    c0 = grid[(grid.label == 0) & grid.correct]
    assert c0["row"].tolist() == [0, 3, 2]  # by score descending, row-major
    assert list(zip(c0.x, c0.y, strict=True)) == [(0, 0), (1, 0), (0, 1)]
    w0 = grid[(grid.label == 0) & ~grid.correct]
    assert w0["row"].tolist() == [4, 1] and w0.x.tolist() == [3, 4] and w0.y.tolist() == [0, 0]
    c1 = grid[grid.label == 1]
    assert c1["row"].tolist() == [6, 5] and c1.y.tolist() == [3, 3]  # 2 rows of class 0, a gap
    assert grid.class_total.tolist() == [5] * 5 + [2] * 2 and (grid.class_total == grid.class_shown).all()
    assert pages_for(labels, 2) == 3 and pages_for(labels, 200) == 1


def test_instance_grid_sampling_keeps_errors_and_pages():
    labels = np.zeros(100, dtype=np.int64)
    preds = np.zeros(100, dtype=np.int64)
    preds[[10, 20, 30]] = 1  # 3 errors in 100
    scores = np.linspace(0.2, 1.0, 100)
    grid = instance_grid(labels, preds, scores, n_classes=2, per_class=10)
    assert len(grid) == 10 and (grid.class_shown == 10).all() and (grid.class_total == 100).all()
    assert (~grid.correct).sum() == 3  # every error on the first page
    assert pages_for(labels, 10) == 10
    seen = np.concatenate([instance_grid(labels, preds, scores, 2, per_class=10, page=p)["row"] for p in range(10)])
    assert sorted(seen.tolist()) == list(range(100))  # the pages cover the class once
    again = instance_grid(labels, preds, scores, 2, per_class=10, page=4)
    assert again.equals(instance_grid(labels, preds, scores, 2, per_class=10, page=4))
    # many errors: proportional share beyond half the budget
    preds[:80] = 1
    grid = instance_grid(labels, preds, scores, 2, per_class=10)
    assert (~grid.correct).sum() == 8
    with pytest.raises(DataError, match="page 10"):
        instance_grid(labels, preds, scores, 2, per_class=10, page=10)


def test_a_group_row_resolves_to_its_images_and_refuses_other_stores():
    from core.methods.activis import rows as matrix_rows

    meta = pd.DataFrame({"label_idx": [0, 1, 0, 1], "pred_idx": [0, 0, 0, 1], "correct": [True, False, True, True]})
    group = {"kind": "group", "value": [3, 1, 1], "name": "finding 2"}
    assert matrix_rows.label(group, ["a", "b"]) == "group: finding 2"
    np.testing.assert_array_equal(matrix_rows.resolve(group, meta, None, None, ["a", "b"]), [1, 3])
    rows = matrix_rows.with_row(matrix_rows.class_rows(["a", "b"]), group)
    assert matrix_rows.with_row(rows, dict(group)) == rows  # the same group is not added twice
    with pytest.raises(DataError, match="another workspace"):
        matrix_rows.resolve({"kind": "group", "value": [9], "name": "x"}, meta, None, None, ["a", "b"])
