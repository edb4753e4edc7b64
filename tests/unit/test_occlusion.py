"""Occlusion maps (core/methods/saliency/occlusion.py): known answers on a model that reads one
region only, the geometry rule, the blur baseline, batching and the errors a caller can make."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import BiasLensError, DataError, ParameterError
from core.methods.saliency import OcclusionMap, occlusion_geometry
from core.methods.saliency.explain import marker_mass_ratio
from core.methods.saliency.occlusion import blurred, positive_maps, window_positions
from core.models.loading import LoadedModel


class RegionReader(nn.Module):
    """Three classes; class 0's logit is 8 x the mean of the pixels in ``box`` (top, left,
    side), the others 0: a model that reads one region and nothing else."""

    def __init__(self, box: tuple[int, int, int]) -> None:
        super().__init__()
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, side = self.box
        value = 8.0 * x[:, :, top : top + side, left : left + side].mean(dim=(1, 2, 3))
        zero = torch.zeros_like(value)
        return torch.stack([value, zero, zero], dim=1)


def reader(box: tuple[int, int, int], size: int) -> LoadedModel:
    return LoadedModel(
        module=RegionReader(box).eval(), description="region reader", num_classes=3, input_size=size,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), embedding_layer="", embedding_dim=0, conv_layers=[],
        default_layers=[], weights_fingerprint="reader", device=torch.device("cpu"),
    )


def images_with_bright(box: tuple[int, int, int], size: int, n: int, seed: int = 0) -> torch.Tensor:
    """Noise in [0, 0.2] with the box at 1: blurring the box lowers its mean."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.2
    top, left, side = box
    x[:, :, top : top + side, left : left + side] = 1.0
    return x


def box_mask(box: tuple[int, int, int], size: int, grow: int = 0) -> np.ndarray:
    top, left, side = box
    mask = np.zeros((size, size), dtype=bool)
    mask[max(0, top - grow) : top + side + grow, max(0, left - grow) : left + side + grow] = True
    return mask


def test_a_model_reading_one_region_gets_all_its_occlusion_mass_there():
    box, size = (8, 12, 4), 24  # one cell of a 4-pixel grid
    model = reader(box, size)
    result = OcclusionMap(window=4, stride=4).explain(model, images_with_bright(box, size, 3), np.zeros(3, dtype=int))
    attributions = result.attributions[:, 0]
    inside = box_mask(box, size)
    assert (attributions[:, inside] > 0).all()  # hiding the region lowers class 0 everywhere in it
    assert np.abs(attributions[:, ~inside]).max() == 0  # and nothing else moves it at all
    assert marker_mass_ratio(result.maps[:, 0], np.repeat(inside[None], 3, axis=0)) == pytest.approx(size * size / 16)


def test_overlapping_windows_keep_the_mass_next_to_the_region_and_peak_inside():
    box, size = (3, 2, 3), 32  # not aligned with the grid, near a corner, like the demo's marker
    model = reader(box, size)
    explainer = OcclusionMap()  # derived: window 4, stride 2 (15 x 15 places)
    assert explainer.geometry(size) == (4, 2)
    result = explainer.explain(model, images_with_bright(box, size, 2), np.array([[0, 1], [0, 1]]))
    maps = result.maps
    near = box_mask(box, size, grow=explainer.geometry(size)[0] - 1)  # pixels sharing a window with the region
    assert maps[:, 0][:, ~near].max() == 0 and maps[:, 0][:, box_mask(box, size)].min() > 0
    assert np.unravel_index(maps[0, 0].argmax(), (size, size)) in {(r, c) for r in range(3, 6) for c in range(2, 5)}
    # class 1's logit never changes, but its probability rises when class 0's falls: no positive mass
    assert maps[:, 1].max() == 0 and result.attributions[:, 1][:, box_mask(box, size)].max() < 0
    assert result.probabilities.shape == (2, 3) and np.allclose(result.probabilities.sum(axis=1), 1)


def test_batched_images_match_each_image_alone():
    box, size = (5, 5, 4), 20
    model = reader(box, size)
    x = images_with_bright(box, size, 3, seed=1)
    x[1] *= 0.5  # different images, different targets per image
    targets = np.array([[0, 1], [1, 0], [2, 0]])
    explainer = OcclusionMap(window=3, stride=2)
    together = explainer.explain(model, x, targets).attributions
    for i in range(3):
        alone = explainer.explain(model, x[i : i + 1], targets[i : i + 1]).attributions[0]
        np.testing.assert_allclose(together[i], alone, atol=1e-6)


