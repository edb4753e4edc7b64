"""Turning filters off as Levin et al. do (Sec. 3.1): the filter's weights, its conv bias and its
channel of the following BatchNorm are zeroed, so its feature map is exactly 0, not a constant."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.func import functional_call

from core.errors import ParameterError
from core.methods.saliency.explain import FilterTurnOff, feature_map_zeroing, turn_off
from core.methods.saliency.filters import conv_filters
from core.models.torchscript import ScriptedModel
from tests.support import tiny_model

SIZE = 16


class ConvBN(nn.Module):
    """Conv (no bias) -> BN -> ReLU -> pool -> linear, with BN statistics and affine set by hand."""

    def __init__(self, bias: bool = False, batchnorm: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 10)
        if batchnorm:
            with torch.no_grad():
                self.bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
                self.bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0, 4.0]))
                self.bn.weight.copy_(torch.tensor([1.5, 2.0, 0.5, 1.0]))
                self.bn.bias.copy_(torch.tensor([0.3, 1.0, -0.2, 0.7]))
        if bias:
            with torch.no_grad():
                self.conv.bias.copy_(torch.tensor([0.4, -0.6, 0.9, 0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


class Branchy(ConvBN):
    """ConvBN with data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > 1e9:
            y = -y
        return self.head(self.pool(self.relu(y)).flatten(1))


def _loaded(module: nn.Module):
    return dataclasses.replace(tiny_model(), module=module.eval())


