"""The reduced activations the linear probes read, kept with the activation store.

Krug & Stober (Sec. 5.3) reduce each feature map of a layer to at most 8x8, by
subsampling or average pooling, and flatten it: A_l(x) in R^(C*h*w). These come from one
batched forward pass over the capped sample of the groups, kept on disk beside the store
they belong to, so a rerun reads them instead of recomputing::

    <store dir>/probes/<key>/     key = hash(store fingerprint, rows, layers, size, mode, version)
        manifest.json     written LAST: without it the arrays are incomplete and never read
        layers/<layer>.npy   (n, C*h*w) float32 per layer, rows in the order of ``rows``
        rows.npy          the store rows of the sample
        progress.json     while building: how many rows are safely on disk
        .lock             file lock: two processes never build the same arrays

``"input"`` is the normalised image itself, reduced the same way; ``"embedding"`` and
``"output"`` (the logits, which the paper's sweep ends with) are read from the store (no
forward pass). Saved arrays of more layers over the same rows serve any
subset of them, so probing fewer layers writes nothing new. ``max_new_bytes`` refuses a
build that would write more (a hosted visitor's budget, core/services/estimates.py).
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data.datasets import ImageDataset
from core.errors import BiasLensError, DataError, StoreError
from core.models.loading import LoadedModel
from core.services.estimates import HostedLimit, hook_free_copy, megabytes
from core.store.build import _atomic_write_text, _locked, _read_json
from core.store.pipeline import image_batches
from core.store.read import Store, layer_file_stem, store_fingerprint

PROBE_VERSION = 1  # bump when the reduction or the file layout changes
PROBES_DIR = "probes"
INPUT = "input"
EMBEDDING = "embedding"
OUTPUT = "output"  # the logits: the last layer of the paper's sweep
STORED = (EMBEDDING, OUTPUT)  # read from the store, never written beside it
MODES = ("subsample", "avgpool")
CHECKPOINT_SECONDS = 2.0

Progress = Callable[[int, int, str], None]


def default_probe_layers(store: Store, model: LoadedModel) -> list[str]:
    """The layers probed by default: the input, the store's conv blocks in network order, the embedding."""
    order = {name: i for i, name in enumerate(dict(model.module.named_modules()))}
    blocks = sorted(store.layers, key=lambda name: order.get(name, len(order)))
    return [INPUT, *blocks, EMBEDDING]


def probe_layer_options(store: Store, model: LoadedModel) -> list[str]:
    """Every layer the probes can read: the default sweep, then the output (the logits), as the
    paper's sweep ends."""
    return [*default_probe_layers(store, model), OUTPUT]


def reduce_map(a: torch.Tensor, size: int = 8, mode: str = "subsample") -> torch.Tensor:
    """(B, C*h'*w') float32: each feature map of ``a`` (B, C, H, W) reduced to h' = min(size, H)
    by w' = min(size, W) and flattened. ``subsample`` keeps the evenly spaced positions
    floor(i * H / h') (a strided pick when H is a multiple of h'); ``avgpool`` is adaptive
    average pooling. Outputs without a spatial extent are flattened as they are."""
    a = a.float()
    if a.dim() == 3:  # (B, C, L): a 1-D map
        a = a.unsqueeze(2)
    if a.dim() != 4:
        return a.flatten(1)
    h, w = a.shape[2], a.shape[3]
    th, tw = min(size, h), min(size, w)
    if mode == "avgpool":
        out = F.adaptive_avg_pool2d(a, (th, tw))
    else:
        rows = torch.arange(th) * h // th
        cols = torch.arange(tw) * w // tw
        out = a[:, :, rows][:, :, :, cols]
    return out.flatten(1)


