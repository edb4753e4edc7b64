"""The findings report with a comparison of two models: both accuracies with their intervals,
McNemar's test, the regression and improvement slices with their paired intervals and held-out
test, a saved "regressed in B" subset with its origin, and user text escaped as elsewhere."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from core.services.compare import PairedData, compare
from core.services.report import build_report, comparison_rows
from core.services.subsets import SubsetRegistry

SCRIPT = "<script>alert(1)</script>"
LINK = "[click me](javascript:alert(3))"


def _comparison(name_a: str = "old", name_b: str = "new", description: str = "colour = red"):
    """20 images: A right on 16, B right on 10 (b = 7 A right B wrong, c = 1 A wrong B right),
    and one regression slice of 20 images with the same counts, by hand."""
    correct_a = np.array([True] * 16 + [False] * 4)
    correct_b = correct_a.copy()
    correct_b[:7] = False  # b = 7
    correct_b[16] = True  # c = 1
    loss_a, loss_b = np.where(correct_a, 0.1, 2.0), np.where(correct_b, 0.1, 2.0)
    data = PairedData(correct_a=correct_a, correct_b=correct_b, loss_a=loss_a, loss_b=loss_b,
                      embedding=np.zeros((20, 2)), labels=np.array(["cat", "dog"] * 10), name_a=name_a, name_b=name_b)
    result = compare(data, search=False)
    found = {"name": "Spotlight 1", "description": description, "size": 20, "acc A": 0.8, "acc B": 0.5,
             "A right, B wrong": 7, "A wrong, B right": 1, "q": 0.0123, "held-out n": 10,
             "held-out difference": -0.4, "held-out low": -0.6, "held-out high": -0.1, "significant": True,
             "duplicate of": ""}
    repeat = {**found, "name": "UDIS cluster 2", "duplicate of": "Spotlight 1"}
    return replace(result, regressions=[found, repeat])


def _meta(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"row": range(n), "id": [f"i{i}" for i in range(n)], "label": ["cat", "dog"] * (n // 2),
                         "pred": ["cat"] * n, "correct": [i % 2 == 0 for i in range(n)], "loss": np.linspace(0, 1, n)})


def test_slice_rows_carry_the_paired_interval_by_hand():
    rows = comparison_rows(_comparison().regressions)
    assert len(rows) == 1  # the repeat of the slice is left out
    row = rows[0]
    # b = 7, c = 1 on 20 images: (1 - 7) / 20 = -30 points; Bonett-Price 95% interval -53.0 to -1.5 (test_compare)
    assert row["paired difference (95% CI)"] == "-30.0 (-53.0 to -1.5) pts"
    assert row["held-out difference (95% CI)"] == "-40.0 (-60.0 to -10.0) pts"
    assert (row["#"], row["images"], row["acc A"], row["acc B"], row["q"]) == (1, "20", "80.0%", "50.0%", "0.0123")
    assert row["held-out"] == "confirmed (10 images)"


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_the_report_holds_the_comparison_and_the_saved_subset(fmt):
    registry = SubsetRegistry({}, "ws")
    registry.add("regressed in B: colour = red", range(8), origin="comparison",
                 detail="regressed from A to B: colour = red (Spotlight 1)", params={"A": "old", "B": "new", "q": 0.0123})
    text = build_report(registry.subsets(), _meta(), [], title="Comparison", fmt=fmt, comparison=_comparison())
    plain = re.sub(r"\\(.)", r"\1", text)  # the Markdown escapes removed
    assert "Model comparison: new (B) against old (A)" in plain
    # overall: A 16/20, B 10/20 with their Wilson intervals; McNemar b = 7, c = 1: p = 2 * 9 / 256
    assert "A (old): accuracy 80.0% (95% interval 58.4% – 91.9%)" in plain
    assert "B (new): accuracy 50.0% (95% interval 29.9% – 70.1%)" in plain
    assert "paired difference B − A: -30.0 (-53.0 to -1.5) pts on 20 images" in plain
    assert "7 images A right and B wrong, 1 A wrong and B right, p = 0.0703 (not significantly different)" in plain
    assert "Regression slices (B worse)" in plain and "Improvement slices (B better)" in plain and "None found." in plain
    assert "-30.0 (-53.0 to -1.5) pts" in plain and "confirmed (10 images)" in plain and "UDIS cluster 2" not in plain
    # the saved subset with its origin
    assert "origin: comparison" in plain and "regressed from A to B: colour = red (Spotlight 1)" in plain
    assert '"A": "old"' in plain.replace("&quot;", '"').replace("&#x27;", "'")


def test_comparison_text_is_escaped():
    hostile = _comparison(name_a=SCRIPT, name_b=f"new {LINK}", description=f"tint = {LINK} | {SCRIPT}")
    markdown = build_report([], _meta(), [], title="T", fmt="markdown", comparison=hostile)
    for live in ("<script", "](javascript:", "[click me]"):
        assert live not in markdown, live
    assert r"tint = \[click me\]\(javascript:alert\(3\)\) \| &lt;script&gt;alert\(1\)&lt;/script&gt;" in markdown
    page = build_report([], _meta(), [], title="T", fmt="html", comparison=hostile)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_report_without_a_comparison_has_no_comparison_section():
    assert "Model comparison" not in build_report([], _meta(), [], title="T", fmt="markdown")
    assert "Model comparison" not in build_report([], _meta(), [], title="T", fmt="html")
