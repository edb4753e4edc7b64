"""Image grids and small display helpers shared by the pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.ui import cache


def image_grid(
    thumbs: Sequence[np.ndarray],
    meta_rows: pd.DataFrame,
    columns: int = 8,
    extra: Sequence[str] | None = None,
    below: Callable[[Any, dict[str, Any]], None] | None = None,
) -> None:
    """Thumbnails in a grid, captioned 'label' or '✗ pred (label)', errors framed in red.

    ``below(column, record)`` may add a widget under each image (e.g. a button).
    """
    if len(thumbs) == 0:
        st.caption("No images to show.")
        return
    records = meta_rows.to_dict("records")
    for start in range(0, len(thumbs), columns):
        cols = st.columns(columns)
        for offset, col in enumerate(cols):
            i = start + offset
            if i >= len(thumbs):
                break
            rec = records[i]
            if rec["correct"]:
                caption = f"✓ {rec['label']}"
            else:
                caption = f"✗ {rec['pred']} (true: {rec['label']})"
            picture = cache.thumbnail_png(thumbs[i], not rec["correct"])
            if extra is not None:
                caption += f" · {extra[i]}"
            col.image(picture, caption=caption, width="stretch")
            if below is not None:
                below(col, rec)


def how_to_read(text: str) -> None:
    """The one-line reading guide every chart carries."""
    st.caption(f"How to read this: {text}")


def percent(value: float) -> str:
    return "–" if value != value else f"{100 * value:.1f}%"
