"""NAPs, the topographic layout and the maps (core.methods.intersectional.naps), checked by hand on tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import DataError
from core.methods import (
    NAPs,
    TopographicLayout,
    map_scale,
    nap_similarity,
    relaxation_step,
    topomap,
)
from core.methods.intersectional.naps import relax

# 3 groups of sizes 1, 2 and 3 over 2 channels, plus rows left out (-1), one of them NaN
ROWS = np.array(
    [
        [1.0, 2.0],  # g0
        [100.0, -100.0],  # left out
        [2.0, 0.0],  # g1
        [0.0, 0.0],  # g2
        [4.0, 2.0],  # g1
        [np.nan, np.nan],  # left out: never read into a mean
        [3.0, 3.0],  # g2
        [9.0, 3.0],  # g2
    ]
)
LABELS = np.array([0, -1, 1, 2, 1, -1, 2, 2])
VALUES = [("female", "young"), ("male", "young"), ("female", "old")]
COLUMNS = ["gender", "age"]
MEANS = np.array([[1.0, 2.0], [3.0, 1.0], [4.0, 2.0]])
EXPECTED = np.array([(1 * 1 + 2 * 3 + 3 * 4) / 6, (1 * 2 + 2 * 1 + 3 * 2) / 6])  # [19/6, 10/6]


def _fitted() -> NAPs:
    return NAPs().fit(ROWS, LABELS, VALUES, COLUMNS)


def test_nap_arithmetic_by_hand():
    naps = _fitted()
    np.testing.assert_array_equal(naps.sizes_, [1, 2, 3])
    np.testing.assert_allclose(naps.means_, MEANS)
    np.testing.assert_allclose(naps.expected_, EXPECTED)
    np.testing.assert_allclose(naps.naps_, MEANS - EXPECTED)
    np.testing.assert_allclose(naps.naps_[0], [1 - 19 / 6, 2 - 10 / 6])
    assert naps.group_names() == ["female, young", "male, young", "female, old"]


def test_expectation_is_the_size_weighted_mean_of_group_means():
    naps = _fitted()
    weighted = (naps.sizes_[:, None] * naps.means_).sum(axis=0) / naps.sizes_.sum()
    np.testing.assert_allclose(naps.expected_, weighted)
    np.testing.assert_allclose(naps.expected_, ROWS[LABELS >= 0].mean(axis=0))  # = mean of included rows
    np.testing.assert_allclose((naps.sizes_[:, None] * naps.naps_).sum(axis=0), 0.0, atol=1e-12)


def test_unions_use_the_intersectional_expectation():
    naps = _fitted()
    names, union = naps.unions(["gender"])
    assert names == ["female", "male"]
    # female = g0 (1 row) and g2 (3 rows): (1*[1, 2] + 3*[4, 2]) / 4 = [13/4, 2]
    np.testing.assert_allclose(union[0], [13 / 4 - 19 / 6, 2 - 10 / 6])
    np.testing.assert_allclose(union[1], naps.naps_[1])
    np.testing.assert_array_equal(naps.union_sizes(["gender"]), [4, 2])
    names, union = naps.unions("age")
    assert names == ["young", "old"]
    # young = g0 and g1: (1*[1, 2] + 2*[3, 1]) / 3 = [7/3, 4/3], minus the same expectation
    np.testing.assert_allclose(union[0], [7 / 3 - 19 / 6, 4 / 3 - 10 / 6])
    names, union = naps.unions(["gender", "age"])
    assert names == ["female, young", "male, young", "female, old"]
    np.testing.assert_allclose(union, naps.naps_)
    with pytest.raises(DataError, match="unknown variable"):
        naps.unions(["race"])


def test_chunked_memmap_equals_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1000, 7)).astype(np.float16)
    labels = rng.integers(-1, 5, size=1000)
    path = tmp_path / "acts.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=data.shape)
    chunked = NAPs(chunk=64).fit(mm, labels)
    whole = NAPs().fit(data.astype(np.float64), labels)
    np.testing.assert_allclose(chunked.means_, whole.means_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.naps_, whole.naps_, rtol=1e-5, atol=1e-6)
    for g in range(5):
        np.testing.assert_allclose(whole.means_[g], data[labels == g].astype(np.float64).mean(axis=0), rtol=1e-6)


def test_bad_inputs_are_refused():
    rows = ROWS.copy()
    rows[0, 1] = np.nan  # an included row
    with pytest.raises(DataError, match="NaN"):
        NAPs().fit(rows, LABELS, VALUES, COLUMNS)
    with pytest.raises(DataError, match="at least 2 groups"):
        NAPs().fit(ROWS[:1], np.array([0]))
    with pytest.raises(DataError, match="no rows"):
        NAPs().fit(ROWS, np.where(LABELS == 2, 1, LABELS), VALUES, COLUMNS)
    with pytest.raises(DataError, match="beyond"):
        NAPs().fit(ROWS, LABELS, VALUES[:2], COLUMNS)
    with pytest.raises(DataError, match="one entry per"):
        NAPs().fit(ROWS, LABELS[:3])


def _force(d: float) -> float:
    """attr - rep of the paper at distance d."""
    return 1.5 * (d + 1) ** -3 - 15 * math.exp(-d / 2)


def test_relaxation_step_by_hand_on_three_particles():
    p = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3 (0-1), 4 (0-2), 5 (1-2)
    f3, f4, f5 = _force(3), _force(4), _force(5)
    expected = p + np.array(
        [
            [(f3 * 1 + f4 * 0) / 2, (f3 * 0 + f4 * 1) / 2],  # towards 1 is +x, towards 2 is +y
            [(f3 * -1 + f5 * -3 / 5) / 2, (f3 * 0 + f5 * 4 / 5) / 2],
            [(f4 * 0 + f5 * 3 / 5) / 2, (f4 * -1 + f5 * -4 / 5) / 2],
        ]
    )
    np.testing.assert_allclose(relaxation_step(p), expected, rtol=1e-12)
    assert f3 < 0  # at these distances repulsion wins: the particles move apart
    assert relaxation_step(p)[0, 0] < 0


def test_fast_kernel_matches_the_reference_step():
    p = np.random.default_rng(1).normal(size=(40, 2)) * 3
    np.testing.assert_allclose(relax(p, 1), relaxation_step(p), rtol=1e-4, atol=1e-5)
    reference = p
    for _ in range(5):
        reference = relaxation_step(reference)
    np.testing.assert_allclose(relax(p, 5), reference, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def random_naps() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(6, 40))


def test_layout_is_deterministic_and_scaled(random_naps):
    first = TopographicLayout(iterations=100, seed=3).fit(random_naps)
    second = TopographicLayout(iterations=100, seed=3).fit(random_naps)
    np.testing.assert_array_equal(first.positions_, second.positions_)
    np.testing.assert_array_equal(first.initial_, second.initial_)
    assert first.positions_.shape == (40, 2) and first.initial_.shape == (40, 2)
    assert first.positions_.min() >= 0.0 and first.positions_.max() <= 1.0
    np.testing.assert_allclose(first.positions_.min(axis=0), 0.0)
    np.testing.assert_allclose(first.positions_.max(axis=0), 1.0)
    # relaxation spreads the channels: no two end up on top of each other
    d = np.linalg.norm(first.positions_[:, None] - first.positions_[None], axis=2)
    assert d[np.triu_indices(40, 1)].min() > 0.01


def test_layout_needs_more_than_15_channels():
    with pytest.raises(DataError, match="more than 15 channels"):
        TopographicLayout().fit(np.ones((4, 15)))
    with pytest.raises(DataError, match="NaN"):
        TopographicLayout().fit(np.full((4, 20), np.nan))


def test_topomap_interpolates_on_the_grid():
    positions = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.2, 0.7]])
    values = np.array([1.0, 2.0, 3.0, 4.0, -5.0, 6.0])
    image = topomap(positions, values, size=11)  # grid at multiples of 0.1
    assert image.shape == (11, 11) and np.isfinite(image).all()
    for (x, y), v in zip(positions, values, strict=True):
        assert image[round(y * 10), round(x * 10)] == pytest.approx(v)  # row = y, column = x
    inner = topomap(positions[3:] * 0.5 + 0.25, values[3:], size=11)
    assert np.isfinite(inner).all() and inner[0, 0] == 0.0  # outside the hull: 0
    assert topomap(positions, values).shape == (100, 100)


def test_map_scale_is_shared_and_symmetric():
    naps = np.array([[0.5, -2.0], [1.0, 0.1]])
    assert map_scale(naps) == 2.0
    rng = np.random.default_rng(0)
    many = rng.normal(size=(10, 1000))
    many[0, 0] = 1000.0  # one outlier
    clipped = map_scale(many, clip=True)
    assert clipped < 5 and clipped == pytest.approx(max(np.abs(np.percentile(many, [0.5, 99.5]))))
    assert map_scale(np.zeros((2, 3))) == 1.0


def test_similarity_orders_planted_pairs_together():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 200))
    which = [0, 1, 2, 0, 2, 1]  # planted pairs: (0, 3), (1, 5), (2, 4)
    naps = base[which] + 0.1 * rng.normal(size=(6, 200))
    similarity, order = nap_similarity(naps)
    np.testing.assert_allclose(similarity, similarity.T)
    np.testing.assert_allclose(np.diag(similarity), 1.0)
    assert similarity[0, 3] > 0.9 and abs(similarity[0, 1]) < 0.3
    assert sorted(order.tolist()) == list(range(6))
    position = {g: i for i, g in enumerate(order)}
    for a, b in ((0, 3), (1, 5), (2, 4)):
        assert abs(position[a] - position[b]) == 1
