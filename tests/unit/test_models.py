"""Model loading: every source, layer discovery, TorchScript hooks, bad input, fingerprints."""

from __future__ import annotations

import sys
import urllib.error
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from core.errors import ModelError
from core.models.layers import find_final_linear, list_conv_blocks
from core.models.loading import (
    ModelSpec,
    load_model,
    make_transform,
    model_view,
    weights_fingerprint,
)
from core.models.torchscript import ScriptedModel

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
SIZE = 16


class SmallCNN(nn.Module):
    """Three conv blocks, a hidden linear layer and a head, like most audited classifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )
        self.block2 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block3(self.block2(self.block1(x)))).flatten(1)
        return self.head(torch.relu(self.fc1(x)))


class ConvHead(nn.Module):
    """No nn.Linear: a 1x1-conv classifier on top of two conv blocks (like squeezenet)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU()
        )
        self.classifier = nn.Sequential(nn.Conv2d(6, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LateRegistration(nn.Module):
    """The head is registered before the hidden layer but runs after it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.conv = nn.Conv2d(3, 4, 3)
        self.hidden = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.conv(x).mean((2, 3))))


def make_mlp() -> nn.Module:
    """Entry-point factory: a model without any conv layer."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))


def make_small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


def _save(obj: object, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


@pytest.fixture
def entry(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fixed module name for this file (pytest's depends on its import mode), for entry points."""
    monkeypatch.setitem(sys.modules, "biaslens_test_models", sys.modules[__name__])
    return "biaslens_test_models"


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=7).state_dict()
    return _save(state, tmp_path_factory.mktemp("rn") / "rn18.pt"), state


# --------------------------------------------------------------------------- torchvision


def test_torchvision_state_dict_loads_and_finds_layers(resnet18_file):
    path, state = resnet18_file
    model = load_model(ModelSpec(kind="torchvision", arch="resnet18", weights=path), device="cpu")
    assert model.num_classes == 7  # inferred from the file
    assert model.description == "torchvision resnet18 + rn18.pt"
    assert (model.input_size, model.mean) == (224, (0.485, 0.456, 0.406))
    assert model.embedding_layer == "fc" and model.embedding_dim == 512
    assert not model.embedding_is_output
    assert model.conv_layers == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert model.default_layers == model.conv_layers
    assert not model.module.training and model.device == torch.device("cpu")
    assert torch.equal(
        model.module.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"]
    )
    assert model.module.fc.weight.requires_grad


def test_data_parallel_prefix_and_wrapped_checkpoints_load(resnet18_file, tmp_path):
    _, state = resnet18_file
    prefixed = {f"module.{k}": v for k, v in state.items()}
    for content in (prefixed, {"state_dict": prefixed, "epoch": 3}):
        path = _save(content, tmp_path / "ckpt.pt")
        model = load_model(
            ModelSpec(kind="torchvision", arch="resnet18", weights=path, input_size=64), "cpu"
        )
        assert torch.equal(model.module.state_dict()["fc.bias"], state["fc.bias"])


def test_wrong_num_classes_names_the_shapes(resnet18_file):
    spec = ModelSpec(kind="torchvision", arch="resnet18", weights=resnet18_file[0], num_classes=3)
    with pytest.raises(
        ModelError, match=r"fc\.weight: file has \[7, 512\], model expects \[3, 512\]"
    ):
        load_model(spec, "cpu")


def test_other_architecture_file_lists_keys_and_suggests_the_arch(tmp_path):
    path = _save(torchvision.models.resnet34(num_classes=7).state_dict(), tmp_path / "rn34.pt")
    with pytest.raises(ModelError) as error:
        load_model(ModelSpec(kind="torchvision", arch="resnet18", weights=path), "cpu")
    message = str(error.value)
    assert "unexpected layer1.2." in message and "more" in message
    assert "arch = 'resnet34'" in message


@pytest.mark.parametrize(
    "content",
    [b"definitely not a checkpoint" * 10, None],
    ids=["garbage", "pickled-object"],
)
def test_unreadable_weights_raise_model_error(tmp_path, content):
    path = tmp_path / "weights.pt"
    if content is None:
        torch.save({"model": SmallCNN()}, path)  # a whole pickled model: refused by weights_only
    else:
        path.write_bytes(content)
    with pytest.raises(ModelError, match="Cannot read"):
        load_model(ModelSpec(kind="torchvision", arch="resnet18", weights=str(path)), "cpu")


def test_missing_weights_file_and_non_state_dict(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(
            ModelSpec(kind="torchvision", arch="resnet18", weights=str(tmp_path / "no.pt")), "cpu"
        )
    path = _save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="not a state_dict"):
        load_model(ModelSpec(kind="torchvision", arch="resnet18", weights=path), "cpu")


def test_unknown_arch_suggests_close_names():
    with pytest.raises(ModelError, match="Did you mean.*resnet18"):
        load_model(ModelSpec(kind="torchvision", arch="resnet_18"), "cpu")


def test_pretrained_without_network_raises_model_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        ModelError, match="could not download torchvision's pretrained weights for resnet18"
    ):
        load_model(ModelSpec(kind="torchvision", arch="resnet18", pretrained=True), "cpu")


# --------------------------------------------------------------------------- TorchScript


def test_loaded_script_modules_refuse_hooks(tmp_path):
    """The finding ScriptedModel works around: hooks cannot be registered on a loaded file."""
    path = tmp_path / "cnn.pt"
    torch.jit.script(make_small_cnn()).save(str(path))
    raw = torch.jit.load(str(path))
    with pytest.raises(RuntimeError, match="not supported on ScriptModules"):
        raw.head.register_forward_pre_hook(lambda module, args: None)


@pytest.mark.parametrize("export", ["script", "trace"])
def test_torchscript_hooks_capture_embedding_and_blocks(tmp_path, export):
    eager = make_small_cnn()
    example = torch.randn(4, 3, SIZE, SIZE)
    script = torch.jit.script(eager) if export == "script" else torch.jit.trace(eager, example)
    path = tmp_path / "cnn.pt"
    script.save(str(path))

    model = load_model(ModelSpec(kind="torchscript", weights=str(path), input_size=SIZE), "cpu")
    assert isinstance(model.module, ScriptedModel)
    assert (model.embedding_layer, model.embedding_dim, model.num_classes) == ("head", 6, 3)
    assert model.conv_layers == ["block1", "block2", "block3"]
    assert model.weights_fingerprint == weights_fingerprint(eager)

    captured = {}
    modules = dict(model.module.named_modules())
    handles = [
        modules["head"].register_forward_pre_hook(
            lambda m, args: captured.__setitem__("embedding", args[0])
        ),
        modules["block1.0"].register_forward_hook(
            lambda m, args, out: captured.__setitem__("conv", out.clone())
        ),
        modules["block2"].register_forward_hook(
            lambda m, args, out: captured.__setitem__("block2", out)
        ),
    ]
    with torch.no_grad():
        logits = model.module(example)
        conv = eager.block1[0](example)
        block2 = eager.block2(eager.block1(example))
        embedding = torch.relu(eager.fc1(eager.pool(eager.block3(block2)).flatten(1)))
        expected_logits = eager(example)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(captured["embedding"], embedding)
    torch.testing.assert_close(captured["block2"], block2)
    torch.testing.assert_close(captured["conv"], conv)  # before the in-place ReLU, as in eager
    torch.testing.assert_close(logits, expected_logits)


def test_torchscript_block_outputs_carry_gradients(tmp_path):
    eager = make_small_cnn()
    path = tmp_path / "cnn.pt"
    torch.jit.script(eager).save(str(path))
    model = load_model(ModelSpec(kind="torchscript", weights=str(path), input_size=SIZE), "cpu")
    x = torch.randn(2, 3, SIZE, SIZE)
    grads = {}
    for name, module in (("eager", eager), ("script", model.module)):

        def keep_gradient(m, args, out, name=name):  # Grad-CAM style: a hook on the block output
            out.register_hook(lambda g: grads.__setitem__(name, g))

        handle = dict(module.named_modules())["block3"].register_forward_hook(keep_gradient)
        module(x)[:, 0].sum().backward()
        handle.remove()
    torch.testing.assert_close(grads["script"], grads["eager"])
    assert model.module.get_submodule("block1.0").weight.grad is not None


def test_corrupt_torchscript_file_raises_model_error(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 broken archive")
    with pytest.raises(ModelError, match="not a readable TorchScript file"):
        load_model(ModelSpec(kind="torchscript", weights=str(path)), "cpu")
    state_path = _save(SmallCNN().state_dict(), tmp_path / "state.pt")
    with pytest.raises(ModelError, match="TorchScript"):
        load_model(ModelSpec(kind="torchscript", weights=state_path), "cpu")


def test_frozen_torchscript_explains_what_is_supported(tmp_path):
    path = tmp_path / "frozen.pt"
    torch.jit.freeze(torch.jit.script(make_small_cnn())).save(str(path))
    with pytest.raises(ModelError, match="not frozen"):
        load_model(ModelSpec(kind="torchscript", weights=str(path), input_size=SIZE), "cpu")


# --------------------------------------------------------------------------- entry points, demo


def test_entrypoint_mlp_has_no_conv_layers(entry):
    spec = ModelSpec(kind="entrypoint", entrypoint=f"{entry}:make_mlp", input_size=8)
    model = load_model(spec, "cpu")
    assert model.conv_layers == [] and model.default_layers == []
    assert (model.embedding_layer, model.embedding_dim, model.num_classes) == ("3", 16, 4)
    # the Flatten at '0' takes a 4-D input and returns (N, 192): neither fits an embedding
    with pytest.raises(ModelError, match="cannot hold the last hidden layer"):
        load_model(replace(spec, embedding_layer="0"), "cpu")


def test_entrypoint_errors(entry):
    spec = ModelSpec(kind="entrypoint", entrypoint=f"{entry}:make_mlp", input_size=8)
    with pytest.raises(ModelError, match="disabled in hosted mode"):
        load_model(spec, "cpu", hosted=True)
    for target, message in [
        ("no_colon_here", "must look like"),
        ("biaslens_no_such_module:factory", "Cannot import"),
        (f"{entry}:no_such_factory", "Cannot import"),
        (f"{entry}:SIZE", "failed"),
    ]:
        with pytest.raises(ModelError, match=message):
            load_model(ModelSpec(kind="entrypoint", entrypoint=target), "cpu")


def test_demo_model_with_weights_override(tmp_path):
    demo = pytest.importorskip("core.demo.model")
    path = _save(demo.DemoCNN().state_dict(), tmp_path / "demo.pt")
    model = load_model(ModelSpec(kind="demo", weights=path), "cpu")
    assert model.input_size == demo.INPUT_SIZE and model.mean == tuple(demo.MEAN)
    assert model.conv_layers == ["block1", "block2", "block3"]
    assert (model.embedding_layer, model.embedding_is_output) == ("head", False)


# --------------------------------------------------------------------------- layers and overrides


def test_conv_head_model_pools_the_last_block():
    model = ConvHead().eval()
    assert find_final_linear(model, SIZE) == ""
    assert list_conv_blocks(model, SIZE) == ["features.2", "features.4"]


def test_conv_head_embedding_is_the_pooled_last_block(entry):
    spec = ModelSpec(kind="entrypoint", entrypoint=f"{entry}:ConvHead", input_size=SIZE)
    model = load_model(spec, "cpu")
    assert model.embedding_layer == "features.4" and model.embedding_dim == 6
    assert model.embedding_is_output
    assert model.num_classes == 5


def test_final_linear_follows_execution_order():
    assert find_final_linear(LateRegistration(), SIZE) == "head"


def test_flat_sequential_blocks_end_at_relu_or_pool():
    vgg_like = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    assert list_conv_blocks(vgg_like, SIZE) == ["2", "4", "5"]


def test_overrides(resnet18_file):
    path = resnet18_file[0]
    spec = ModelSpec(
        kind="torchvision",
        arch="resnet18",
        weights=path,
        input_size=64,
        embedding_layer="layer4",
        layers=["layer2", "layer3.1"],
    )
    model = load_model(spec, "cpu")
    assert (model.embedding_layer, model.embedding_dim, model.embedding_is_output) == (
        "layer4",
        512,
        True,
    )
    assert model.default_layers == ["layer2", "layer3.1"]
    bad = [
        ({"layers": ["layer9"]}, r"layer 'layer9' is not a module.*Available: maxpool, layer1"),
        (
            {"embedding_layer": "fc2"},
            r"embedding_layer 'fc2' is not a module.*Available: fc, maxpool",
        ),
        ({"layers": ["fc"]}, r"not a \(N, C, H, W\) activation map"),
    ]
    for override, message in bad:
        with pytest.raises(ModelError, match=message):
            load_model(
                ModelSpec(
                    kind="torchvision", arch="resnet18", weights=path, input_size=64, **override
                ),
                "cpu",
            )


def test_default_layers_are_spread_and_keep_the_last_block():
    model = load_model(
        ModelSpec(kind="torchvision", arch="mobilenet_v2", num_classes=4, input_size=32), "cpu"
    )
    assert len(model.conv_layers) == 19
    assert model.default_layers == [
        "features.0",
        "features.4",
        "features.7",
        "features.11",
        "features.14",
        "features.18",
    ]


def test_bad_kind_device_and_input_size(entry):
    with pytest.raises(ModelError, match="Unknown model kind"):
        load_model(ModelSpec(kind="onnx"), "cpu")
    with pytest.raises(ModelError, match="Unknown device"):
        load_model(ModelSpec(kind="torchvision", arch="resnet18"), "tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model(ModelSpec(kind="torchvision", arch="resnet18"), "cuda")
    spec = ModelSpec(kind="entrypoint", entrypoint=f"{entry}:make_small_cnn", input_size=1)
    with pytest.raises(ModelError, match="test forward pass"):  # 1x1 images cannot be max-pooled
        load_model(spec, "cpu")
    spec.input_size = -3
    with pytest.raises(ModelError, match="input_size must be a positive"):
        load_model(spec, "cpu")


# --------------------------------------------------------------------------- fingerprint, transform


def test_weights_fingerprint_tracks_a_single_weight():
    model = make_small_cnn()
    before = weights_fingerprint(model)
    assert weights_fingerprint(make_small_cnn()) == before
    with torch.no_grad():
        model.block2[0].weight[0, 0, 0, 0] += 1e-3
    assert weights_fingerprint(model) != before
    with torch.no_grad():
        model.block2[0].weight[0, 0, 0, 0] -= 1e-3
        model.block2[1].running_mean[0] += 1.0  # buffers count too
    assert weights_fingerprint(model) != before


@pytest.mark.parametrize("mode, size", [("RGB", (37, 91)), ("L", (90, 33)), ("RGBA", (5, 7))])
def test_make_transform_gives_square_normalised_tensors(mode, size):
    transform = make_transform(29, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    tensor = transform(Image.new(mode, size, color=128 if mode == "L" else (128,) * len(mode)))
    assert tensor.shape == (3, 29, 29) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.full_like(tensor, (128 / 255 - 0.5) / 0.25))


def test_model_view_is_the_centre_crop_the_model_sees():
    """A wide image loses its sides to the centre crop, so maps at input size line up with the view."""
    from tests.support import tiny_model

    model = tiny_model()
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 6, 20))  # a red band on the left edge: cropped away
    view = model_view(model, wide)
    assert view.shape == (model.input_size, model.input_size, 3) and view.dtype.name == "uint8"
    assert (view[..., 0] < 20).all() and (view[..., 2] > 235).all()
