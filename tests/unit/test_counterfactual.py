"""The counterfactual check (core/methods/saliency/counterfactual.py): known answers on a model
whose error is caused by one region, the random control, the intervals, the plain gradient map
and the errors a caller can make."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import DataError, ParameterError
from core.methods.saliency import CounterfactualCheck, loss_gradient_maps
from core.methods.saliency.counterfactual import RANDOM, random_squares, top_region
from core.models.loading import LoadedModel
from core.scoring.stats import wilson

SIZE = 20
BOX = (2, 3, 4)  # top, left, side: 16 pixels, 4% of the image


class MarkerReader(nn.Module):
    """Two classes: class 1 ("marked") when the box's mean brightness passes 0.5, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, side = BOX
        value = x[:, :, top : top + side, left : left + side].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(value), 20.0 * (value - 0.5)], dim=1)


def loaded(module: nn.Module, classes: int = 2) -> LoadedModel:
    return LoadedModel(
        module=module.eval(), description="test", num_classes=classes, input_size=SIZE, mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), embedding_layer="", embedding_dim=0, conv_layers=[], default_layers=[],
        weights_fingerprint="test", device=torch.device("cpu"),
    )


def box_mask() -> np.ndarray:
    top, left, side = BOX
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def marked_images(n: int) -> torch.Tensor:
    """Dark noise with the box bright: every image is called "marked" (class 1)."""
    x = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.1
    top, left, side = BOX
    x[:, :, top : top + side, left : left + side] = 1.0
    return x


def test_hiding_the_cause_corrects_every_error_and_a_wrong_region_none():
    n = 12
    rng = np.random.default_rng(0)
    right = box_mask()[None] + 0.01 * rng.random((n, SIZE, SIZE))  # points at the box
    wrong = np.zeros((n, SIZE, SIZE))
    wrong[:, 12:18, 12:18] = 1.0  # points far from it
    check = CounterfactualCheck(area=16 / SIZE**2, fill="mean", n_random=50)
    result = check.explain(loaded(MarkerReader()), marked_images(n), np.zeros(n, dtype=int), maps={"right": right, "wrong": wrong})
    table = result.table.set_index("region")
    assert result.pixels == 16
    assert table.loc["right", "share"] == 1.0 and table.loc["wrong", "share"] == 0.0
    assert (result.masks["right"] == box_mask()[None]).all()  # exactly the box hidden
    # Wilson 95% for 12 of 12: lower bound n / (n + z^2)
    assert table.loc["right", "low"] == pytest.approx(12 / (12 + 1.959964**2), abs=1e-4)
    assert table.loc["right", "high"] == pytest.approx(1.0)
    # a random 4x4 square corrects the error only when it covers more than half of the box:
    # placements with overlap > 8 of 16 pixels, out of 17 x 17
    overlaps = [
        (min(r + 4, 6) - max(r, 2)) * (min(c + 4, 7) - max(c, 3))
        for r in range(SIZE - 3) for c in range(SIZE - 3)
        if min(r + 4, 6) > max(r, 2) and min(c + 4, 7) > max(c, 3)
    ]
    expected = sum(o > 8 for o in overlaps) / (SIZE - 3) ** 2
    assert table.loc[RANDOM, "share"] == pytest.approx(expected, abs=0.03)
    assert table.loc[RANDOM, "low"] <= table.loc[RANDOM, "share"] <= table.loc[RANDOM, "high"]
    lift = result.lift()
    assert lift["right"] == pytest.approx(1 - table.loc[RANDOM, "share"]) and lift["wrong"] < 0


