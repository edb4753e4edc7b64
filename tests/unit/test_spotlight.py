"""The spotlight on synthetic embeddings with planted high-loss blobs, and its input checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import BiasLensError
from core.methods.spotlight.search import (
    NothingToFind,
    Spotlight,
    SpotlightError,
    resolve_size,
    summary,
    weights_table,
)
from core.scoring.summary import attribute_enrichment, project_2d, weighted_shares

STEPS = 400


def planted(n: int = 2000, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian noise with two tight blobs of 2% each: A (losses ~3) and B (losses ~2); others ~0.3."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    losses = rng.exponential(0.3, size=n)
    rows = rng.permutation(n)
    blob_a, blob_b = rows[: n // 50], rows[n // 50 : 2 * n // 50]
    for blob, loss in ((blob_a, 3.0), (blob_b, 2.0)):
        centre = rng.normal(size=d)
        centre *= 4 / np.linalg.norm(centre)
        x[blob] = centre + 0.3 * rng.normal(size=(blob.size, d))
        losses[blob] = loss + 0.2 * rng.normal(size=blob.size)
    return x, np.abs(losses), blob_a, blob_b


@pytest.fixture(scope="module")
def blobs():
    return planted()


@pytest.fixture(scope="module")
def two(blobs):
    x, losses, _, _ = blobs
    return Spotlight(n_spotlights=2, steps=STEPS).fit(x, losses)


def test_first_spotlight_top10_in_the_blob(two, blobs):
    _, _, blob_a, _ = blobs
    first = two.spotlights_[0]
    assert np.isin(first.top_rows(10), blob_a).all()
    assert first.mean_loss > 2 * two.mean_loss_


def test_objective_trace_rises(two, blobs):
    x, losses, _, _ = blobs
    zero = Spotlight(start="zero").fit(x, losses).spotlights_[0]  # the paper's run, default 1000 steps
    assert zero.trace.shape == zero.size_trace.shape == (1000,)
    assert zero.trace[-100:].mean() > zero.trace[:100].mean() + 1.0
    assert zero.size_trace[0] > 0.9 * len(x) and zero.size_trace[-1] < 0.05 * len(x)  # the barrier path
    for fit in two.spotlights_:  # whichever start won, its run ends higher than it began
        assert fit.trace[-10:].mean() > fit.trace[:10].mean()
        assert fit.objective >= np.max(fit.trace[-20:]) - 0.2  # and ends near its best


def test_second_spotlight_finds_the_second_blob(two, blobs):
    _, _, blob_a, blob_b = blobs
    second = two.spotlights_[1]
    assert np.isin(second.top_rows(10), blob_b).all()
    assert not np.isin(second.top_rows(10), blob_a).any()


def test_every_spotlight_meets_the_size_constraint(two):
    assert two.size_ == 40  # 2% of 2000
    for fit in two.spotlights_:
        assert fit.size >= two.size_ * (1 - 1e-4)
        assert fit.weights.shape == (2000,) and fit.weights.dtype == np.float32
        assert fit.weights.min() >= 0 and fit.weights.max() <= 1 + 1e-6
    assert [fit.index for fit in two.spotlights_] == [0, 1] and two.n_images_ == 2000


@pytest.mark.parametrize("kernel", ["gaussian", "compact"])
@pytest.mark.parametrize("precision", ["spherical", "diagonal"])
def test_kernels_and_precisions_run(blobs, kernel, precision):
    x, losses, blob_a, _ = blobs
    result = Spotlight(kernel=kernel, precision=precision, steps=STEPS).fit(x, losses)
    fit = result.spotlights_[0]
    assert np.isin(fit.top_rows(10), blob_a).all()
    assert fit.precision.shape == ((1,) if precision == "spherical" else (16,))
    assert fit.size >= result.size_ * (1 - 1e-4)


def test_weights_are_the_kernel_of_the_reported_centre_and_precision(blobs):
    """k_i = exp(-c/2 ||x_i - mu||^2) in the representation's own units, also when the centre
    is searched in a subspace (the distances there use the full vectors)."""
    x, losses, _, _ = blobs
    for dims in (None, 4):
        result = Spotlight(steps=200, search_dims=dims).fit(x, losses)
        fit = result.spotlights_[0]
        assert result.search_dims_ == dims
        d2 = ((x.astype(np.float64) - fit.centre) ** 2).sum(1)
        np.testing.assert_allclose(fit.weights, np.exp(-0.5 * fit.precision[0] * d2), atol=2e-4)
        np.testing.assert_allclose(fit.mean_loss, (fit.weights * losses).sum() / fit.weights.sum(), rtol=1e-4)


def test_never_worse_than_the_zero_start(blobs):
    """The zero start runs exactly as alone (same weights); the kept spotlight is the better one."""
    x, losses, _, _ = blobs
    best = Spotlight(steps=STEPS).fit(x, losses).spotlights_[0]
    zero = Spotlight(steps=STEPS, start="zero").fit(x, losses).spotlights_[0]
    assert best.start_objectives["zero"] == zero.objective
    assert best.objective == max(best.start_objectives.values()) >= zero.objective
    if best.start == "zero":
        np.testing.assert_array_equal(best.weights, zero.weights)
    else:
        assert best.trace.shape == (STEPS // 2,)  # the high-loss start runs half the steps


def test_pca_option_and_seeded_repeatability(blobs):
    x, losses, blob_a, _ = blobs
    first = Spotlight(pca=4, steps=200).fit(x, losses)
    again = Spotlight(pca=4, steps=200).fit(x, losses)
    assert 0 < first.explained_variance_ <= 1
    assert first.spotlights_[0].centre.shape == (4,)
    np.testing.assert_array_equal(first.spotlights_[0].weights, again.spotlights_[0].weights)
    assert np.isin(first.spotlights_[0].top_rows(10), blob_a).mean() >= 0.8


def test_progress_is_reported(blobs):
    x, losses, _, _ = blobs
    calls = []
    Spotlight(n_spotlights=2, steps=100).fit(x, losses, progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert calls[-1][:2] == (200, 200)
    assert any("Spotlight 2 of 2" in msg for _, _, msg in calls)
    assert [done for done, _, _ in calls] == sorted(done for done, _, _ in calls)


# --------------------------------------------------------------------------- bad input


def test_resolve_size():
    assert resolve_size(0.02, 10_000) == 200
    assert resolve_size(200, 10_000) == 200
    assert resolve_size(1, 50) == 1
    with pytest.raises(SpotlightError, match="at least one image"):
        resolve_size(0.001, 100)
    with pytest.raises(SpotlightError, match="at least one image"):
        resolve_size(0, 100)
    with pytest.raises(SpotlightError, match="below N"):
        resolve_size(100, 100)
    with pytest.raises(SpotlightError, match="must be a number"):
        resolve_size(float("nan"), 100)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_losses_are_refused(blobs, bad):
    x, losses, _, _ = blobs
    losses = losses.copy()
    losses[7] = bad
    with pytest.raises(SpotlightError, match="NaN or infinite.*row 7"):
        Spotlight().fit(x, losses)


def test_other_bad_inputs(blobs):
    x, losses, _, _ = blobs
    with pytest.raises(SpotlightError, match="at least 20 images"):
        Spotlight().fit(x[:19], losses[:19])
    with pytest.raises(SpotlightError, match="one loss per image"):
        Spotlight().fit(x, losses[:-1])
    with pytest.raises(SpotlightError, match="negative"):
        Spotlight().fit(x, -losses)
    with pytest.raises(SpotlightError, match="below N"):
        Spotlight(size=2000).fit(x, losses)
    with pytest.raises(SpotlightError, match="Unknown kernel"):
        Spotlight(kernel="box").fit(x, losses)
    with pytest.raises(SpotlightError, match="PCA components"):
        Spotlight(pca=17).fit(x, losses)
    bad_x = x.copy()
    bad_x[3, 2] = np.nan
    with pytest.raises(SpotlightError, match="representation holds NaN"):
        Spotlight().fit(bad_x, losses)


def test_zero_loss_everywhere_has_nothing_to_find(blobs):
    x, _, _, _ = blobs
    with pytest.raises(NothingToFind, match="loss is zero on every image.*nothing for a spotlight to find"):
        Spotlight().fit(x, np.zeros(len(x)))
    with pytest.raises(NothingToFind, match="zero on every image"):
        Spotlight().fit(x, np.linspace(0, 1e-7, len(x)))  # float round-off of a certain, correct model
    with pytest.raises(NothingToFind, match="same loss"):
        Spotlight().fit(x, np.full(len(x), 0.7))
    assert issubclass(NothingToFind, BiasLensError)


# --------------------------------------------------------------------------- describing a spotlight


def test_weighted_shares_by_hand():
    values = pd.Series(["a", "a", "b", "c"])
    shares = weighted_shares(values, np.array([1.0, 1.0, 2.0, 0.0]))
    got = shares.set_index("value")
    # inside: a 2/4, b 2/4, c 0; overall: a 2/4, b 1/4, c 1/4
    assert got.loc["a", "inside"] == pytest.approx(0.5) and got.loc["a", "overall"] == pytest.approx(0.5)
    assert got.loc["b", "lift"] == pytest.approx(2.0) and got.loc["c", "lift"] == 0
    assert list(shares["value"]) == ["b", "a", "c"]  # sorted by lift


def test_attribute_enrichment_sorted_by_lift():
    meta = pd.DataFrame({"tint": ["red", "red", "blue", "blue"], "id": ["0", "1", "2", "3"], "size": ["s", "l", "s", "l"]})
    table = attribute_enrichment(meta, ["tint", "size", "missing"], np.array([1.0, 1.0, 0.0, 0.0]), max_values=3)
    assert set(table["attribute"]) == {"tint", "size"}  # "id" absent from the list, "missing" skipped
    assert table.iloc[0][["attribute", "value"]].tolist() == ["tint", "red"]
    assert table.iloc[0]["lift"] == pytest.approx(2.0)
    assert table["lift"].is_monotonic_decreasing


def test_summary_weights_table_and_map(two, blobs):
    x, losses, blob_a, _ = blobs
    correct = np.ones(len(x), dtype=bool)
    correct[blob_a] = False
    table = summary(two, correct)
    assert list(table["spotlight"]) == [1, 2]
    assert table.loc[0, "top-S accuracy"] <= 0.1  # the top 40 are (almost) all blob A
    assert table.loc[0, "loss ratio"] > 2
    meta = pd.DataFrame({"row": np.arange(len(x)), "id": [str(i) for i in range(len(x))], "loss": losses})
    frame = weights_table(two, meta)
    assert list(frame.columns) == ["row", "id", "loss", "weight_1", "weight_2"]
    coords = project_2d(x, "pca")
    assert coords.shape == (len(x), 2) and np.isfinite(coords).all()
    with pytest.raises(ValueError):
        project_2d(x, "tsne")


@pytest.mark.slow
def test_umap_map():
    x, _, _, _ = planted(n=300)
    coords = project_2d(x, "umap")
    assert coords.shape == (300, 2) and np.isfinite(coords).all()


def test_fewer_spotlights_equal_the_prefix_of_a_larger_run(blobs):
    """Spotlights are found in sequence: a run of 2 is the first 2 of a run of 3, so the app
    serves the smaller request from a cached larger run (``Spotlight.first``)."""
    x, losses, _, _ = blobs
    three = Spotlight(n_spotlights=3, steps=150).fit(x, losses)
    two = Spotlight(n_spotlights=2, steps=150).fit(x, losses)
    prefix = three.first(2)
    assert prefix.get_params() == two.get_params() and len(prefix.spotlights_) == 2
    for a, b in zip(prefix.spotlights_, two.spotlights_, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.trace, b.trace)
        assert a.mean_loss == b.mean_loss and a.start == b.start
    assert prefix.size_ == two.size_ and prefix.mean_loss_ == two.mean_loss_
    assert len(three.spotlights_) == 3 and three.n_spotlights == 3  # the cached run is untouched
    with pytest.raises(SpotlightError):
        three.first(4)


def test_progress_names_the_spotlight_and_its_own_steps(blobs):
    x, losses, _, _ = blobs
    calls = []
    Spotlight(n_spotlights=3, steps=50).fit(x, losses, progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert all(total == 150 for _, total, _ in calls)
    assert any(msg.startswith("Spotlight 2 of 3: step ") and msg.endswith(" of 50") for _, _, msg in calls)
    assert not any("of 150" in msg for _, _, msg in calls)


@pytest.mark.parametrize(("kernel", "precision", "pca"), [("gaussian", "spherical", None), ("compact", "diagonal", None),
                                                          ("gaussian", "spherical", 4)])
def test_weights_for_new_images_apply_the_fitted_kernel(blobs, kernel, precision, pca):
    """On the fitted images weights_for gives back each spotlight's weights (PCA applied too);
    a new image at a spotlight's centre weighs 1 (in the representation's own units)."""
    x, losses, _, _ = blobs
    result = Spotlight(n_spotlights=2, kernel=kernel, precision=precision, pca=pca, steps=200).fit(x, losses)
    again = result.weights_for(x)
    assert again.shape == (2, len(x)) and again.dtype == np.float32
    for j, fit in enumerate(result.spotlights_):
        np.testing.assert_allclose(again[j], fit.weights, atol=2e-4)
    if pca is None:
        centre = result.spotlights_[0].centre[None, :]
        assert result.weights_for(centre)[0, 0] == pytest.approx(1.0)
    with pytest.raises(SpotlightError, match="features"):
        result.weights_for(x[:, :3])


def test_weights_for_needs_a_fit(blobs):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        Spotlight().weights_for(blobs[0])


def test_held_out_half_confirms_a_planted_blob_and_not_noise():
    """Split-half: the high-loss blob found on one half keeps its accuracy gap on the other;
    spotlights on losses independent of the images keep no gap there."""
    from core.methods.spotlight.record import spotlight_held_out

    x, losses, blob_a, blob_b = planted(n=4000)
    correct = np.ones(len(x), dtype=bool)
    correct[np.concatenate([blob_a, blob_b])] = False  # the blobs are the failures
    table = spotlight_held_out(x, losses, correct, Spotlight(n_spotlights=2, steps=STEPS))
    assert list(table["group"]) == ["Spotlight 1", "Spotlight 2"]
    for _, row in table.iterrows():
        assert row["held-out n"] >= 20
        assert row["held-out gap"] < -0.8 and row["held-out high"] < -0.5 and row["held-out q"] < 1e-6

    rng = np.random.default_rng(1)
    noise_losses = rng.exponential(0.3, size=len(x))
    noise_correct = rng.random(len(x)) < 0.8
    null = spotlight_held_out(x, noise_losses, noise_correct, Spotlight(n_spotlights=2, steps=STEPS))
    assert ((null["held-out low"] < 0) & (null["held-out high"] > 0)).all() and (null["held-out q"] > 0.05).all()
