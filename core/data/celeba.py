"""CelebA on disk as a dataset, read with torchvision (never downloaded); the ``celeba`` kind.

The label is one binary attribute (``target``) and all 40 attributes become metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from core.data.datasets import (
    ImageDataset,
    check_missing_policy,
    empty_frame,
    report_missing,
    stat_key,
)
from core.data.images import load_rgb
from core.errors import DataError
from core.registry import register_dataset_kind

if TYPE_CHECKING:
    from core.specs import DatasetSpec

CELEBA_SPLITS = ("train", "valid", "test", "all")
CELEBA_FILES = (
    "img_align_celeba/",
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)


class CelebADataset(ImageDataset):
    """CelebA on disk, read with torchvision (never downloaded).

    The label is one binary attribute (``target``): classes ``['not <target>', '<target>']``.
    All 40 attributes (target included) become bool attribute columns; ids are the image
    file names. Images missing from ``img_align_celeba/`` follow ``missing`` (as for CSV).
    """

    def __init__(
        self, root: str | Path, split: str = "test", target: str = "Smiling", missing: str = "skip"
    ) -> None:
        from torchvision.datasets import CelebA  # lazy: torchvision is slow to import

        check_missing_policy(missing)

        root = Path(root).expanduser()
        # Accept the celeba/ folder itself as well as its parent (what torchvision wants).
        if not (root / CelebA.base_folder).is_dir() and (root / "list_attr_celeba.txt").exists():
            root = root.parent
        self.folder = root / CelebA.base_folder
        if split not in CELEBA_SPLITS:
            raise DataError(
                f"Unknown CelebA split '{split}'. Use one of: {', '.join(CELEBA_SPLITS)}."
            )
        try:
            tv = CelebA(str(root), split=split, target_type="attr", download=False)
        except RuntimeError as exc:
            if "not found or corrupted" not in str(exc):
                raise DataError(f"Cannot read CelebA under '{self.folder}': {exc}.") from exc
            raise DataError(self._not_found_message()) from exc
        except (OSError, ValueError, IndexError, TypeError) as exc:
            raise DataError(
                f"Cannot parse the CelebA files under '{self.folder}' ({exc}). "
                "Replace them with the original files."
            ) from exc

        names = [n for n in tv.attr_names if n]
        if target not in names:
            raise DataError(
                f"'{target}' is not a CelebA attribute. Use one of: {', '.join(names)}."
            )
        images = self.folder / "img_align_celeba"
        present = np.asarray([(images / f).is_file() for f in tv.filename], dtype=bool)
        absent = [f for f, ok in zip(tv.filename, present, strict=True) if not ok]
        report_missing(absent, len(present), f"'{self.folder}/list_eval_partition.txt'", missing)
        self.skipped = [(f, "image file not found in img_align_celeba/") for f in absent]
        attr = tv.attr.numpy().astype(bool)[present]
        self.name = f"celeba-{split}"
        self.target = target
        self.classes = [f"not {target}", target]
        self.ids = [f for f, ok in zip(tv.filename, present, strict=True) if ok]
        self.labels = attr[:, names.index(target)].astype(np.int64)
        self.attributes = pd.DataFrame(attr, columns=names)
        self.ground_truth = empty_frame(len(self.ids))

    def _not_found_message(self) -> str:
        absent = [f for f in CELEBA_FILES if not (self.folder / f).exists()]
        if absent:
            state = f"Missing: {', '.join(absent)}."
        else:
            state = (
                "All files are present but torchvision's checksum of the .txt files fails "
                "(corrupted or edited copies): replace them with the original files."
            )
        return (
            f"CelebA was not found or is incomplete under '{self.folder}'. {state} "
            f"It needs {', '.join(CELEBA_FILES)} inside '{self.folder}'. BiasLens cannot "
            "download CelebA: get it from the official site (or Kaggle) and unpack it there."
        )

    def load_image(self, index: int) -> Image.Image:
        return load_rgb(self.folder / "img_align_celeba" / self.ids[index])

    def content_key(self) -> str:
        txt = [(f, self.folder / f) for f in CELEBA_FILES if f.endswith(".txt")]
        images = [(i, self.folder / "img_align_celeba" / i) for i in self.ids]
        return stat_key(txt + images)


def _build_celeba(spec: DatasetSpec) -> ImageDataset:
    if not spec.root:
        raise DataError(
            f"A '{spec.kind}' dataset needs a root folder: set root in the workspace file."
        )
    return CelebADataset(spec.root, split=spec.split, target=spec.target, missing=spec.missing)


register_dataset_kind("celeba", _build_celeba)
