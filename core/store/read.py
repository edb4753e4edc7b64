"""The activation store, read side: open a built store and read its arrays and metadata.

One batched pass over a dataset (core/store/build.py builds it) writes everything the pages
read. Layout of a store directory (``cache/stores/<workspace>-<fingerprint[:16]>/``)::

    manifest.json          written LAST: a store without it is incomplete and never read
    meta.parquet           one row per image: id, row, label, pred, correct, loss, ... attributes
    logits.npy             (N, K) float32 memory-mapped
    embedding.npy          (N, D) float32 last hidden layer (input of the final nn.Linear)
    layers/<name>.mean.npy (N, C) float32 per-channel spatial mean of a block output
    layers/<name>.max.npy  (N, C) float32 per-channel spatial max
    progress.json          while a pass runs: rows safely on disk, so an interruption resumes
    .lock                  file lock: two processes never write the same store at once

The directory is keyed by a fingerprint of the model weights, the dataset content and the
transform. Layers are independent files: asking for more layers later runs a pass over the
new layers only and rewrites the manifest atomically. A method asks for a representation
by name (``Store.representation``): ``embedding`` or ``<layer>:<pool>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.data.datasets import ImageDataset
from core.errors import StoreError
from core.models.loading import LoadedModel

FORMAT_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / "cache"
POOLS = ("mean", "max")
EMBEDDING = "embedding"  # the name of the last hidden layer among the representations
# Metadata columns the store computes. Attributes with these names (in any case) are
# renamed: see metadata_attribute_names.
RESERVED_COLUMNS = (
    "row", "id", "label", "label_idx", "pred", "pred_idx", "correct", "loss", "confidence", "p_true",
)


def cache_root() -> Path:
    """``$BIASLENS_CACHE`` if set, else ``cache/`` in the repository."""
    return Path(os.environ.get("BIASLENS_CACHE", DEFAULT_CACHE))


def store_fingerprint(model: LoadedModel, dataset: ImageDataset) -> str:
    """Hash of model weights + dataset content + transform: any change means a new store."""
    parts = {
        "format": FORMAT_VERSION,
        "weights": model.weights_fingerprint,
        "data": dataset.fingerprint(),
        "transform": [model.input_size, list(model.mean), list(model.std)],
        "embedding": [model.embedding_layer, model.embedding_is_output],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "store"


def layer_file_stem(layer: str) -> str:
    """File-safe name of a layer (``features.3`` -> ``features.3``, ``a/b`` -> ``a_b``)."""
    return _slug(layer)


def store_dir(workspace: str, fingerprint: str, root: Path | None = None) -> Path:
    """Where the store of a workspace with this fingerprint lives."""
    return (root or cache_root()) / "stores" / f"{_slug(workspace)}-{fingerprint[:16]}"


@dataclass
class Store:
    """A complete store opened read-only. Arrays are memory-mapped, not loaded."""

    path: Path
    manifest: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def layers(self) -> list[str]:
        """Stored layers (conv blocks, then hidden linear layers), in network order."""
        return list(self.manifest["layers"])

    @property
    def embedding_layer(self) -> str:
        return str(self.manifest["embedding_layer"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def slice_columns(self) -> list[str]:
        """Ground-truth planted-slice membership columns (demo only)."""
        return list(self.manifest.get("slice_columns", []))

    @property
    def attribute_columns(self) -> list[str]:
        return list(self.manifest.get("attribute_columns", []))

    def meta(self) -> pd.DataFrame:
        """Per-image metadata (a fresh DataFrame each call; cache it in the caller)."""
        return pq.read_table(self.path / "meta.parquet").to_pandas()

    def _array(self, relative: str) -> np.ndarray:
        return np.load(self.path / relative, mmap_mode="r")

    def logits(self) -> np.ndarray:
        return self._array("logits.npy")

    def probabilities(self) -> np.ndarray:
        """Softmax of the stored logits, (N, K) float32 in memory."""
        logits = np.asarray(self.logits(), dtype=np.float64)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def embedding(self) -> np.ndarray:
        """(N, D) last-hidden-layer embedding, memory-mapped."""
        return self._array("embedding.npy")

    def pooled(self, layer: str, pool: str = "mean") -> np.ndarray:
        """(N, C) spatially pooled activations of a stored layer, memory-mapped."""
        if pool not in POOLS:
            raise StoreError(f"Unknown pooling '{pool}'; use one of {', '.join(POOLS)}.")
        if layer not in self.layers:
            stored = ", ".join(self.layers) or "none"
            raise StoreError(
                f"Layer '{layer}' is not in the store (stored: {stored}). "
                "Add it on the Overview page (Store -> layers) or with "
                "`python -m core build WORKSPACE --layers ...`."
            )
        return self._array(f"layers/{layer_file_stem(layer)}.{pool}.npy")

    def representation(self, name: str) -> np.ndarray:
        """(N, d) memory-mapped array of a representation named as in ``representations``:
        ``embedding`` (the last hidden layer) or ``<layer>:<pool>`` for a stored layer,
        e.g. ``block3:mean``. StoreError for any other name."""
        if name == EMBEDDING:
            return self.embedding()
        layer, _, pool = name.rpartition(":")
        if layer in self.layers and pool in POOLS:
            return self.pooled(layer, pool)
        raise StoreError(
            f"Unknown representation '{name}': use 'embedding' or '<layer>:<pool>' with pool "
            f"{' or '.join(POOLS)}. This store has {', '.join(self.representations())}; add "
            "layers on the Overview page (Store -> layers) or with "
            "`python -m core build WORKSPACE --layers ...`."
        )

    def representations(self) -> dict[str, tuple[int, int]]:
        """Every representation the store holds, name -> (N, d): ``embedding`` first, then
        ``<layer>:mean`` and ``<layer>:max`` of each stored layer in network order."""
        shapes = {EMBEDDING: self.embedding().shape}
        for layer in self.layers:
            for pool in POOLS:
                shapes[f"{layer}:{pool}"] = self.pooled(layer, pool).shape
        return {name: (int(shape[0]), int(shape[1])) for name, shape in shapes.items()}


# manifest keys the readers use, with their types
_MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "n": int, "classes": list, "layers": list, "embedding_layer": str, "fingerprint": str,
    "embedding_dim": int, "layer_channels": dict, "created": str, "device": str,
}


def _check_manifest(manifest: Any, manifest_path: Path) -> None:
    """StoreError unless the manifest has every key the readers use, with its type."""
    if not isinstance(manifest, dict):
        raise StoreError(f"The store manifest {manifest_path} is damaged (not a JSON object); rebuild the store.")
    bad = [
        key for key, kind in _MANIFEST_TYPES.items()
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool)
    ]
    if not bad and (manifest["n"] < 0 or not all(isinstance(ly, str) for ly in manifest["layers"])):
        bad = ["n" if manifest["n"] < 0 else "layers"]
    if bad:
        raise StoreError(
            f"The store manifest {manifest_path} is damaged (missing or wrong: {', '.join(bad)}); rebuild the store."
        )


def _check_files(store: Store) -> None:
    """StoreError unless every array holds N rows of the width the manifest says (a
    truncated or rewritten file is found here, not in a page) and the metadata file's
    footer says N rows. Reads headers only."""
    n, path = store.n, store.path
    widths = {"logits.npy": len(store.classes), "embedding.npy": store.manifest["embedding_dim"]}
    channels = store.manifest["layer_channels"]
    widths.update({f"layers/{layer_file_stem(ly)}.{p}.npy": channels.get(ly) for ly in store.layers for p in POOLS})
    missing = [name for name in ["meta.parquet", *widths] if not (path / name).exists()]
    if missing:
        raise StoreError(f"The store at {path} lacks {', '.join(missing)}; rebuild it.")
    damaged = []
    for name, width in widths.items():
        try:
            shape = np.load(path / name, mmap_mode="r").shape
        except (OSError, ValueError, EOFError):
            damaged.append(name)
            continue
        if len(shape) != 2 or shape[0] != n or (width is not None and shape[1] != width):
            damaged.append(name)
    try:
        if pq.read_metadata(path / "meta.parquet").num_rows != n:
            damaged.append("meta.parquet")
    except (OSError, ValueError, pa.ArrowException):
        damaged.append("meta.parquet")
    if damaged:
        raise StoreError(
            f"The store at {path} is damaged ({', '.join(damaged)} truncated or not what the manifest "
            "says); rebuild it (Overview -> Build, or `python -m core build WORKSPACE`)."
        )


def open_store(path: Path) -> Store:
    """Open a complete store; StoreError if it is missing, incomplete or damaged (a manifest
    without the keys the readers use, an array or metadata file of the wrong size)."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise StoreError(f"No complete activation store at {path}: build it first.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"The store manifest {manifest_path} is damaged ({exc}); rebuild the store.") from None
    _check_manifest(manifest, manifest_path)
    store = Store(path=path, manifest=manifest)
    _check_files(store)
    return store


