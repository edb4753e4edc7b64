"""Render Fashion-MNIST to RGB with attributes and plant the slices a ``DemoSpec`` describes.

The TRAIN split draws the attributes from the probabilities the plants imply
(``train_tables``) and flips the labels of the slices that say so; the TEST split draws
every attribute independently and uniformly, so each intersection is represented and a
slice's test images are exactly its ``where``. See core/demo/spec.py for the slices file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.demo.spec import DemoSpec, Slice, train_tables
from core.errors import DataError, WorkspaceError

SPLITS = ("train", "test")
_CHUNK = 8192


@dataclass(frozen=True)
class RenderedSplit:
    """One rendered split.

    images: uint8 (N, S, S, 3). labels: int64 (N,) labels to train/evaluate with (noisy
    in the planted train split). clean_labels: the Fashion-MNIST labels. attributes: one
    string column per attribute. ground_truth: bool column ``slice_<name>`` per slice,
    membership in the slice's ``where`` (computed with the clean labels).
    """

    split: str
    seed: int
    images: np.ndarray
    labels: np.ndarray
    clean_labels: np.ndarray
    attributes: pd.DataFrame
    ground_truth: pd.DataFrame


# --------------------------------------------------------------------------- sampling


def _draw(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs`` (N, V)."""
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    u = rng.random(len(probs))
    return (u[:, None] >= cdf).sum(axis=1)


def _membership(
    spec: DemoSpec, s: Slice, labels: np.ndarray, codes: dict[str, np.ndarray]
) -> np.ndarray:
    mask = np.ones(len(labels), dtype=bool)
    for key, allowed in s.where:
        if key == "label":
            idx = [spec.classes.index(v) for v in allowed]
            mask &= np.isin(labels, idx)
        else:
            values = spec.attribute(key).values
            mask &= np.isin(codes[key], [values.index(v) for v in allowed])
    return mask


# -------------------------------------------------------------------------- rendering


