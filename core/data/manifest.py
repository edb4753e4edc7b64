"""CSV manifests as datasets: one row per image with a path, a label and attributes; the
``csv`` kind.

Only empty cells (and the strings in ``na_values``) are missing, header names are made
unique, and rows that cannot be used are skipped and listed; a file that cannot be read
as a manifest raises DataError naming the file and column.
"""

from __future__ import annotations

from collections.abc import Sequence
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

PATH_COLUMN_CANDIDATES = ("path", "file", "filename", "image", "img")


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
        check_missing_policy(missing)
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
        report_missing(missing_ids, len(df), f"'{self.csv_path}'", missing)

        kept_labels = labels.iloc[keep]
        self.classes = _sorted_classes(kept_labels.unique())
        index = {c: k for k, c in enumerate(self.classes)}
        self.ids = paths.iloc[keep].tolist()
        self.labels = kept_labels.map(index).to_numpy(dtype=np.int64)
        self.attributes = df[attribute_columns].iloc[keep].reset_index(drop=True)
        self.ground_truth = empty_frame(len(self.ids))

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

    def image_path(self, index: int) -> Path:
        return self.root / self.ids[index]

    def content_key(self) -> str:
        return stat_key([(i, self.root / i) for i in self.ids])


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


def _build_csv(spec: DatasetSpec) -> ImageDataset:
    if not spec.csv:
        raise DataError("A 'csv' dataset needs a csv file: set csv in the workspace file.")
    return CsvManifestDataset(
        spec.csv,
        root=spec.root or None,
        path_column=spec.path_column,
        label_column=spec.label_column,
        attribute_columns=spec.attribute_columns,
        missing=spec.missing,
        na_values=spec.na_values,
    )


register_dataset_kind("csv", _build_csv)
