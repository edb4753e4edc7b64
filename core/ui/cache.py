"""Every ``st.cache_*`` wrapper of the app lives here, keyed by what defines its result.

Resources (model, dataset, store, DuckDB view) are shared across sessions and keyed by the
workspace's key (a hash of its spec); data (metadata frames, thumbnails) by the store's
fingerprint. ``clear_store_cache`` is called after a store is built or extended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.cohorts import CohortView
from core.datasets import ImageDataset
from core.models import LoadedModel, load_model
from core.sources import build_dataset
from core.store import Store, find_store
from core.ui.widgets import thumbnail
from core.workspace import Workspace, WorkspaceList, load_workspaces


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


@st.cache_data(show_spinner=False, max_entries=8)
def meta_for(_store: Store, fingerprint: str, layers: tuple[str, ...]) -> pd.DataFrame:
    return _store.meta()


@st.cache_resource(show_spinner=False, max_entries=8)
def cohort_view_for(_store: Store, fingerprint: str) -> CohortView:
    return CohortView(_store.meta())


@st.cache_data(show_spinner=False, max_entries=64)
def thumbnails(_dataset: ImageDataset, workspace_key: str, rows: tuple[int, ...], size: int) -> list[np.ndarray]:
    """RGB thumbnails (size x size, nearest-neighbour for small images) of dataset rows."""
    return [thumbnail(_dataset.load_image(r), size) for r in rows]
