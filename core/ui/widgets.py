"""Image grids and small display helpers shared by the pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

    ``thumbs`` are RGB arrays, or PNG bytes already framed (``cache.thumbnail_pngs``).
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
            picture = thumbs[i] if isinstance(thumbs[i], bytes) else cache.thumbnail_png(thumbs[i], not rec["correct"])
            if extra is not None:
                caption += f" · {extra[i]}"
            col.image(picture, caption=caption, width="stretch", output_format="PNG")  # PNG: not re-encoded
            if below is not None:
                below(col, rec)


def how_to_read(text: str) -> None:
    """The one-line reading guide every chart carries."""
    st.caption(f"How to read this: {text}")


DASH = "–"  # what a table or a figure shows for a value that does not exist (never "None" or "nan")


def percent(value: float) -> str:
    return DASH if value != value else f"{100 * value:.1f}%"


@dataclass(frozen=True)
class Shown:
    """How ``table`` shows one numeric column: ``kind`` "percent" (a 0-1 share, shown ×100 with
    ``digits`` decimals and a % sign), "points" (a difference of shares, in signed percentage
    points), "number" (``digits`` decimals) or "general" (%g-style, ``digits`` significant).
    ``missing`` says why a cell may be empty; it goes into the header's tooltip beside ``help``."""

    kind: str = "number"
    digits: int = 1
    label: str | None = None
    help: str | None = None
    missing: str | None = None

    def format(self) -> str:
        return {"percent": f"%.{self.digits}f%%", "points": f"%+.{self.digits}f pts",
                "general": f"%.{self.digits}g"}.get(self.kind, f"%.{self.digits}f")

    def scale(self) -> float:
        return 100.0 if self.kind in ("percent", "points") else 1.0


def readable(frame: pd.DataFrame, columns: dict[str, Shown]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(a copy of ``frame``, its column_config) with one number format per column, the same on
    every row (Streamlit's "percent" prints 49% beside 57.01%), and a dash for a missing value,
    never "None" or "nan": a column holding one becomes text, and its tooltip says why."""
    shown, config = frame.copy(), {}
    for name, how in columns.items():
        if name not in shown:
            continue
        values = pd.to_numeric(shown[name], errors="coerce").astype(float) * how.scale()
        tip = " ".join(t for t in (how.help, f"{DASH} = {how.missing}" if how.missing else None) if t) or None
        if values.isna().any():
            shown[name] = [DASH if v != v else how.format() % v for v in values]
            config[name] = st.column_config.TextColumn(how.label or name, help=tip)
        else:
            shown[name] = values
            config[name] = st.column_config.NumberColumn(how.label or name, format=how.format(), help=tip)
    return shown, config


def table(frame: pd.DataFrame, columns: dict[str, Shown], **kwargs: Any) -> Any:
    """``st.dataframe`` of ``readable(frame, columns)``; other ``column_config`` entries and
    keywords pass through. Returns st.dataframe's event (for ``on_select``)."""
    shown, config = readable(frame, columns)
    return st.dataframe(shown, column_config={**(kwargs.pop("column_config", None) or {}), **config}, **kwargs)


def kept(key: str, default: Any = None, *, default_from: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Keyword arguments (key, on_change, args) for a widget whose value survives leaving the
    page and coming back: ``st.slider("x", 0, 9, **kept(key, 3))``, with no default value.
    ``default_from`` computes the first value instead, only on the run that needs it.

    Streamlit drops a widget's state on a run that does not draw it (another page). The value
    is kept under ``<key>:kept``, updated by the widget's on_change, and given back to the
    widget on every run before it is drawn.
    """
    mirror = f"{key}:kept"
    if mirror not in st.session_state:
        st.session_state[mirror] = default_from() if default_from is not None else default
    st.session_state[key] = st.session_state[mirror]
    return {"key": key, "on_change": _keep, "args": (key, mirror)}


def _keep(key: str, mirror: str) -> None:
    st.session_state[mirror] = st.session_state[key]


def group_select(
    label: str, key: str, groups: dict[str, Sequence[int]], nothing: str, help: str
) -> tuple[str | None, np.ndarray | None]:
    """A select of named groups of store rows (saved subsets, a linked group) with a first
    "nothing" choice, kept across pages (``kept``). Returns (name, its rows) or (None, None).

    Drawn only when there is a group; a kept choice that no longer exists (renamed or
    deleted) falls back to ``nothing``.
    """
    if not groups:
        return None, None
    if st.session_state.get(f"{key}:kept", nothing) not in [nothing, *groups]:
        st.session_state[f"{key}:kept"] = nothing
    choice = st.selectbox(label, [nothing, *groups], **kept(key, nothing), help=help)
    if choice == nothing:
        return None, None
    return choice, np.asarray(groups[choice], dtype=np.int64)
