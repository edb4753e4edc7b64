"""The extraction pipeline: the uint8 + device-normalise path equals the CPU transform, the writer
thread keeps row order under any completion order, bf16 stays within its stated tolerance, and a
build reports where its time went."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.models.loading import make_transform
from core.store.build import build_store
from core.store.hooks import ActivationRecorder
from core.store.pipeline import (
    LocalSource,
    OrderedWriter,
    StageTimes,
    device_normalise,
    forward_outputs,
    uint8_transform,
)
from tests.support import digits_dataset, tiny_model

BF16_TOLERANCE = 0.05  # max |logit difference| bf16 vs fp32, relative to the logits' range (tiny CNN)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(16, 16), (40, 30), (31, 57), (224, 300)]  # up, down, odd sizes, both orientations
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


@pytest.mark.parametrize("size", [16, 32, 224])
def test_uint8_then_device_normalise_equals_the_cpu_transform(size):
    """The GPU path's preprocessing (uint8 across the bus, scale and normalise on the device),
    run here on CPU tensors, gives the CPU path's floats up to float rounding."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cpu = make_transform(size, mean, std)
    small = uint8_transform(size)
    for image in _images():
        expected = cpu(image)
        got = device_normalise(small(image)[None], mean, std)[0]
        assert small(image).dtype == torch.uint8
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


def test_the_writer_keeps_row_order_under_any_completion_order(tmp_path):
    n, width, batch = 100, 3, 7
    values = np.arange(n * width, dtype=np.float32).reshape(n, width)
    starts = list(range(0, n, batch))
    rng = np.random.default_rng(1)
    rng.shuffle(starts)
    checkpoints = []
    files = {"logits": "logits.npy"}
    arrays: dict[str, np.ndarray] = {}
    writer = OrderedWriter(tmp_path, files, n, 0, arrays, checkpoint=lambda a, rows: checkpoints.append(rows), every=0.0)
    seen_prefixes = []
    for start in starts:
        writer.put(start, {"logits": values[start:start + batch]})
        seen_prefixes.append(writer.prefix())
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), values)
    assert writer.prefix() == n and checkpoints[-1] == n
    assert checkpoints == sorted(checkpoints)  # the recorded prefix only grows
    # the prefix never claims a row whose batch has not been written
    assert all(p % batch == 0 or p == n for p in checkpoints)


def test_the_prefix_stops_at_the_first_missing_batch(tmp_path):
    arrays: dict[str, np.ndarray] = {}
    writer = OrderedWriter(tmp_path, {"logits": "logits.npy"}, 30, 0, arrays)
    for start in (0, 20):  # rows 10..19 never arrive
        writer.put(start, {"logits": np.ones((10, 2), dtype=np.float32)})
    writer.close()
    assert writer.prefix() == 10


def test_a_writer_failure_reaches_the_producer(tmp_path):
    writer = OrderedWriter(tmp_path, {"logits": "logits.npy"}, 10, 0, {})
    writer.put(0, {"embedding": np.ones((5, 2), dtype=np.float32)})  # no "logits": the write fails
    with pytest.raises(KeyError):
        writer.close()


def test_bf16_autocast_stays_within_its_tolerance_and_outputs_are_float32(model):
    dataset = digits_dataset(64)
    recorder = ActivationRecorder(model, ["block1"], want_embedding=True)
    transform = make_transform(model.input_size, model.mean, model.std)
    batch = torch.stack([transform(dataset.load_image(i)) for i in range(64)])
    try:
        with torch.inference_mode():
            full = forward_outputs(model, recorder, batch, "fp32")
            half = forward_outputs(model, recorder, batch, "bf16")
    finally:
        recorder.close()
    assert all(v.dtype == np.float32 for v in half.values())
    spread = float(full["logits"].max() - full["logits"].min())
    assert float(np.abs(half["logits"] - full["logits"]).max()) <= BF16_TOLERANCE * spread
    assert (half["logits"].argmax(1) == full["logits"].argmax(1)).mean() >= 0.95


