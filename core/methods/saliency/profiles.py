"""The dataset's filter saliency profiles, kept with the activation store.

Parameter-space saliency (Levin et al.) standardises every image's filter profile s(x)
(core/methods/saliency/filters.py, eq. 1) against the mean mu and standard deviation sigma of the profiles
over the whole dataset (eq. 2). Computing a profile needs a per-sample backward pass, so
the dataset's profiles are computed once, with progress, and kept on disk beside the store
they belong to::

    <store dir>/saliency/<key>/     key = hash(store fingerprint, conv layers, PROFILE_VERSION)
        manifest.json     written LAST: without it the profiles are incomplete and never read
        profiles.f16      (N, F) float16 raw memmap of s * scale (see below)
        scale.npy         (F,) float32 powers of two: stored value = s_f * scale_f
        index.json        the FilterIndex (layers, counts, sizes) of the F columns
        stats.npz         mu, sigma (F,) float64 of the whole dataset, from the float32 profiles
        progress.json     while building: rows safely on disk (with stats.partial.npz)
        .lock             file lock: two processes never build the same profiles

Saliency values span many orders of magnitude (1e-8 .. 10 on the demo) and float16 has
full precision only above 6e-5, so each column is stored times a power of two (exact in
floating point) chosen from the first batch so its largest value there is about 1. The
statistics are computed from the float32 profiles before the cast, with ``ProfileStats``
(Chan/Welford), whose state is checkpointed so a resumed build gives the same figures.

``nearest`` finds an image's neighbours in saliency space by cosine similarity of z
(the paper's nearest-neighbour view), in chunks over the memmap.

The paper takes the fine-tuning check's neighbours from an independent set, profiled with
the model under audit and standardised against the audited dataset (Sec. 3.3):
``build_independent`` runs another image set through this store's model into a store of its
own (predictions and losses, no layers) with its profiles, beside this one::

    <store dir>/saliency/independent/stores/<store dir name>-<set>-<fingerprint>/   its store
        saliency/<key>/   its profiles, as above

and ``nearest_in`` searches them with this dataset's mu and sigma.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data.datasets import ImageDataset
from core.errors import BiasLensError, DataError, InputError, StoreError
from core.methods.saliency.filters import (
    FilterIndex,
    ProfileStats,
    conv_filters,
    filter_profiles,
    resolve_method,
    standardise,
)
from core.models.loading import LoadedModel
from core.store.build import _atomic_write_text, _locked, _read_json, build_store
from core.store.pipeline import image_batches
from core.store.read import Store, find_store, store_fingerprint

PROFILE_VERSION = 1  # bump when the profile definition or the file layout changes
SALIENCY_DIR = "saliency"
PROFILES_FILE = "profiles.f16"
CHECKPOINT_SECONDS = 2.0
FLOAT16_MAX = float(np.finfo(np.float16).max)

Progress = Callable[[int, int], None]
Notice = Callable[[str], None]


# --------------------------------------------------------------------------- keys and sizes


def profile_key(fingerprint: str, index: FilterIndex) -> str:
    """Short hash naming the profiles of a store (fingerprint) over these conv filters."""
    parts = {
        "fingerprint": fingerprint,
        "layers": list(index.layers),
        "counts": list(index.counts),
        "sizes": list(index.sizes),
        "version": PROFILE_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def profile_dir(store: Store, index: FilterIndex) -> Path:
    """Where the profiles of ``store`` over ``index`` live."""
    return store.path / SALIENCY_DIR / profile_key(store.fingerprint, index)


def profile_bytes(n_images: int, index: FilterIndex) -> int:
    """Disk bytes of the profiles: one float16 per image and filter, plus the per-filter
    scale and float64 statistics (small beside the profiles)."""
    return int(n_images) * index.n_filters * 2 + index.n_filters * (4 + 8 + 8)


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def size_message(n_images: int, index: FilterIndex) -> str:
    """One line for the user before a build: how many profiles, how wide, how big on disk."""
    layers = len(index.layers)
    return (
        f"Saliency profiles of {n_images:,} images over {index.n_filters:,} conv filters "
        f"({layers} layer{'s' if layers != 1 else ''}): about "
        f"{_human_bytes(profile_bytes(n_images, index))} on disk (float16)."
    )


# --------------------------------------------------------------------------- the reader


def _index_from_json(data: dict[str, Any]) -> FilterIndex:
    return FilterIndex(
        layers=tuple(str(x) for x in data["layers"]),
        counts=tuple(int(x) for x in data["counts"]),
        sizes=tuple(int(x) for x in data["sizes"]),
    )


def _index_to_json(index: FilterIndex) -> str:
    return json.dumps({"layers": list(index.layers), "counts": list(index.counts), "sizes": list(index.sizes)})


@dataclass
class SaliencyProfiles:
    """Complete saliency profiles opened read-only; the profiles are memory-mapped.

    ``profiles`` holds s * ``scale`` in float16; ``rows`` gives s in float32, ``z`` the
    standardised profiles against the whole dataset (or any mu, sigma).
    """

    path: Path
    manifest: dict[str, Any]
    index: FilterIndex
    profiles: np.ndarray  # (N, F) float16 memmap of s * scale
    scale: np.ndarray  # (F,) float32 powers of two
    mu: np.ndarray  # (F,) float64 over the whole dataset
    sigma: np.ndarray  # (F,) float64, unbiased, clamped (<= 1e-14 -> 1)

    @property
    def n(self) -> int:
        return int(self.profiles.shape[0])

    @property
    def n_filters(self) -> int:
        return int(self.profiles.shape[1])

    @property
    def method(self) -> str:
        """How the profiles were computed: ``vmap`` (batched) or ``loop`` (one image at a time)."""
        return str(self.manifest.get("method", "unknown"))

    def rows(self, rows: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """(R, F) float32 profiles s of the given rows (unscaled)."""
        block = np.asarray(self.profiles[rows], dtype=np.float32)
        return block / self.scale

    def z(
        self, rows: Sequence[int] | np.ndarray | slice, mu: np.ndarray | None = None, sigma: np.ndarray | None = None
    ) -> np.ndarray:
        """(R, F) float32 standardised profiles (eq. 2), against the whole dataset by default."""
        return standardise(self.rows(rows), self.mu if mu is None else mu, self.sigma if sigma is None else sigma)

    def z_affine(self, mu: np.ndarray | None = None, sigma: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) float32 with z = stored * a + b per column, for ``nearest`` on the raw memmap."""
        mu = self.mu if mu is None else np.asarray(mu, dtype=np.float64)
        sigma = self.sigma if sigma is None else np.asarray(sigma, dtype=np.float64)
        a = 1.0 / (self.scale.astype(np.float64) * sigma)
        return a.astype(np.float32), (-mu / sigma).astype(np.float32)

    def reference_stats(self, rows: Sequence[int] | np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the profiles of a reference subset (e.g. a saved subset's rows),
        unbiased and clamped like the whole dataset's. DataError for fewer than 2 rows."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) < 2:
            raise DataError(
                f"The reference set has {len(rows)} image(s); standardising saliency needs at "
                "least 2. Pick a larger subset, or use the whole dataset."
            )
        if rows[0] < 0 or rows[-1] >= self.n:
            raise DataError(f"Reference rows must lie in 0..{self.n - 1}; got {rows[0]}..{rows[-1]}.")
        stats = ProfileStats(self.n_filters)
        for start in range(0, len(rows), chunk):
            stats.update(self.rows(rows[start : start + chunk]))
        return stats.mu, stats.sigma

    def mean_by_outcome(self, correct: np.ndarray, chunk: int = 4096) -> dict[str, np.ndarray]:
        """Mean raw profile s over the correctly classified and the misclassified images, in one
        pass; an outcome with no images is left out."""
        sums = {"correct": np.zeros(self.n_filters), "misclassified": np.zeros(self.n_filters)}
        counts = {"correct": 0, "misclassified": 0}
        for start in range(0, self.n, chunk):
            block = self.rows(slice(start, start + chunk)).astype(np.float64)
            right = correct[start : start + len(block)]
            sums["correct"] += block[right].sum(axis=0)
            sums["misclassified"] += block[~right].sum(axis=0)
            counts["correct"] += int(right.sum())
            counts["misclassified"] += int((~right).sum())
        return {g: sums[g] / counts[g] for g in sums if counts[g]}


def _damaged(path: Path, why: str) -> StoreError:
    return StoreError(f"The saliency profiles at {path} are damaged ({why}); build them again.")


def _all_finite(profiles: np.ndarray, chunk_bytes: int = 1 << 25) -> bool:
    """Whether a float16 (N, F) memmap holds no NaN or infinity (a healthy build clips to the
    float16 range): read in chunks, testing the exponent bits, so a 2.7 GB file costs seconds."""
    rows = max(1, chunk_bytes // max(2 * profiles.shape[1], 1))
    for start in range(0, profiles.shape[0], rows):
        bits = np.asarray(profiles[start : start + rows]).view(np.uint16)
        if ((bits & 0x7C00) == 0x7C00).any():  # exponent all ones: inf or NaN
            return False
    return True


def check_profiles(path: Path, manifest: dict[str, Any], index: FilterIndex, profiles: np.ndarray, scale: np.ndarray,
                   mu: np.ndarray, sigma: np.ndarray, n: int | None = None, expected: FilterIndex | None = None) -> None:
    """Refuse (StoreError) profiles whose parts disagree or hold values no build writes: a
    manifest N other than the store's ``n`` or than the file's size, an index naming other
    layers than the manifest (or than ``expected``, the model's), NaN or infinite profiles,
    a scale that is not finite and positive, non-finite mu, or sigma that is not finite and
    positive (a build clamps sigma <= 1e-14 to 1)."""
    rows, f = profiles.shape
    if n is not None and rows != n:
        raise _damaged(path, f"made for {rows:,} images, the store has {n:,}")
    size = (path / PROFILES_FILE).stat().st_size
    if size != rows * f * 2:
        raise _damaged(path, f"{PROFILES_FILE} holds {size:,} bytes, not {rows:,} x {f:,} float16 values")
    if index.n_filters != f or list(manifest.get("layers") or []) != list(index.layers):
        raise _damaged(path, "its filter index names other layers than its manifest")
    if expected is not None and index != expected:
        raise _damaged(path, f"its filter index names the layers {', '.join(index.layers)}, not the model's "
                             f"{', '.join(expected.layers)}")
    if scale.shape != (f,) or mu.shape != (f,) or sigma.shape != (f,):
        raise _damaged(path, "the scale or statistics do not have one value per filter")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise _damaged(path, "a column scale is not a finite positive number")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all() and (sigma > 0).all()):
        raise _damaged(path, "mu or sigma is not finite, or sigma is not positive")
    if not _all_finite(profiles):
        raise _damaged(path, "a profile value is NaN or infinite")


def open_profiles(path: Path, n: int | None = None, index: FilterIndex | None = None) -> SaliencyProfiles:
    """Open complete profiles; StoreError if they are missing, incomplete or damaged
    (``check_profiles``; ``n``: the store's images, ``index``: the model's filters)."""
    path = Path(path)
    manifest = _read_json(path / "manifest.json")
    if manifest is None:
        raise StoreError(f"No complete saliency profiles at {path}: build them first.")
    try:
        kept = _index_from_json(json.loads((path / "index.json").read_text()))
        rows, f = int(manifest["n"]), int(manifest["n_filters"])
        if rows < 1 or f < 1:
            raise _damaged(path, f"{rows} images x {f} filters")
        profiles = np.memmap(path / PROFILES_FILE, dtype=np.float16, mode="r", shape=(rows, f))
        scale = np.load(path / "scale.npy")
        with np.load(path / "stats.npz") as stats:
            mu, sigma = stats["mu"], stats["sigma"]
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _damaged(path, str(exc)) from None
    check_profiles(path, manifest, kept, profiles, scale, mu, sigma, n, index)
    return SaliencyProfiles(path, manifest, kept, profiles, scale, mu, sigma)


def profile_problem(store: Store, model: LoadedModel, layers: Sequence[str] | None = None) -> str | None:
    """Why the profiles kept for these layers are refused (damaged, or another store's), or
    None when there are none or they open: what the page says beside its rebuild button."""
    try:
        index = conv_filters(model.module, layers)
    except BiasLensError:
        return None
    path = profile_dir(store, index)
    if not (path / "manifest.json").exists():
        return None
    manifest = _read_json(path / "manifest.json")
    if manifest is not None and manifest.get("fingerprint") != store.fingerprint:
        return f"The saliency profiles at {path} belong to another store; build them again."
    try:
        open_profiles(path, store.n, index)
    except StoreError as exc:
        return str(exc)
    return None


def find_profiles(
    store: Store, layers: Sequence[str] | None = None, model: LoadedModel | None = None
) -> SaliencyProfiles | None:
    """The complete profiles of ``store`` over ``layers``, or None when not built.

    ``layers`` as given to ``build_profiles`` (None: every conv layer). With ``model`` the
    layers are resolved exactly as the build does; without it a build matches when it was
    asked for the same ``layers`` or covers exactly these conv layers.
    """
    expected = None
    if model is not None:
        try:
            expected = conv_filters(model.module, layers)
        except BiasLensError:
            return None
        candidates = [profile_dir(store, expected)]
    else:
        root = store.path / SALIENCY_DIR
        candidates = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    wanted = None if layers is None else list(layers)
    for path in candidates:
        manifest = _read_json(path / "manifest.json")
        if manifest is None or manifest.get("fingerprint") != store.fingerprint:
            continue
        if model is None and manifest.get("requested") != wanted and manifest.get("layers") != wanted:
            continue
        try:
            return open_profiles(path, store.n, expected)
        except StoreError:
            continue
    return None


# --------------------------------------------------------------------------- the build


def _power_of_two_scale(batch: np.ndarray) -> np.ndarray:
    """(F,) float32 powers of two putting each column's largest value near 1 (1 where the
    column is all zero), so float16 keeps its full precision over the column's range."""
    top = np.abs(batch).max(axis=0).astype(np.float64)
    exponent = np.where(top > 0, -np.ceil(np.log2(np.where(top > 0, top, 1.0))), 0.0)
    return np.exp2(np.clip(exponent, -100, 100)).astype(np.float32)


def _save_partial(directory: Path, stats: ProfileStats, scale: np.ndarray, profiles: np.memmap, state: dict) -> None:
    """Flush the rows, save the running statistics, then record the rows done (last)."""
    profiles.flush()
    tmp = directory / "stats.partial.tmp.npz"
    np.savez(tmp, count=np.array(stats.count), mean=stats.mean, m2=stats.m2, scale=scale)
    os.replace(tmp, directory / "stats.partial.npz")
    _atomic_write_text(directory / "progress.json", json.dumps(state))


def _load_partial(directory: Path, key: str, n: int, f: int) -> tuple[int, ProfileStats, np.ndarray, float] | None:
    """(rows done, stats, scale, seconds so far) of an interrupted build, if it matches."""
    state = _read_json(directory / "progress.json")
    if not state or state.get("key") != key or not (directory / PROFILES_FILE).exists():
        return None
    try:
        with np.load(directory / "stats.partial.npz") as saved:
            count, mean, m2, scale = int(saved["count"]), saved["mean"], saved["m2"], saved["scale"]
    except (OSError, ValueError, KeyError):
        return None
    done = int(state.get("rows_done", -1))
    if count != done or not 0 < done <= n or mean.shape != (f,) or scale.shape != (f,):
        return None
    if (directory / PROFILES_FILE).stat().st_size != n * f * 2:
        return None
    stats = ProfileStats(f)
    stats.count, stats.mean, stats.m2 = count, mean.astype(np.float64), m2.astype(np.float64)
    return done, stats, scale.astype(np.float32), float(state.get("seconds", 0.0))


def build_profiles(
    store: Store,
    model: LoadedModel,
    dataset: ImageDataset,
    layers: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    method: str = "auto",
    progress: Progress | None = None,
    notice: Notice | None = None,
    lock_timeout: float | None = None,
) -> SaliencyProfiles:
    """Compute (or resume, or just open) the saliency profiles of every image in the store.

    L is the cross-entropy with the true label (the store's ``label_idx``); images come
    from ``dataset`` in store order. ``layers``: conv module names or block prefixes
    (None: every conv layer). ``progress(done, total)`` after each batch; ``notice`` hears
    about waiting for another process and batch lowering on out-of-memory. Safe from
    several processes: one builds, the others wait (up to ``lock_timeout`` s) and open it.
    """
    index = conv_filters(model.module, layers)
    if store_fingerprint(model, dataset) != store.fingerprint:
        raise StoreError(
            "This store was built for another model or dataset than the ones given: "
            "build the store for them first (python -m core build WORKSPACE)."
        )
    n, f = store.n, index.n_filters
    if n < 2:
        raise DataError(f"The store has {n} image(s); the saliency statistics need at least 2.")
    if len(dataset) != n:
        raise StoreError(f"The store has {n} images but the dataset {len(dataset)}; rebuild the store.")
    labels = np.array(store.meta()["label_idx"], dtype=np.int64)  # a writable copy, for torch
    if len(labels) != n:
        raise StoreError(f"The store's metadata has {len(labels)} rows for {n} images; rebuild the store.")
    key = profile_key(store.fingerprint, index)
    directory = store.path / SALIENCY_DIR / key
    directory.mkdir(parents=True, exist_ok=True)
    used = resolve_method(model.module, index, method)

    def waiting(done: int, total: int, message: str) -> None:
        if notice:
            notice(message.replace("this store", "these saliency profiles"))

    with _locked(directory, n, waiting, lock_timeout):
        if (directory / "manifest.json").exists():
            try:
                return open_profiles(directory, n, index)
            except StoreError as exc:  # damaged: built again from the start
                (directory / "manifest.json").unlink(missing_ok=True)
                for stale in ("progress.json", "stats.partial.npz"):
                    (directory / stale).unlink(missing_ok=True)
                if notice:
                    notice(f"{exc} Building them again.")
        resumed = _load_partial(directory, key, n, f)
        if resumed is None:
            for stale in ("progress.json", "stats.partial.npz"):
                (directory / stale).unlink(missing_ok=True)
            row, stats, scale, seconds = 0, ProfileStats(f), None, 0.0
            profiles = np.memmap(directory / PROFILES_FILE, dtype=np.float16, mode="w+", shape=(n, f))
        else:
            row, stats, scale, seconds = resumed
            profiles = np.memmap(directory / PROFILES_FILE, dtype=np.float16, mode="r+", shape=(n, f))
        clipped = 0
        started = time.monotonic()
        last_checkpoint = started

        def state() -> dict[str, Any]:
            return {"key": key, "rows_done": row, "method": used, "seconds": seconds + time.monotonic() - started}

        if progress:
            progress(row, n)
        try:
            for batch in image_batches(dataset, model, row, batch_size, num_workers):
                end = row + batch.shape[0]
                x = batch.to(model.device, non_blocking=True)
                y = torch.from_numpy(labels[row:end]).to(model.device)
                s = filter_profiles(model.module, x, y, index, method=method, notice=notice).cpu().numpy()
                if scale is None:
                    scale = _power_of_two_scale(s)
                stored = s * scale
                clipped += int((np.abs(stored) > FLOAT16_MAX).sum())
                profiles[row:end] = np.clip(stored, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
                stats.update(s)
                row = end
                if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS or row == n:
                    _save_partial(directory, stats, scale, profiles, state())
                    last_checkpoint = time.monotonic()
                if progress:
                    progress(row, n)
        except BaseException as exc:
            if row > 0 and scale is not None:  # rows before `row` are written: keep them
                _save_partial(directory, stats, scale, profiles, state())
            if isinstance(exc, BiasLensError):
                raise type(exc)(
                    f"{exc} The saliency build stopped at image {row} of {n}; the work done so "
                    "far is kept and the next build resumes from it."
                ) from None
            if isinstance(exc, (RuntimeError, ValueError)):
                raise StoreError(
                    f"The model failed computing saliency on images {row}..{row + batch_size - 1}: {exc}"
                ) from None
            raise
        if row < n or scale is None:
            raise StoreError(f"The saliency build ended after {row} of {n} images; run it again to resume.")
        if clipped and notice:
            notice(f"{clipped} saliency value(s) exceeded the float16 range and were clipped.")
        profiles.flush()
        del profiles
        np.save(directory / "scale.npy", scale)
        _atomic_write_text(directory / "index.json", _index_to_json(index))
        tmp = directory / "stats.tmp.npz"
        np.savez(tmp, mu=stats.mu, sigma=stats.sigma, count=np.array(stats.count))
        os.replace(tmp, directory / "stats.npz")
        manifest = {
            "version": PROFILE_VERSION,
            "key": key,
            "fingerprint": store.fingerprint,
            "n": n,
            "n_filters": f,
            "layers": list(index.layers),
            "requested": None if layers is None else list(layers),
            "method": used,
            "batch_size": batch_size,
            "clipped": clipped,
            "seconds": round(state()["seconds"], 2),
            "device": str(model.device),
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (directory / "progress.json").unlink(missing_ok=True)
        (directory / "stats.partial.npz").unlink(missing_ok=True)
        _atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=2))
    return open_profiles(directory, n, index)


# --------------------------------------------------------------------------- neighbours


def _column_block(block: np.ndarray, cols: np.ndarray | None) -> torch.Tensor:
    """A chunk of a (read-only) memmap as a tensor without a copy; it is only read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about read-only arrays
        t = torch.from_numpy(np.ascontiguousarray(block))
    if cols is None:
        return t
    if len(cols) and cols[-1] - cols[0] == len(cols) - 1 and np.all(np.diff(cols) == 1):
        return t[:, int(cols[0]) : int(cols[-1]) + 1]  # a layer range: a view, no gather
    return t[:, torch.from_numpy(cols)]


def row_norms(
    z_memmap: np.ndarray,
    columns: Sequence[int] | np.ndarray | None = None,
    affine: tuple[np.ndarray, np.ndarray] | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """(N,) float32 Euclidean norms of the rows of z (restricted to ``columns``, read through
    ``affine`` as in ``nearest``). The one full pass a cosine search needs besides the dot
    products: compute it once per (profiles, columns, reference) and pass it to ``nearest``."""
    cols = None if columns is None else np.asarray(columns, dtype=np.int64)
    a = b = None
    if affine is not None:
        a, b = (torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in affine)
        if cols is not None:
            a, b = a[torch.from_numpy(cols)], b[torch.from_numpy(cols)]
    out = np.empty(len(z_memmap), dtype=np.float32)
    for start in range(0, len(z_memmap), chunk):
        block = _column_block(z_memmap[start : start + chunk], cols).float()
        if a is not None:
            block = torch.addcmul(b, block, a)
        out[start : start + len(block)] = torch.linalg.vector_norm(block, dim=1).numpy()
    return out


def nearest(
    z_memmap: np.ndarray,
    query_z: np.ndarray,
    k: int = 10,
    columns: Sequence[int] | np.ndarray | None = None,
    rows: Sequence[int] | np.ndarray | None = None,
    chunk: int = 8192,
    *,
    query_row: int | None = None,
    affine: tuple[np.ndarray, np.ndarray] | None = None,
    norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``z_memmap`` (N, F) most cosine-similar to ``query_z`` (F,).

    ``columns`` restricts the comparison to those profile columns (e.g. a layer range, from
    ``FilterIndex.columns``); ``rows`` to candidate rows (e.g. misclassified images);
    ``query_row`` is left out of the answer. ``affine=(a, b)`` reads stored values v as
    z = v * a + b per column (``SaliencyProfiles.z_affine``), so stored, scaled profiles
    are searched without a z copy. Returns (rows, similarities), most similar first; a
    zero-norm row has similarity 0.

    The dot products are one matrix-vector product per chunk of ``chunk`` rows in the
    memmap's own dtype (float16: half the bytes to read, accumulated in float32 by torch),
    since reading the memmap is the cost. ``norms`` are the rows' norms from ``row_norms``
    for the same columns and affine; without them they are computed here (a slower pass).
    """
    n, f = z_memmap.shape
    cols = None if columns is None else np.asarray(columns, dtype=np.int64)
    if cols is not None and len(cols) == f and np.array_equal(cols, np.arange(f)):
        cols = None
    q = np.asarray(query_z, dtype=np.float64).reshape(-1)
    if q.shape[0] != f:
        raise InputError(f"query_z has {q.shape[0]} values for {f} profile columns: give one value per profile column.")
    if cols is not None:
        q = q[cols]
    q_norm = float(np.linalg.norm(q))
    q = q / q_norm if q_norm > 0 else q
    offset = 0.0  # z = v * a + b: z . q = v . (a * q) + b . q
    if affine is not None:
        a, b = (np.asarray(v, dtype=np.float64) for v in affine)
        if cols is not None:
            a, b = a[cols], b[cols]
        offset, q = float(b @ q), a * q
    dtype = torch.from_numpy(np.zeros(0, dtype=z_memmap.dtype)).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    q_max = float(np.abs(q).max()) or 1.0  # q / q_max is within float16's range
    q_t = torch.from_numpy((q / q_max).astype(np.float32)).to(dtype)
    if norms is None:
        norms = row_norms(z_memmap, cols, affine)
    norms = np.asarray(norms, dtype=np.float32)
    if len(norms) != n:
        raise InputError(f"norms has {len(norms)} values for {n} rows: compute them with row_norms on the same profiles.")
    candidates = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    if candidates is not None and query_row is not None:
        candidates = candidates[candidates != query_row]
    total = n if candidates is None else len(candidates)
    k = max(0, min(int(k), total - (1 if candidates is None and query_row is not None else 0)))
    if k == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    best_rows = np.empty(0, dtype=np.int64)
    best_sims = np.empty(0, dtype=np.float32)
    for start in range(0, total, chunk):
        if candidates is None:
            ids = np.arange(start, min(start + chunk, total))
            block = z_memmap[start : start + chunk]
        else:
            ids = candidates[start : start + chunk]
            block = z_memmap[ids]
        block_t = _column_block(block, cols)
        if block_t.dtype != dtype:
            block_t = block_t.to(dtype)
        dots = (block_t @ q_t).float().numpy().astype(np.float64) * q_max + offset
        norm = norms[ids].astype(np.float64)
        sims = np.where(norm > 0, dots / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)
        if query_row is not None and candidates is None and start <= query_row < start + len(ids):
            sims[query_row - start] = -np.inf
        take = min(k, len(ids))
        top = np.argpartition(-sims, take - 1)[:take]
        best_rows = np.concatenate([best_rows, ids[top]])
        best_sims = np.concatenate([best_sims, sims[top]])
        if len(best_rows) > k:
            keep = np.argpartition(-best_sims, k - 1)[:k]
            best_rows, best_sims = best_rows[keep], best_sims[keep]
    order = np.lexsort((best_rows, -best_sims))
    best_rows, best_sims = best_rows[order], best_sims[order]
    keep = np.isfinite(best_sims)
    return best_rows[keep], best_sims[keep]


# --------------------------------------------------------------------------- an independent image set


INDEPENDENT_DIR = "independent"  # <store dir>/saliency/independent/: stores of other image sets, with this model


def check_same_task(store: Store, dataset: ImageDataset, reference: ImageDataset, name: str) -> None:
    """Raise InputError unless ``dataset`` (another image set, called ``name``) can stand beside
    the store's: the same classes in the same order, and images of the same size as the
    store's dataset ``reference`` (so the model's transform treats both alike)."""
    if list(dataset.classes) != list(store.classes):
        raise InputError(
            f"'{name}' has the classes {', '.join(dataset.classes[:6])}{' ...' if len(dataset.classes) > 6 else ''}, "
            f"not this dataset's {', '.join(store.classes[:6])}{' ...' if len(store.classes) > 6 else ''}: pick an "
            "image set on the same classes, in the same order."
        )
    sizes = []
    for images in (dataset, reference):
        first = next((im for im in (images.try_load_image(i)[0] for i in range(min(len(images), 20))) if im is not None), None)
        sizes.append(None if first is None else first.size)
    if sizes[0] is None:
        raise InputError(f"None of the first images of '{name}' can be read: check its files.")
    if sizes[1] is not None and sizes[0] != sizes[1]:
        raise InputError(
            f"'{name}' has images of {sizes[0][0]}x{sizes[0][1]} pixels, this dataset {sizes[1][0]}x{sizes[1][1]}: "
            "pick an image set of the same input size."
        )


def independent_root(store: Store) -> Path:
    """Where the stores and profiles of other image sets, run through this store's model, live."""
    return store.path / SALIENCY_DIR / INDEPENDENT_DIR


def find_independent(
    store: Store, model: LoadedModel, dataset: ImageDataset, name: str, layers: Sequence[str] | None = None
) -> tuple[Store, SaliencyProfiles] | None:
    """The store and complete profiles of the image set ``dataset`` computed with ``model`` (the
    model under audit) beside ``store``, or None while they are not built."""
    other = find_store(f"{store.path.name}-{name}", model, dataset, root=independent_root(store))
    if other is None:
        return None
    found = find_profiles(other, layers, model=model)
    return None if found is None else (other, found)


def build_independent(
    store: Store,
    model: LoadedModel,
    dataset: ImageDataset,
    name: str,
    reference: ImageDataset,
    layers: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    notice: Notice | None = None,
) -> tuple[Store, SaliencyProfiles]:
    """Run the image set ``dataset`` (called ``name``) through the model under audit and compute
    its saliency profiles, beside ``store``: the paper takes the neighbours of the fine-tuning
    check from an independent set, profiled with the model it audits (Sec. 3.3).

    Its store (predictions and losses, no layer activations) lives under
    ``independent_root(store)``, named by its fingerprint (this model and those images); its
    profiles are raw s, standardised later against this dataset's reference (``z_affine``).
    ``reference`` is the store's own dataset (``check_same_task``). Resumes like
    ``build_profiles``.
    """
    check_same_task(store, dataset, reference, name)
    other = build_store(f"{store.path.name}-{name}", model, dataset, [], batch_size=batch_size,
                        root=independent_root(store))
    found = build_profiles(other, model, dataset, layers, batch_size=batch_size, progress=progress, notice=notice)
    return other, found


def nearest_in(
    profiles: SaliencyProfiles, query_z: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: int,
    columns: Sequence[int] | np.ndarray | None = None, rows: Sequence[int] | np.ndarray | None = None,
    leave_out: Sequence[int] | np.ndarray = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` images of another set's ``profiles`` nearest to ``query_z`` in saliency space,
    both standardised with this dataset's ``mu`` and ``sigma`` (the paper standardises against
    the validation set and searches the independent one). ``rows`` restricts the candidates
    (e.g. its misclassified images), ``leave_out`` drops some (e.g. the query's own image,
    when the set holds it too). Returns (rows, cosine similarities), most similar first."""
    candidates = np.arange(profiles.n) if rows is None else np.asarray(rows, dtype=np.int64)
    candidates = np.setdiff1d(candidates, np.asarray(leave_out, dtype=np.int64))
    affine = profiles.z_affine(mu, sigma)
    return nearest(profiles.profiles, query_z, k=k, columns=columns, rows=candidates, affine=affine,
                   norms=row_norms(profiles.profiles, columns, affine))
