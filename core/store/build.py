"""The activation store, build side: one batched pass of the model over the dataset.

``build_store`` writes the layout described in core/store/read.py and returns the store opened.
It runs under ``torch.inference_mode()`` on the model's device, checkpoints the rows safely
on disk to ``progress.json`` so an interrupted build resumes, holds a file lock so that
two processes never write the same store (the second waits, then opens the result), adds
layers to an existing store with a pass over the new layers only, and writes the manifest
last. ``metadata_attributes`` decides the attribute columns of ``meta.parquet`` before
any extraction.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from filelock import FileLock, Timeout

from core.data.datasets import ImageDataset
from core.errors import BiasLensError, DataError, StoreError
from core.models.loading import LoadedModel
from core.store.pipeline import LocalSource, OrderedWriter, OutputSource, StageTimes
from core.store.read import (
    FORMAT_VERSION,
    POOLS,
    RESERVED_COLUMNS,
    Store,
    layer_file_stem,
    metadata_attribute_names,
    open_store,
    store_dir,
    store_fingerprint,
)

CHECKPOINT_SECONDS = 2.0

Progress = Callable[[int, int, str], None]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: Path, total: int, progress: Progress | None, timeout: float | None) -> Iterator[None]:
    """Hold the store's file lock; report while another process holds it."""
    lock = FileLock(str(directory / ".lock"))
    waited = 0.0
    while True:
        try:
            lock.acquire(timeout=1.0)
            break
        except Timeout:
            waited += 1.0
            if progress:
                progress(0, total, "Waiting for another process that is building this store...")
            if timeout is not None and waited >= timeout:
                raise StoreError(
                    f"Another process has been building the store at {directory} for over "
                    f"{timeout:.0f} s. Wait for it to finish, or stop it and try again."
                ) from None
    try:
        yield
    finally:
        lock.release()


def build_store(
    workspace: str,
    model: LoadedModel,
    dataset: ImageDataset,
    layers: list[str] | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    root: Path | None = None,
    progress: Progress | None = None,
    lock_timeout: float | None = None,
    precision: str = "fp32",
    source: OutputSource | None = None,
    times: StageTimes | None = None,
    decode: str = "auto",
) -> Store:
    """Build (or resume, or extend with more layers) the store and return it opened.

    Runs batched under ``torch.inference_mode()`` on the model's device (``LocalSource``), or
    takes its outputs from ``source`` (core/store/ray_source.py's ``RaySource`` on a Ray cluster);
    either way the same files, rows and fingerprint. ``precision`` bf16/fp16 autocasts the
    local forward pass; ``decode`` "torchcodec" decodes JPEGs in batches where the model runs
    (nvJPEG on CUDA; "auto" picks it on CUDA), "pil" in the loader workers. ``times`` collects img/s and the seconds per stage (the manifest keeps
    them as ``last_build``). Safe to call from several processes at once: one extracts, the
    others wait and then open its result.
    """
    dataset.validate()
    layers = list(model.default_layers if layers is None else layers)
    unknown = [ly for ly in layers if ly not in model.storable_layers]
    if unknown:
        raise StoreError(
            f"Unknown layer(s) {', '.join(unknown)}; pick from: "
            f"{', '.join(model.storable_layers) or 'none (no conv blocks or hidden linear layers)'}."
        )
    if not model.embedding_layer:
        raise StoreError("The model has no final linear layer or conv block to take an embedding from.")
    max_label = int(np.max(dataset.labels))
    if max_label >= model.num_classes:
        raise StoreError(
            f"The dataset has label index {max_label} ('{dataset.classes[max_label]}') but the model "
            f"has only {model.num_classes} outputs: the dataset's classes must match the model's."
        )
    # Decide the metadata's column names and types now: a clash found after the
    # extraction would waste it and fail the same way on every rerun.
    _check_ground_truth(dataset)
    attribute_names = list(metadata_attributes(dataset).columns)
    fingerprint = store_fingerprint(model, dataset)
    directory = store_dir(workspace, fingerprint, root)
    directory.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    with _locked(directory, n, progress, lock_timeout):
        existing = _read_json(directory / "manifest.json")
        if existing is not None and existing.get("fingerprint") != fingerprint:
            existing = None
        if existing is not None:
            try:
                open_store(directory)
            except StoreError:  # a damaged store (files deleted): build it again
                existing = None
        stored_layers = existing["layers"] if existing else []
        new_layers = [ly for ly in layers if ly not in stored_layers]
        # A store written by an older version may name its attributes differently
        # (clashing with the store's own columns): rewrite its metadata, no extraction.
        stale_meta = existing is not None and existing.get("attribute_columns", []) != attribute_names
        if existing is not None and not new_layers and not stale_meta:
            return open_store(directory)
        want_core = existing is None
        times = times if times is not None else StageTimes()
        if want_core or new_layers:
            if source is None:
                source = LocalSource(model, dataset, batch_size, num_workers, precision, times, decode)
            _extract(directory, fingerprint, dataset, new_layers, want_core, source, times, progress)
        all_layers = [ly for ly in model.storable_layers if ly in set(stored_layers) | set(new_layers)]
        if want_core or stale_meta:
            try:
                _write_meta(directory, model, dataset)
            except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
                raise StoreError(
                    f"Writing the store's metadata (meta.parquet) failed: {exc}. The extracted "
                    "activations are kept; run the build again to retry."
                ) from exc
        manifest = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "workspace": workspace,
            "n": n,
            "classes": _class_names(model, dataset),
            "num_classes": model.num_classes,
            "dataset": dataset.name,
            "model": model.description,
            "embedding_layer": model.embedding_layer,
            "embedding_dim": int(np.load(directory / "embedding.npy", mmap_mode="r").shape[1]),
            "layers": all_layers,
            "layer_channels": {
                ly: int(np.load(directory / "layers" / f"{layer_file_stem(ly)}.mean.npy", mmap_mode="r").shape[1])
                for ly in all_layers
            },
            "attribute_columns": attribute_names,
            "slice_columns": list(dataset.ground_truth.columns),
            "input_size": model.input_size,
            "device": str(model.device),
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "last_build": {**times.summary(), "precision": precision, "source": type(source).__name__ if source else "none",
                           "decode": getattr(source, "decode", None)},
        }
        (directory / "progress.json").unlink(missing_ok=True)
        _atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=2))
    return open_store(directory)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content, or None when it is missing, half-written or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _class_names(model: LoadedModel, dataset: ImageDataset) -> list[str]:
    """Names for every model output: the dataset's classes, then class_<k> for extra outputs."""
    names = list(dataset.classes[: model.num_classes])
    return names + [f"class_{k}" for k in range(len(names), model.num_classes)]


