"""Links into the Cohorts page: open a filter or a group of images there, and read the cell a
heatmap click chose."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.ui.charts import CELL_SELECTION, cell_text
from core.ui.keys import state_key
from core.ui.widgets import group_select

COHORTS_PAGE = "pages/cohorts.py"
ALL_IMAGES = "All images"


def where_key(workspace_key: str) -> str:
    """The Cohorts page's WHERE box (its value is kept under ``<key>:kept``, core/ui/widgets.kept)."""
    return state_key("cohorts", "where", workspace_key)


def open_cohort(ctx: Any, where: str) -> None:
    """Put ``where`` in the Cohorts page's WHERE box and switch to that page."""
    key = where_key(ctx.key)
    st.session_state[f"{key}:kept"] = where  # kept() gives it back to the box on its next run
    st.session_state[key] = where
    st.switch_page(COHORTS_PAGE)


def linked_key(workspace_key: str) -> str:
    """The group another page opened on the Cohorts page: (name, store rows)."""
    return state_key("cohorts", "linked", workspace_key)


def within_key(workspace_key: str) -> str:
    """The Cohorts page's "Within" select (all images, a saved subset or the linked group)."""
    return state_key("cohorts", "within", workspace_key)


def open_group(ctx: Any, name: str, rows: Any) -> None:
    """Open a group of images that no attribute filter describes (a subgroup, a map selection)
    as a cohort: the Cohorts page filters within it, starting with an empty WHERE box."""
    st.session_state[linked_key(ctx.key)] = (name, [int(r) for r in rows])
    st.session_state[f"{within_key(ctx.key)}:kept"] = name
    st.session_state[within_key(ctx.key)] = name
    key = where_key(ctx.key)
    st.session_state[f"{key}:kept"] = ""
    st.session_state[key] = ""
    st.switch_page(COHORTS_PAGE)


def within_select(ctx: Any, registry: Any) -> tuple[str | None, np.ndarray | None]:
    """The "Within" select: all images, a saved subset, or the group another page linked here.

    Returns (name, its store rows) or (None, None) for all images.
    """
    groups = {subset.name: subset.rows for subset in registry.subsets()}  # one read: no name vanishes
    linked = st.session_state.get(linked_key(ctx.key))
    if linked:
        groups[linked[0]] = linked[1]
    return group_select(
        "Within", within_key(ctx.key), groups, ALL_IMAGES,
        "Filter every image, or only a saved subset's, or the group opened from another page "
        "(a subgroup has no attribute filter that describes it).",
    )


def selected_cell(table: pd.DataFrame, event: dict[str, Any] | None) -> dict[str, Any] | None:
    """The row of an intersection table (core.scoring.summary.intersection_accuracy) that a click on its
    heatmap selected, or None (nothing selected, or an empty cell)."""
    points = ((event or {}).get("selection") or {}).get(CELL_SELECTION) or []
    if not points:
        return None
    point = points[0]
    rows = [cell_text(v) for v in table["row"]]
    columns = [cell_text(v) for v in table["column"]]
    for i, (r, c) in enumerate(zip(rows, columns, strict=True)):
        if r == str(point.get("row_text")) and c == str(point.get("column_text")):
            cell = table.iloc[i].to_dict()
            return cell if cell["n"] > 0 else None
    return None