def test_only_errors_are_checked_and_the_blur_fill_also_removes_a_small_mark():
    x = marked_images(4)
    x[:2, :, 2:6, 3:7] = 0.05  # two images without the mark: class 0, correct
    maps = {"right": np.repeat(box_mask()[None].astype(float), 4, axis=0)}
    result = CounterfactualCheck(area=16 / SIZE**2, blur_sigma=3.0).explain(loaded(MarkerReader()), x, np.zeros(4, dtype=int),
                                                                             maps=maps)
    assert list(result.errors) == [2, 3]
    assert result.table.set_index("region").loc["right", "errors"] == 2
    assert result.corrected["right"].all()
    assert any("2 of the 4 images are classified correctly" in note for note in result.notes)


def test_no_errors_gives_empty_counts():
    x = marked_images(2)
    result = CounterfactualCheck().explain(loaded(MarkerReader()), x, np.ones(2, dtype=int), maps={"m": np.zeros((2, SIZE, SIZE))})
    assert len(result.errors) == 0
    assert np.isnan(result.table["share"]).all()


def test_top_region_and_random_squares():
    values = np.arange(25, dtype=float).reshape(5, 5)
    mask = top_region(values, 3)
    assert mask.sum() == 3 and set(values[mask]) == {24.0, 23.0, 22.0}
    ties = top_region(np.zeros((4, 4)), 2)
    assert ties.reshape(-1)[:2].all() and ties.sum() == 2  # ties: reading order
    squares = random_squares(10, 9, 40, np.random.default_rng(1))
    assert squares.shape == (40, 10, 10) and (squares.sum(axis=(1, 2)) == 9).all()
    corners = {tuple(np.argwhere(s)[0]) for s in squares}
    assert len(corners) > 10 and all(0 <= r <= 7 and 0 <= c <= 7 for r, c in corners)


def test_loss_gradient_maps_match_the_closed_form():
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 3, bias=False))
    model = loaded(linear, classes=3)
    x = torch.rand(2, 3, SIZE, SIZE)
    y = np.array([0, 2])
    maps = loss_gradient_maps(model, x, y)
    weight = linear[1].weight.detach()
    probabilities = torch.softmax(linear(x), dim=1).detach()
    onehot = torch.nn.functional.one_hot(torch.as_tensor(y), 3).float()
    expected = ((probabilities - onehot) @ weight).view(2, 3, SIZE, SIZE).abs().amax(dim=1).numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7)


def test_mistakes_are_user_errors():
    model, x, y = loaded(MarkerReader()), marked_images(2), np.zeros(2, dtype=int)
    good = {"m": np.zeros((2, SIZE, SIZE))}
    for params in ({"area": 0.0}, {"area": 1.5}, {"fill": "noise"}, {"n_random": 0}, {"blur_sigma": -2.0}):
        with pytest.raises(ParameterError):
            CounterfactualCheck(**params).explain(model, x, y, maps=good)
    with pytest.raises(DataError):
        CounterfactualCheck().explain(model, x, y, maps={})
    with pytest.raises(DataError):
        CounterfactualCheck().explain(model, x, y, maps={"m": np.zeros((2, 5, 5))})
    with pytest.raises(DataError):
        CounterfactualCheck().explain(model, x, y, maps={RANDOM: np.zeros((2, SIZE, SIZE))})
    with pytest.raises(DataError):
        CounterfactualCheck().explain(model, x, np.array([0, 5]), maps=good)
    with pytest.raises(DataError):
        CounterfactualCheck().explain(model, torch.zeros(2, 3, 4, 4), y, maps=good)


def test_one_error_gets_a_wilson_interval_over_its_random_placements():
    result = CounterfactualCheck(area=16 / SIZE**2, fill="mean", n_random=40, seed=3).explain(
        loaded(MarkerReader()), marked_images(1), np.zeros(1, dtype=int), maps={"m": box_mask()[None].astype(float)})
    random = result.table.set_index("region").loc[RANDOM]
    hits = round(result.corrected[RANDOM][0] * 40)
    expected = wilson(hits, 40)
    assert (random["share"], random["low"], random["high"]) == pytest.approx(expected)
    assert random["low"] < random["share"] or hits == 0
