"""Subsets: named sets of images (store rows) with their origin, shared across pages.

Pages that find groups (cohorts, spotlights, subgroups, classes) save them; pages that
compare groups read them. One registry, two storages:

- ``SessionStorage``: a caller-provided dict (``st.session_state`` in hosted mode), so each
  visitor's subsets stay in their session;
- ``FileStorage``: a JSON file in the store's folder (``<store>/subsets.json``), so subsets
  survive reloads and server restarts. Every change re-reads the file under a file lock and
  replaces it atomically (temp file + ``os.replace``), so two sessions or processes never
  lose each other's writes, and a reader never sees a half-written file.

Nothing saved is lost by a save: an entry the registry cannot read (edited by hand, rows
beyond the store, an origin of a newer version, a reserved or repeated name) is skipped
and named in ``problem``, and every save writes it back untouched. Only ``remove`` of that
name drops it, after a dated backup copy of the file. A file of a newer format is read but
never written.

A registry reads its storage once, on first use, and answers ``names``, ``get``,
``subsets`` ... from that snapshot, so a page that lists the names and then opens one
never finds it gone because another session deleted it meanwhile; its own writes refresh
the snapshot. Make a new registry (one per rerun) to see other sessions' changes.

The file lives beside the store it indexes: its rows are that store's rows, and a rebuilt
store (new model or data) starts with no subsets.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from filelock import FileLock

from core.errors import BiasLensError, InputError
from core.methods.records import method_records

FILE_NAME = "subsets.json"
FORMAT_VERSION = 1
MAX_NAME = 120
MAX_NOTE = 5000
# The labels the pages' selects use for "no subset" (core/ui: Within, Scope, Compare, the
# saliency reference and aggregate selects, ActiVis' sort and highlight): a subset so named
# would be taken for them, so no subset may bear one, nor a variant in case or spacing.
RESERVED_NAMES = ("All images", "(none)", "All misclassified images", "Whole dataset", "(network order)")
# Store metadata columns that are not attributes (see core.store.read.RESERVED_COLUMNS).
RUN_ONLY_PARAMS = ("device", "threads", "n_jobs", "num_workers", "batch_size", "chunk", "chunk_size", "verbose")


def origins() -> tuple[str, ...]:
    """Where a subset can come from: a cohort, a finding (the Findings page), a comparison of two models, each registered
    method's origin (core.methods.records), a class, or a hand-picked list."""
    return ("cohort", "finding", "comparison", *[r.origin for r in method_records() if r.origin], "class", "manual")


