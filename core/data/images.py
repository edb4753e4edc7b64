"""Reading image files as 8-bit RGB, whatever their mode, bit depth or size.

Models and pages expect 8-bit RGB; real datasets hold grayscale, palette, alpha, 16-bit
and float images. ``load_rgb`` converts them all the same way, and turns every reading
failure into a ``DataError`` the user can act on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from core.errors import DataError

# Modes whose pixel values are not 8-bit: their value range is stretched to 0..255.
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# Modes that carry an alpha channel (or can, via a ``transparency`` entry in ``info``).
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _reason(exc: BaseException) -> str:
    """A short human reason for a PIL reading failure."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder, not a file"
    return str(exc) or type(exc).__name__


def _stretch_to_rgb(im: Image.Image) -> Image.Image:
    """Map a 16/32-bit integer or float single-band image onto 0..255 by its min..max.

    Stretching (not clipping) keeps the contrast of e.g. 12-bit scans stored in 16-bit
    PNGs, which would otherwise look black. A constant image becomes black if its value
    is <= 0, else white. Non-finite float values count as the minimum.
    """
    values = np.asarray(im, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("RGB", im.size)
    lo, hi = values[finite].min(), values[finite].max()
    values = np.where(finite, values, lo)
    if hi > lo:
        scaled = np.rint((values - lo) * (255.0 / (hi - lo)))
    else:
        scaled = np.full(values.shape, 0.0 if lo <= 0 else 255.0)
    return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image of any mode to 8-bit RGB (alpha composited on white)."""
    if im.mode in _WIDE_MODES:
        return _stretch_to_rgb(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Read an image file fully and return it as an 8-bit RGB PIL image.

    Grayscale, 1-bit, palette and CMYK images are converted; transparency is composited
    on white; 16-bit, 32-bit integer and float images are stretched to 0..255 (see
    ``_stretch_to_rgb``); multi-frame files give their first frame. EXIF orientation is
    not applied, matching torchvision's own loader that most models were trained with.

    Raises DataError for missing, unreadable, truncated or non-image files.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except _READ_ERRORS as exc:
        raise DataError(
            f"Cannot read image '{path}': {_reason(exc)}. Fix or remove the file."
        ) from exc


def is_probably_image(path: str | Path) -> tuple[bool, str]:
    """Cheaply tell whether ``path`` looks like a readable image, without decoding it.

    Only the header is parsed (``Image.open`` is lazy), so indexing a large folder stays
    fast; truncated pixel data is only caught later by ``load_rgb``. Returns
    ``(True, "")`` or ``(False, reason)``.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
    except _READ_ERRORS as exc:
        return False, _reason(exc)
    if width == 0 or height == 0:
        return False, f"image has zero size ({width}x{height})"
    return True, ""


ERROR_RED = (220, 30, 30)


def thumbnail(image: Image.Image, size: int) -> np.ndarray:
    """Square RGB thumbnail; small images are enlarged with nearest-neighbour (no blur)."""
    image = image.convert("RGB")
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    resample = Image.Resampling.NEAREST if side < size else Image.Resampling.LANCZOS
    return np.asarray(canvas.resize((size, size), resample))


def frame_width(side: int) -> int:
    """Width of the frame ``framed`` draws around a ``side``-pixel thumbnail."""
    return max(2, side // 24)


def framed(thumb: np.ndarray, error: bool) -> np.ndarray:
    """The thumbnail inside a frame drawn outside the image, so no pixel of it is hidden.

    Correct images get a white frame; misclassified ones a red frame and a red-cross badge
    in the bottom-left corner. Corner markers stay visible: the frame lies outside the image,
    and the planted-bias demo marks only the top-left, top-right and bottom-right corners.
    """
    h, w = thumb.shape[:2]
    f = frame_width(w)
    canvas = Image.new("RGB", (w + 2 * f, h + 2 * f), ERROR_RED if error else (255, 255, 255))
    canvas.paste(Image.fromarray(thumb), (f, f))
    if error:
        draw = ImageDraw.Draw(canvas)
        s = max(8, w // 5)
        top, right = h + 2 * f - s - f, f + s - 1  # the badge sits on the bottom-left corner
        draw.rectangle([f, top, right, h + f - 1], fill=(255, 255, 255))
        width = max(2, s // 5)
        draw.line([f + 2, top + 2, right - 2, h + f - 3], fill=ERROR_RED, width=width)
        draw.line([f + 2, h + f - 3, right - 2, top + 2], fill=ERROR_RED, width=width)
    return np.asarray(canvas)


def mark_error(thumb: np.ndarray) -> np.ndarray:
    """The misclassified look: a red frame outside the image and a cross badge bottom-left."""
    return framed(thumb, True)


PLACEHOLDER_GREY = (205, 205, 205)
_CROSS_GREY = (120, 120, 120)


def placeholder(size: int, label: str = "") -> np.ndarray:
    """A grey (size, size, 3) tile with a dark cross and ``label`` (the image's id) written
    across its top: what galleries show for an image whose file is missing or unreadable, so
    one lost file marks its own place instead of stopping the page. A long id keeps its end
    (the file name), cut with '…'. The top is free of ``framed``'s error badge (bottom-left)."""
    canvas = Image.new("RGB", (size, size), PLACEHOLDER_GREY)
    draw = ImageDraw.Draw(canvas)
    band = 0
    if label:
        font = ImageFont.load_default(max(6, size // 9))
        text = label
        while len(text) > 1 and draw.textlength(text, font=font) > size - 4:
            text = text[1:]
        text = text if text == label else "…" + text[1:]
        band = int(font.size * 1.5)
        draw.rectangle([0, 0, size, band], fill=(255, 255, 255))
        draw.text((size / 2, band / 2), text, fill=(60, 60, 60), font=font, anchor="mm")
    inset, width = max(2, size // 6), max(1, size // 24)
    top = max(inset, band + inset // 2)
    draw.line([inset, top, size - inset, size - inset], fill=_CROSS_GREY, width=width)
    draw.line([inset, size - inset, size - inset, top], fill=_CROSS_GREY, width=width)
    return np.asarray(canvas)
