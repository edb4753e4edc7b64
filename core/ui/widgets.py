"""Image grids and small display helpers shared by the pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

ERROR_RED = (220, 30, 30)


def thumbnail(image: Image.Image, size: int) -> np.ndarray:
    """Square RGB thumbnail; small images are enlarged with nearest-neighbour (no blur)."""
    image = image.convert("RGB")
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    resample = Image.Resampling.NEAREST if side < size else Image.Resampling.LANCZOS
    return np.asarray(canvas.resize((size, size), resample))


def mark_error(thumb: np.ndarray) -> np.ndarray:
    """A red frame and a red cross in the corner: the image was misclassified."""
    image = Image.fromarray(thumb)
    draw = ImageDraw.Draw(image)
    w, h = image.size
    frame = max(2, w // 24)
    draw.rectangle([0, 0, w - 1, h - 1], outline=ERROR_RED, width=frame)
    s = max(8, w // 5)
    draw.rectangle([w - s - frame, frame, w - frame - 1, s + frame - 1], fill=(255, 255, 255))
    draw.line([w - s - frame + 2, frame + 2, w - frame - 3, s + frame - 3], fill=ERROR_RED, width=max(2, s // 5))
    draw.line([w - s - frame + 2, s + frame - 3, w - frame - 3, frame + 2], fill=ERROR_RED, width=max(2, s // 5))
    return np.asarray(image)


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
                caption, picture = f"✓ {rec['label']}", thumbs[i]
            else:
                caption, picture = f"✗ {rec['pred']} (true: {rec['label']})", mark_error(thumbs[i])
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
