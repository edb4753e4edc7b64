"""Per-image filter saliency profiles (core/methods/saliency/filters.py) against the batch-1 reference loop,
and the dataset statistics against numpy and hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import core.methods.saliency.filters as filters
from core.errors import ModelError
from core.methods.saliency.filters import (
    ProfileStats,
    conv_filters,
    filter_profiles,
    loop_profiles,
    resolve_method,
    standardise,
)
from core.models.loading import ModelSpec, load_model
from tests.support import make_tiny_cnn


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _batch(n: int, size: int, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator), torch.randint(0, classes, (n,), generator=generator)


class Grouped(nn.Module):
    """Depthwise and grouped convs with stride, dilation and 'same' padding."""

    def __init__(self, same: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding="same" if same else 2, dilation=2, groups=8)
        self.grouped = nn.Conv2d(8, 6, 1, groups=2, bias=False)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.grouped(torch.relu(self.depthwise(torch.relu(self.stem(x))))))
        return self.head(x.mean(dim=(2, 3)))


class Reused(nn.Module):
    """One conv applied twice: the grad sampler cannot split its two uses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(torch.relu(self.conv(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["sampler", "vmap"])
def test_batched_profiles_equal_the_loop_on_a_tiny_cnn(method: str) -> None:
    model = make_tiny_cnn().eval()
    index = conv_filters(model)
    x, y = _batch(12, 16)
    assert _relative(filter_profiles(model, x, y, index, method=method), loop_profiles(model, x, y, index)) <= 1e-4


@pytest.mark.slow
def test_batched_profiles_equal_the_loop_on_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    index = conv_filters(model)
    assert index.n_filters == 4800 and len(index.layers) == 20
    x, y = _batch(3, 64)
    reference = loop_profiles(model, x, y, index)
    for method in ("sampler", "vmap"):
        assert _relative(filter_profiles(model, x, y, index, method=method), reference) <= 1e-4


def test_grouped_strided_dilated_convs_match_the_loop() -> None:
    torch.manual_seed(1)
    model = Grouped().eval()
    index = conv_filters(model)
    assert resolve_method(model, index) == "sampler"
    x, y = _batch(5, 12, classes=4)
    assert _relative(filter_profiles(model, x, y, index), loop_profiles(model, x, y, index)) <= 1e-4


def test_same_padding_falls_back_to_vmap() -> None:
    model = Grouped(same=True).eval()
    index = conv_filters(model)
    assert resolve_method(model, index) == "vmap"
    x, y = _batch(4, 12, classes=4)
    assert _relative(filter_profiles(model, x, y, index), loop_profiles(model, x, y, index)) <= 1e-4


def test_a_conv_used_twice_falls_back_to_vmap() -> None:
    torch.manual_seed(2)
    model = Reused().eval()
    index = conv_filters(model)
    x, y = _batch(4, 8, classes=4)
    assert _relative(filter_profiles(model, x, y, index), loop_profiles(model, x, y, index)) <= 1e-4


def test_torchscript_uses_the_loop_and_matches(tmp_path: Path) -> None:
    model = make_tiny_cnn().eval()
    x, y = _batch(3, 16)
    expected = loop_profiles(model, x, y, conv_filters(model))
    scripted = torch.jit.script(model)
    scripted.save(str(tmp_path / "tiny.pt"))
    loaded = load_model(ModelSpec(kind="torchscript", weights=str(tmp_path / "tiny.pt"), input_size=16), "cpu")
    for module in (scripted, loaded.module):  # raw, and as load_model wraps it (hooks cannot replace outputs)
        index = conv_filters(module)
        assert resolve_method(module, index) == "loop"
        assert torch.allclose(filter_profiles(module, x, y, index), expected, atol=1e-6)


def test_profiles_use_eval_mode_and_restore_the_mode() -> None:
    model = make_tiny_cnn().train()
    index = conv_filters(model)
    x, y = _batch(4, 16)
    filter_profiles(model, x, y, index)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_out_of_memory_lowers_the_batch_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_tiny_cnn().eval()
    index = conv_filters(model)
    x, y = _batch(8, 16)
    real = filters._sampler_profiles
    calls: list[int] = []

    def flaky(module: nn.Module, xs: torch.Tensor, ys: torch.Tensor, idx: filters.FilterIndex) -> torch.Tensor:
        calls.append(len(xs))
        if len(xs) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(module, xs, ys, idx)

    monkeypatch.setattr(filters, "_sampler_profiles", flaky)
    notices: list[str] = []
    profiles = filter_profiles(model, x, y, index, chunk=8, notice=notices.append)
    assert calls[0] == 8 and max(calls[-4:]) == 2
    assert notices and "lowered the batch to 2" in notices[-1]
    assert _relative(profiles, loop_profiles(model, x, y, index)) <= 1e-4


def test_index_names_columns_and_restricts_layers() -> None:
    model = make_tiny_cnn()
    index = conv_filters(model)
    assert index.layers == ("block1.0", "block2.0", "block3.0")
    assert index.counts == (8, 16, 16) and index.sizes == (27, 72, 144)
    assert index.name(0) == ("block1.0", 0) and index.name(8) == ("block2.0", 0) and index.name(39) == ("block3.0", 15)
    assert list(index.columns(["block2.0"])) == list(range(8, 24))
    assert conv_filters(model, ["block3"]).layers == ("block3.0",)
    with pytest.raises(ModelError, match="pick from"):
        conv_filters(model, ["nothing"])
    with pytest.raises(IndexError):
        index.name(40)


def test_a_model_without_conv_layers_is_refused_with_what_the_method_needs() -> None:
    with pytest.raises(ModelError, match="needs convolutional layers"):
        conv_filters(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))


def test_running_statistics_equal_numpy_in_any_batching() -> None:
    profiles = np.random.default_rng(0).gamma(2.0, size=(101, 7))
    stats = ProfileStats(7)
    for start, stop in [(0, 1), (1, 40), (40, 41), (41, 101)]:
        stats.update(profiles[start:stop])
    assert stats.count == 101
    np.testing.assert_allclose(stats.mu, profiles.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, profiles.std(axis=0, ddof=1), rtol=1e-10)


def test_standardisation_by_hand_and_the_sigma_clamp() -> None:
    # filter 0: values 1, 2, 3 -> mu 2, sigma 1; filter 1: constant 5 -> sigma 0 -> clamped to 1
    stats = ProfileStats(2).update(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]))
    assert stats.mu.tolist() == [2.0, 5.0]
    assert stats.sigma.tolist() == [1.0, 1.0]
    z = standardise(np.array([[4.0, 7.0]]), stats.mu, stats.sigma)
    assert z.dtype == np.float32 and z.tolist() == [[2.0, 2.0]]


def test_statistics_need_two_images() -> None:
    stats = ProfileStats(3).update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = stats.sigma
