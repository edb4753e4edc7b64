"""Issue 22 on a vision transformer: filter saliency (its one conv, the patch embedding)
through attention, whose fused kernels have no double backward and no vmap rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from core.methods import FilterSaliency, FilterTurnOff, MaskingExperiment
from core.methods.saliency.filters import ProfileStats, conv_filters, filter_profiles
from core.models.loading import ModelSpec, load_model, make_transform
from tests.support import SIZE, digits_dataset


def make_tiny_vit() -> nn.Module:
    """A random torchvision ViT at the tiny workspace's size (16 px, 4 px patches, 10 classes);
    its head is drawn at random too (torchvision starts it at zero: no gradient would flow)."""
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=SIZE, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=10)
    nn.init.normal_(vit.heads.head.weight, std=0.5)
    return vit


@pytest.fixture(scope="module")
def vit():
    spec = ModelSpec(kind="entrypoint", entrypoint="tests.unit.test_byo2_vit:make_tiny_vit", input_size=SIZE,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    model, dataset = load_model(spec, "cpu"), digits_dataset(12)
    index = conv_filters(model.module)
    transform = make_transform(model.input_size, model.mean, model.std)
    x = torch.stack([transform(dataset.load_image(i)) for i in range(len(dataset))])
    y = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.int64)
    return model, dataset, index, x, y


def test_the_vit_has_one_conv_its_patch_embedding(vit):
    model, _, index, _, _ = vit
    assert index.layers == ("conv_proj",) and model.only_patch_embedding


@pytest.mark.parametrize("method", ["sampler", "vmap", "loop"])
def test_profiles_agree_through_attention(vit, method):
    model, _, index, x, y = vit
    reference = filter_profiles(model.module, x, y, index, method="loop")
    assert torch.allclose(filter_profiles(model.module, x, y, index, method=method), reference, rtol=1e-4, atol=1e-8)


def test_the_input_map_differentiates_through_attention(vit):
    model, dataset, index, x, y = vit
    stats = ProfileStats(index.n_filters).update(filter_profiles(model.module, x, y, index).numpy())
    result = FilterSaliency(k=4).explain(model, dataset.load_image(0), int(y[0]), mu=stats.mu, sigma=stats.sigma,
                                         index=index)  # a double backward
    assert result.raw_map.shape == (SIZE, SIZE) and result.raw_map.max() > 0
    masking = MaskingExperiment(threshold=0.5).explain(model, dataset.load_image(0), int(y[0]), saliency_map=result.map,
                                                       top=result.top, mu=stats.mu, sigma=stats.sigma, index=index)
    assert np.isfinite(masking.probabilities_after).all()
    z = (filter_profiles(model.module, x[:1], y[:1], index).numpy() - stats.mu) / stats.sigma
    turned = FilterTurnOff(max_k=4, n_random=1).explain(model, x[:1], y[:1].numpy(), z=z, index=index)
    assert len(turned.curves) and np.isfinite(turned.curves["true_confidence"]).all()