def test_a_build_reports_its_throughput_and_stages(tmp_path, model):
    times = StageTimes()
    store = build_store("t", model, digits_dataset(96), ["block1"], batch_size=32, root=tmp_path, times=times)
    summary = times.summary()
    assert summary["images"] == 96 and summary["img_per_s"] > 0
    assert set(summary["stages_s"]) == {"load", "transfer", "forward", "write"}
    assert all(v >= 0 for v in summary["stages_s"].values())
    assert store.manifest["last_build"]["images"] == 96 and store.manifest["last_build"]["precision"] == "fp32"
    assert "img/s" in times.text()


def test_an_unknown_precision_is_refused(model):
    with pytest.raises(ValueError, match="bf16"):
        LocalSource(model, digits_dataset(8), precision="int4")


def _jpeg_folder(root, n: int = 48, side: int = 40, png_every: int = 7):
    """Digits saved as JPEG files (a few as PNG) in an ImageFolder, larger than the model's input."""
    from core.data.sources import DatasetSpec, build_dataset
    from tests.support import digits_arrays

    images, labels, _ = digits_arrays(n)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image).resize((side, side + 6))
        picture.save(folder / (f"{i:03d}.png" if i % png_every == 0 else f"{i:03d}.jpg"), quality=90)
    return build_dataset(DatasetSpec(kind="imagefolder", root=str(root)))


def _logits(source) -> np.ndarray:
    return np.concatenate([outputs["logits"] for _, outputs in source([], True, 0)])


def test_torchcodec_decoding_equals_the_pil_path_within_its_tolerance(tmp_path, model):
    """The GPU path (batched JPEG decoding, then resize/crop/normalise as tensors), run on the
    CPU: JPEG decoding is identical to PIL's; tensor resampling differs slightly from PIL's."""
    pytest.importorskip("torchcodec")
    dataset = _jpeg_folder(tmp_path / "jpeg")
    pil = LocalSource(model, dataset, batch_size=16, decode="pil")
    codec = LocalSource(model, dataset, batch_size=16, decode="torchcodec")
    assert (pil.decode, codec.decode) == ("pil", "torchcodec")
    a, b = _logits(pil), _logits(codec)
    assert float(np.abs(a - b).max()) <= 0.01 * float(a.max() - a.min())
    assert (a.argmax(1) == b.argmax(1)).all()
    # at the model's own size nothing is resampled: the two paths agree exactly
    same = _jpeg_folder(tmp_path / "native", side=model.input_size - 6)
    native = [_logits(LocalSource(model, same, batch_size=16, decode=d)) for d in ("pil", "torchcodec")]
    np.testing.assert_allclose(native[0], native[1], rtol=0, atol=1e-5)


def test_a_corrupt_jpeg_in_a_batch_is_named_and_the_others_decode(tmp_path, model):
    pytest.importorskip("torchcodec")
    from core.errors import DataError
    from core.store.pipeline import _EncodedImages, decoded_images

    dataset = _jpeg_folder(tmp_path / "jpeg", n=8, png_every=100)
    broken = dataset.image_path(3)
    broken.write_bytes(broken.read_bytes()[:40])  # the JPEG header survives, the data does not
    items = [_EncodedImages(dataset, 0)[i] for i in range(8)]
    assert items[3][0] == "jpeg"
    with pytest.raises(DataError, match=broken.name):
        decoded_images(dataset, items, torch.device("cpu"))
    images = decoded_images(dataset, items[:3] + items[4:], torch.device("cpu"))
    assert len(images) == 7 and all(im.dtype == torch.uint8 and im.shape[0] == 3 for im in images)


def test_arrays_and_unknown_decoders_fall_back_or_are_refused(model):
    assert LocalSource(model, digits_dataset(8), decode="torchcodec").decode == "pil"  # no files to read
    assert LocalSource(model, digits_dataset(8), decode="auto").decode == "pil"  # a CPU model
    with pytest.raises(ValueError, match="torchcodec"):
        LocalSource(model, digits_dataset(8), decode="nvjpeg")