def _check_ground_truth(dataset: ImageDataset) -> None:
    """DataError when ground-truth column names collide (any case) with the store's own
    columns or with each other: they cannot be renamed, since pages look them up."""
    seen: dict[str, str] = {}
    for column in dataset.ground_truth.columns:
        name = str(column)
        if name.lower() in {c.lower() for c in RESERVED_COLUMNS} or name.lower() in seen:
            other = f"'{seen[name.lower()]}'" if name.lower() in seen else "a column the store computes"
            raise DataError(
                f"Dataset '{dataset.name}' has a ground-truth column '{name}' that clashes with "
                f"{other} (names are compared ignoring case). Give each slice_<name> "
                "column a unique name."
            )
        seen[name.lower()] = name


def metadata_attributes(dataset: ImageDataset) -> pd.DataFrame:
    """The dataset's attributes as they go into meta.parquet: renamed by
    ``metadata_attribute_names`` and with every column storable in Parquet (a column
    that mixes types, e.g. numbers and text, is stored as text; missing cells stay
    missing). Raises DataError for a column that cannot be stored even as text."""
    attributes = dataset.attributes.reset_index(drop=True).copy()
    attributes.columns = metadata_attribute_names(dataset)
    for i in range(attributes.shape[1]):
        column = attributes.iloc[:, i]
        try:
            pa.array(column, from_pandas=True)
            continue
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
        text = column.map(lambda v: v if _is_missing(v) else str(v)).astype(object)
        try:
            pa.array(text, from_pandas=True)
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            raise DataError(
                f"Attribute '{dataset.attributes.columns[i]}' of dataset '{dataset.name}' "
                f"cannot be stored ({exc}). Use numbers, text or True/False values."
            ) from None
        attributes.isetitem(i, text)
    return attributes


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like values
        return False


def _targets(layers: list[str], want_core: bool) -> dict[str, str]:
    """Captured key -> file (relative to the store) for one extraction pass."""
    files = {"logits": "logits.npy", "embedding": "embedding.npy"} if want_core else {}
    for ly in layers:
        for pool in POOLS:
            files[f"{ly}.{pool}"] = f"layers/{layer_file_stem(ly)}.{pool}.npy"
    return files


