"""The app's loaders and the caching machinery every page shares.

- Loaders (model, dataset, store) are resources shared by all sessions and keyed by the
  workspace's key (a hash of its spec); the workspace file is read by core/ui/listing.py.
- Store-derived data (metadata, the DuckDB view, the Overview's figures) is keyed by the
  store itself: ``STORE_HASH`` hashes a Store by its fingerprint and layers, so a rebuilt
  or extended store is a new key and only ``store_for`` needs clearing after a build.
- Heavy runs are computed once per inputs into a shared slot (``computed_once``), inside
  a place of the server's run queue (core/services/runqueue.py): visitors are served in turn. The
  queues and the slots live in core/services/server.py, never in Streamlit's caches (a client can
  clear those). Each
  method's own cached runs live beside its view module (core/ui/<method>_view.py), keyed
  by its estimator's ``get_params()``.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.data.datasets import ImageDataset
from core.data.images import framed
from core.data.sources import build_dataset
from core.errors import BiasLensError
from core.models.loading import LoadedModel, load_model
from core.scoring.stats import bootstrap_ci, slice_accuracy
from core.scoring.summary import (
    attribute_accuracy,
    class_accuracy,
    confusion,
    intersection_accuracy,
)
from core.services.cohorts import CohortView
from core.services.estimates import duration
from core.services.runqueue import RunQueue
from core.services.runs import fit_on_store, held_out_on_store
from core.services.server import SERVER
from core.services.subsets import scope_digest
from core.services.workspace import Workspace
from core.store.read import Store, find_store
from core.ui.keys import state_key
from core.ui.listing import ground_truth_hidden

T = TypeVar("T")
# A store is identified by its fingerprint and stored layers, never by its arrays.
STORE_HASH = {Store: lambda store: (store.fingerprint, tuple(store.layers))}

# --------------------------------------------------------------------------- loaders


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def model_for(_workspace: Workspace, workspace_key: str, hosted: bool) -> LoadedModel:
    """One model per workspace, on CUDA when available."""
    return load_model(_workspace.model, None, hosted=hosted)


@st.cache_resource(show_spinner="Indexing the dataset...", max_entries=4)
def dataset_for(_workspace: Workspace, workspace_key: str) -> ImageDataset:
    return build_dataset(_workspace.dataset)


@st.cache_resource(show_spinner="Opening the activation store...", max_entries=8)
def store_for(_workspace: Workspace, workspace_key: str, hosted: bool) -> Store | None:
    """The complete store of the workspace, or None while it is not built.

    Cleared after a build or an added layer (``store_for.clear()``); everything derived
    from a store is keyed by its fingerprint and layers, so nothing else needs clearing.
    """
    model = model_for(_workspace, workspace_key, hosted)
    return find_store(_workspace.name, model, dataset_for(_workspace, workspace_key))


# --------------------------------------------------------------------------- store-derived data


@st.cache_resource(show_spinner=False, max_entries=8, hash_funcs=STORE_HASH)
def meta_for(store: Store) -> pd.DataFrame:
    """The store's per-image metadata, read once and shared, never copied: treat it as
    read-only (pandas' copy-on-write keeps derived frames apart; never assign a column
    of it in place). A per-call copy (st.cache_data) cost every rerun a pickle round-trip."""
    return store.meta()


@st.cache_resource(show_spinner=False, max_entries=8, hash_funcs=STORE_HASH)
def _cohort_view(store: Store, truth: bool) -> CohortView:
    meta = meta_for(store)
    return CohortView(meta if truth else meta.drop(columns=store.slice_columns))


def cohort_view_for(store: Store) -> CohortView:
    """The DuckDB view over a store's (already cached) metadata, one per store; without the
    ``slice_*`` ground-truth columns while a workshop hides them (core/ui/workshop.py)."""
    hide = bool(store.slice_columns) and ground_truth_hidden()
    return _cohort_view(store, not hide)


@st.cache_data(show_spinner=False, max_entries=8, hash_funcs=STORE_HASH)
def overview_tables(store: Store) -> dict[str, Any]:
    """The Overview's bootstrap figures, computed once per store: overall accuracy with its
    interval, and accuracy per planted slice, class and attribute value."""
    meta = meta_for(store)
    return {
        "overall": bootstrap_ci(meta["correct"].to_numpy()),
        "slices": slice_accuracy(meta, store.slice_columns) if store.slice_columns else None,
        "classes": class_accuracy(meta),
        "attributes": attribute_accuracy(meta, store.attribute_columns),
        "confusion": confusion(meta, len(store.classes)),
    }


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs=STORE_HASH)
def intersection_table(store: Store, row_column: str, column_column: str) -> pd.DataFrame:
    """The Overview's accuracy per cell of two columns (core.scoring.summary.intersection_accuracy),
    computed once per store and pair of columns."""
    return intersection_accuracy(meta_for(store), row_column, column_column)


@st.cache_data(show_spinner=False, max_entries=256, hash_funcs=STORE_HASH)
def accuracy_interval(store: Store, rows: tuple[int, ...]) -> tuple[float, float, float]:
    """Accuracy of these store rows with its 95% bootstrap interval, computed once per rows."""
    return bootstrap_ci(meta_for(store)["correct"].to_numpy()[np.asarray(rows, dtype=np.int64)])


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail_png(thumb: np.ndarray, error: bool) -> bytes:
    """A thumbnail encoded once as PNG, framed outside the image (red with a cross badge when
    misclassified, white otherwise, so both show at the same scale)."""
    out = io.BytesIO()
    Image.fromarray(framed(thumb, error)).save(out, format="PNG")
    return out.getvalue()


@st.cache_resource(show_spinner=False, max_entries=512)
def thumbnail_pngs(
    _dataset: ImageDataset, workspace_key: str, rows: tuple[int, ...], size: int, errors: tuple[bool, ...]
) -> tuple[bytes, ...]:
    """The framed PNGs of these dataset rows, made once per (rows, size, errors): a rerun
    hashes only the tuples, never the pixels. Bytes are immutable, so they are shared."""
    return tuple(thumbnail_png(t, e) for t, e in zip(thumbnails(_dataset, workspace_key, rows, size), errors, strict=True))


@st.cache_resource(show_spinner=False, max_entries=512)
def strip_png(
    _dataset: ImageDataset, workspace_key: str, rows: tuple[int, ...], size: int, errors: tuple[bool, ...], slots: int
) -> bytes:
    """These rows' framed thumbnails side by side in one PNG of ``slots`` places (white after
    the last), so strips of any length show at one scale: one image element per strip
    instead of one per thumbnail (the Subgroups list drew hundreds on every rerun)."""
    framed_thumbs = [framed(t, e) for t, e in zip(thumbnails(_dataset, workspace_key, rows, size), errors, strict=True)]
    blank = np.full_like(framed(np.zeros((size, size, 3), dtype=np.uint8), False), 255)
    framed_thumbs += [blank] * max(0, slots - len(framed_thumbs))
    out = io.BytesIO()
    Image.fromarray(np.concatenate(framed_thumbs, axis=1)).save(out, format="PNG")
    return out.getvalue()


@st.cache_data(show_spinner=False, max_entries=64)
def thumbnails(_dataset: ImageDataset, workspace_key: str, rows: tuple[int, ...], size: int) -> list[np.ndarray]:
    """RGB thumbnails (size x size, nearest-neighbour for small images) of dataset rows; an
    image whose file is missing or unreadable gets a placeholder with its id."""
    return [_dataset.thumbnail(r, size) for r in rows]


# --------------------------------------------------------------------------- heavy runs

HEAVY, LIGHT = "heavy", "light"


class RunCancelled(BiasLensError):
    """The visitor cancelled this run; it starts again only when they ask."""


def run_queue(lane: str = HEAVY) -> RunQueue:
    """The server's queue of one lane (core/services/server.py: never in Streamlit's caches, which a
    client can clear). Heavy runs (over a dataset) use the shared model one at a time; light
    runs (one image's Grad-CAM, concept patches) never wait behind them: each uses a private
    copy of the model (``private_model``), because heavy runs swap the shared model's weights
    in place (torch.func.functional_call) and captum's hooks fail when two runs share a module."""
    return SERVER.light if lane == LIGHT else SERVER.heavy


def private_model(workspace: Workspace, hosted: bool, shared: LoadedModel) -> contextlib.AbstractContextManager[LoadedModel]:
    """A copy of the workspace's model for one light run alone, loaded afresh like ``shared``
    (core.services.server.ModelCopies keeps at most one per light-lane place)."""
    key = f"{workspace.key()}|{shared.weights_fingerprint}"
    return SERVER.copies.borrow(key, lambda: load_model(workspace.model, shared.device, hosted=hosted))


def session_id() -> str:
    """This browser session's id (one per tab), or 'local' outside a Streamlit run."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "local"


def about(seconds: float) -> str:
    """A duration as people say it: "about 40 s", "about 6 min", "about 1.5 h"."""
    return f"about {duration(seconds)}"


def _cancel_key(label: str, ident: str) -> str:
    return state_key("run", "cancelled", zlib.crc32(f"{label}|{ident}".encode()))


@contextlib.contextmanager
def queued(label: str, lane: str = HEAVY, expected_s: float | None = None, ident: str = "") -> Iterator[None]:
    """Hold a place in a lane's run queue; while waiting, say how many runs are ahead.

    A heavy run shows a Cancel button while it waits and runs: pressing it stops the run at
    its next progress step, frees its place, and the run waits for the visitor's "Start
    again" (``RunCancelled``) instead of starting over on the next rerun.
    """
    cancel = _cancel_key(label, ident)
    if lane == HEAVY and st.session_state.get(cancel):
        def again() -> None:
            st.session_state.pop(cancel, None)

        st.button(f"Start {label[:1].lower() + label[1:]} again", key=f"{cancel}:again", on_click=again,
                  icon=":material/replay:")
        raise RunCancelled(f"You cancelled {label[:1].lower() + label[1:]}. Press \"Start again\" to run it.")
    notice = st.empty()
    queue = run_queue(lane)
    expected = f" Expected: {about(expected_s)} once it starts." if expected_s else ""
    with notice.container():  # drawn once: the waiting message is updated in place
        message = st.empty()
        if lane == HEAVY:
            st.button("Cancel", key=f"{cancel}:button", icon=":material/cancel:",
                      on_click=lambda: st.session_state.update({cancel: True}),
                      help="Stops this run and frees its place on the server.")

    def waiting(ahead: int) -> None:
        message.info(f":material/hourglass_top: {label} is queued: {ahead} run(s) ahead of yours "
                     f"(this server runs {queue.slots} at a time).{expected}")

    try:
        with queue.run(session_id(), waiting):
            if expected_s:
                message.caption(f":material/schedule: {label}: {about(expected_s)} expected.")
            else:
                message.empty()
            if lane != HEAVY:
                notice.empty()
            yield
    finally:
        notice.empty()


def run_key(*parts: Any) -> str:
    """A slot key from a run's inputs (estimator parameters, representation name, rows...)."""
    return json.dumps(parts, sort_keys=True, default=str)


def cached_result(kind: str, fingerprint: str, key: str) -> Any | None:
    """The result ``computed_once`` holds for these inputs, or None (nothing is computed)."""
    return SERVER.results.slot(kind, fingerprint, key).get("result")


def computed_once(kind: str, fingerprint: str, key: str, label: str, compute: Callable[[], T],
                  lane: str = HEAVY, expected_s: float | None = None) -> T:
    """The result of ``compute()`` for these inputs: kept in the server's result slots (never
    in Streamlit's caches), else run once in a place of ``lane``'s queue.

    Nothing is kept when ``compute`` raises or is cancelled, so it can be retried. A run
    with an expected time says afterwards what it took, beside what was expected.
    """
    slot = SERVER.results.slot(kind, fingerprint, key)
    if "result" not in slot:
        with slot["lock"]:
            if "result" not in slot:
                with queued(label, lane, expected_s, ident=f"{kind}|{fingerprint}|{key}"):
                    began = time.perf_counter()
                    slot["result"] = compute()
                    if expected_s:
                        slot["timing"] = (time.perf_counter() - began, expected_s)
    st.session_state.pop(_cancel_key(label, f"{kind}|{fingerprint}|{key}"), None)
    if "timing" in slot:
        took, expected = slot["timing"]
        st.caption(f":material/schedule: {label} took {duration(took)} on this server "
                   f"({about(expected)} was expected).")
    return slot["result"]


def fit_slot(estimator: Any, representation: str, scope: np.ndarray | None = None) -> tuple[str, str]:
    """(kind, key) of a method run's result slot: the estimator's class, its ``get_params()``,
    the representation and the scope's digest (the store's fingerprint is the slot's other key)."""
    parts: tuple[Any, ...] = (representation, estimator.get_params())
    if scope is not None:
        parts += ("scope", scope_digest(scope))
    return f"fit:{type(estimator).__name__}", run_key(*parts)


def _slot(store: Store, estimator: Any, representation: str, scope: np.ndarray | None) -> tuple[str, str, str]:
    kind, key = fit_slot(estimator, representation, scope)
    return kind, store.fingerprint, key


def cached_fit(store: Store, estimator: Any, representation: str = "embedding", scope: np.ndarray | None = None) -> Any | None:
    """The fitted run ``fitted_once`` holds for these inputs, or None (nothing is computed)."""
    return cached_result(*_slot(store, estimator, representation, scope))


def fitted_once(store: Store, estimator: Any, representation: str = "embedding", scope: np.ndarray | None = None, *,
                label: str, expected_s: float | None = None, **fit_params: Any) -> Any:
    """A method fitted on the store (``core.services.runs.fit_on_store``: scoped to ``scope``'s
    rows and mapped back to store rows), once per server for these inputs; the result is a
    fitted clone, never the caller's estimator. ``fit_params`` go to ``fit`` (e.g. progress)."""
    kind, fingerprint, key = _slot(store, estimator, representation, scope)
    return computed_once(kind, fingerprint, key, label,
                         lambda: fit_on_store(estimator, store, representation, scope, meta_for(store), **fit_params),
                         expected_s=expected_s)


def held_out_once(store: Store, estimator: Any, representation: str = "embedding", scope: np.ndarray | None = None, *,
                  expected_s: float | None = None, **options: Any) -> tuple[Any | None, Callable[[], Any]]:
    """A method's split-half confirmation (``core.services.runs.held_out_on_store``): (its
    cached table or None, the run that computes it once). ``options`` go to the check."""
    kind, fingerprint, key = _slot(store, estimator, representation, scope)
    kind, key = f"held-out:{kind}", run_key(key, options)

    def run() -> Any:
        return computed_once(kind, fingerprint, key, "The held-out confirmation",
                             lambda: held_out_on_store(estimator, store, representation, scope, meta_for(store), **options),
                             expected_s=expected_s)

    return cached_result(kind, fingerprint, key), run
