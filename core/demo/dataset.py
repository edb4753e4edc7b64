"""The planted-bias demo as an ImageDataset: rendered Fashion-MNIST with ground truth."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import pandas as pd
from PIL import Image

from core.data.datasets import PLANTED_SLICE_COLUMNS, ImageDataset
from core.demo.fashion import FASHION_CLASSES, fashion_digest, load_fashion_mnist
from core.demo.generator import SPLITS, RenderedSplit, render
from core.demo.spec import DEFAULT_SLICES, DemoSpec
from core.errors import DataError, WorkspaceError

__all__ = ["DEFAULT_SLICES", "DemoDataset", "rendered_split"]


def _read(slices_file: Path | None) -> tuple[Path, bytes]:
    path = Path(slices_file or DEFAULT_SLICES).resolve()
    try:
        return path, path.read_bytes()
    except OSError as exc:
        raise WorkspaceError(f"Cannot read the slices file {path}: {exc.strerror}.") from exc


@lru_cache(maxsize=4)
def _rendered(path: Path, raw: bytes, split: str, seed: int) -> RenderedSplit:
    """Render once per (file content, split, seed) and process; arrays are read-only."""
    images, labels = load_fashion_mnist(split)
    rendered = render(images, labels, DemoSpec.from_bytes(raw, path), split, seed)
    for array in (rendered.images, rendered.labels, rendered.clean_labels):
        array.setflags(write=False)
    return rendered


def rendered_split(
    split: str = "test", slices_file: Path | None = None, seed: int = 0
) -> RenderedSplit:
    """The rendered split of a slices file (default: the shipped one), cached in-process."""
    if split not in SPLITS:
        raise DataError(f"Unknown demo split '{split}': use 'train' or 'test'.")
    path, raw = _read(slices_file)
    return _rendered(path, raw, split, seed)


class DemoDataset(ImageDataset):
    """Rendered Fashion-MNIST with planted slices (ground truth in ``ground_truth``).

    ``split='test'`` (10k, attributes uniform, clean labels) is what the app audits.
    ``'train'`` (60k) carries the planted correlations, and its ``labels`` are the noisy
    ones the demo model learned from (``clean_labels`` holds the true classes).
    """

    def __init__(self, split: str = "test", slices_file: Path | None = None, seed: int = 0):
        if split not in SPLITS:
            raise DataError(f"Unknown demo split '{split}': use 'train' or 'test'.")
        path, raw = _read(slices_file)
        rendered = _rendered(path, raw, split, seed)
        self.spec = DemoSpec.from_bytes(raw, path)
        self.split = split
        self.seed = seed
        self.name = f"Planted-bias Fashion-MNIST ({split})"
        self.classes = list(FASHION_CLASSES)
        self.ids = [f"{split}-{i:05d}" for i in range(len(rendered.labels))]
        self.labels = rendered.labels
        self.clean_labels = rendered.clean_labels
        self.attributes = rendered.attributes.copy()
        self.ground_truth = rendered.ground_truth.copy()
        self.skipped = []
        self._images = rendered.images

    def load_image(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB PIL image (size set by the slices file, 32 by default)."""
        return Image.fromarray(self._images[index])

    def planted_slices(self) -> pd.DataFrame:
        """Kind, definition and description of each planted slice of the slices file."""
        rows = [
            {
                "slice": s.name,
                "kind": s.kind,
                "where": s.definition,
                "description": " ".join(s.description.split()),
            }
            for s in self.spec.slices
        ]
        return pd.DataFrame(rows, columns=PLANTED_SLICE_COLUMNS)

    def content_key(self) -> str:
        """sha256 of the slices file, seed, split and Fashion-MNIST content together."""
        h = hashlib.sha256()
        for part in (self.spec.sha256, str(self.seed), self.split, fashion_digest(self.split)):
            h.update(part.encode() + b"\x00")
        return h.hexdigest()
