"""Datasets from a workspace's ``dataset`` table: ``build_dataset(DatasetSpec(...))``.

``build_dataset`` looks the spec's kind up in the registry (core/registry.py), builds the
``ImageDataset`` (see core/data/datasets.py), puts its classes in the model's output order,
checks it is usable and applies an optional size limit. The built-in kinds are
``imagefolder`` (core/data/folders.py), ``csv`` (core/data/manifest.py), ``celeba``
(core/data/celeba.py) and the ``demo`` (core/demo). ``ArrayDataset`` holds images in memory
(tests, notebooks). Every problem with the user's files raises ``DataError`` naming the
file or column and what to do; files that can simply be left out are listed in
``dataset.skipped``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from core.data import celeba, folders, manifest  # noqa: F401  (each registers its dataset kind)
from core.data.datasets import ImageDataset, check_missing_policy, empty_frame
from core.errors import DataError
from core.registry import dataset_builder
from core.specs import DatasetSpec


class ArrayDataset(ImageDataset):
    """Images held in memory as a uint8 array: for tests, notebooks and the demo.

    ``images`` is (N, H, W, 3) RGB or (N, H, W) grayscale; ``labels`` are indices into
    ``classes``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        attributes: pd.DataFrame | None = None,
        ground_truth: pd.DataFrame | None = None,
        name: str = "arrays",
        ids: Sequence[str] | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or not (
            images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
        ):
            raise DataError(
                f"Dataset '{name}': images must be a uint8 array of shape (N, H, W, 3) or "
                f"(N, H, W), got {images.dtype} {images.shape}."
            )
        n = len(images)
        self.images = images
        self.name = name
        self.classes = [str(c) for c in classes]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != n:
            raise DataError(f"Dataset '{name}': {n} images but {len(self.labels)} labels.")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(
                f"Dataset '{name}': labels must be in 0..{len(self.classes) - 1} "
                f"(one per class), got {self.labels.min()}..{self.labels.max()}."
            )
        self.ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
        if len(self.ids) != n or len(set(self.ids)) != n:
            raise DataError(f"Dataset '{name}': ids must be {n} unique strings.")
        self.attributes = self._frame(attributes, n, "attributes")
        self.ground_truth = self._frame(ground_truth, n, "ground_truth")
        self.skipped = []

    def _frame(self, df: pd.DataFrame | None, n: int, what: str) -> pd.DataFrame:
        if df is None:
            return empty_frame(n)
        if len(df) != n:
            raise DataError(f"Dataset '{self.name}': {what} has {len(df)} rows for {n} images.")
        return df.reset_index(drop=True)

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def content_key(self) -> str:
        h = hashlib.sha256(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(pd.util.hash_pandas_object(self.ground_truth, index=False).values.tobytes())
        return h.hexdigest()


class _LimitedDataset(ImageDataset):
    """The images ``indices`` of another dataset, in their original order."""

    def __init__(self, base: ImageDataset, indices: np.ndarray) -> None:
        self._base = base
        self._indices = indices
        self.name = base.name
        self.classes = base.classes
        self.ids = [base.ids[i] for i in indices]
        self.labels = base.labels[indices]
        self.attributes = base.attributes.iloc[indices].reset_index(drop=True)
        self.ground_truth = base.ground_truth.iloc[indices].reset_index(drop=True)
        self.skipped = base.skipped

    def load_image(self, index: int) -> Image.Image:
        return self._base.load_image(int(self._indices[index]))

    def planted_slices(self) -> pd.DataFrame:
        return self._base.planted_slices()

    def content_key(self) -> str:
        return self._base.content_key()


def limit_dataset(ds: ImageDataset, limit: int) -> ImageDataset:
    """Keep at most ``limit`` images: those whose ids hash lowest, in their original order.

    Hash order, not "first N", because sources are sorted by class (ImageFolder) or by
    how the CSV was written, so a prefix would often hold a single class. The choice is
    deterministic and an image keeps its place in the subset when others are added.
    """
    if limit >= len(ds):
        return ds
    order = sorted(range(len(ds)), key=lambda i: hashlib.sha1(ds.ids[i].encode()).digest())
    return _LimitedDataset(ds, np.sort(np.asarray(order[:limit], dtype=np.int64)))


def order_classes(ds: ImageDataset, classes: Sequence[str]) -> ImageDataset:
    """Re-index ``ds``'s labels so class k is ``classes[k]`` (the model's output order).

    Every class present in the data must be listed; listed classes without images are
    fine (a model may have more outputs than the data has classes).
    """
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise DataError("The dataset's `classes` list has duplicates: list each class once.")
    present = {ds.classes[k] for k in np.unique(ds.labels)}
    unknown = sorted(present - set(classes))
    if unknown:
        raise DataError(
            f"Dataset '{ds.name}' has classes {', '.join(unknown)} that are not in its `classes` "
            "list: add them in the model's output order."
        )
    position = {name: k for k, name in enumerate(classes)}
    mapping = np.array([position.get(name, -1) for name in ds.classes], dtype=np.int64)
    ds.labels = mapping[ds.labels]
    ds.classes = classes
    return ds


def build_dataset(spec: DatasetSpec) -> ImageDataset:
    """Build, validate and (optionally) limit the dataset ``spec`` describes.

    Raises DataError for an unknown kind, missing settings, unreadable sources, or a
    dataset that is empty or has a single class.
    """
    check_missing_policy(spec.missing)
    limit = spec.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"Dataset limit must be a positive whole number, got {spec.limit!r}.")
    ds = dataset_builder(spec.kind)(spec)
    if spec.classes is not None:
        ds = order_classes(ds, spec.classes)
    ds.validate()
    if limit is not None:
        ds = limit_dataset(ds, limit)
        ds.validate()
    return ds