def _extract(
    directory: Path,
    fingerprint: str,
    dataset: ImageDataset,
    layers: list[str],
    want_core: bool,
    source: OutputSource,
    times: StageTimes,
    progress: Progress | None,
) -> None:
    """One pass of ``source`` over the rows not yet on disk, written by an ``OrderedWriter``;
    resumes from progress.json if it matches."""
    n = len(dataset)
    files = _targets(layers, want_core)
    (directory / "layers").mkdir(exist_ok=True)
    progress_path = directory / "progress.json"
    state = _read_json(progress_path)
    resume = (
        state is not None
        and state.get("fingerprint") == fingerprint
        and sorted(state.get("files", {})) == sorted(files)
        and all((directory / f).exists() for f in files.values())
    )
    start = int(state["rows_done"]) if resume else 0
    arrays: dict[str, np.ndarray] = (
        {key: np.load(directory / rel, mmap_mode="r+") for key, rel in files.items()} if resume else {}
    )
    if not resume:
        progress_path.unlink(missing_ok=True)

    def checkpoint(written: dict[str, np.ndarray], rows: int) -> None:
        _checkpoint(written, progress_path, fingerprint, files, rows)

    writer = OrderedWriter(directory, files, n, start, arrays, times, checkpoint, CHECKPOINT_SECONDS)
    began = time.perf_counter()
    if progress:
        progress(start, n, "Resuming extraction" if resume and start else "Extracting activations")
    last, reported = start, start
    try:
        for row, outputs in source(layers, want_core, start):
            last = row
            if "logits" in outputs:
                _check_finite_logits(outputs["logits"], row)
            writer.put(row, outputs)
            if progress:
                reported = writer.prefix()
                progress(reported, n, "Extracting activations")
        writer.close()
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            writer.close()  # rows before the writer's prefix are fully written: kept for the resume
        row = writer.prefix()
        if isinstance(exc, BiasLensError):
            raise type(exc)(
                f"{exc} The store build stopped at image {row} of {n}; the work done so far is "
                "kept and the next build resumes from it."
            ) from None
        if isinstance(exc, (RuntimeError, ValueError)):
            raise StoreError(f"The model failed on the batch from image {last}: {exc}") from None
        raise
    finally:
        times.wall += time.perf_counter() - began
    row = writer.prefix()
    times.images += row - start
    if progress and row != reported:  # the last batches, written after their progress call
        progress(row, n, "Extracting activations")
    if row == 0 and n > 0:
        raise DataError("The dataset yielded no images.")
    if row < n:
        raise StoreError(f"Extraction ended after {row} of {n} images; run the build again to resume.")
    for arr in arrays.values():
        arr.flush()


def _check_finite_logits(logits: np.ndarray, first_row: int) -> None:
    """StoreError when the model returned NaN or infinite logits: every prediction, loss and
    confidence derived from them would be meaningless, and the store would look complete."""
    bad = ~np.isfinite(np.asarray(logits)).all(axis=1)
    if bad.any():
        rows = first_row + np.flatnonzero(bad)
        raise StoreError(
            f"The model returned NaN or infinite logits for {len(rows)} image(s) of the batch from image {first_row} "
            f"(first: image {int(rows[0])}), so its predictions and losses would be meaningless. Check the model's "
            "weights and its input normalisation (mean, std); with --precision bf16/fp16, try fp32."
        )


def _checkpoint(arrays: dict[str, np.ndarray], path: Path, fingerprint: str, files: dict[str, str], rows: int) -> None:
    """Flush the arrays, then record how many rows are safely on disk."""
    for arr in arrays.values():
        arr.flush()
    _atomic_write_text(path, json.dumps({"fingerprint": fingerprint, "files": files, "rows_done": rows}))


def _write_meta(directory: Path, model: LoadedModel, dataset: ImageDataset) -> None:
    """Derive per-image metadata from the stored logits and the dataset; write Parquet."""
    logits = np.asarray(np.load(directory / "logits.npy", mmap_mode="r"), dtype=np.float64)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    pred = probs.argmax(axis=1)
    names = np.array(_class_names(model, dataset), dtype=object)
    rows = np.arange(len(labels))
    meta = pd.DataFrame(
        {
            "row": rows,
            "id": list(dataset.ids),
            "label": names[labels],
            "label_idx": labels,
            "pred": names[pred],
            "pred_idx": pred,
            "correct": pred == labels,
            "loss": -log_probs[rows, labels],  # per-example cross-entropy from logits
            "confidence": probs[rows, pred],
            "p_true": probs[rows, labels],
        }
    )
    attributes = metadata_attributes(dataset)
    ground_truth = dataset.ground_truth.reset_index(drop=True).astype(bool)
    meta = pd.concat([meta, attributes, ground_truth], axis=1)
    tmp = directory / "meta.parquet.tmp"
    pq.write_table(pa.Table.from_pandas(meta, preserve_index=False), tmp)
    os.replace(tmp, directory / "meta.parquet")
