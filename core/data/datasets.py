"""Image datasets as BiasLens sees them: ids, labels, class names, attributes, RGB images.

Every source (demo, ImageFolder, CSV manifest, CelebA, in-memory arrays) is an
``ImageDataset``. The activation store iterates ``load_image(i)`` for i in range(len(ds)),
so row i of every store array is image i of the dataset. A dataset with planted failure
modes (the demo) describes them in ``planted_slices()``. The helpers at the end are shared
by the file-backed sources (core/data/folders.py, core/data/manifest.py, core/data/celeba.py).
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.data.images import placeholder, thumbnail
from core.errors import DataError

PLANTED_SLICE_COLUMNS = ["slice", "kind", "where", "description"]
MISSING_POLICIES = ("skip", "error")


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

    def try_load_image(self, index: int) -> tuple[Image.Image | None, str]:
        """(image, "") or (None, why it cannot be read). For display: a file deleted or
        damaged since the store was built gets a placeholder on the pages, while extraction
        (which calls ``load_image``) still stops on it."""
        try:
            return self.load_image(index), ""
        except DataError as exc:
            return None, str(exc)

    def thumbnail(self, index: int, size: int) -> np.ndarray:
        """(size, size, 3) thumbnail of image ``index``, or the missing-image placeholder
        (a grey tile with a cross and the image's id): never raises for a lost file."""
        image, _ = self.try_load_image(index)
        return placeholder(size, self.ids[index]) if image is None else thumbnail(image, size)

    def image_path(self, index: int) -> Path | None:
        """The file image ``index`` is read from, for decoders that read files themselves
        (the GPU JPEG path); None for images that are not files (arrays, generated)."""
        return None

    @abc.abstractmethod
    def content_key(self) -> str:
        """A string that changes whenever the images, labels or attributes change.

        File-backed sources use path + size + mtime per file; array-backed ones hash the
        arrays. ``fingerprint()`` hashes it together with ids, labels and classes.
        """

    def planted_slices(self) -> pd.DataFrame:
        """The failure modes planted in this dataset, one row per ``slice_<name>`` column of
        ``ground_truth``: slice (the name), kind, where (its definition) and description.
        Empty for datasets without planted slices (all but the demo)."""
        return pd.DataFrame(columns=PLANTED_SLICE_COLUMNS)

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


# --------------------------------------------------------------------------- helpers for sources


def empty_frame(n: int) -> pd.DataFrame:
    """A DataFrame with ``n`` rows and no columns (RangeIndex)."""
    return pd.DataFrame(index=pd.RangeIndex(n))


def stat_key(files: Sequence[tuple[str, Path]]) -> str:
    """path + size + mtime_ns of each (id, file), so any edited, replaced or touched file
    changes the key without reading its bytes."""
    h = hashlib.sha256()
    for ident, path in files:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(
                f"Image '{path}' is gone or unreadable since the dataset was indexed "
                f"({exc.strerror}). Restore it or reload the dataset."
            ) from exc
        h.update(f"{ident}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def check_missing_policy(missing: str) -> None:
    """DataError unless ``missing`` (what to do about listed files that are absent) is
    one of MISSING_POLICIES."""
    if missing not in MISSING_POLICIES:
        raise DataError(
            f"Unknown missing-file policy '{missing}'. Use one of: {', '.join(MISSING_POLICIES)}."
        )


def report_missing(missing_ids: list[str], total: int, where: str, missing: str) -> None:
    """Raise DataError for missing files when the policy is 'error'."""
    if missing_ids and missing == "error":
        first = ", ".join(f"'{m}'" for m in missing_ids[:5])
        raise DataError(
            f"{len(missing_ids)} of {total} images listed in {where} are missing "
            f"(first: {first}). Fix the paths or the root folder, or set missing = 'skip' "
            "to leave them out."
        )
