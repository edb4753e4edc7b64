"""Thumbnails: the error mark hides none of the demo's corner markers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.data.images import ERROR_RED, frame_width, framed, mark_error, thumbnail
from core.demo.generator import _marker_masks
from core.demo.spec import DEFAULT_SLICES, DemoSpec

SIDE = 96


@pytest.mark.parametrize("error", [True, False])
def test_no_demo_corner_marker_is_hidden_by_the_frame_or_the_badge(error):
    spec = DemoSpec.from_toml(DEFAULT_SLICES)
    masks, _ = _marker_masks(spec)
    assert masks.any(axis=(1, 2)).sum() >= 3  # square, cross and the top-right dot
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (spec.size, spec.size, 3), dtype=np.uint8)
    thumb = thumbnail(Image.fromarray(image), SIDE)
    marked = framed(thumb, error)
    f = frame_width(SIDE)
    assert marked.shape == (SIDE + 2 * f, SIDE + 2 * f, 3)
    inside = marked[f : f + SIDE, f : f + SIDE]
    scale = SIDE // spec.size
    for mask in masks:
        big = np.kron(mask, np.ones((scale, scale), dtype=bool))  # the marker's pixels on the thumbnail
        assert (inside[big] == thumb[big]).all(), "a corner marker is covered"
    if error:
        assert (marked[0, :] == ERROR_RED).all() and (marked[:, -1] == ERROR_RED).all()
        assert not (inside == thumb).all()  # the badge is drawn
        assert (mark_error(thumb) == marked).all()
    else:
        assert (inside == thumb).all()
