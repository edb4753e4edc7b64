"""Dataset sources: ImageFolder trees, CSV manifests, CelebA on disk and in-memory arrays.

``build_dataset(DatasetSpec(...))`` turns a workspace's dataset description into an
``ImageDataset`` (see core/datasets.py), checks it is usable and applies an optional size
limit. Every problem with the user's files raises ``DataError`` naming the file or column
and what to do; files that can simply be left out are listed in ``dataset.skipped``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.datasets import ImageDataset
from core.errors import DataError
from core.images import is_probably_image, load_rgb

KINDS = ("demo", "imagefolder", "csv", "celeba")
MISSING_POLICIES = ("skip", "error")
PATH_COLUMN_CANDIDATES = ("path", "file", "filename", "image", "img")
CELEBA_SPLITS = ("train", "valid", "test", "all")
CELEBA_FILES = (
    "img_align_celeba/",
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)
# Folders that are never classes: zip artefacts from macOS.
_IGNORED_DIRS = ("__MACOSX",)


@dataclass
class DatasetSpec:
    """How to find a dataset; the ``[dataset]`` part of a workspace entry.

    kind: 'demo' | 'imagefolder' | 'csv' | 'celeba'.
    root: image folder (imagefolder, celeba; for csv the base of relative paths,
      default the CSV's folder).
    csv: manifest file (csv only).
    path_column: manifest column of image paths; empty = first of
      PATH_COLUMN_CANDIDATES present.
    label_column: manifest column of class labels.
    attribute_columns: manifest columns kept as attributes; None = all other columns.
    missing: 'skip' drops rows whose file is missing (listed in ``skipped``), 'error'
      raises.
    split: celeba 'train' | 'valid' | 'test' | 'all'; demo 'train' | 'test'.
    target: celeba attribute used as the binary label.
    slices: demo slices TOML file; empty = the built-in one.
    limit: keep at most this many images (a deterministic, class-mixed subset).
    classes: the class order of the model's outputs (class k = output k); None = the
      source's own order (sorted folder names / label values).
    na_values: csv only: strings that mean "missing" in the path, label and attribute
      columns (compared after trimming spaces), e.g. ['NA', 'n/a']. None = only empty or
      whitespace-only cells are missing; pandas' own list ('NA', 'None', 'null', 'NaN',
      ...) is never used, so a label 'None' is a class and an attribute 'NA' is text.
    """

    kind: str
    root: str = ""
    csv: str = ""
    path_column: str = ""
    label_column: str = "label"
    attribute_columns: list[str] | None = None
    missing: str = "skip"
    split: str = "test"
    target: str = "Smiling"
    slices: str = ""
    limit: int | None = None
    classes: list[str] | None = None
    na_values: list[str] | None = None


def _empty_frame(n: int) -> pd.DataFrame:
    """A DataFrame with ``n`` rows and no columns (RangeIndex)."""
    return pd.DataFrame(index=pd.RangeIndex(n))


def _stat_key(files: Sequence[tuple[str, Path]]) -> str:
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


def _check_missing_policy(missing: str) -> None:
    if missing not in MISSING_POLICIES:
        raise DataError(
            f"Unknown missing-file policy '{missing}'. Use one of: {', '.join(MISSING_POLICIES)}."
        )


def _report_missing(missing_ids: list[str], total: int, where: str, missing: str) -> None:
    """Raise DataError for missing files when the policy is 'error'."""
    if missing_ids and missing == "error":
        first = ", ".join(f"'{m}'" for m in missing_ids[:5])
        raise DataError(
            f"{len(missing_ids)} of {total} images listed in {where} are missing "
            f"(first: {first}). Fix the paths or the root folder, or set missing = 'skip' "
            "to leave them out."
        )


class ImageFolderDataset(ImageDataset):
    """A folder with one sub-folder per class (torchvision's ImageFolder layout).

    Classes are the sorted sub-folder names (empty ones included, so class indices match
    a model trained on the same layout); images are found recursively. Hidden files and
    folders are ignored; other non-image files are skipped and listed in ``skipped``.

    Symbolic links (to files or folders, class folders included, inside the root or
    outside it) are followed once: every folder and file is identified by its device and
    inode, so a link that loops back, a second link to an indexed folder and a link (or
    hard link) to an indexed file add nothing and are listed in ``skipped`` with the path
    they duplicate. Real files and folders are indexed before links, so an image is
    listed under its own path rather than a link's. Broken links are skipped too.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            what = "does not exist" if not self.root.exists() else "is not a folder"
            raise DataError(
                f"Image folder '{self.root}' {what}. Point the workspace's dataset root at "
                "a folder with one sub-folder per class."
            )
        self.name = self.root.resolve().name or str(self.root)
        self.skipped = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(
                f"Cannot list image folder '{self.root}' ({exc.strerror}). Check its permissions."
            ) from exc
        class_dirs = []
        for e in entries:
            if not self._visible(e.name):
                continue
            if e.is_dir():  # follows links: a linked class folder is a class
                class_dirs.append(e)
            elif e.is_symlink() and not os.path.exists(e.path):
                self.skipped.append((e.name, _broken_link_reason(e.path)))
            else:
                self.skipped.append((e.name, "not inside a class sub-folder"))
        if not class_dirs:
            raise DataError(
                f"Image folder '{self.root}' has no class sub-folders. Put the images of "
                "each class in their own sub-folder, e.g. cat/001.jpg, dog/002.jpg."
            )
        self.classes = [e.name for e in class_dirs]
        walk = _FolderWalk(self.root, len(class_dirs), self._visible)
        for k, class_dir in enumerate(class_dirs):
            if class_dir.is_symlink():
                walk.pending.append((class_dir.name, class_dir.path, k))
            else:
                walk.walk_tree(class_dir.name, class_dir.path, k)
        walk.follow_links()
        self.ids = []
        labels = []
        for k, files in enumerate(walk.found):
            for rel in sorted(files):
                ok, reason = is_probably_image(self.root / rel)
                if ok:
                    self.ids.append(rel)
                    labels.append(k)
                else:
                    walk.skipped.append((rel, reason))
        self.skipped += sorted(walk.skipped)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.attributes = _empty_frame(len(self.ids))
        self.ground_truth = _empty_frame(len(self.ids))

    @staticmethod
    def _visible(name: str) -> bool:
        return not name.startswith(".") and name not in _IGNORED_DIRS

    def load_image(self, index: int) -> Image.Image:
        return load_rgb(self.root / self.ids[index])

    def content_key(self) -> str:
        return _stat_key([(i, self.root / i) for i in self.ids])


def _identity(path: str) -> tuple[int, int] | str:
    """What a path really is, links followed: (device, inode), or the real path where the
    file system has no inode numbers. Raises OSError for a broken link."""
    st = os.stat(path)
    if st.st_ino:
        return (st.st_dev, st.st_ino)
    return os.path.realpath(path)


def _broken_link_reason(path: str) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return "broken link"
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"broken link: its target '{target}' does not exist"
    except OSError as exc:
        return f"broken link to '{target}' ({exc.strerror})"
    return f"link to '{target}'"


class _FolderWalk:
    """Finds the files of an ImageFolder, following each link once.

    ``walk_tree`` indexes a folder's real sub-folders and files depth-first in name order
    and queues the links it meets in ``pending``; ``follow_links`` then follows them in
    that order (queuing the links found behind them), so real paths win over links. A
    folder or file already seen (same device and inode) is skipped with the path it was
    first indexed under.
    """

    def __init__(self, root: Path, n_classes: int, visible: Callable[[str], bool]) -> None:
        self.root = str(root)
        self.visible = visible
        self.found: list[list[str]] = [[] for _ in range(n_classes)]
        self.skipped: list[tuple[str, str]] = []
        self.pending: deque[tuple[str, str, int]] = deque()
        self.dirs: dict[tuple[int, int] | str, str] = {_identity(self.root): "."}
        self.files: dict[tuple[int, int] | str, str] = {}

    def _enter(self, rel: str, path: str) -> bool:
        """Record folder ``path`` as visited; False (with a skip) if it already was."""
        try:
            key = _identity(path)
        except OSError as exc:
            self.skipped.append((rel, f"cannot open this folder ({exc.strerror})"))
            return False
        first = self.dirs.get(key)
        if first is None:
            self.dirs[key] = rel
            return True
        shown = "the dataset root" if first == "." else f"'{first}'"
        here = os.path.realpath(os.path.dirname(path))
        target = os.path.realpath(path)
        if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
            self.skipped.append((rel, f"link loops back to {shown} (already indexed)"))
        else:
            self.skipped.append((rel, f"same folder as {shown} (already indexed)"))
        return False

    def _add_file(self, rel: str, path: str, k: int) -> None:
        try:
            key = _identity(path)
        except OSError:
            self.skipped.append((rel, _broken_link_reason(path)))
            return
        first = self.files.get(key)
        if first is not None:
            self.skipped.append((rel, f"same file as '{first}'"))
            return
        self.files[key] = rel
        self.found[k].append(rel)

    def walk_tree(self, rel: str, path: str, k: int) -> None:
        """Index folder ``path`` (shown as ``rel``) and its real sub-folders for class k."""
        stack = [(rel, path)]
        while stack:
            rel, path = stack.pop()
            if not self._enter(rel, path):
                continue
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError as exc:
                self.skipped.append((rel, f"cannot list this folder ({exc.strerror})"))
                continue
            subdirs = []
            for e in entries:
                if not self.visible(e.name):
                    continue
                sub = f"{rel}/{e.name}"
                if e.is_symlink():
                    self.pending.append((sub, e.path, k))
                elif e.is_dir(follow_symlinks=False):
                    subdirs.append((sub, e.path))
                elif e.is_file(follow_symlinks=False):
                    self._add_file(sub, e.path, k)
                else:
                    self.skipped.append((sub, "not a regular file (a pipe, socket or device)"))
            stack.extend(reversed(subdirs))

    def follow_links(self) -> None:
        """Follow the queued links once each, in the order they were found."""
        while self.pending:
            rel, path, k = self.pending.popleft()
            try:
                st = os.stat(path)
            except OSError:
                self.skipped.append((rel, _broken_link_reason(path)))
                continue
            if stat.S_ISDIR(st.st_mode):
                self.walk_tree(rel, path, k)
            elif stat.S_ISREG(st.st_mode):
                self._add_file(rel, path, k)
            else:
                self.skipped.append((rel, "link to something that is not a regular file"))


class CsvManifestDataset(ImageDataset):
    """Images listed in a CSV: one row per image with a path, a label and attributes.

    Paths are relative to ``root`` (default: the CSV's folder) or absolute. FairFace's
    label CSVs (``file,age,gender,race,service_test``) work as they are, with e.g.
    ``label_column='race'``. Rows with a missing file (policy ``missing``), an empty path
    or label, or a duplicate path are left out and listed in ``skipped``.

    Missing values: only empty (or whitespace-only) cells are missing, plus the strings
    listed in ``na_values`` (compared after trimming spaces). pandas' own list ('NA',
    'None', 'null', 'NaN', 'n/a', ...) is not used, so a label 'None' is a class and an
    attribute value 'NA' is text. A text column whose values are all numbers once its
    missing cells are set aside is read as numbers.
    """

    def __init__(
        self,
        csv_path: str | Path,
        root: str | Path | None = None,
        path_column: str = "",
        label_column: str = "label",
        attribute_columns: list[str] | None = None,
        missing: str = "skip",
        na_values: Sequence[str] | None = None,
    ) -> None:
        _check_missing_policy(missing)
        self.na_values = _check_na_values(na_values)
        self.csv_path = Path(csv_path).expanduser()
        self.root = Path(root).expanduser() if root else self.csv_path.parent
        self.name = self.csv_path.stem
        self.skipped = []
        if root and not self.root.is_dir():
            raise DataError(
                f"Image root '{self.root}' for CSV manifest '{self.csv_path}' is not a folder. "
                "Set root to the folder the CSV's paths are relative to (or leave it empty "
                "for the CSV's own folder)."
            )
        df = self._read(str_columns=(label_column, path_column, *PATH_COLUMN_CANDIDATES))
        path_column = self._path_column(df, path_column)
        self._require_columns(df, [label_column], "label column")
        if attribute_columns is None:
            attribute_columns = [c for c in df.columns if c not in (path_column, label_column)]
        self._require_columns(df, attribute_columns, "attribute column")

        paths = df[path_column].fillna("").astype(str).str.strip()
        labels = df[label_column].fillna("").astype(str).str.strip()
        # Missing cells are empty ones and, with na_values, the listed strings.
        listed = " (empty or one of na_values)" if self.na_values else ""
        keep = []
        seen: dict[str, int] = {}
        missing_ids = []
        for row, (p, lab) in enumerate(zip(paths, labels, strict=True)):
            line = row + 2  # 1-based, after the header line
            if not p:
                self.skipped.append(
                    (f"{self.csv_path.name} line {line}", f"empty '{path_column}'{listed}")
                )
            elif p in seen:
                self.skipped.append((p, f"duplicate of line {seen[p]}"))
            elif not lab:
                seen[p] = line
                self.skipped.append((p, f"empty label in column '{label_column}'{listed}"))
            else:
                seen[p] = line
                if (self.root / p).is_file():
                    keep.append(row)
                else:
                    missing_ids.append(p)
                    self.skipped.append((p, f"file not found under '{self.root}'"))
        _report_missing(missing_ids, len(df), f"'{self.csv_path}'", missing)

        kept_labels = labels.iloc[keep]
        self.classes = _sorted_classes(kept_labels.unique())
        index = {c: k for k, c in enumerate(self.classes)}
        self.ids = paths.iloc[keep].tolist()
        self.labels = kept_labels.map(index).to_numpy(dtype=np.int64)
        self.attributes = df[attribute_columns].iloc[keep].reset_index(drop=True)
        self.ground_truth = _empty_frame(len(self.ids))

    def _read(self, str_columns: Sequence[str]) -> pd.DataFrame:
        """Parse the CSV, turning every parsing failure into a DataError.

        ``str_columns`` (label and path columns, where present) are read as text, so
        labels like 3 never become '3.0' when some rows are empty. Missing cells are
        empty or whitespace-only ones and those listed in ``self.na_values`` (see the
        class docstring); blank header cells are named ``attr_column_<n>`` (n = the
        column's position in the file, from 1).
        """
        if not self.csv_path.is_file():
            raise DataError(
                f"CSV manifest '{self.csv_path}' does not exist or is not a file. "
                "Check the csv path in the workspace file."
            )
        try:
            df = pd.read_csv(
                self.csv_path,
                encoding="utf-8-sig",
                skipinitialspace=True,
                dtype={c: str for c in str_columns if c},
                keep_default_na=False,
                na_values=["", *self.na_values],
                low_memory=False,  # one type per column, not one per chunk
            )
        except pd.errors.EmptyDataError as exc:
            raise DataError(
                f"CSV manifest '{self.csv_path}' is empty. It needs a header line "
                "(e.g. path,label) and one row per image."
            ) from exc
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(
                f"Cannot parse CSV manifest '{self.csv_path}': {exc}. Save it as a "
                "comma-separated UTF-8 file with one header line."
            ) from exc
        df.columns = _header_names(df.columns)
        if df.empty:
            raise DataError(
                f"CSV manifest '{self.csv_path}' has a header but no rows. Add one row per image."
            )
        missing = {""} | {v.strip() for v in self.na_values}
        for column in df.columns:
            df[column] = _blank_to_missing(df[column], missing, reparse=column not in str_columns)
        return df

    def _columns_hint(self, df: pd.DataFrame) -> str:
        hint = f"The columns are: {', '.join(repr(c) for c in df.columns)}."
        if len(df.columns) == 1:
            hint += " Only one column was found: is the file comma-separated?"
        return hint

    def _require_columns(self, df: pd.DataFrame, names: list[str], what: str) -> None:
        absent = [n for n in names if n not in df.columns]
        if absent:
            raise DataError(
                f"CSV manifest '{self.csv_path}' has no {what} "
                f"{', '.join(repr(a) for a in absent)}. {self._columns_hint(df)} "
                f"Set the {what} in the workspace file to one of them."
            )

    def _path_column(self, df: pd.DataFrame, requested: str) -> str:
        """The requested path column, or the first candidate name present (any case)."""
        if requested:
            self._require_columns(df, [requested], "path column")
            return requested
        by_lower = {str(c).lower(): c for c in df.columns}
        for name in PATH_COLUMN_CANDIDATES:
            if name in by_lower:
                return by_lower[name]
        raise DataError(
            f"CSV manifest '{self.csv_path}' has no image path column (looked for "
            f"{', '.join(PATH_COLUMN_CANDIDATES)}). {self._columns_hint(df)} "
            "Set path_column in the workspace file."
        )

    def load_image(self, index: int) -> Image.Image:
        return load_rgb(self.root / self.ids[index])

    def content_key(self) -> str:
        return _stat_key([(i, self.root / i) for i in self.ids])


def _check_na_values(na_values: Sequence[str] | None) -> list[str]:
    """The dataset's ``na_values`` as a list of strings; DataError if it is not one."""
    if na_values is None:
        return []
    if isinstance(na_values, str) or not all(isinstance(v, str) for v in na_values):
        raise DataError(
            f"na_values must be a list of strings, e.g. na_values = [\"NA\", \"n/a\"]; "
            f"got {na_values!r}."
        )
    return list(na_values)


def _header_names(columns: Sequence[object]) -> list[str]:
    """CSV header names, trimmed; blank ones become ``attr_column_<n>`` (n = position from
    1) and repeated ones get ``.1``, ``.2``... as pandas does, so every name is unique."""
    names: list[str] = []
    for i, column in enumerate(columns):
        name = str(column).strip()
        if not name or name == f"Unnamed: {i}":  # pandas' name for a blank header cell
            name = f"attr_column_{i + 1}"
        base, n = name, 0
        while name in names:
            n += 1
            name = f"{base}.{n}"
        names.append(name)
    return names


def _blank_to_missing(column: pd.Series, missing: set[str], reparse: bool) -> pd.Series:
    """Set text cells that are blank or in ``missing`` (after trimming) to NaN.

    pandas only recognises exact matches, so ' NA ' or a tab-only cell stays text. When
    ``reparse`` and cells changed, the column is parsed again: as numbers if all the
    remaining values are numbers, as booleans if all are True/False.
    """
    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
        return column
    text = column.map(lambda v: v.strip() if isinstance(v, str) else None)
    blank = text.isin(missing)
    if not blank.any():
        return column
    column = column.mask(blank)
    if not reparse:
        return column
    present = text[~blank & text.notna()]
    try:
        return pd.to_numeric(column, errors="raise")
    except (ValueError, TypeError):
        pass
    lowered = present.str.lower()
    if len(present) and lowered.isin(["true", "false"]).all():
        flags = column.map(lambda v: v.strip().lower() == "true" if isinstance(v, str) else v)
        return flags.mask(blank).astype(object)
    return column


def _sorted_classes(values: Sequence[str]) -> list[str]:
    """Unique label strings in order: numerically if all are integers, else as text."""
    values = sorted(set(values))
    try:
        return sorted(values, key=int)
    except ValueError:
        return values


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

        _check_missing_policy(missing)

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
        _report_missing(absent, len(present), f"'{self.folder}/list_eval_partition.txt'", missing)
        self.skipped = [(f, "image file not found in img_align_celeba/") for f in absent]
        attr = tv.attr.numpy().astype(bool)[present]
        self.name = f"celeba-{split}"
        self.target = target
        self.classes = [f"not {target}", target]
        self.ids = [f for f, ok in zip(tv.filename, present, strict=True) if ok]
        self.labels = attr[:, names.index(target)].astype(np.int64)
        self.attributes = pd.DataFrame(attr, columns=names)
        self.ground_truth = _empty_frame(len(self.ids))

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
        return _stat_key(txt + images)


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
            return _empty_frame(n)
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
    _check_missing_policy(spec.missing)
    limit = spec.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"Dataset limit must be a positive whole number, got {spec.limit!r}.")
    if spec.kind in ("imagefolder", "celeba") and not spec.root:
        raise DataError(
            f"A '{spec.kind}' dataset needs a root folder: set root in the workspace file."
        )
    if spec.kind == "demo":
        from core.demo.dataset import DemoDataset  # lazy: only the demo needs it

        ds: ImageDataset = DemoDataset(
            split=spec.split, slices_file=Path(spec.slices) if spec.slices else None
        )
    elif spec.kind == "imagefolder":
        ds = ImageFolderDataset(spec.root)
    elif spec.kind == "csv":
        if not spec.csv:
            raise DataError("A 'csv' dataset needs a csv file: set csv in the workspace file.")
        ds = CsvManifestDataset(
            spec.csv,
            root=spec.root or None,
            path_column=spec.path_column,
            label_column=spec.label_column,
            attribute_columns=spec.attribute_columns,
            missing=spec.missing,
            na_values=spec.na_values,
        )
    elif spec.kind == "celeba":
        ds = CelebADataset(spec.root, split=spec.split, target=spec.target, missing=spec.missing)
    else:
        raise DataError(f"Unknown dataset kind '{spec.kind}'. Use one of: {', '.join(KINDS)}.")
    if spec.classes is not None:
        ds = order_classes(ds, spec.classes)
    ds.validate()
    if limit is not None:
        ds = limit_dataset(ds, limit)
        ds.validate()
    return ds