def defining_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that define a subset's result, as its origin shows them: without where
    and how fast it ran (RUN_ONLY_PARAMS: device, threads, chunk sizes) and without options
    left unset (None), which subsets saved before this rule still hold."""
    return {k: v for k, v in params.items() if k not in RUN_ONLY_PARAMS and v is not None}


def params_text(params: Mapping[str, Any]) -> str:
    """``defining_params`` as one line, ``k = v, ...`` (empty when none is left)."""
    return ", ".join(f"{k} = {v}" for k, v in defining_params(params).items())


_COMPUTED = ("row", "id", "label", "label_idx", "pred", "pred_idx", "correct", "loss", "confidence", "p_true")
CSV_BASE_COLUMNS = ["subset", "origin", "query", "params", "note", "row", "id", "label", "pred", "correct", "loss"]


def _folded(name: str) -> str:
    """A name without any whitespace, case-folded: what 'the same label' means for reserved names."""
    return "".join(name.split()).casefold()


_RESERVED = frozenset(_folded(name) for name in RESERVED_NAMES)


def check_name(name: str) -> str:
    """The trimmed name, or a BiasLensError saying what is wrong with it."""
    name = str(name).strip()
    if not name:
        raise BiasLensError("Give the subset a name.")
    if len(name) > MAX_NAME:
        raise BiasLensError(f"A subset name has at most {MAX_NAME} characters; this one has {len(name)}: shorten it.")
    if re.search(r"[\x00-\x1f\x7f]", name):
        raise BiasLensError("A subset name cannot hold line breaks, tabs or other control characters: remove them.")
    if _folded(name) in _RESERVED:
        raise BiasLensError(f"'{name}' is a reserved name (the pages' selects use it for all images or for no "
                            "subset): pick another name.")
    return name


def fitted_name(text: str, prefix: str = "") -> str:
    """``prefix + text`` made a valid subset name: control characters become spaces, and a
    name over MAX_NAME characters is cut to end in '…' and 8 hex digits of the whole name's
    hash, so long names that share their start stay distinct (and the same text always gives
    the same name)."""
    name = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", f"{prefix}{text}").split())
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip()}…{digest}"


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
        """The subset an entry of subsets.json describes; InputError (a ValueError; or KeyError,
        TypeError) when it is damaged: a bad or reserved name, an unknown origin, no rows, a negative
        row, or with ``n`` (the store's images) a row beyond the store."""
        try:
            name = check_name(entry["name"])
        except BiasLensError as exc:
            raise InputError(str(exc)) from None
        created = entry.get("created_ts")
        if not isinstance(created, (int, float)):
            created = datetime.strptime(str(entry["created"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        origin = str(entry["origin"])
        if origin not in origins():
            raise InputError(f"unknown origin '{origin}' (saved by a newer BiasLens?)")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise InputError("params is not a table")
        rows = tuple(int(r) for r in np.unique(np.asarray([int(r) for r in entry["rows"]], dtype=np.int64)))
        if not rows:
            raise InputError("no rows")
        if rows[0] < 0:
            raise InputError(f"row {rows[0]} is negative")
        if n is not None and rows[-1] >= n:
            raise InputError(f"row {rows[-1]} is beyond the store's {n} images")
        return cls(
            name=name, rows=rows, origin=origin,
            detail=str(entry.get("detail", "")), created=float(created), note=str(entry.get("note", "")), params=params,
        )


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
    ``change(fn)`` applies ``fn`` to a fresh copy and stores the result, atomically
    (``damaged``: name -> what is wrong, for the entries skipped by the last read or, during
    ``fn``, by the fresh one)."""

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
        return dict(self._subsets)

    def change(self, fn: Callable[[dict[str, Subset]], Any]) -> Any:
        work = dict(self._subsets)
        result = fn(work)
        self._subsets.clear()
        self._subsets.update(work)
        return result


@dataclass
class _Content:
    """One read of subsets.json."""

    subsets: dict[str, Subset] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # name -> the entry its subset was read from
    kept: list[Any] = field(default_factory=list)  # entries that cannot be read: written back untouched
    damaged: dict[str, str] = field(default_factory=dict)  # name -> what is wrong, for kept entries with a name
    problem: str = ""
    newer: int = 0  # the file's format when it is newer than FORMAT_VERSION (then it is never written)
    unreadable: bool = False  # not JSON, or not a subsets file: kept aside whole on the next save


def _entry_name(entry: Any) -> str | None:
    if isinstance(entry, dict) and "name" in entry:
        return str(entry["name"]).strip()
    return None


# (path, store size) -> (file signature, content): reruns re-read the file only when it changed
_READ_CACHE: dict[tuple[str, int | None], tuple[tuple[int, int, int, int], _Content]] = {}


class FileStorage:
    """Subsets in a JSON file shared by every session and process on this machine."""

    def __init__(self, path: str | Path, lock_timeout: float = 30.0, n: int | None = None) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.n = n  # the store's images: an entry with a row beyond them is damaged
        self.problem = ""
        self.damaged: dict[str, str] = {}  # skipped entries with a name -> what is wrong

    def _read(self, fresh: bool = False) -> _Content:
        """The file's content (``fresh``: never from the cache, and an error reading it is
        raised, so a write never replaces a file it could not read). One open file is stat-ed
        and read, so the signature is that of the text read even while another process
        replaces the file (the old one stays readable until closed); a file that is gone
        reads as empty."""
        key = (str(self.path), self.n)
        try:
            with open(self.path, "rb") as handle:
                s = os.fstat(handle.fileno())
                signature = (s.st_ino, s.st_mtime_ns, s.st_ctime_ns, s.st_size)
                hit = _READ_CACHE.get(key)
                if not fresh and hit is not None and hit[0] == signature:
                    return hit[1]
                text = handle.read()
        except FileNotFoundError:
            return _Content()
        except OSError as exc:
            if fresh:
                raise
            return _Content(problem=f"The saved subsets file {self.path.name} cannot be read ({exc.strerror or exc}).")
        content = self._parse(text)
        _READ_CACHE[key] = (signature, content)
        return content

    def _parse(self, text: bytes) -> _Content:
        name = self.path.name
        try:
            data = json.loads(text.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            return _Content(problem=f"The saved subsets file {name} cannot be read ({exc}); it is kept aside on the next save.",
                            unreadable=True)
        if not isinstance(data, dict) or not isinstance(data.get("subsets"), list):
            return _Content(problem=f"The saved subsets file {name} is not a subsets file; it is kept aside on the next save.",
                            unreadable=True)
        content = _Content()
        version = data.get("format")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            content.newer = version
        bad: list[str] = []
        for entry in data["subsets"]:
            entry_name = _entry_name(entry)
            try:
                subset = Subset.from_json(entry, self.n)
                if subset.name in content.subsets:
                    raise InputError("a second entry with this name (rename it in the file to see it)")
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                reason = str(exc) if isinstance(exc, ValueError) else "unreadable"
                bad.append(f"'{entry_name}': {reason}" if entry_name is not None else reason)
                if entry_name is not None:
                    content.damaged[entry_name] = reason
                content.kept.append(entry)
                continue
            content.subsets[subset.name] = subset
            content.raw[subset.name] = entry
        problems = []
        if content.newer:
            problems.append(f"The saved subsets file {name} was written by a newer BiasLens (format {content.newer}): "
                            "it is shown read-only here, and saving is refused so that nothing it holds is lost.")
        if bad:
            problems.append(
                f"{len(bad)} damaged subset entr{'y was' if len(bad) == 1 else 'ies were'} skipped in {name} "
                f"(first: {bad[0]}); they stay in the file untouched: fix them there, or delete them by name."
            )
        content.problem = " ".join(problems)
        return content

    def load(self) -> dict[str, Subset]:
        content = self._read()
        self.problem, self.damaged = content.problem, dict(content.damaged)
        return dict(content.subsets)

    def change(self, fn: Callable[[dict[str, Subset]], Any], forget: str | None = None) -> Any:
        """Apply ``fn`` under the lock and write the result, with the unreadable entries kept;
        ``forget``: drop the damaged entries of that name when the file holds no readable subset of it
        (after a dated backup copy of the file)."""
        try:
            return self._change(fn, forget)
        except OSError as exc:  # a read-only or full disk: say so, keep the page alive
            raise BiasLensError(f"The subsets could not be saved in {self.path.parent.name}: {exc.strerror or exc}.") from None

    def _aside(self, kind: str) -> Path:
        """A new dated path beside the file, e.g. ``subsets.backup-20260101T120000Z.json``."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path, i = self.path.with_name(f"{self.path.stem}.{kind}-{stamp}.json"), 1
        while path.exists():
            i += 1
            path = self.path.with_name(f"{self.path.stem}.{kind}-{stamp}-{i}.json")
        return path

    def _change(self, fn: Callable[[dict[str, Subset]], Any], forget: str | None) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock = FileLock(str(self.path) + ".lock", timeout=self.lock_timeout)
            lock.acquire()
        except TimeoutError:
            raise BiasLensError("The saved subsets are busy (another session is writing them); try again.") from None
        try:
            content = self._read(fresh=True)  # always the file's current content, never a cache
            if content.newer:
                raise BiasLensError(
                    f"The saved subsets file {self.path.name} was written by a newer BiasLens (format {content.newer}); "
                    "this version only reads it, so that nothing it holds is lost. Save with the newer version, "
                    "or move the file away to start afresh."
                )
            if content.unreadable:
                self.path.replace(self._aside("damaged"))
            self.damaged = dict(content.damaged)
            before = dict(content.subsets)
            subsets = dict(content.subsets)
            result = fn(subsets)
            kept = content.kept
            if forget is not None and forget not in before and any(_entry_name(e) == forget for e in kept):
                shutil.copy2(self.path, self._aside("backup"))  # the damaged entry stays in the copy
                kept = [e for e in kept if _entry_name(e) != forget]
            entries = [content.raw[key] if before.get(key) is s else s.to_json() for key, s in subsets.items()]
            self._write({"format": FORMAT_VERSION, "subsets": entries + kept})
            return result
        finally:
            lock.release()

    def _write(self, payload: dict[str, Any]) -> None:
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


class SubsetRegistry:
    """Subsets of one workspace.

    ``SubsetRegistry(state, workspace_key)`` keeps them in a dict-like state (a session);
    ``SubsetRegistry.in_folder(store_path)`` in the store folder's ``subsets.json``.
    Reads come from a snapshot taken on first use (see the module's docstring).
    """

    def __init__(self, storage: MutableMapping[str, Any] | SubsetStorage, workspace_key: str | None = None) -> None:
        if isinstance(storage, (SessionStorage, FileStorage)):
            self.storage: SubsetStorage = storage
        else:
            if workspace_key is None:
                raise TypeError("a dict-like storage needs a workspace key")  # programming error: our callers pass one
            self.storage = SessionStorage(storage, workspace_key)
        self._snapshot: tuple[dict[str, Subset], str, dict[str, str]] | None = None

    @classmethod
    def in_folder(cls, folder: str | Path, n: int | None = None) -> SubsetRegistry:
        """The subsets.json of a store folder; ``n``, the store's images, refuses rows beyond it."""
        return cls(FileStorage(Path(folder) / FILE_NAME, n=n))

    @property
    def persistent(self) -> bool:
        return isinstance(self.storage, FileStorage)

    def _view(self) -> tuple[dict[str, Subset], str, dict[str, str]]:
        """(subsets, problem, damaged) as read once, until this registry writes."""
        if self._snapshot is None:
            subsets = self.storage.load()
            self._snapshot = (subsets, self.storage.problem, dict(self.storage.damaged))
        return self._snapshot

    def _change(self, fn: Callable[[dict[str, Subset]], Any], forget: str | None = None) -> Any:
        try:
            if forget is not None and isinstance(self.storage, FileStorage):
                return self.storage.change(fn, forget)
            return self.storage.change(fn)
        finally:
            self._snapshot = None  # the next read sees this write (and any other since)

    def damaged(self, name: str) -> str:
        """What is wrong with the saved entry ``name`` when it was skipped as damaged ('' otherwise)."""
        return self._view()[2].get(name, "")

    @property
    def problem(self) -> str:
        """A message about a damaged file or damaged entries ('' when none)."""
        return self._view()[1]

    def _build(self, name: str, rows: Any, origin: str, detail: str = "", params: dict[str, Any] | None = None,
               note: str = "") -> Subset:
        """A checked subset; BiasLensError for a bad name, an empty set, an unknown origin or rows outside the store."""
        name = check_name(name)
        if origin not in origins():
            raise BiasLensError(f"Unknown subset origin '{origin}'; use one of {', '.join(origins())}.")
        unique = tuple(int(r) for r in np.unique(np.asarray(rows, dtype=np.int64)))
        if not unique:
            raise BiasLensError("A subset needs at least one image; this one is empty: pick a finding that holds images.")
        if unique[0] < 0:
            raise BiasLensError("Subset rows are store rows: they cannot be negative. Use rows 0 or more.")
        n = getattr(self.storage, "n", None)
        if n is not None and unique[-1] >= n:
            raise BiasLensError(f"Subset rows are store rows 0..{n - 1}; this set has row {unique[-1]}: use rows of this store only.")
        return Subset(name=name, rows=unique, origin=origin, detail=str(detail), note=self._check_note(note),
                      params=_plain(params))

    def _taken(self, name: str, subsets: dict[str, Subset]) -> str:
        """Why ``name`` cannot be given to a new subset without overwriting ('' when it is free)."""
        if name in subsets:
            return f"A subset named '{name}' exists: pick another name or delete it first."
        if name in self.storage.damaged:
            return (f"A damaged saved entry is named '{name}' ({self.storage.damaged[name]}): pick another name, "
                    "or fix or delete that entry.")
        return ""

    def add(
        self, name: str, rows: Any, origin: str, detail: str = "", overwrite: bool = False,
        params: dict[str, Any] | None = None, note: str = "",
    ) -> Subset:
        """Save a subset; refuses bad names, empty sets, unknown origins and silent overwrites."""
        return self.add_many([{"name": name, "rows": rows, "origin": origin, "detail": detail, "params": params,
                               "note": note}], overwrite=overwrite)[0]

    def add_many(self, specs: Iterable[Mapping[str, Any]], overwrite: bool = False) -> list[Subset]:
        """Save several subsets at once, or none: each spec holds ``add``'s arguments (name,
        rows, origin and optionally detail, params, note). Every subset is checked first, then
        all are written in one locked change; the first problem is a BiasLensError that names
        the subset, and nothing is saved."""
        specs = list(specs)
        built: list[Subset] = []
        for i, spec in enumerate(specs):
            try:
                subset = self._build(**spec)
                if any(s.name == subset.name for s in built):
                    raise BiasLensError(f"The name '{subset.name}' is given twice: give each subset its own name.")
            except BiasLensError as exc:
                raise BiasLensError(self._which(i, len(specs), spec, exc)) from None
            built.append(subset)

        def put(subsets: dict[str, Subset]) -> list[Subset]:
            for i, subset in enumerate(built):
                taken = self._taken(subset.name, subsets)
                if taken and not overwrite:  # an overwritten damaged entry stays in the file, still named
                    raise BiasLensError(self._which(i, len(built), specs[i], taken))
            for subset in built:
                subsets[subset.name] = subset
            return built

        return self._change(put)

    @staticmethod
    def _which(i: int, count: int, spec: Mapping[str, Any], problem: Any) -> str:
        if count == 1:
            return str(problem)
        return f"Subset {i + 1} of {count} ('{str(spec.get('name', '')).strip()[:40]}'): {problem} None of the {count} was saved."

    def remove(self, name: str) -> None:
        """Delete a subset; a name that only damaged entries bear deletes those entries (the
        file is copied to a dated backup first)."""
        self._change(lambda subsets: subsets.pop(name, None), forget=name)

    def rename(self, old: str, new: str) -> Subset:
        """Give a subset a new name, keeping its place in the list; refuses a taken name."""
        new = check_name(new)

        def move(subsets: dict[str, Subset]) -> Subset:
            if old not in subsets:
                raise BiasLensError(f"No subset named '{old}': pick one of the saved subsets.")
            if new == old:
                return subsets[old]
            taken = self._taken(new, subsets)
            if taken:
                raise BiasLensError(taken)
            items = [(new, replace(s, name=new)) if k == old else (k, s) for k, s in subsets.items()]
            subsets.clear()
            subsets.update(items)
            return subsets[new]

        return self._change(move)

    @staticmethod
    def _check_note(note: str) -> str:
        note = str(note).strip()
        if len(note) > MAX_NOTE:
            raise BiasLensError(f"A note has at most {MAX_NOTE:,} characters; this one has {len(note):,}: shorten it.")
        return note

    def set_note(self, name: str, note: str) -> Subset:
        note = self._check_note(note)

        def write(subsets: dict[str, Subset]) -> Subset:
            if name not in subsets:
                raise BiasLensError(f"No subset named '{name}': pick one of the saved subsets.")
            subsets[name] = replace(subsets[name], note=note)
            return subsets[name]

        return self._change(write)

    def get(self, name: str) -> Subset:
        subsets = self._view()[0]
        if name not in subsets:
            raise BiasLensError(f"No subset named '{name}': pick one of the saved subsets.")
        return subsets[name]

    def names(self) -> list[str]:
        return list(self._view()[0])

    def subsets(self) -> list[Subset]:
        return list(self._view()[0].values())

    def __len__(self) -> int:
        return len(self._view()[0])

    def __contains__(self, name: object) -> bool:
        return name in self._view()[0]

    def summary(self) -> pd.DataFrame:
        """One line per subset: name, size, origin, detail, note, created."""
        columns = ["name", "size", "origin", "detail", "note", "created"]
        return pd.DataFrame(
            [
                {"name": s.name, "size": len(s), "origin": s.origin, "detail": s.detail, "note": s.note,
                 "created": s.created_text}
                for s in self.subsets()
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
    return hashlib.sha1(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]
