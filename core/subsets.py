"""Subsets: named sets of images (store rows) with their origin, shared across pages.

Pages that find groups (cohorts, spotlights, subgroups, classes) save them; pages that
compare groups read them. One registry, two storages:

- ``SessionStorage``: a caller-provided dict (``st.session_state`` in hosted mode), so each
  visitor's subsets stay in their session;
- ``FileStorage``: a JSON file in the store's folder (``<store>/subsets.json``), so subsets
  survive reloads and server restarts. Every change re-reads the file under a file lock and
  replaces it atomically (temp file + ``os.replace``), so two sessions or processes never
  lose each other's writes, and a reader never sees a half-written file.

The file lives beside the store it indexes: its rows are that store's rows, and a rebuilt
store (new model or data) starts with no subsets.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from filelock import FileLock

from core.errors import BiasLensError

ORIGINS = ("cohort", "spotlight", "subgroup", "saliency", "activis", "class", "manual")
FILE_NAME = "subsets.json"
FORMAT_VERSION = 1
MAX_NAME = 120
MAX_NOTE = 5000
# Store metadata columns that are not attributes (see core.store.RESERVED_COLUMNS).
_COMPUTED = ("row", "id", "label", "label_idx", "pred", "pred_idx", "correct", "loss", "confidence", "p_true")
CSV_BASE_COLUMNS = ["subset", "origin", "query", "params", "note", "row", "id", "label", "pred", "correct", "loss"]


@dataclass(frozen=True)
class Subset:
    """A named set of store rows; ``origin`` says which kind of finding made it, ``detail``
    how (the WHERE query, or the method and its choice), ``params`` the method's parameters."""

    name: str
    rows: tuple[int, ...]
    origin: str
    detail: str = ""
    created: float = field(default_factory=time.time)
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def created_text(self) -> str:
        """Creation time as ISO 8601 UTC, to the second."""
        return datetime.fromtimestamp(self.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "origin": self.origin, "detail": self.detail, "params": self.params,
            "note": self.note, "created": self.created_text, "created_ts": self.created, "rows": list(self.rows),
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], n: int | None = None) -> Subset:
        """The subset an entry of subsets.json describes; ValueError (or KeyError, TypeError)
        when it is damaged: no rows, a negative row, or with ``n`` (the store's images) a row
        beyond the store."""
        created = entry.get("created_ts")
        if not isinstance(created, (int, float)):
            created = datetime.strptime(str(entry["created"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        origin = str(entry["origin"])
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin '{origin}'")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError("params is not a table")
        rows = tuple(int(r) for r in np.unique(np.asarray([int(r) for r in entry["rows"]], dtype=np.int64)))
        if not rows:
            raise ValueError("no rows")
        if rows[0] < 0:
            raise ValueError(f"row {rows[0]} is negative")
        if n is not None and rows[-1] >= n:
            raise ValueError(f"row {rows[-1]} is beyond the store's {n} images")
        return cls(
            name=str(entry["name"]), rows=rows, origin=origin,
            detail=str(entry.get("detail", "")), created=float(created), note=str(entry.get("note", "")), params=params,
        )


def check_name(name: str) -> str:
    """The trimmed name, or a BiasLensError saying what is wrong with it."""
    name = str(name).strip()
    if not name:
        raise BiasLensError("Give the subset a name.")
    if len(name) > MAX_NAME:
        raise BiasLensError(f"A subset name has at most {MAX_NAME} characters; this one has {len(name)}.")
    if re.search(r"[\x00-\x1f\x7f]", name):
        raise BiasLensError("A subset name cannot hold line breaks, tabs or other control characters.")
    return name


def _plain(params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` as plain JSON values (numpy numbers become numbers, anything else text)."""
    if not params:
        return {}

    def default(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        return str(value)

    plain = json.loads(json.dumps(params, default=default, allow_nan=True))
    return {str(k): (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in plain.items()}


class SubsetStorage(Protocol):
    """Where a registry keeps its subsets: ``load`` reads them (name -> Subset, in order),
    ``change(fn)`` applies ``fn`` to a fresh copy and stores the result, atomically."""

    problem: str
    damaged: dict[str, str]

    def load(self) -> dict[str, Subset]: ...

    def change(self, fn: Callable[[dict[str, Subset]], Any]) -> Any: ...


class SessionStorage:
    """Subsets in a dict-like state (one browser session's ``st.session_state``)."""

    problem = ""
    damaged: dict[str, str] = {}  # noqa: RUF012 - never written: a session holds no damaged entries

    def __init__(self, state: MutableMapping[str, Any], workspace_key: str) -> None:
        self._subsets: dict[str, Subset] = state.setdefault(f"subsets:{workspace_key}", {})

    def load(self) -> dict[str, Subset]:
        return self._subsets

    def change(self, fn: Callable[[dict[str, Subset]], Any]) -> Any:
        work = dict(self._subsets)
        result = fn(work)
        self._subsets.clear()
        self._subsets.update(work)
        return result


# (path, store size) -> (file signature, subsets, problem, damaged): reruns re-read the file only when it changed
_READ_CACHE: dict[tuple[str, int | None], tuple[tuple[int, int, int, int], dict[str, Subset], str, dict[str, str]]] = {}


class FileStorage:
    """Subsets in a JSON file shared by every session and process on this machine."""

    def __init__(self, path: str | Path, lock_timeout: float = 30.0, n: int | None = None) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.n = n  # the store's images: an entry with a row beyond them is damaged
        self.problem = ""
        self.damaged: dict[str, str] = {}  # skipped entries with a name -> what is wrong

    def _signature(self) -> tuple[int, int, int, int] | None:
        try:
            s = self.path.stat()
        except FileNotFoundError:
            return None
        return (s.st_ino, s.st_mtime_ns, s.st_ctime_ns, s.st_size)

    def _parse(self) -> tuple[dict[str, Subset], str, dict[str, str]]:
        """The file's subsets, a problem message ('' when all is well) and the damaged
        entries that have a name (name -> what is wrong)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, "", {}
        except (OSError, ValueError) as exc:
            return {}, f"The saved subsets file {self.path.name} cannot be read ({exc}); it is kept aside on the next save.", {}
        if not isinstance(data, dict) or not isinstance(data.get("subsets"), list):
            return {}, f"The saved subsets file {self.path.name} is not a subsets file; it is kept aside on the next save.", {}
        subsets: dict[str, Subset] = {}
        bad: list[str] = []
        damaged: dict[str, str] = {}
        for entry in data["subsets"]:
            try:
                subset = Subset.from_json(entry, self.n)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                name = entry.get("name") if isinstance(entry, dict) else None
                reason = str(exc) if isinstance(exc, ValueError) else "unreadable"
                bad.append(f"'{name}': {reason}" if name is not None else reason)
                if name is not None:
                    damaged[str(name)] = reason
                continue
            subsets[subset.name] = subset
        problem = (
            f"{len(bad)} damaged subset entr{'y was' if len(bad) == 1 else 'ies were'} skipped in {self.path.name} "
            f"(first: {bad[0]})." if bad else ""
        )
        return subsets, problem, damaged

    def load(self) -> dict[str, Subset]:
        signature = self._signature()
        if signature is None:
            self.problem, self.damaged = "", {}
            return {}
        cached = _READ_CACHE.get((str(self.path), self.n))
        if cached is not None and cached[0] == signature:
            _, subsets, self.problem, self.damaged = cached
            return dict(subsets)
        subsets, self.problem, self.damaged = self._parse()
        _READ_CACHE[(str(self.path), self.n)] = (signature, subsets, self.problem, self.damaged)
        return dict(subsets)

    def change(self, fn: Callable[[dict[str, Subset]], Any]) -> Any:
        try:
            return self._change(fn)
        except OSError as exc:  # a read-only or full disk: say so, keep the page alive
            raise BiasLensError(f"The subsets could not be saved in {self.path.parent.name}: {exc.strerror or exc}.") from None

    def _change(self, fn: Callable[[dict[str, Subset]], Any]) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock = FileLock(str(self.path) + ".lock", timeout=self.lock_timeout)
            lock.acquire()
        except TimeoutError:
            raise BiasLensError("The saved subsets are busy (another session is writing them); try again.") from None
        try:
            subsets, problem, _ = self._parse()  # always the file's current content, never a cache
            if problem and not subsets and self.path.exists():
                self.path.replace(self.path.with_name(f"{self.path.stem}.damaged-{int(time.time())}.json"))
            result = fn(subsets)
            payload = {"format": FORMAT_VERSION, "subsets": [s.to_json() for s in subsets.values()]}
            fd, temp = tempfile.mkstemp(prefix=".subsets-", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(payload, out, separators=(",", ":"))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            signature = self._signature()
            if signature is not None:
                _READ_CACHE[(str(self.path), self.n)] = (signature, dict(subsets), "", {})
            self.problem, self.damaged = "", {}
            return result
        finally:
            lock.release()


class SubsetRegistry:
    """Subsets of one workspace.

    ``SubsetRegistry(state, workspace_key)`` keeps them in a dict-like state (a session);
    ``SubsetRegistry.in_folder(store_path)`` in the store folder's ``subsets.json``.
    """

    def __init__(self, storage: MutableMapping[str, Any] | SubsetStorage, workspace_key: str | None = None) -> None:
        if isinstance(storage, (SessionStorage, FileStorage)):
            self.storage: SubsetStorage = storage
        else:
            if workspace_key is None:
                raise TypeError("a dict-like storage needs a workspace key")
            self.storage = SessionStorage(storage, workspace_key)

    @classmethod
    def in_folder(cls, folder: str | Path, n: int | None = None) -> SubsetRegistry:
        """The subsets.json of a store folder; ``n``, the store's images, refuses rows beyond it."""
        return cls(FileStorage(Path(folder) / FILE_NAME, n=n))

    @property
    def persistent(self) -> bool:
        return isinstance(self.storage, FileStorage)

    def damaged(self, name: str) -> str:
        """What is wrong with the saved entry ``name`` when it was skipped as damaged ('' otherwise)."""
        self.storage.load()
        return self.storage.damaged.get(name, "")

    @property
    def problem(self) -> str:
        """A message about a damaged file ('' when none), after a read."""
        return self.storage.problem

    def add(
        self, name: str, rows: Any, origin: str, detail: str = "", overwrite: bool = False,
        params: dict[str, Any] | None = None, note: str = "",
    ) -> Subset:
        """Save a subset; refuses bad names, empty sets, unknown origins and silent overwrites."""
        name = check_name(name)
        if origin not in ORIGINS:
            raise BiasLensError(f"Unknown subset origin '{origin}'; use one of {', '.join(ORIGINS)}.")
        unique = tuple(int(r) for r in np.unique(np.asarray(rows, dtype=np.int64)))
        if not unique:
            raise BiasLensError("A subset needs at least one image; this one is empty.")
        if unique[0] < 0:
            raise BiasLensError("Subset rows are store rows: they cannot be negative.")
        n = getattr(self.storage, "n", None)
        if n is not None and unique[-1] >= n:
            raise BiasLensError(f"Subset rows are store rows 0..{n - 1}; this set has row {unique[-1]}.")
        subset = Subset(name=name, rows=unique, origin=origin, detail=str(detail), note=self._check_note(note),
                        params=_plain(params))

        def put(subsets: dict[str, Subset]) -> Subset:
            if name in subsets and not overwrite:
                raise BiasLensError(f"A subset named '{name}' exists: pick another name or delete it first.")
            subsets[name] = subset
            return subset

        return self.storage.change(put)

    def remove(self, name: str) -> None:
        self.storage.change(lambda subsets: subsets.pop(name, None))

    def rename(self, old: str, new: str) -> Subset:
        """Give a subset a new name, keeping its place in the list; refuses a taken name."""
        new = check_name(new)

        def move(subsets: dict[str, Subset]) -> Subset:
            if old not in subsets:
                raise BiasLensError(f"No subset named '{old}'.")
            if new == old:
                return subsets[old]
            if new in subsets:
                raise BiasLensError(f"A subset named '{new}' exists: pick another name.")
            items = [(new, replace(s, name=new)) if k == old else (k, s) for k, s in subsets.items()]
            subsets.clear()
            subsets.update(items)
            return subsets[new]

        return self.storage.change(move)

    @staticmethod
    def _check_note(note: str) -> str:
        note = str(note).strip()
        if len(note) > MAX_NOTE:
            raise BiasLensError(f"A note has at most {MAX_NOTE:,} characters; this one has {len(note):,}.")
        return note

    def set_note(self, name: str, note: str) -> Subset:
        note = self._check_note(note)

        def write(subsets: dict[str, Subset]) -> Subset:
            if name not in subsets:
                raise BiasLensError(f"No subset named '{name}'.")
            subsets[name] = replace(subsets[name], note=note)
            return subsets[name]

        return self.storage.change(write)

    def get(self, name: str) -> Subset:
        subsets = self.storage.load()
        if name not in subsets:
            raise BiasLensError(f"No subset named '{name}'.")
        return subsets[name]

    def names(self) -> list[str]:
        return list(self.storage.load())

    def subsets(self) -> list[Subset]:
        return list(self.storage.load().values())

    def __len__(self) -> int:
        return len(self.storage.load())

    def __contains__(self, name: object) -> bool:
        return name in self.storage.load()

    def summary(self) -> pd.DataFrame:
        """One line per subset: name, size, origin, detail, note, created."""
        columns = ["name", "size", "origin", "detail", "note", "created"]
        return pd.DataFrame(
            [
                {"name": s.name, "size": len(s), "origin": s.origin, "detail": s.detail, "note": s.note,
                 "created": s.created_text}
                for s in self.storage.load().values()
            ],
            columns=columns,
        )

    def to_csv(self, meta: pd.DataFrame, names: list[str] | None = None, attributes: list[str] | None = None) -> bytes:
        """CSV with one line per (subset, image): the subset, its origin, query (detail),
        parameters (JSON) and note, then the image's row, id, label, pred, correct, loss and
        attribute columns (by default every metadata column that is not computed by the
        store and not planted ground truth)."""
        if attributes is None:
            attributes = [c for c in meta.columns if c not in _COMPUTED and not str(c).startswith("slice_")]
        image_columns = ["row", "id", "label", "pred", "correct", "loss", *attributes]
        image_columns = [c for c in image_columns if c in meta.columns]
        columns = CSV_BASE_COLUMNS[:5] + image_columns
        frames = []
        for name in names if names is not None else self.names():
            subset = self.get(name)
            part = meta.iloc[list(subset.rows)][image_columns].copy()
            for i, (column, value) in enumerate(
                [("subset", subset.name), ("origin", subset.origin), ("query", subset.detail),
                 ("params", json.dumps(subset.params, sort_keys=True) if subset.params else ""), ("note", subset.note)]
            ):
                part.insert(i, column, value)
            frames.append(part)
        out = pd.concat(frames) if frames else pd.DataFrame(columns=columns)
        buffer = io.StringIO()
        out[columns].to_csv(buffer, index=False)
        return buffer.getvalue().encode()


def scope_digest(rows: Any) -> str:
    """A short stable key of a set of store rows (for caching a run scoped to a subset)."""
    import hashlib

    return hashlib.sha1(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def expand(values: Any, rows: Any, n: int, fill: float = 0.0) -> np.ndarray:
    """Map per-row values of a run scoped to ``rows`` back to all ``n`` store rows
    (``fill`` outside the scope), so galleries and saved subsets use store rows."""
    values = np.asarray(values)
    out = np.full(n, fill, dtype=values.dtype)
    out[np.asarray(rows, dtype=np.int64)] = values
    return out
