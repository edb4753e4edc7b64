"""Failure modes in saliency space: planted groups recovered, the layer restriction, the
notes for clamped and dropped groups, P@k through core.scoring.scorecard and the confusion-cell baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from core.errors import DataError
from core.methods import (
    FailureModes,
    confusion_cell_groups,
    failure_mode_scorecard,
)
from core.methods.saliency import failure_modes as saliency_search
from core.methods.saliency.filters import FilterIndex
from core.scoring.scorecard import precision_at_k

INDEX = FilterIndex(layers=("conv1", "conv2", "conv3"), counts=(20, 20, 20), sizes=(27, 180, 180))
BLOCKS = [np.arange(20, 26), np.arange(30, 36), np.arange(45, 51)]  # filters of conv2, conv2, conv3


def planted(n_per: int = 30, seed: int = 0, columns: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Three planted failure modes: each group's images share a block of elevated filters (z + 4)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(3 * n_per, INDEX.n_filters))
    truth = np.repeat(np.arange(3), n_per)
    for g, block in enumerate(columns or BLOCKS):
        z[np.ix_(truth == g, block)] += 4.0
    order = rng.permutation(len(z))  # planted groups interleaved among the rows
    return z[order], truth[order]


def test_recovers_three_planted_failure_modes_and_their_filters():
    z, truth = planted()
    rows = np.arange(1000, 1000 + len(z))  # store rows differ from positions
    fm = FailureModes(n_groups=3, top_filters=6).fit(z, rows, index=INDEX)
    assert len(fm.groups_) == 3 and fm.notes_ == []
    found = set()
    for group in fm.groups_:
        members = truth[group.rows - 1000]
        majority = np.bincount(members).argmax()
        assert np.mean(members == majority) >= 0.9
        assert {f["column"] for f in group.top_filters} == set(BLOCKS[majority].tolist())
        first = group.top_filters[0]
        assert (first["layer"], first["filter"]) == INDEX.name(first["column"])
        assert first["mean_z"] > 3
        # most typical first: cosine to the centroid descends along the ranking
        positions = group.rows - 1000
        assert np.all(np.diff(group.score[positions]) <= 1e-12)
        assert group.score.shape == (len(z),) and group.size == len(group.rows)
        assert np.array_equal(fm.top_rows(group.index, 5), group.rows[:5])
        found.add(majority)
    assert found == {0, 1, 2}
    assert np.array_equal(np.sort(np.concatenate([g.rows for g in fm.groups_])), rows)
    assert fm.labels_.shape == (len(z),) and fm.rows_ is not rows


def test_same_seed_same_groups():
    z, _ = planted(seed=3)
    rows = np.arange(len(z))
    a = FailureModes(n_groups=5, min_size=1, seed=7).fit(z, rows)
    b = FailureModes(n_groups=5, min_size=1, seed=7).fit(z, rows)
    assert np.array_equal(a.labels_, b.labels_)
    assert all(np.array_equal(x.rows, y.rows) and np.allclose(x.score, y.score) for x, y in zip(a.groups_, b.groups_, strict=True))


def test_wide_profiles_are_clustered_in_principal_directions(monkeypatch):
    monkeypatch.setattr(saliency_search, "MAX_DIMS", 16)
    monkeypatch.setattr(saliency_search, "CHUNK_BYTES", 4 * 60 * 7)  # 7 rows a chunk
    z, truth = planted()
    fm = FailureModes(n_groups=3).fit(z.astype(np.float16), np.arange(len(z)))
    assert any("principal directions" in note for note in fm.notes_)
    for group in fm.groups_:
        members = truth[group.rows]
        assert np.mean(members == np.bincount(members).argmax()) >= 0.9


def test_too_many_groups_are_clamped_with_a_note():
    z = np.random.default_rng(0).normal(size=(4, 6))
    fm = FailureModes(n_groups=10, min_size=1).fit(z, np.arange(4))
    assert fm.n_groups_ == 3 and len(fm.groups_) <= 3
    assert any("looked for 3" in note for note in fm.notes_)


def test_small_groups_are_dropped_and_named():
    z, truth = planted(n_per=30)
    z = np.vstack([z, np.zeros((2, INDEX.n_filters))])
    z[-2:, 0:6] = 9.0  # a fourth, tiny failure mode: 2 images on conv1 filters 0-5
    rows = np.arange(len(z))
    fm = FailureModes(n_groups=4, min_size=5).fit(z, rows)
    assert len(fm.groups_) == 3
    assert np.array_equal(np.flatnonzero(fm.labels_ == -1), [len(z) - 2, len(z) - 1])
    note = next(note for note in fm.notes_ if note.startswith("Dropped"))
    assert "2 image(s)" in note and f"rows {len(z) - 2}, {len(z) - 1}" in note
    with pytest.raises(DataError):
        fm.rows(3)


def test_fewer_than_two_images_refused():
    with pytest.raises(DataError, match="at least 2"):
        FailureModes().fit(np.ones((1, 5)), np.array([3]))
    with pytest.raises(DataError, match="one store row per profile"):
        FailureModes().fit(np.ones((4, 5)), np.arange(3))
    with pytest.raises(DataError, match="n_groups"):
        FailureModes(n_groups=0).fit(np.ones((4, 5)), np.arange(4))
    with pytest.raises(DataError, match="NaN"):
        FailureModes().fit(np.full((4, 5), np.nan), np.arange(4))
    with pytest.raises(DataError, match="covers 60 filters"):
        FailureModes().fit(np.ones((4, 5)), np.arange(4), index=INDEX)


def test_columns_restriction_uses_only_those_columns():
    # Structure only in conv3 (columns 40-59); conv1 and conv2 are pure noise.
    deep = [np.arange(40, 46), np.arange(46, 52), np.arange(52, 58)]
    z, truth = planted(columns=deep)
    rows = np.arange(len(z))
    early = INDEX.columns(["conv1", "conv2"])
    shallow = FailureModes(n_groups=3, min_size=1).fit(z, rows, index=INDEX, columns=early)
    assert np.array_equal(shallow.columns_, early)
    assert all(f["column"] < 40 and f["layer"] in {"conv1", "conv2"} for g in shallow.groups_ for f in g.top_filters)
    purity = [np.bincount(truth[g.rows]).max() / g.size for g in shallow.groups_]
    assert max(purity) < 0.75  # the planted modes are invisible in the early layers
    deep_fit = FailureModes(n_groups=3).fit(z, rows, index=INDEX, columns=INDEX.columns(["conv3"]))
    assert min(np.bincount(truth[g.rows]).max() / g.size for g in deep_fit.groups_) >= 0.9


def test_readers_refuse_before_fit():
    with pytest.raises(NotFittedError):
        FailureModes().rows(0)
    with pytest.raises(NotFittedError):
        FailureModes().top_rows(0, 10)


def test_precision_at_k_of_a_group_ranking():
    # Hand-computed: a ranking of 12 store rows, 7 of its top 10 in the slice -> P@10 = 0.7.
    in_slice = np.zeros(30, dtype=bool)
    in_slice[[2, 4, 6, 8, 10, 12, 14, 29]] = True
    ranking = np.array([2, 4, 6, 1, 8, 10, 3, 12, 14, 5, 29, 0])
    assert precision_at_k(in_slice, ranking, k=10) == pytest.approx(0.7)
    assert precision_at_k(in_slice, ranking[:4], k=10) == pytest.approx(0.3)  # short ranking: misses


def test_scorecard_names_each_slices_best_group():
    z, truth = planted(n_per=12)
    rows = np.arange(50, 50 + len(z))
    fm = FailureModes(n_groups=3).fit(z, rows)
    slices = pd.DataFrame({"slice_a": np.zeros(100, dtype=bool), "slice_b": np.zeros(100, dtype=bool), "label": 0})
    slices.loc[rows[truth == 1], "slice_a"] = True  # slice a = planted mode 1
    card = failure_mode_scorecard(fm, slices)
    assert list(card["slice"]) == ["a", "b"]
    a = card.iloc[0]
    best = int(a["best group"].removeprefix("#"))
    assert np.all(truth[fm.rows(best)[:10] - 50] == 1)
    assert a["P@10"] == pytest.approx(1.0) and a["identified"] and a["recall"] == pytest.approx(1.0)
    assert card.iloc[1]["P@10"] == 0
    with pytest.raises(DataError, match="slice_"):
        failure_mode_scorecard(fm, slices[["label"]])


def test_confusion_cell_baseline():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0])
    preds = np.array([1, 1, 0, 0, 0, 2, 1, 0, 1])
    losses = np.array([0.5, 2.0, 0.1, 1.0, 3.0, 0.2, 0.7, 1.5, 1.0])
    rows = np.arange(100, 109)
    cells = confusion_cell_groups(labels, preds, losses, rows)
    assert list(cells["true"]) == [0, 1, 2, 2] and list(cells["predicted"]) == [1, 0, 0, 1]
    assert list(cells["size"]) == [3, 2, 1, 1]
    assert list(cells.loc[0, "rows"]) == [101, 108, 100]  # loss 2.0, 1.0, 0.5
    assert list(cells.loc[1, "rows"]) == [104, 103]
    empty = confusion_cell_groups(labels[:1], labels[:1], losses[:1], rows[:1])
    assert empty.empty and list(empty.columns) == ["true", "predicted", "size", "rows"]
