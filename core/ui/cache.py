"""Every ``st.cache_*`` wrapper of the app lives here, keyed by what defines its result.

Resources (model, dataset, store, DuckDB view) are shared across sessions and keyed by the
workspace's key (a hash of its spec); data (metadata frames, thumbnails) by the store's
fingerprint. ``clear_store_cache`` is called after a store is built or extended.

Heavy runs (spotlights, clustering, concept patches, Grad-CAM, maps) are computed once per
inputs into a shared slot, and only inside a place of the server's run queue
(core/runqueue.py): visitors are served in turn, one run at a time each.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from sklearn.base import clone

from core.cohorts import CohortView
from core.datasets import ImageDataset
from core.images import mark_error, thumbnail
from core.methods import (
    UDIS,
    ConceptPatches,
    ConceptPatchFinder,
    GradCAM,
    Neuron,
    NeuronSelector,
    Progress,
    Spotlight,
    project_2d,
)
from core.models import LoadedModel, load_model
from core.runqueue import RunQueue, default_slots
from core.sources import build_dataset
from core.stats import bootstrap_ci, slice_accuracy
from core.store import Store, find_store
from core.summary import attribute_accuracy, class_accuracy
from core.workspace import Workspace, WorkspaceList, load_workspaces

T = TypeVar("T")


@st.cache_data(show_spinner=False, ttl=10)
def workspace_list(path: str, mtime_ns: int) -> WorkspaceList:
    """The workspace file, re-read when it changes (mtime is part of the key)."""
    return load_workspaces(Path(path))


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def model_for(_workspace: Workspace, workspace_key: str, hosted: bool) -> LoadedModel:
    """One model per workspace, on CUDA when available."""
    return load_model(_workspace.model, None, hosted=hosted)


@st.cache_resource(show_spinner="Indexing the dataset...", max_entries=4)
def dataset_for(_workspace: Workspace, workspace_key: str) -> ImageDataset:
    return build_dataset(_workspace.dataset)


@st.cache_resource(show_spinner="Opening the activation store...", max_entries=8)
def store_for(_workspace: Workspace, workspace_key: str, hosted: bool) -> Store | None:
    """The complete store of the workspace, or None while it is not built."""
    model = model_for(_workspace, workspace_key, hosted)
    return find_store(_workspace.name, model, dataset_for(_workspace, workspace_key))


def clear_store_cache() -> None:
    """Forget opened stores and their derived data (after a build or an added layer)."""
    store_for.clear()
    meta_for.clear()
    cohort_view_for.clear()
    _result_slot.clear()
    _concept_slot.clear()
    neuron_selection.clear()


# --------------------------------------------------------------------------- heavy runs


@st.cache_resource(show_spinner=False)
def run_queue() -> RunQueue:
    """The server's one queue of heavy runs, shared by every session."""
    return RunQueue(default_slots())


def session_id() -> str:
    """This browser session's id (one per tab), or 'local' outside a Streamlit run."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "local"


@contextlib.contextmanager
def queued(label: str) -> Iterator[None]:
    """Hold a place in the run queue; while waiting, say how many runs are ahead."""
    notice = st.empty()
    queue = run_queue()

    def waiting(ahead: int) -> None:
        notice.info(
            f":material/hourglass_top: {label} is queued: {ahead} run(s) ahead of yours "
            f"(this server runs {queue.slots} at a time)."
        )

    try:
        with queue.run(session_id(), waiting):
            notice.empty()
            yield
    finally:
        notice.empty()


@st.cache_resource(show_spinner=False, max_entries=256)
def _result_slot(kind: str, fingerprint: str, key: str) -> dict[str, Any]:
    """An empty holder per (kind of run, store, inputs), shared by sessions."""
    return {"lock": threading.Lock()}


def computed_once(kind: str, fingerprint: str, key: str, label: str, compute: Callable[[], T]) -> T:
    """The result of ``compute()`` for these inputs: cached, else run once in the run queue.

    Nothing is cached when ``compute`` raises, so a fixed input can be retried.
    """
    slot = _result_slot(kind, fingerprint, key)
    if "result" not in slot:
        with slot["lock"]:
            if "result" not in slot:
                with queued(label):
                    slot["result"] = compute()
    return slot["result"]


@st.cache_data(show_spinner=False, max_entries=8)
def meta_for(_store: Store, fingerprint: str, layers: tuple[str, ...]) -> pd.DataFrame:
    return _store.meta()


# A store is identified by its fingerprint and stored layers, never by its arrays.
STORE_HASH = {Store: lambda store: (store.fingerprint, tuple(store.layers))}


@st.cache_data(show_spinner=False, max_entries=8, hash_funcs=STORE_HASH)
def overview_tables(store: Store) -> dict[str, Any]:
    """The Overview's bootstrap figures, computed once per store: overall accuracy with its
    interval, and accuracy per planted slice, class and attribute value."""
    meta = meta_for(store, store.fingerprint, tuple(store.layers))
    return {
        "overall": bootstrap_ci(meta["correct"].to_numpy()),
        "slices": slice_accuracy(meta, store.slice_columns) if store.slice_columns else None,
        "classes": class_accuracy(meta),
        "attributes": attribute_accuracy(meta, store.attribute_columns),
    }


@st.cache_resource(show_spinner=False, max_entries=8)
def cohort_view_for(_meta: pd.DataFrame, fingerprint: str) -> CohortView:
    """The DuckDB view over a store's (already cached) metadata, one per store."""
    return CohortView(_meta)


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail_png(thumb: np.ndarray, error: bool) -> bytes:
    """A thumbnail encoded once as PNG (framed and crossed in red when misclassified)."""
    out = io.BytesIO()
    Image.fromarray(mark_error(thumb) if error else thumb).save(out, format="PNG")
    return out.getvalue()


