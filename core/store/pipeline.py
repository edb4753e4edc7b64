"""The extraction pipeline of a store build: image batches in, per-batch outputs out, written
to the store's memory-mapped arrays by a writer thread.

One batch goes through four stages, each timed (``StageTimes``) so a build can say where its
time went: ``load`` (waiting for the loader's workers to decode, resize and crop), ``transfer``
(the copy to the model's device, then scaling and normalising there), ``forward`` (the model
with the activation hooks, and the copy of the outputs back) and ``write`` (the writer
thread's copies into the memmaps, which overlap the next batches).

- On a CUDA device the workers send uint8 images (4x fewer bytes than float32, in pinned
  memory) and the scaling to [0, 1] and the normalisation run on the GPU
  (``device_normalise``); elsewhere the workers send float tensors normalised as before.
  Both give the same numbers up to float rounding (tests/unit/test_pipeline.py).
- ``precision`` "bf16" or "fp16" runs the forward pass under ``torch.autocast``; the stored
  outputs stay float32.
- An output source is any callable ``source(layers, want_core, start)`` yielding
  ``(first row, outputs)`` for rows [start, N) in any order: ``LocalSource`` here, or
  core/store/ray_source.py's ``RaySource`` on a Ray cluster. ``OrderedWriter`` writes each batch at
  its rows and reports the contiguous prefix of rows on disk, which is what a resume may skip.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from core.data.datasets import ImageDataset
from core.errors import ParameterError
from core.models.loading import LoadedModel, _to_rgb, make_transform
from core.store.hooks import ActivationRecorder

Outputs = dict[str, np.ndarray]
OutputSource = Callable[[list[str], bool, int], Iterator[tuple[int, Outputs]]]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
QUEUE_BATCHES = 4  # batches waiting for the writer: bounds memory, keeps the device busy


@dataclass
class StageTimes:
    """Seconds spent per stage of a build, and the images it processed."""

    seconds: dict[str, float] = field(default_factory=lambda: {"load": 0.0, "transfer": 0.0, "forward": 0.0, "write": 0.0})
    images: int = 0
    wall: float = 0.0

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began

    def summary(self) -> dict[str, Any]:
        """img/s over the wall time, and each stage's seconds and share of it."""
        wall = max(self.wall, 1e-9)
        return {
            "images": self.images,
            "seconds": round(self.wall, 3),
            "img_per_s": round(self.images / wall, 1),
            "stages_s": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def text(self) -> str:
        """One line for the CLI: throughput and where the time went."""
        s = self.summary()
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in s["stages_s"].items())
        return f"{s['images']:,} images in {s['seconds']:.1f} s ({s['img_per_s']:,.1f} img/s); {parts} (write overlaps the rest)"


