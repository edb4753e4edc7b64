"""Image datasets as BiasLens sees them: ids, labels, class names, attributes, RGB images.

Every source (demo, ImageFolder, CSV manifest, CelebA, in-memory arrays) is an
``ImageDataset``. The activation store iterates ``load_image(i)`` for i in range(len(ds)),
so row i of every store array is image i of the dataset.
"""

from __future__ import annotations

import abc
import hashlib

import numpy as np
import pandas as pd
from PIL import Image

from core.errors import DataError


class ImageDataset(abc.ABC):
    """A labelled image collection with per-image attributes.

    Subclasses set, in ``__init__``:
      name: short human name of the dataset.
      classes: class names; label ``k`` means ``classes[k]``.
      ids: one unique, stable string per image (relative path, file name, or index).
      labels: int64 array (N,) of class indices.
      attributes: DataFrame with N rows (RangeIndex) of attribute columns (may have none).
      ground_truth: DataFrame with N rows of bool columns ``slice_<name>`` (demo only;
        no columns elsewhere).
      skipped: (path, reason) for each listed item dropped while loading the index
        (missing file, not an image, ...), so the UI can report them.
    """

    name: str
    classes: list[str]
    ids: list[str]
    labels: np.ndarray
    attributes: pd.DataFrame
    ground_truth: pd.DataFrame
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.ids)

    @abc.abstractmethod
    def load_image(self, index: int) -> Image.Image:
        """Return image ``index`` as an 8-bit RGB PIL image; raise DataError if unreadable."""

    @abc.abstractmethod
    def content_key(self) -> str:
        """A string that changes whenever the images, labels or attributes change.

        File-backed sources use path + size + mtime per file; array-backed ones hash the
        arrays. ``fingerprint()`` hashes it together with ids, labels and classes.
        """

    def fingerprint(self) -> str:
        """sha256 hex digest of the dataset's identity and content."""
        h = hashlib.sha256()
        h.update(type(self).__name__.encode())
        h.update("\x00".join(self.classes).encode())
        h.update("\x00".join(self.ids).encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        h.update(pd.util.hash_pandas_object(self.attributes, index=False).values.tobytes())
        h.update(self.content_key().encode())
        return h.hexdigest()

    def validate(self) -> None:
        """Raise DataError for datasets no page can use: empty, or a single class."""
        if len(self) == 0:
            detail = ""
            if self.skipped:
                detail = f" ({len(self.skipped)} listed items were skipped, e.g. {self.skipped[0][0]}: {self.skipped[0][1]})"
            raise DataError(
                f"Dataset '{self.name}' has no usable images{detail}. "
                "Check the folder or CSV paths in the workspace file."
            )
        present = np.unique(self.labels)
        if len(present) < 2:
            only = self.classes[int(present[0])] if len(present) else "?"
            raise DataError(
                f"Dataset '{self.name}' has a single class ('{only}'). A classifier audit needs "
                "at least two classes: add images of the other classes."
            )