def probe_key(fingerprint: str, rows: np.ndarray, layers: Sequence[str], size: int, mode: str) -> str:
    """Short hash naming the reduced activations of these rows and layers of a store."""
    parts = {
        "fingerprint": fingerprint,
        "rows": hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest(),
        "layers": list(layers),
        "size": int(size),
        "mode": mode,
        "version": PROBE_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class _Rows:
    """The chosen rows of a dataset, in order, as a dataset of their own (for image_batches)."""

    def __init__(self, dataset: ImageDataset, rows: np.ndarray) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def load_image(self, i: int) -> Any:
        return self.dataset.load_image(int(self.rows[i]))


def _first_tensor(value: Any) -> torch.Tensor:
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def _check(store: Store, model: LoadedModel, rows: np.ndarray, layers: list[str], size: int, mode: str) -> None:
    if mode not in MODES:
        raise DataError(f"Unknown reduction '{mode}'; use one of {', '.join(MODES)}.")
    if int(size) < 1:
        raise DataError(f"The reduced size must be at least 1; got {size}.")
    if not layers:
        raise DataError("Pick at least one layer to probe.")
    if len(set(layers)) < len(layers):
        raise DataError("Each layer can be picked only once.")
    if rows.ndim != 1 or len(rows) == 0:
        raise DataError("No images to compute activations for: the sample is empty.")
    if rows.min() < 0 or rows.max() >= store.n:
        raise DataError(f"Rows must lie in 0..{store.n - 1}; got {rows.min()}..{rows.max()}.")
    modules = dict(model.module.named_modules())
    unknown = [ly for ly in layers if ly not in (INPUT, *STORED) and (ly == "" or ly not in modules)]
    if unknown:
        raise StoreError(
            f"Layer(s) {', '.join(repr(u) for u in unknown)} do not exist in the model; "
            f"stored layers: {', '.join(store.layers) or 'none'}."
        )


_WIDTHS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int, str], int]] = weakref.WeakKeyDictionary()


def feature_dims(model: LoadedModel, layers: Sequence[str], size: int = 8, mode: str = "subsample") -> dict[str, int]:
    """layer -> width of its reduced activations: from one pass of a blank image through a
    private copy of the model (hooks on the shared model would meet other sessions' passes),
    once per model, layer, size and mode."""
    known = _WIDTHS.setdefault(model.module, {})
    missing = [ly for ly in layers if ly not in (INPUT, *STORED) and (ly, size, mode) not in known]
    if missing:
        twin = hook_free_copy(model.module)
        modules = dict(twin.named_modules())

        def record(name: str) -> Callable[..., None]:
            def hook(_module: Any, _args: Any, output: Any) -> None:
                known[(name, size, mode)] = int(reduce_map(_first_tensor(output).detach(), size, mode).shape[1])

            return hook

        for ly in missing:
            if ly in modules:
                modules[ly].register_forward_hook(record(ly))  # on the private copy, discarded afterwards
        with torch.inference_mode():
            twin(torch.zeros(1, 3, model.input_size, model.input_size, device=model.device))
    widths = {EMBEDDING: int(model.embedding_dim), OUTPUT: int(model.num_classes), INPUT: 3 * min(size, model.input_size) ** 2}
    return {ly: widths[ly] if ly in widths else known[(ly, size, mode)] for ly in layers
            if ly in widths or (ly, size, mode) in known}


def feature_bytes(n_rows: int, dims: dict[str, int]) -> int:
    """Disk bytes of the reduced activations of ``n_rows`` images (the embedding and the output
    are read from the store, never written)."""
    return 4 * int(n_rows) * sum(d for ly, d in dims.items() if ly not in STORED)


def _load(directory: Path, layers: list[str]) -> dict[str, np.ndarray] | None:
    manifest = _read_json(directory / "manifest.json")
    if manifest is None:
        return None
    try:
        out = {ly: np.load(directory / "layers" / f"{layer_file_stem(ly)}.npy", mmap_mode="r") for ly in layers}
    except (OSError, ValueError):
        return None
    n = int(manifest.get("n", -1))
    if any(a.shape[0] != n for a in out.values()):
        return None
    return out