def uint8_transform(input_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> uint8 (3, S, S): ``make_transform`` without its scaling and normalisation,
    which ``device_normalise`` does on the device."""
    return transforms.Compose(
        [transforms.Lambda(_to_rgb), transforms.Resize(input_size), transforms.CenterCrop(input_size), transforms.PILToTensor()]
    )


def device_normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, 3, S, S) on any device -> the float32 batch ``make_transform`` would give:
    x / 255, then (x - mean) / std per channel."""
    x = batch.to(torch.float32).div_(255.0)
    m = torch.tensor(list(mean), dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


class _Images(torch.utils.data.Dataset):
    """Rows [start, N) of an ImageDataset, transformed for the model."""

    def __init__(self, dataset: ImageDataset, transform: Callable[[Any], torch.Tensor], start: int) -> None:
        self.dataset, self.transform, self.start = dataset, transform, start

    def __len__(self) -> int:
        return len(self.dataset) - self.start

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.dataset.load_image(self.start + i))


def image_batches(
    dataset: ImageDataset, model: LoadedModel, start: int, batch_size: int, num_workers: int, uint8: bool = False
) -> Iterator[torch.Tensor]:
    """Batches of rows [start, N): model-ready float tensors, or uint8 ones for
    ``device_normalise`` (``uint8=True``). Workers keep two batches each in flight."""
    transform = uint8_transform(model.input_size) if uint8 else make_transform(model.input_size, model.mean, model.std)
    loader = torch.utils.data.DataLoader(
        _Images(dataset, transform, start),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=model.device.type == "cuda",
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
    )
    yield from loader


JPEG_MAGIC = b"\xff\xd8\xff"
DECODES = ("auto", "pil", "torchcodec")


def torchcodec_available() -> bool:
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401
    except Exception:  # not installed, or its native library does not load here
        return False
    return True


def resolve_decode(decode: str, dataset: ImageDataset, device: torch.device) -> str:
    """"torchcodec" (batched JPEG decoding where the model runs: nvJPEG on CUDA) or "pil" (the
    loader workers decode). "auto" picks torchcodec on CUDA for file datasets when it loads."""
    if decode not in DECODES:
        raise ParameterError(f"Unknown decode '{decode}'; use one of {', '.join(DECODES)}.")
    files = len(dataset) > 0 and dataset.image_path(0) is not None
    if decode == "auto":
        return "torchcodec" if device.type == "cuda" and files and torchcodec_available() else "pil"
    if decode == "torchcodec" and not (files and torchcodec_available()):
        return "pil"  # arrays or generated images, or no torchcodec: the workers decode
    return decode


class _EncodedImages(torch.utils.data.Dataset):
    """Rows [start, N) as the workers hand them to the decoder: a JPEG's raw bytes (decoded
    later, in a batch, where the model runs), or any other file already decoded by PIL to a
    uint8 (3, H, W) tensor (PNG, BMP... and JPEGs the batch decoder refuses)."""

    def __init__(self, dataset: ImageDataset, start: int) -> None:
        self.dataset, self.start = dataset, start

    def __len__(self) -> int:
        return len(self.dataset) - self.start

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, int]:
        row = self.start + i
        path = self.dataset.image_path(row)
        data = path.read_bytes() if path is not None else b""
        if data[:3] == JPEG_MAGIC:
            return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), row
        return "pixels", transforms.functional.pil_to_tensor(self.dataset.load_image(row)), row


def _as_list(batch: list[tuple[str, torch.Tensor, int]]) -> list[tuple[str, torch.Tensor, int]]:
    return batch


def decoded_images(dataset: ImageDataset, items: list[tuple[str, torch.Tensor, int]], device: torch.device) -> list[torch.Tensor]:
    """uint8 (3, H, W) images on ``device``: the JPEGs decoded in one batched call (nvJPEG on
    CUDA); if the batch fails (one corrupt or unusual file fails all), each one alone, and a
    JPEG the decoder refuses is read by PIL instead (which names the file if it is broken)."""
    from torchcodec.decoders import decode_jpeg

    images: list[torch.Tensor | None] = [t.to(device) if kind == "pixels" else None for kind, t, _ in items]
    jpegs = [i for i, (kind, _, _) in enumerate(items) if kind == "jpeg"]
    try:
        decoded = decode_jpeg([items[i][1] for i in jpegs], mode="RGB", device=device) if jpegs else []
        for i, image in zip(jpegs, decoded, strict=True):
            images[i] = image
    except Exception:
        for i in jpegs:
            try:
                images[i] = decode_jpeg(items[i][1], mode="RGB", device=device)
            except Exception:
                images[i] = transforms.functional.pil_to_tensor(dataset.load_image(items[i][2])).to(device)
    return [image for image in images if image is not None]


