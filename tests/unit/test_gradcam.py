"""Grad-CAM: shapes and range, no side effects on the model, a planted region, overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core.errors import InputError, ModelError, ParameterError
from core.methods.subgroups.gradcam import GradCAM, GradCAMResult, overlay
from core.models.loading import LoadedModel, make_transform
from tests.support import digits_dataset, tiny_model

SIZE = 16
SQUARE = (slice(2, 7), slice(2, 7))  # a bright 5x5 square in the top-left quadrant


def _loaded(module: nn.Module, conv_layers: list[str], embedding_layer: str) -> LoadedModel:
    """A LoadedModel around a hand-built module whose inputs are pixel values in [0, 1]."""
    return LoadedModel(
        module=module.eval(),
        description="hand-built",
        num_classes=2,
        input_size=SIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        embedding_layer=embedding_layer,
        embedding_dim=1,
        conv_layers=conv_layers,
        default_layers=conv_layers,
        weights_fingerprint="hand-built",
        device=torch.device("cpu"),
    )


def _bright_spot_model() -> LoadedModel:
    """Class 1's logit grows with bright 3x3 neighbourhoods, class 0's shrinks with them.

    The filter averages a 3x3x3 neighbourhood and subtracts 0.5: after the ReLU it fires
    only where the neighbourhood is mostly bright.
    """
    conv = nn.Conv2d(3, 1, 3, padding=1)
    head = nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.fill_(1 / 27)
        conv.bias.fill_(-0.5)
        head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        head.bias.zero_()
    module = nn.Sequential(
        nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        head,
    )
    return _loaded(module, ["0"], "3")


def _square_image(square: tuple[slice, slice] = SQUARE) -> Image.Image:
    """A dark image with one bright square."""
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[square] = 255
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def image():
    return digits_dataset(4).load_image(1)


def test_maps_shape_range_and_probabilities(model, image):
    result = GradCAM(layer="block2").explain(model, image, [0, 3, 7])
    assert isinstance(result, GradCAMResult) and result.layer == "block2"
    assert result.targets == [0, 3, 7]
    assert result.maps.shape == (3, SIZE, SIZE)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    for cam in result.maps:
        assert cam.max() == pytest.approx(1.0) or cam.max() == 0
    x = make_transform(model.input_size, model.mean, model.std)(image)[None]
    with torch.no_grad():
        expected = torch.softmax(model.module(x), dim=1)[0].numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5, atol=1e-7)
    assert GradCAM(layer="block3").explain(model, image, []).maps.shape == (0, SIZE, SIZE)


def test_default_layer_is_the_last_conv_block(model, image):
    last = GradCAM().explain(model, image, [0, 3])
    assert last.layer == model.conv_layers[-1]
    explicit = GradCAM(layer=model.conv_layers[-1]).explain(model, image, [0, 3])
    np.testing.assert_array_equal(last.maps, explicit.maps)


def test_leaves_no_trace_on_the_model(model, image):
    before = [p.requires_grad for p in model.module.parameters()]
    GradCAM(layer="block3").explain(model, image, [1, 2])
    for module in model.module.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    assert not model.module.training
    assert [p.requires_grad for p in model.module.parameters()] == before
    assert all(p.grad is None for p in model.module.parameters())


def test_works_on_frozen_parameters_and_under_inference_mode(image):
    frozen = tiny_model()
    frozen.module.requires_grad_(False)
    with torch.inference_mode():
        result = GradCAM(layer="block2").explain(frozen, image, [4])
    assert result.maps.max() > 0
    assert not any(p.requires_grad for p in frozen.module.parameters())


@pytest.mark.parametrize("square", [SQUARE, (slice(9, 14), slice(10, 15))])
def test_peaks_on_the_planted_region(square):
    result = GradCAM(layer="0").explain(_bright_spot_model(), _square_image(square), [1, 0])
    assert result.probabilities[1] > result.probabilities[0]
    inside = np.zeros((SIZE, SIZE), dtype=bool)
    inside[square] = True
    cam = result.maps[0]
    assert cam.max() == pytest.approx(1.0)
    assert cam[inside].mean() > 2 * cam[~inside].mean()
    assert inside[np.unravel_index(cam.argmax(), cam.shape)]
    # class 0's logit only falls with the square: no positive evidence, an all-zero map
    assert (result.maps[1] == 0).all()


def test_clear_errors():
    flat = _loaded(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)), [], "1")
    with pytest.raises(ModelError, match="without convolutional layers"):
        GradCAM(layer="1").explain(flat, _square_image(), [0])
    planted = _bright_spot_model()
    with pytest.raises(ModelError, match="not a module.*pick one"):
        GradCAM(layer="features.9").explain(planted, _square_image(), [0])
    with pytest.raises(ModelError, match="2 outputs"):
        GradCAM(layer="0").explain(planted, _square_image(), [2])
    with pytest.raises(ModelError, match="spatial map"):
        GradCAM(layer="3").explain(planted, _square_image(), [0])


def test_overlay():
    pixels = np.full((20, 30, 3), 100, dtype=np.uint8)
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[:2, :2] = 1.0
    blended = overlay(pixels, cam, alpha=0.5)
    assert blended.shape == (20, 30, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(overlay(pixels, cam, alpha=0.0), pixels)
    hot = overlay(pixels, np.ones((4, 4)), alpha=1.0)
    cold = overlay(pixels, np.zeros((4, 4)), alpha=1.0)
    assert (hot == [128, 0, 0]).all() and (cold == [0, 0, 128]).all()  # dark red, dark blue
    assert blended[0, 0, 0] > blended[-1, -1, 0] and blended[0, 0, 2] < blended[-1, -1, 2]
    assert overlay(pixels[..., 0], cam).shape == (20, 30, 3)
    with pytest.raises(ParameterError, match="alpha"):  # also a ValueError
        overlay(pixels, cam, alpha=1.5)
    with pytest.raises(InputError, match="2-D map"):
        overlay(pixels, np.ones((1, 4, 4)))