def reduced_dir(store: Store, rows: np.ndarray, layers: Sequence[str], size: int = 8,
                mode: str = "subsample") -> Path | None:
    """The folder of complete saved activations that serves ``rows`` for ``layers`` (the
    embedding aside), or None: the one saved for exactly these layers, else any over the
    same rows, size and mode that holds them all. Nothing is computed."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    wanted = [str(ly) for ly in layers if ly not in STORED]
    if not wanted:
        return None
    root = store.path / PROBES_DIR
    exact = root / probe_key(store.fingerprint, rows, wanted, size, mode)
    if _load(exact, wanted) is not None:
        return exact
    if not root.is_dir():
        return None
    for directory in sorted(root.iterdir()):
        manifest = _read_json(directory / "manifest.json")
        if (manifest is None or directory == exact or manifest.get("fingerprint") != store.fingerprint
                or manifest.get("version") != PROBE_VERSION or manifest.get("size") != int(size)
                or manifest.get("mode") != mode or not set(wanted) <= set(manifest.get("layers", []))):
            continue
        try:
            same_rows = np.array_equal(np.load(directory / "rows.npy"), rows)
        except (OSError, ValueError):
            continue
        if same_rows and _load(directory, wanted) is not None:
            return directory
    return None


def find_reduced(store: Store, rows: np.ndarray, layers: Sequence[str], size: int = 8,
                 mode: str = "subsample") -> dict[str, np.ndarray] | None:
    """The saved reduced activations of ``rows`` for ``layers`` (the embedding aside), opened
    from ``reduced_dir``, or None."""
    directory = reduced_dir(store, rows, layers, size, mode)
    return None if directory is None else _load(directory, [str(ly) for ly in layers if ly not in STORED])


def reduced_activations(
    store: Store,
    model: LoadedModel,
    dataset: ImageDataset,
    rows: np.ndarray,
    layers: Sequence[str] | None = None,
    size: int = 8,
    mode: str = "subsample",
    batch_size: int = 64,
    progress: Progress | None = None,
    lock_timeout: float | None = None,
    max_new_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """layer -> (n, C*h*w) float32 reduced activations of the store ``rows`` (in that order).

    ``layers``: module names, ``"input"``, ``"embedding"`` or ``"output"`` (None: ``default_probe_layers``).
    Computed once by a batched forward pass, checkpointed (an interrupted build resumes)
    and kept under ``<store>/probes/<key>/``; later calls open the saved arrays
    (memory-mapped) without a forward pass, as do calls for fewer layers over the same rows.
    ``progress(done, total, message)`` per batch. ``max_new_bytes``: a build that would
    write more raises HostedLimit (saved arrays are always read).
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    layers = default_probe_layers(store, model) if layers is None else [str(ly) for ly in layers]
    _check(store, model, rows, layers, size, mode)
    saved_layers = [ly for ly in layers if ly not in STORED]
    out: dict[str, np.ndarray] = {}
    if saved_layers:
        key = probe_key(store.fingerprint, rows, saved_layers, size, mode)
        directory = store.path / PROBES_DIR / key
        saved = find_reduced(store, rows, saved_layers, size, mode)
        if saved is None and max_new_bytes is not None:
            needed = feature_bytes(len(rows), feature_dims(model, saved_layers, size, mode))
            if needed > max_new_bytes:
                raise HostedLimit(
                    f"These probe activations would write {megabytes(needed)} to this server's disk; this run may write "
                    f"{megabytes(max_new_bytes)}. Use fewer layers or a smaller cap per group."
                )
        if saved is None:
            if store_fingerprint(model, dataset) != store.fingerprint:
                raise StoreError(
                    "This store was built for another model or dataset than the ones given: "
                    "build the store for them first (python -m core build WORKSPACE)."
                )
            if len(dataset) != store.n:
                raise StoreError(f"The store has {store.n} images but the dataset {len(dataset)}; rebuild the store.")
            directory.mkdir(parents=True, exist_ok=True)
            with _locked(directory, len(rows), progress, lock_timeout):
                saved = _load(directory, saved_layers)
                if saved is None:
                    _build(directory, key, store, model, dataset, rows, saved_layers, size, mode, batch_size, progress)
                    saved = _load(directory, saved_layers)
            if saved is None:
                raise StoreError(f"The probe activations at {directory} could not be read back; try again.")
        out.update(saved)
    if EMBEDDING in layers:
        embedding = store.representation(EMBEDDING)
        out[EMBEDDING] = np.asarray(embedding[rows], dtype=np.float32)
    if OUTPUT in layers:
        out[OUTPUT] = np.asarray(store.logits()[rows], dtype=np.float32)
    return {ly: out[ly] for ly in layers}


