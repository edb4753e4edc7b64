"""The findings report: every subset's name, origin, size and accuracy, thumbnails inlined."""

import base64
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.services.report import build_report, subset_figures
from core.services.subsets import SubsetRegistry


@pytest.fixture
def meta():
    n = 40
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "row": range(n), "id": [f"img{i}" for i in range(n)], "label": ["cat", "dog"] * (n // 2),
        "pred": ["cat"] * n, "correct": [i % 2 == 0 for i in range(n)], "loss": rng.random(n),
        "tint": ["red" if i < 10 else "blue" for i in range(n)],
    })


@pytest.fixture
def registry():
    reg = SubsetRegistry({}, "ws")
    reg.add("red <things>", range(10), origin="cohort", detail="tint = 'red'", note="all red & risky")
    reg.add("dogs", range(1, 40, 2), origin="class", detail="label = 'dog'")
    return reg


def _image(row: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (row * 5 % 255, 0, 0))


def test_figures(meta):
    f = subset_figures(range(10), meta, ["tint"])
    assert f.size == 10 and f.share == 0.25 and f.accuracy == 0.5
    assert f.low <= 0.5 <= f.high and f.overall == 0.5
    assert list(f.classes["class"]) == ["cat", "dog"] and f.classes["share"].sum() == pytest.approx(1)
    top = f.lift.iloc[0]
    assert (top["attribute"], top["value"], top["lift"]) == ("tint", "red", pytest.approx(4.0))
    assert "blue" not in set(f.lift["value"])  # values absent from the subset are left out


def test_html_report_is_self_contained(meta, registry):
    text = build_report(registry.subsets(), meta, ["tint"], title="Findings", load_image=_image, thumbs=3)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "red &lt;things&gt;" in text and "all red &amp; risky" in text  # escaped
    assert "dogs" in text and "origin: class" in text and "tint = &#x27;red&#x27;" in text
    assert "size: 10 images (25.0% of all)" in text and "size: 20 images (50.0% of all)" in text
    assert "accuracy: 50.0%" in text and "accuracy: 0.0%" in text  # every dog is misclassified
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(uris) == 6 and base64.b64decode(uris[0]).startswith(b"\x89PNG")
    assert "http" not in text.replace("https://", "")  # nothing fetched from elsewhere


def test_markdown_report(meta, registry):
    text = build_report(registry.subsets(), meta, ["tint"], title="Findings", load_image=_image, fmt="markdown", thumbs=2)
    assert text.startswith("# Findings")
    assert "## red &lt;things&gt;" in text and "## dogs" in text  # escaped: shown as typed
    assert "- size: 10 images" in text and "- accuracy: 50.0%" in text and "- accuracy: 0.0%" in text
    assert "| tint | red | 100.0% | 25.0% | 4.00 |" in text
    assert text.count("(data:image/png;base64,") == 4
    assert "> all red &amp; risky" in text


def test_report_without_images_or_subsets(meta, registry):
    assert "<img" not in build_report(registry.subsets(), meta, ["tint"], title="T")
    assert "0 saved subsets" in build_report([], meta, ["tint"], title="T")
    with pytest.raises(ValueError):
        build_report([], meta, [], title="T", fmt="pdf")