def _map_after(module: nn.Module, hooked: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The output of ``hooked`` when ``module`` runs with ``tensors`` swapped in (a forward hook)."""
    seen = []
    handle = hooked.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            functional_call(module, tensors, (x,))
    finally:
        handle.remove()
    return seen[0]


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_turned_off_filter_gives_an_exactly_zero_map_after_batchnorm_not_the_old_constant():
    module = ConvBN().eval()
    index = conv_filters(module)
    x = torch.randn(2, 3, SIZE, SIZE)
    before = _snapshot(module)
    after_bn = _map_after(module, module.bn, turn_off(module, index, [1]), x)
    assert torch.equal(after_bn[:, 1], torch.zeros_like(after_bn[:, 1]))  # exactly 0
    with torch.no_grad():
        untouched = module.bn(module.conv(x))
    assert torch.equal(after_bn[:, [0, 2, 3]], untouched[:, [0, 2, 3]])  # the other channels as before
    # the old behaviour (weights only) leaves beta - gamma * mean / sqrt(var + eps) = 1 - 2 * (-1) / sqrt(0.5 + 1e-5)
    old = _map_after(module, module.bn, turn_off(module, index, [1], zero_map=False), x)
    constant = 1.0 + 2.0 * 1.0 / np.sqrt(0.5 + 1e-5)
    assert torch.allclose(old[:, 1], torch.full_like(old[:, 1], constant), atol=1e-5) and constant > 3
    assert all(torch.equal(module.state_dict()[k], v) for k, v in before.items())  # the model is untouched


def test_conv_bias_is_zeroed_with_and_without_a_batchnorm():
    x = torch.randn(1, 3, SIZE, SIZE)
    biased = ConvBN(bias=True).eval()
    index = conv_filters(biased)
    zeroing = feature_map_zeroing(biased, index)
    assert zeroing.zeroed["conv"] == ("conv.bias", "bn.weight", "bn.bias") and zeroing.batchnorms == {"conv": "bn"}
    assert not _map_after(biased, biased.bn, turn_off(biased, index, [2]), x)[:, 2].any()
    bare = ConvBN(bias=True, batchnorm=False).eval()
    zeroing = feature_map_zeroing(bare, index)
    assert zeroing.zeroed == {"conv": ("conv.bias",)} and zeroing.batchnorms == {}
    assert "no BatchNorm" in zeroing.note and "conv bias" in zeroing.note
    conv_out = _map_after(bare, bare.conv, turn_off(bare, index, [2]), x)
    assert not conv_out[:, 2].any() and conv_out[:, 0].any()  # 0 and not the bias 0.9
    old = _map_after(bare, bare.conv, turn_off(bare, index, [2], zero_map=False), x)
    assert torch.allclose(old[:, 2], torch.full_like(old[:, 2], 0.9))


def test_a_model_without_batchnorm_or_bias_zeroes_the_weights_only():
    module = ConvBN(bias=False, batchnorm=False).eval()
    index = conv_filters(module)
    zeroing = feature_map_zeroing(module, index)
    assert zeroing.zeroed == {"conv": ()} and zeroing.batchnorms == {} and zeroing.found_by == "fx trace"
    assert set(turn_off(module, index, [0])) == {"conv.weight"}


def test_every_resnet18_conv_is_paired_with_its_batchnorm_downsamples_included():
    module = torchvision.models.resnet18(weights=None).eval()
    index = conv_filters(module)
    zeroing = feature_map_zeroing(module, index)
    assert zeroing.found_by == "fx trace" and len(index.layers) == 20
    expected = {layer: layer.replace("conv", "bn") for layer in index.layers if "downsample" not in layer}
    expected.update({layer: layer[: -len("0")] + "1" for layer in index.layers if "downsample" in layer})
    assert zeroing.batchnorms == expected
    assert zeroing.batchnorms["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert "20 of the 20 conv layers" in zeroing.note


def test_untraceable_and_torchscript_models_pair_by_registration_order():
    branchy = Branchy().eval()
    index = conv_filters(branchy)
    zeroing = feature_map_zeroing(branchy, index)
    assert zeroing.found_by == "registration order" and zeroing.batchnorms == {"conv": "bn"}
    assert "registration order" in zeroing.note
    scripted = ScriptedModel(torch.jit.script(ConvBN().eval()))
    zeroing = feature_map_zeroing(scripted, conv_filters(scripted))
    assert zeroing.found_by == "registration order" and zeroing.zeroed == {"conv": ("bn.weight", "bn.bias")}


def _salient_first_curve(module: nn.Module, z: np.ndarray, x: torch.Tensor, y: np.ndarray, **params) -> np.ndarray:
    result = FilterTurnOff(max_k=2, n_random=1, **params).explain(_loaded(module), x, y, z=z, index=conv_filters(module))
    salient = result.curves[result.curves["order"] == "salient"].sort_values("k")
    return salient["true_confidence"].to_numpy()


@pytest.mark.parametrize("script", [False, True])
def test_filter_turn_off_runs_the_model_with_the_map_zeroed(script):
    module = ConvBN().eval()
    runnable = ScriptedModel(torch.jit.script(ConvBN().eval())) if script else module
    x = torch.randn(1, 3, SIZE, SIZE)
    y = np.array([3])
    z = np.array([[0.1, 5.0, -0.2, 0.3]])  # filter 1 first, then filter 3 (by |z|)
    before = _snapshot(runnable)
    curve = _salient_first_curve(runnable, z, x, y)
    assert all(torch.equal(runnable.state_dict()[k], v) for k, v in before.items())
    index = conv_filters(module)
    with torch.no_grad():
        expected = [torch.softmax(functional_call(module, turn_off(module, index, cols), (x,)), 1)[0, 3].item()
                    for cols in ([], [1], [1, 3])]
        old = torch.softmax(functional_call(module, turn_off(module, index, [1], zero_map=False), (x,)), 1)[0, 3].item()
    assert curve == pytest.approx(expected, abs=1e-5)
    assert abs(curve[1] - old) > 1e-4  # the old behaviour gives another answer
    assert _salient_first_curve(runnable, z, x, y, zero_map=False)[1] == pytest.approx(old, abs=1e-5)


def test_ranking_by_signed_z_turns_off_the_highest_z_first():
    module = ConvBN().eval()
    x, y = torch.randn(1, 3, SIZE, SIZE), np.array([3])
    z = np.array([[-9.0, 1.0, 0.5, 0.2]])  # |z| ranks filter 0 first, z ranks filter 1 first
    index = conv_filters(module)
    with torch.no_grad():
        first = {c: torch.softmax(functional_call(module, turn_off(module, index, [c]), (x,)), 1)[0, 3].item() for c in (0, 1)}
    assert _salient_first_curve(module, z, x, y)[1] == pytest.approx(first[0], abs=1e-5)
    assert _salient_first_curve(module, z, x, y, ranking="signed")[1] == pytest.approx(first[1], abs=1e-5)
    result = FilterTurnOff(max_k=1, n_random=1, ranking="signed").explain(_loaded(module), x, y, z=z, index=index)
    least = result.curves[(result.curves["order"] == "least") & (result.curves["k"] == 1)]["true_confidence"].item()
    assert least == pytest.approx(first[0], abs=1e-5)  # the most negative z is the least salient
    assert any("Levin et al." in note for note in result.notes)
    with pytest.raises(ParameterError, match="ranking must be one of magnitude, signed"):
        FilterTurnOff(ranking="abs").explain(_loaded(module), x, y, z=z, index=index)