def _build(
    directory: Path,
    key: str,
    store: Store,
    model: LoadedModel,
    dataset: ImageDataset,
    rows: np.ndarray,
    layers: list[str],
    size: int,
    mode: str,
    batch_size: int,
    progress: Progress | None,
) -> None:
    """One batched pass over ``rows`` writing each layer's reduced maps; resumes if it can."""
    n = len(rows)
    (directory / "layers").mkdir(exist_ok=True)
    files = {ly: directory / "layers" / f"{layer_file_stem(ly)}.npy" for ly in layers}
    state = _read_json(directory / "progress.json")
    resume = state is not None and state.get("key") == key and all(f.exists() for f in files.values())
    start = int(state["rows_done"]) if resume and state is not None else 0
    arrays: dict[str, np.ndarray] = {ly: np.load(f, mmap_mode="r+") for ly, f in files.items()} if resume else {}
    if not resume:
        (directory / "progress.json").unlink(missing_ok=True)
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.module.named_modules())

    def hook(name: str) -> Callable[..., None]:
        def record(_module: Any, _args: Any, output: Any) -> None:
            captured[name] = reduce_map(_first_tensor(output).detach(), size, mode)

        return record

    handles = [modules[ly].register_forward_hook(hook(ly)) for ly in layers if ly != INPUT]
    need_forward = bool(handles)
    row = start
    started, last = time.monotonic(), time.monotonic()

    def checkpoint() -> None:
        for a in arrays.values():
            a.flush()
        _atomic_write_text(directory / "progress.json", json.dumps({"key": key, "rows_done": row}))

    if progress:
        progress(row, n, "Resuming probe activations" if row else "Computing probe activations")
    try:
        with torch.inference_mode():
            for batch in image_batches(_Rows(dataset, rows), model, start, batch_size, 0):  # type: ignore[arg-type]
                batch = batch.to(model.device)
                captured.clear()
                if INPUT in layers:
                    captured[INPUT] = reduce_map(batch, size, mode)
                if need_forward:
                    model.module(batch)
                end = row + batch.shape[0]
                for ly in layers:
                    value = captured[ly].cpu().numpy()
                    if ly not in arrays:
                        arrays[ly] = np.lib.format.open_memmap(
                            files[ly], mode="w+", dtype=np.float32, shape=(n, value.shape[1])
                        )
                    arrays[ly][row:end] = value
                row = end
                if time.monotonic() - last > CHECKPOINT_SECONDS or row == n:
                    checkpoint()
                    last = time.monotonic()
                if progress:
                    progress(row, n, "Computing probe activations")
    except BaseException as exc:
        if arrays and row > start:
            checkpoint()
        if isinstance(exc, BiasLensError):
            raise
        if isinstance(exc, (RuntimeError, ValueError, KeyError)):
            raise StoreError(
                f"The model failed computing probe activations at image {row} of {n}: {exc}. "
                "The work done so far is kept; the next run resumes from it."
            ) from None
        raise
    finally:
        for h in handles:
            h.remove()
    if row < n:
        raise StoreError(f"The probe activations ended after {row} of {n} images; run again to resume.")
    nan_layers = [ly for ly in layers if not np.isfinite(np.asarray(arrays[ly])).all()]
    for a in arrays.values():
        a.flush()
    arrays.clear()
    np.save(directory / "rows.npy", rows)
    manifest = {
        "version": PROBE_VERSION,
        "key": key,
        "fingerprint": store.fingerprint,
        "n": n,
        "layers": layers,
        "size": int(size),
        "mode": mode,
        "non_finite_layers": nan_layers,
        "seconds": round(time.monotonic() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (directory / "progress.json").unlink(missing_ok=True)
    _atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=2))
