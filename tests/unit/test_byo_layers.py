"""Conv-block discovery on stock torchvision classifiers (random weights), bare and wrapped:
inside one or two wrapper modules, in an nn.Sequential behind a normalisation layer, and a
ViT whose only convolution is its patch embedding."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from core.models.layers import find_layers, probe_forward
from core.models.loading import ModelSpec, load_model

SMALL = 32  # every CNN below runs at 32 px: its blocks are the same as at 224 px, in a tenth of the time

# The conv blocks of each bare architecture (names of model.named_modules()), the last hidden layer
# and its width. Blocks are written out by hand from torchvision's module trees.
EXPECTED: dict[str, tuple[list[str], str, int]] = {
    "resnet18": (["maxpool", "layer1", "layer2", "layer3", "layer4"], "fc", 512),
    "resnet50": (["maxpool", "layer1", "layer2", "layer3", "layer4"], "fc", 2048),
    "vgg11": ([f"features.{i}" for i in (2, 5, 7, 10, 12, 15, 17, 20)], "classifier.6", 4096),
    "mobilenet_v3_small": ([f"features.{i}" for i in range(13)], "classifier.3", 1024),
    "efficientnet_b0": ([f"features.{i}" for i in range(9)], "classifier.1", 1280),
}


class Wrapper(nn.Module):
    """A user's wrapper: the classifier sits in one attribute, forward passes straight through."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class Normalise(nn.Module):
    """Input normalisation as a module in front of the network (no parameters, no conv)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.45) / 0.225


class Backbone(nn.Module):
    """A custom trunk (not a container) returning a feature map, pooled and classified by its owner."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stage1, self.stage2, self.stage3 = resnet.layer1, resnet.layer2, resnet.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(self.stem(x))))


class WithBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone(torchvision.models.resnet18(weights=None))
        self.fc = nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x).mean((2, 3)))


WRAPS: dict[str, tuple[Callable[[nn.Module], nn.Module], str]] = {
    "bare": (lambda m: m, ""),
    "one wrapper": (Wrapper, "inner."),
    "two wrappers": (lambda m: Wrapper(Wrapper(m)), "inner.inner."),
    "normalise in a Sequential": (lambda m: nn.Sequential(Normalise(), m), "1."),
    "wrapper around a Sequential": (lambda m: Wrapper(nn.Sequential(Normalise(), m)), "inner.1."),
}


@pytest.fixture(scope="module")
def stock() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {arch: torchvision.models.get_model(arch, weights=None, num_classes=4).eval() for arch in EXPECTED}


@pytest.mark.parametrize("arch", list(EXPECTED))
@pytest.mark.parametrize("wrap", list(WRAPS))
def test_wrapped_cnns_keep_their_conv_blocks(stock, arch, wrap):
    make, prefix = WRAPS[wrap]
    model = make(stock[arch])
    blocks, head, width = EXPECTED[arch]
    layers = find_layers(model, probe_forward(model, SMALL))
    assert layers.conv_layers == [prefix + b for b in blocks]
    assert (layers.embedding_layer, layers.embedding_dim) == (prefix + head, width)
    assert layers.default_layers[0] == prefix + blocks[0] and layers.default_layers[-1] == prefix + blocks[-1]
    assert len(layers.default_layers) == min(6, len(blocks))


def test_custom_backbone_is_opened_like_a_model():
    torch.manual_seed(0)
    model = WithBackbone().eval()
    layers = find_layers(model, probe_forward(model, SMALL))
    assert layers.conv_layers == ["backbone.stem", "backbone.stage1", "backbone.stage2", "backbone.stage3"]
    assert (layers.embedding_layer, layers.embedding_dim) == ("fc", 256)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vit_b_16(weights=None, num_classes=4).eval()


@pytest.mark.parametrize("wrap", ["bare", "one wrapper", "normalise in a Sequential"])
def test_vit_has_only_its_patch_embedding(vit, wrap):
    from core.models.layers import is_patch_embedding

    make, prefix = WRAPS[wrap]
    model = make(vit)
    layers = find_layers(model, probe_forward(model, 224))
    assert layers.conv_layers == [prefix + "conv_proj"]
    assert (layers.embedding_layer, layers.embedding_dim) == (prefix + "heads.head", 768)
    assert is_patch_embedding(dict(model.named_modules())[prefix + "conv_proj"])


def test_patch_embedding_test():
    from core.models.layers import is_patch_embedding

    assert is_patch_embedding(nn.Conv2d(3, 8, 16, stride=16))
    assert not is_patch_embedding(nn.Conv2d(3, 8, 3, stride=1))
    assert not is_patch_embedding(nn.Conv2d(3, 8, 1, stride=1))  # a 1x1 conv keeps every pixel
    assert not is_patch_embedding(nn.Linear(3, 8)) and not is_patch_embedding(None)


def make_wrapped_resnet18() -> nn.Module:
    """Entry point: resnet18 (4 classes) behind a normaliser, inside a wrapper."""
    torch.manual_seed(0)
    return Wrapper(nn.Sequential(Normalise(), torchvision.models.resnet18(weights=None, num_classes=4)))


def test_wrapped_state_dict_loads_with_its_blocks(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "biaslens_byo_layers", sys.modules[__name__])
    path = tmp_path / "wrapped.pt"
    torch.save(make_wrapped_resnet18().state_dict(), path)
    spec = ModelSpec(kind="entrypoint", entrypoint="biaslens_byo_layers:make_wrapped_resnet18",
                     weights=str(path), input_size=SMALL)
    model = load_model(spec, "cpu")
    assert model.conv_layers == [f"inner.1.{b}" for b in EXPECTED["resnet18"][0]]
    assert model.default_layers == model.conv_layers and model.embedding_layer == "inner.1.fc"
    assert not model.only_patch_embedding


def test_stock_vit_reports_its_patch_embedding():
    model = load_model(ModelSpec(kind="torchvision", arch="vit_b_16", num_classes=4), "cpu")
    assert model.conv_layers == ["conv_proj"] and model.only_patch_embedding
    assert model.embedding_layer == "heads.head" and model.embedding_dim == 768
