"""Tiny models and data shared by the tests (importable from subprocesses as tests.support)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits
from torch import nn

from core.data.sources import ArrayDataset
from core.models.loading import LoadedModel, ModelSpec, load_model
from core.services.runqueue import RunQueue

SIZE = 16


class TinyCNN(nn.Module):
    """Three conv blocks, a hidden linear layer (the embedding's source) and a head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 12)
        self.head = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block3(self.block2(self.block1(x)))).flatten(1)
        return self.head(torch.relu(self.fc1(x)))


def make_tiny_cnn() -> nn.Module:
    """Entry-point factory with fixed weights (seeded), so every process builds the same model."""
    torch.manual_seed(0)
    return TinyCNN()


def tiny_model_spec() -> ModelSpec:
    return ModelSpec(
        kind="entrypoint", entrypoint="tests.support:make_tiny_cnn", input_size=SIZE,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    )


def tiny_model() -> LoadedModel:
    return load_model(tiny_model_spec(), "cpu")


def digits_arrays(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """sklearn's 8x8 digits rendered as 16x16 RGB, tinted red or blue at random."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = digits.images[:n] / 16.0
    images = np.kron(images, np.ones((2, 2)))  # 8x8 -> 16x16
    tint = rng.choice(["red", "blue"], size=len(images))
    colour = np.where(tint[:, None] == "red", [[1.0, 0.3, 0.3]], [[0.3, 0.3, 1.0]])
    rgb = (images[..., None] * colour[:, None, None, :] * 255).astype(np.uint8)
    attributes = pd.DataFrame({"tint": tint, "parity": np.where(digits.target[:n] % 2, "odd", "even")})
    return rgb, digits.target[:n].astype(np.int64), attributes


def digits_dataset(n: int = 240, seed: int = 0) -> ArrayDataset:
    images, labels, attributes = digits_arrays(n, seed)
    return ArrayDataset(images, labels, [str(d) for d in range(10)], attributes=attributes, name="digits")


def make_single_linear() -> nn.Module:
    """Entry-point factory of a model with one layer: flatten, then one nn.Linear to 10 logits."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 10))


@contextlib.contextmanager
def slots_held(queue: RunQueue, count: int = 1, release_after_s: float | None = None) -> Iterator[None]:
    """Hold ``count`` places of a run queue from other threads (visitors with runs going) for
    the ``with`` block, or until ``release_after_s`` seconds have passed."""
    release = threading.Event()
    started = threading.Barrier(count + 1)

    def hold(i: int) -> None:
        with queue.run(f"another visitor {i}"):
            started.wait(10)
            release.wait(30)

    workers = [threading.Thread(target=hold, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    timer = threading.Timer(release_after_s, release.set) if release_after_s is not None else None
    try:
        started.wait(10)
        if timer is not None:
            timer.start()
        yield
    finally:
        release.set()
        if timer is not None:
            timer.cancel()
        for worker in workers:
            worker.join()


def failing_switch(monkeypatch, owner: object, name: str, error: BaseException, on: bool) -> dict[str, bool]:
    """Replace ``owner.name`` by a wrapper that raises ``error`` while the returned switch's
    ``"on"`` is True and calls the real one otherwise (a run that fails after a good one)."""
    real, switch = getattr(owner, name), {"on": on}

    def maybe_failing(*args, **kwargs):
        if switch["on"]:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, maybe_failing)
    return switch
