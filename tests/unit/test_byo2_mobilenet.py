"""Issue 22 on a MobileNetV3: its squeeze-and-excitation blocks use hardsigmoid, whose
backward has no derivative in aten, so the input-space map (a double backward) failed with
"derivative for aten::hardsigmoid_backward is not implemented" (bench/byo.py, 2026-12-07)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_small

from core.methods import FilterSaliency
from core.methods.saliency.filters import (
    ProfileStats,
    conv_filters,
    filter_profiles,
    twice_differentiable,
)
from core.models.loading import ModelSpec, load_model, make_transform
from tests.support import digits_dataset

SIZE = 32


def make_tiny_mobilenet() -> nn.Module:
    """A random torchvision mobilenet_v3_small for 10 classes (32 px input is enough)."""
    torch.manual_seed(0)
    return mobilenet_v3_small(num_classes=10)


def test_twice_differentiable_keeps_hardsigmoid_and_gives_its_second_derivative():
    x = torch.linspace(-4, 4, 17, requires_grad=True)
    with twice_differentiable():
        y = nn.Hardsigmoid()(x)
        (first,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(first.sum(), x)
    assert torch.allclose(y, F.hardsigmoid(x.detach()))
    inside = (x.detach() > -3) & (x.detach() < 3)
    assert torch.allclose(second[inside], torch.full_like(second[inside], 2 / 36))  # d²/dx² (x/6 + 1/2)² = 2/36
    assert torch.all(second[~inside] == 0)


def test_the_input_map_differentiates_through_a_mobilenet_v3():
    spec = ModelSpec(kind="entrypoint", entrypoint="tests.unit.test_byo2_mobilenet:make_tiny_mobilenet", input_size=SIZE,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    model, dataset = load_model(spec, "cpu"), digits_dataset(8)
    index = conv_filters(model.module, ["features.1"])  # the first block with squeeze-and-excitation
    transform = make_transform(model.input_size, model.mean, model.std)
    x = torch.stack([transform(dataset.load_image(i)) for i in range(len(dataset))])
    y = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.int64)
    stats = ProfileStats(index.n_filters).update(filter_profiles(model.module, x, y, index).numpy())
    result = FilterSaliency(k=4).explain(model, dataset.load_image(0), int(y[0]), mu=stats.mu, sigma=stats.sigma, index=index)
    assert result.raw_map.shape == (SIZE, SIZE) and np.isfinite(result.raw_map).all() and result.raw_map.max() > 0