def _pattern_maps(spec: DemoSpec) -> np.ndarray:
    """(n_patterns, S, S, 3) float background images, one per pattern value."""
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.array(spec.background, dtype=np.float32) / 255
    maps = []
    for params in spec.attribute("pattern").params:
        period = params["period"]
        half = max(1, period // 2)
        if params["kind"] == "stripes":
            on = (yy % period) < half
        elif params["kind"] == "dots":
            on = (
                ((yy % period) < half)
                & ((xx % period) < half)
                & ((yy // period + xx // period) % 2 == 0)
            )
        elif params["kind"] == "checker":
            on = ((yy // half) + (xx // half)) % 2 == 0
        elif params["kind"] == "grid":
            on = (yy % period == 0) | (xx % period == 0)
        elif params["kind"] == "diagonal":
            on = ((yy + xx) % period) < half
        else:
            on = np.zeros((size, size), dtype=bool)
        colour = np.array(params["rgb"], dtype=np.float32) / 255
        maps.append(np.where(on[..., None], colour, base))
    return np.stack(maps).astype(np.float32)


def _marker_masks(spec: DemoSpec) -> tuple[np.ndarray, np.ndarray]:
    """(n_markers, S, S) bool masks and (n_markers, 3) colours of the marker values."""
    size = spec.size
    masks, colours = [], []
    for params in spec.attribute("marker").params:
        mask = np.zeros((size, size), dtype=bool)
        if params["shape"] != "none":
            m, pad = params["size"], 1
            shape = np.ones((m, m), dtype=bool)
            if params["shape"] == "cross":
                shape[:] = False
                shape[m // 2, :] = shape[:, m // 2] = True
                if m % 2 == 0:
                    shape[m // 2 - 1, :] = shape[:, m // 2 - 1] = True
            top = pad if params["corner"].startswith("top") else size - pad - m
            left = pad if params["corner"].endswith("left") else size - pad - m
            mask[top : top + m, left : left + m] = shape
        masks.append(mask)
        colours.append(np.array(params.get("rgb", (0, 0, 0)), dtype=np.float32) / 255)
    return np.stack(masks), np.stack(colours)


def _render_images(
    images28: np.ndarray, codes: dict[str, np.ndarray], spec: DemoSpec
) -> np.ndarray:
    """Composite garment, background, brightness and marker, in chunks (vectorised)."""
    size = spec.size
    lo = (size - 28) // 2
    tints = np.array([p["rgb"] for p in spec.attribute("tint").params], dtype=np.float32) / 255
    gains = np.array([p["gain"] for p in spec.attribute("brightness").params], dtype=np.float32)
    backgrounds = _pattern_maps(spec)
    marker_masks, marker_rgb = _marker_masks(spec)
    out = np.empty((len(images28), size, size, 3), dtype=np.uint8)
    for start in range(0, len(images28), _CHUNK):
        stop = min(start + _CHUNK, len(images28))
        gray = np.zeros((stop - start, size, size), dtype=np.float32)
        gray[:, lo : lo + 28, lo : lo + 28] = images28[start:stop] / np.float32(255)
        # opaque garment mask; the shading keeps dark garments visible against the pattern
        alpha = np.clip(gray * 4, 0, 1)[..., None]
        shade = (0.25 + 0.75 * gray)[..., None]
        garment = shade * tints[codes["tint"][start:stop]][:, None, None, :]
        img = alpha * garment + (1 - alpha) * backgrounds[codes["pattern"][start:stop]]
        img *= gains[codes["brightness"][start:stop]][:, None, None, None]
        marker = codes["marker"][start:stop]
        mask = marker_masks[marker][..., None]
        img = np.where(mask, marker_rgb[marker][:, None, None, :], img)
        np.clip(img * 255 + 0.5, 0, 255, out=img)
        out[start:stop] = img.astype(np.uint8)
    return out


def render(
    images28: np.ndarray, labels: np.ndarray, spec: DemoSpec, split: str, seed: int
) -> RenderedSplit:
    """Render Fashion-MNIST images (N, 28, 28) as RGB with attributes drawn for ``split``.

    'test': every attribute uniform and independent, labels untouched. 'train': attributes
    drawn from ``train_tables`` (the plants), then each slice with a ``flip`` relabels its
    matching images with probability ``flip.p`` to ``flip.to`` (one of its classes, uniformly). Deterministic in ``seed``.
    """
    if split not in SPLITS:
        raise WorkspaceError(f"Unknown split '{split}': use 'train' or 'test'.")
    if images28.ndim != 3 or images28.shape[1:] != (28, 28) or len(images28) != len(labels):
        raise DataError(
            f"render needs (N, 28, 28) images and N labels, got {images28.shape} and {labels.shape}."
        )
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    clean = np.asarray(labels, dtype=np.int64)
    n = len(clean)
    codes: dict[str, np.ndarray] = {}
    tables = train_tables(spec) if split == "train" else None
    for attr in spec.attributes:
        if tables is None:
            codes[attr.name] = rng.integers(0, len(attr.values), size=n)
        else:
            codes[attr.name] = _draw(rng, tables[attr.name][clean])

    noisy = clean.copy()
    truth = {}
    for s in spec.slices:
        member = _membership(spec, s, clean, codes)
        truth[s.column] = member
        if split == "train" and s.flip_to:
            flip = member & (rng.random(n) < s.flip_p)
            targets = np.array([spec.classes.index(c) for c in s.flip_to], dtype=np.int64)
            # one target: no draw, so a one-class flip relabels exactly as it always has
            pick = rng.integers(0, len(targets), size=int(flip.sum())) if len(targets) > 1 else 0
            noisy[flip] = targets[pick]

    attributes = pd.DataFrame(
        {a.name: np.array(a.values, dtype=object)[codes[a.name]] for a in spec.attributes}
    )
    ground_truth = pd.DataFrame(truth, index=pd.RangeIndex(n), dtype=bool)
    images = _render_images(images28, codes, spec)
    return RenderedSplit(split, seed, images, noisy, clean, attributes, ground_truth)
