"""Fashion-MNIST loader: the base images of the planted-bias demo.

The idx ``.gz`` files are looked up, in order, in ``$BIASLENS_FASHION_DIR`` (only there,
when set), Debian's ``dataset-fashion-mnist`` install, the repo's ``cache/`` folder, and
finally torchvision's download (which needs a network). A missing dataset raises a
``DataError`` saying how to install it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.errors import DataError

FASHION_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

ENV_DIR = "BIASLENS_FASHION_DIR"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(__file__).resolve().parents[2] / "cache" / "fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one gzipped idx file (big-endian header, then uint8 payload)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"Cannot read Fashion-MNIST file {path}: {exc}") from exc
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"{path} is not an idx file of uint8 with {ndim} dimension(s).")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {shape}, found {data.size} bytes.")
    return data.reshape(shape)


def _complete(folder: Path, split: str) -> bool:
    return all((folder / name).is_file() for name in _FILES[split])


def _download(split: str) -> bool:
    """Fetch Fashion-MNIST with torchvision into cache/; False when it cannot."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(CACHE_DIR.parent), train=split == "train", download=True)
    except Exception:  # offline, proxy, partial file...: fall through to the clear message
        return False
    # torchvision stores the .gz files under <root>/FashionMNIST/raw/
    raw = CACHE_DIR.parent / "FashionMNIST" / "raw"
    if not _complete(raw, split):
        return False
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for name in _FILES[split]:
        os.replace(raw / name, CACHE_DIR / name)
    return True


def find_fashion_dir(split: str) -> Path:
    """Return the folder that holds the idx files of ``split``; raise DataError if none."""
    if split not in _FILES:
        raise DataError(f"Unknown Fashion-MNIST split '{split}': use 'train' or 'test'.")
    env = os.environ.get(ENV_DIR)
    candidates = [Path(env)] if env else [SYSTEM_DIR, CACHE_DIR]
    for folder in candidates:
        if _complete(folder, split):
            return folder
    if not env and _download(split):
        return CACHE_DIR
    where = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Fashion-MNIST not found (looked in {where}; the download failed or is not "
        "allowed). The planted-bias demo needs it: install it with "
        "`apt-get install dataset-fashion-mnist` (Debian) or put the four idx .gz files "
        f"({', '.join(_FILES['train'] + _FILES['test'])}) in cache/fashion-mnist/."
    )


@lru_cache(maxsize=4)
def _load(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = _FILES[split]
    images = _read_idx(folder / image_file, 3)
    labels = _read_idx(folder / label_file, 1).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} files in {folder} do not match: images {images.shape}, "
            f"labels {labels.shape}."
        )
    if labels.max(initial=0) >= len(FASHION_CLASSES):
        raise DataError(f"Fashion-MNIST {split} labels in {folder} go beyond the 10 classes.")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 28, 28), labels int64 (N,)) of 'train' (60k) or 'test' (10k).

    Arrays are read-only and cached per process (the same folder is parsed once).
    """
    return _load(find_fashion_dir(split), split)


@lru_cache(maxsize=4)
def _digest(folder: Path, split: str) -> str:
    images, labels = _load(folder, split)
    h = hashlib.sha256(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()


def fashion_digest(split: str) -> str:
    """sha256 of the base images and labels of ``split`` (part of the demo's content key)."""
    return _digest(find_fashion_dir(split), split)
