"""The workspace file as the app reads it, and workshop mode's server-wide state.

The bottom of the page furniture (beside core/ui/keys.py and core/ui/visitor.py): the
loaders (core/ui/cache.py), the page context (core/ui/context.py) and the workshop
(core/ui/workshop.py) read it, and it reads none of them, so none of them imports another
late to learn whether the ground truth is hidden.

Workshop mode is on when the settings say so (``[settings] workshop = true`` or
``BIASLENS_WORKSHOP=1``, core/services/workspace.py) unless the instructor switched it for the server
in the sidebar; the ground truth is hidden while it is on and not revealed. The state is
core/services/server.py's ``SERVER.workshop`` (see core/ui/workshop.py).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.services.server import SERVER, WorkshopSnapshot
from core.services.workspace import WorkspaceList, default_workspaces_file, load_workspaces


@st.cache_data(show_spinner=False, ttl=10)
def workspace_file(path: str, mtime_ns: int) -> WorkspaceList:
    """The workspace file, re-read when it changes (mtime is part of the key)."""
    return load_workspaces(Path(path))


def workspace_list() -> WorkspaceList:
    """The workspaces of this server: its workspace file as last read (cached per mtime)."""
    path = default_workspaces_file()
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    return workspace_file(str(path), mtime)


def workshop_state() -> WorkshopSnapshot:
    """The server's workshop state as it is now (mode switch, reveal, reset count, version)."""
    return SERVER.workshop.snapshot()


def workshop_on(listing: WorkspaceList | None = None) -> bool:
    """Whether workshop mode is on: the instructor's switch if set, else the settings."""
    return workshop_state().mode((listing or workspace_list()).workshop)


def ground_truth_hidden(listing: WorkspaceList | None = None) -> bool:
    """True while workshop mode is on and the instructor has not revealed the ground truth."""
    return workshop_on(listing) and not workshop_state().revealed


def visible_columns(columns: list[str], hidden: bool | None = None) -> list[str]:
    """The metadata columns a student may see: no ``slice_*`` columns while hidden."""
    hidden = ground_truth_hidden() if hidden is None else hidden
    return [c for c in columns if not (hidden and str(c).startswith("slice_"))]


def hidden_notice(what: str) -> None:
    st.info(f":material/visibility_off: {what} is hidden during the workshop until the instructor reveals it.")
