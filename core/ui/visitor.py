"""Who this browser is, across reloads: a random visitor key kept in the page's URL (``?v=``).

A reload or a new tab with the same URL starts a new Streamlit session with an empty session
state; the key finds the visitor's record on the server again (core/services/server.py: their saved
subsets and workshop steps). The key is 128 random bits, so one student never lands on
another's work unless given their URL. The records live in the server process, never in
Streamlit's caches, so a client's clear-cache message cannot wipe them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from core.errors import BiasLensError
from core.services.server import SERVER, VISITOR_KEY, VisitorRecord, new_visitor_key
from core.services.subsets import SessionStorage, Subset
from core.ui.keys import state_key

PARAM = "v"
KEY = state_key("app", "visitor")
# What one visitor may keep on the server: subsets and their rows over all workspaces.
MAX_SUBSETS = 100
MAX_ROWS = 500_000


def visitor_key() -> str:
    """This session's visitor key: the URL's when well formed, else a new one written to the URL
    (page links drop the query string, so it is written back on every run)."""
    key = st.session_state.get(KEY)
    if key is None:
        wanted = st.query_params.get(PARAM, "")
        key = wanted if VISITOR_KEY.match(wanted) else new_visitor_key()
        st.session_state[KEY] = key
    if st.query_params.get(PARAM) != key:
        st.query_params[PARAM] = key
    return key


def record() -> VisitorRecord:
    """This visitor's record on the server."""
    return SERVER.visitors.get(visitor_key())


class VisitorStorage(SessionStorage):
    """A visitor's subsets, kept in their server-side record, within the per-visitor caps."""

    def __init__(self, visitor: VisitorRecord, workspace_key: str) -> None:
        super().__init__(visitor.data, workspace_key)
        self._visitor = visitor

    def change(self, fn: Callable[[dict[str, Subset]], Any]) -> Any:
        def capped(subsets: dict[str, Subset]) -> Any:
            result = fn(subsets)
            others = [s for k, v in self._visitor.data.items() if str(k).startswith("subsets:") and v is not self._subsets
                      for s in v.values()]
            kept = [*others, *subsets.values()]
            if len(kept) > MAX_SUBSETS or sum(len(s) for s in kept) > MAX_ROWS:
                raise BiasLensError(
                    f"This server keeps at most {MAX_SUBSETS} subsets and {MAX_ROWS:,} images in them per visitor: "
                    "delete some subsets first (Cohorts & subsets)."
                )
            return result

        return super().change(capped)