@pytest.mark.parametrize("side", [8, 16, 28, 32, 64, 96, 224, 299, 512])
@pytest.mark.parametrize("budget", [1, 4, 36, 64, 100, 256])
def test_the_geometry_follows_the_side_and_fits_the_budget(side, budget):
    window, stride = occlusion_geometry(side, budget)
    assert 1 <= stride <= window <= side
    places = window_positions(side, window, stride)
    assert places**2 <= budget or window == side
    assert window >= side / 10  # never finer than a tenth of the side


def test_the_geometry_rule_on_known_sides():
    assert occlusion_geometry(32, 256) == (4, 2)  # a tenth of the side, half-window stride
    assert occlusion_geometry(32, 100) == (4, 4)  # 15 x 15 places do not fit: non-overlapping
    assert occlusion_geometry(224, 100) == (23, 23)  # 10 x 10 places
    assert occlusion_geometry(224, 38) == (38, 38)  # 6 x 6 places


def test_blur_keeps_a_constant_image_and_a_zero_sigma_changes_nothing():
    flat = torch.full((1, 3, 12, 12), 0.7)
    torch.testing.assert_close(blurred(flat, 3.0), flat)
    x = torch.rand(2, 3, 9, 9)
    assert blurred(x, 0.0) is x
    spot = torch.zeros(1, 1, 15, 15)
    spot[0, 0, 7, 7] = 1.0
    out = blurred(spot, 2.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5) and out[0, 0, 7, 7] < 0.1  # mass spread, kept


def test_positive_maps_and_the_group_mean():
    attributions = np.array([[[[0.0, 2.0], [-1.0, 1.0]]], [[[-1.0, -1.0], [-1.0, -1.0]]]])
    maps = positive_maps(attributions)
    np.testing.assert_allclose(maps[0, 0], [[0.0, 1.0], [0.0, 0.5]])
    assert maps[1, 0].max() == 0  # no positive evidence: all zero
    box, size = (0, 0, 2), 8
    result = OcclusionMap(window=2, stride=2).explain(reader(box, size), images_with_bright(box, size, 2), np.zeros(2, dtype=int))
    np.testing.assert_allclose(result.mean_map(0), result.maps[:, 0].mean(axis=0))
    np.testing.assert_allclose(result.mean_map(0, np.array([1])), result.maps[1, 0])
    with pytest.raises(DataError):
        result.mean_map(0, np.array([], dtype=int))


def test_mistakes_are_user_errors():
    box, size = (0, 0, 2), 8
    model = reader(box, size)
    x = images_with_bright(box, size, 1)
    with pytest.raises(DataError):
        OcclusionMap().explain(model, torch.zeros(1, 3, 9, 9), [0])  # wrong size
    with pytest.raises(DataError):
        OcclusionMap().explain(model, x[:0], np.zeros(0, dtype=int))  # nothing to occlude
    with pytest.raises(DataError):
        OcclusionMap().explain(model, x, [3])  # no class 3
    with pytest.raises(ParameterError):
        OcclusionMap(window=9).explain(model, x, [0])
    with pytest.raises(ParameterError):
        OcclusionMap(blur_sigma=-1.0).explain(model, x, [0])
    with pytest.raises(ParameterError):
        occlusion_geometry(32, 0)
    assert issubclass(ParameterError, BiasLensError) and issubclass(DataError, BiasLensError)


def test_explain_leaves_the_explainer_and_the_model_as_they_were():
    box, size = (0, 0, 2), 8
    model = reader(box, size)
    model.module.train()
    explainer = OcclusionMap(window=2)
    before = explainer.get_params()
    explainer.explain(model, images_with_bright(box, size, 1), [0])
    assert explainer.get_params() == before and model.module.training


def test_the_grid_budget_follows_the_model_cost():
    from core.services.estimates import ModelCost, occlusion_passes, occlusion_seconds

    demo, resnet18 = ModelCost(macs=10_388_736), ModelCost(macs=1_813_566_464)  # their counted multiply-adds
    assert occlusion_passes(demo) == 100  # a cheap model gets the full 10 x 10 budget
    assert occlusion_passes(resnet18) == 38  # 2 s at 51.6 ms per pass
    assert occlusion_passes(ModelCost(macs=10**13)) == 4  # never below a 2 x 2 grid
    assert occlusion_geometry(224, occlusion_passes(resnet18)) == (38, 38)
    # the calibration points: 0.88 ms and 51.6 ms per occluded pass, plus the unchanged image
    assert occlusion_seconds(demo, 16, 64) == pytest.approx(16 * 65 * 0.88e-3, rel=0.02)
    assert occlusion_seconds(resnet18, 1, 49) == pytest.approx(50 * 51.6e-3, rel=0.02)