def tensor_preprocess(images: Sequence[torch.Tensor], size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``make_transform`` on uint8 tensors where they are (the GPU): resize the shorter side to
    ``size`` (bilinear, antialiased), centre-crop, scale and normalise. Resampling differs from
    PIL's by a few grey levels (measured in tests/unit/test_pipeline.py and the README)."""
    from torchvision.transforms.v2 import functional as F

    batch = torch.stack([F.center_crop(F.resize(image, size, antialias=True), [size, size]) for image in images])
    return device_normalise(batch, mean, std)


def forward_outputs(model: LoadedModel, recorder: ActivationRecorder, batch: torch.Tensor, precision: str = "fp32") -> Outputs:
    """One model-ready batch through the model with the recorder's hooks: float32 numpy outputs
    (logits, embedding, pooled layers). ``precision`` bf16/fp16 autocasts the forward pass."""
    recorder.captured.clear()
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(model.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with autocast:
        logits = model.module(batch)
    outputs = dict(recorder.captured)
    outputs["logits"] = logits
    return {key: value.detach().float().cpu().numpy() for key, value in outputs.items()}


class LocalSource:
    """Outputs of rows [start, N) computed in this process, on the model's device."""

    def __init__(self, model: LoadedModel, dataset: ImageDataset, batch_size: int = 64, num_workers: int = 0,
                 precision: str = "fp32", times: StageTimes | None = None, decode: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise ParameterError(f"Unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}.")
        self.model, self.dataset = model, dataset
        self.batch_size, self.num_workers, self.precision = batch_size, num_workers, precision
        self.times = times or StageTimes()
        self.decode = resolve_decode(decode, dataset, model.device)

    def __call__(self, layers: list[str], want_core: bool, start: int) -> Iterator[tuple[int, Outputs]]:
        model = self.model
        on_gpu = model.device.type == "cuda"
        recorder = ActivationRecorder(model, layers, want_embedding=want_core)
        row = start
        try:
            with torch.inference_mode():
                if self.decode == "torchcodec":
                    batches: Iterator[Any] = iter(torch.utils.data.DataLoader(
                        _EncodedImages(self.dataset, start), batch_size=self.batch_size, shuffle=False,
                        num_workers=self.num_workers, collate_fn=_as_list,
                        prefetch_factor=2 if self.num_workers > 0 else None,
                    ))
                else:
                    batches = image_batches(self.dataset, model, start, self.batch_size, self.num_workers, uint8=on_gpu)
                while True:
                    with self.times.stage("load"):
                        batch = next(batches, None)
                    if batch is None:
                        return
                    with self.times.stage("transfer"):
                        if self.decode == "torchcodec":  # decode, resize, crop and normalise on the device
                            images = decoded_images(self.dataset, batch, model.device)
                            batch = tensor_preprocess(images, model.input_size, model.mean, model.std)
                        else:
                            batch = batch.to(model.device, non_blocking=True)
                            if on_gpu:
                                batch = device_normalise(batch, model.mean, model.std)
                    with self.times.stage("forward"):
                        outputs = forward_outputs(model, recorder, batch, self.precision)
                    yield row, outputs
                    row += len(batch)
        finally:
            recorder.close()


class OrderedWriter:
    """Writes batches of outputs into the store's arrays from a thread of its own, so the
    device never waits for the disk. Batches may arrive in any order; ``done`` is the number
    of rows from ``start`` on that are all written (what a checkpoint may record)."""

    def __init__(self, directory: Path, files: dict[str, str], n: int, start: int,
                 arrays: dict[str, np.ndarray], times: StageTimes | None = None,
                 checkpoint: Callable[[dict[str, np.ndarray], int], None] | None = None,
                 every: float = 2.0) -> None:
        self.directory, self.files, self.n = directory, files, n
        self.arrays = arrays
        self.times = times or StageTimes()
        self.checkpoint, self.every = checkpoint, every
        self._last_checkpoint = time.monotonic()
        self.done = start
        self._finished: dict[int, int] = {}  # first row -> end row of batches written past `done`
        self._queue: queue.Queue[tuple[int, Outputs] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def put(self, row: int, outputs: Outputs) -> None:
        """Queue one batch (blocks while the queue is full); re-raises a writer failure."""
        self._raise()
        while True:
            try:
                self._queue.put((row, outputs), timeout=0.5)
                return
            except queue.Full:
                self._raise()

    def close(self) -> None:
        """Wait for every queued batch to be written, record the rows on disk (``checkpoint``);
        re-raise a writer failure."""
        self._queue.put(None)
        self._thread.join()
        if self.checkpoint is not None and self.arrays:
            self.checkpoint(self.arrays, self.done)
        self._raise()

    def prefix(self) -> int:
        with self._lock:
            return self.done

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain: the failure is reported to the producer
            try:
                with self.times.stage("write"):
                    self._write(*item)
            except BaseException as exc:  # reported by the next put() or close()
                self._error = exc

    def _write(self, row: int, outputs: Outputs) -> None:
        end = None
        for key, rel in self.files.items():
            value = outputs[key]
            end = row + value.shape[0]
            if key not in self.arrays:
                self.arrays[key] = np.lib.format.open_memmap(
                    self.directory / rel, mode="w+", dtype=np.float32, shape=(self.n, value.shape[1])
                )
            self.arrays[key][row:end] = value
        with self._lock:
            self._finished[row] = end if end is not None else row
            while self.done in self._finished:
                self.done = self._finished.pop(self.done)
        if self.checkpoint is not None and time.monotonic() - self._last_checkpoint > self.every:
            self.checkpoint(self.arrays, self.done)  # flushes, then records the rows safely on disk
            self._last_checkpoint = time.monotonic()
