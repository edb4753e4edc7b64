"""Links into the Cohorts page: open a filter there, and read the cell a heatmap click chose."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.ui.charts import CELL_SELECTION, cell_text
from core.ui.keys import state_key

COHORTS_PAGE = "pages/cohorts.py"


def where_key(workspace_key: str) -> str:
    """The Cohorts page's WHERE box (its value is kept under ``<key>:kept``, core/ui/widgets.kept)."""
    return state_key("cohorts", "where", workspace_key)


def open_cohort(ctx: Any, where: str) -> None:
    """Put ``where`` in the Cohorts page's WHERE box and switch to that page."""
    key = where_key(ctx.key)
    st.session_state[f"{key}:kept"] = where  # kept() gives it back to the box on its next run
    st.session_state[key] = where
    st.switch_page(COHORTS_PAGE)


def selected_cell(table: pd.DataFrame, event: dict[str, Any] | None) -> dict[str, Any] | None:
    """The row of an intersection table (core.summary.intersection_accuracy) that a click on its
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