@st.cache_data(show_spinner=False, max_entries=64)
def thumbnails(_dataset: ImageDataset, workspace_key: str, rows: tuple[int, ...], size: int) -> list[np.ndarray]:
    """RGB thumbnails (size x size, nearest-neighbour for small images) of dataset rows."""
    return [thumbnail(_dataset.load_image(r), size) for r in rows]


# --------------------------------------------------------------------------- spotlight
# Spotlight runs report progress to the page, and st.cache_data would replay those calls on
# a hit; so results live in shared slots (computed_once) that the first run fills.


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def spotlight_cached(store: Store, layer: str | None, pool: str, spotlight: Spotlight) -> Spotlight | None:
    """The cached fitted spotlights for these inputs, or None if they have not been computed."""
    return _result_slot("spotlight", store.fingerprint, _key(layer, pool, spotlight.get_params())).get("result")


def spotlight_result(
    store: Store, layer: str | None, pool: str, spotlight: Spotlight, progress: Progress | None = None
) -> Spotlight:
    """Spotlights of the store's embedding (layer None) or a pooled layer, computed once per inputs.

    The slot is keyed by ``spotlight.get_params()`` and holds a fitted clone, so the caller's
    estimator never becomes the shared one; the losses are the store's per-image
    cross-entropy. Raises the BiasLensError of a bad input (nothing is cached then).
    """

    def compute() -> Spotlight:
        x = store.embedding() if layer is None else store.pooled(layer, pool)
        losses = meta_for(store, store.fingerprint, tuple(store.layers))["loss"].to_numpy()
        return clone(spotlight).fit(x, losses, progress=progress)

    key = _key(layer, pool, spotlight.get_params())
    return computed_once("spotlight", store.fingerprint, key, "The spotlight search", compute)


def representation_map(
    store: Store, layer: str | None, pool: str, method: str, rows: tuple[int, ...]
) -> np.ndarray:
    """(len(rows), 2) PCA or UMAP map of the representation of these rows."""

    def compute() -> np.ndarray:
        x = store.embedding() if layer is None else store.pooled(layer, pool)
        return project_2d(np.asarray(x[np.asarray(rows, dtype=np.int64)]), method)

    return computed_once("map", store.fingerprint, _key(layer, pool, method, rows), f"The {method.upper()} map", compute)


# --------------------------------------------------------------------------- subgroups


def subgroups_for(store: Store, udis: UDIS) -> UDIS:
    """UDIS fitted on the store's embedding, once per ``udis.get_params()`` (a fitted clone;
    the threshold is applied by the page)."""

    def compute() -> UDIS:
        correct = meta_for(store, store.fingerprint, tuple(store.layers))["correct"].to_numpy()
        return clone(udis).fit(store.embedding(), correct)

    return computed_once("subgroups", store.fingerprint, _key(udis.get_params()), "The clustering", compute)


@st.cache_data(show_spinner=False, max_entries=64)
def neuron_selection(_store: Store, fingerprint: str, layer: str, mass: float) -> NeuronSelector:
    """The highly-activated neurons of each image at a stored layer (Summit's rule), fitted."""
    return NeuronSelector(mass=mass).fit(_store.pooled(layer, "max"))


@st.cache_resource(show_spinner=False, max_entries=8)
def _concept_slot(fingerprint: str) -> dict[str, Any]:
    """Concept patches already computed for a store, per neuron, shared by sessions."""
    return {"lock": threading.Lock(), "patches": {}}


def concept_patches_for(
    model: LoadedModel, dataset: ImageDataset, store: Store, neurons: tuple[Neuron, ...]
) -> dict[Neuron, ConceptPatches]:
    """Concept patches of these neurons; the missing ones are computed in one batched pass."""
    slot = _concept_slot(store.fingerprint)
    with slot["lock"]:
        missing = [n for n in neurons if n not in slot["patches"]]
        if missing:
            centre = np.asarray(store.embedding()).mean(axis=0)
            with queued("The concept patches"):
                finder = ConceptPatchFinder().fit(
                    model, dataset, missing, lambda layer: store.pooled(layer, "max"), embedding_centre=centre
                )
                slot["patches"].update(finder.patches_)
        return {n: slot["patches"][n] for n in neurons}


def grad_cam_for(
    model: LoadedModel, dataset: ImageDataset, workspace_key: str, row: int, cam: GradCAM, targets: tuple[int, ...]
) -> GradCAM:
    """Grad-CAM of one image for these classes, fitted once per ``cam.get_params()`` (a clone)."""
    return computed_once(
        "gradcam", workspace_key, _key(row, cam.get_params(), targets), "Grad-CAM",
        lambda: clone(cam).fit(model, dataset.load_image(row), targets),
    )