def find_store(workspace: str, model: LoadedModel, dataset: ImageDataset, root: Path | None = None) -> Store | None:
    """The complete store for this model + dataset, or None if it has not been built (or
    its metadata was written by an older version, with other attribute names: building
    it then only rewrites the metadata)."""
    path = store_dir(workspace, store_fingerprint(model, dataset), root)
    try:
        store = open_store(path)
    except StoreError:
        return None
    if store.attribute_columns != metadata_attribute_names(dataset):
        return None
    return store


# --------------------------------------------------------------------------- metadata names


def metadata_attribute_names(dataset: ImageDataset) -> list[str]:
    """The metadata (meta.parquet, cohort) column name of each dataset attribute, in order.

    Rule: a name is compared case-insensitively (DuckDB, which runs the cohort queries,
    does not tell ``Label`` from ``label``) with the columns the store computes
    (RESERVED_COLUMNS: row, id, label, label_idx, pred, pred_idx, correct, loss,
    confidence, p_true), the ground-truth ``slice_*`` columns and the other attributes.
    An attribute that collides with none of them keeps its name; the others, in column
    order (for two attributes that differ only in case, the second), become
    ``attr_<name>``, or ``attr_<name>_2``, ``attr_<name>_3``, ... when that is taken too.
    A name starting with ``slice_`` (the ground-truth prefix) is renamed the same way even
    when no such ground-truth column exists. A blank name becomes ``attr_column_<k>`` (k =
    its position among the attributes, from 1); a name that is not text (a number) is turned into text first. So a CSV with
    attributes ``correct``, ``attr_correct``, ``Label`` and ``slice_x`` (on a dataset with
    a ``slice_x`` ground-truth column) gets ``attr_correct_2``, ``attr_correct``,
    ``attr_Label`` and ``attr_slice_x``. The result is decided before any extraction and
    is the same on every build of the same dataset.
    """
    taken = {c.lower() for c in RESERVED_COLUMNS}
    taken |= {str(c).lower() for c in dataset.ground_truth.columns}
    names = []
    for k, column in enumerate(dataset.attributes.columns, start=1):
        name = str(column)
        names.append(name if name.strip() else f"attr_column_{k}")
    keep = [False] * len(names)
    for i, name in enumerate(names):  # first pass: names that collide with nothing stay
        # ``slice_`` marks planted ground truth everywhere (hidden in workshop mode, left
        # out of exports): an attribute never takes the prefix, ground truth or not
        if name.lower() not in taken and not name.lower().startswith("slice_"):
            taken.add(name.lower())
            keep[i] = True
    result = []
    for name, kept in zip(names, keep, strict=True):
        if not kept:
            base = f"attr_{name}"
            name, n = base, 1
            while name.lower() in taken:
                n += 1
                name = f"{base}_{n}"
            taken.add(name.lower())
        result.append(name)
    return result


def expand(values: Any, rows: Any, n: int, fill: float = 0.0) -> np.ndarray:
    """Map per-row values of a run scoped to ``rows`` back to all ``n`` store rows
    (``fill`` outside the scope), so galleries and saved subsets use store rows."""
    values = np.asarray(values)
    out = np.full(n, fill, dtype=values.dtype)
    out[np.asarray(rows, dtype=np.int64)] = values
    return out
