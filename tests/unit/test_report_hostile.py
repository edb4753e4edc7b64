"""The Markdown findings report shows user text as typed: no HTML, script or link a
renderer would run or follow (the HTML report escapes; the Markdown one passed it through)."""

import re

import pandas as pd
from PIL import Image

from core.services.report import build_report
from core.services.subsets import SubsetRegistry

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
LINK = "[click me](javascript:alert(3))"
PICTURE = "![pic](javascript:alert(4))"


def _report() -> str:
    n = 8
    meta = pd.DataFrame({
        "row": range(n), "id": [f"i{i}" for i in range(n)],
        "label": [SCRIPT, "dog"] * (n // 2), "pred": ["dog"] * n, "correct": [i % 2 == 1 for i in range(n)],
        "loss": [float(i) for i in range(n)], "<svg onload=alert(5)>": [LINK, "b|c"] * (n // 2),
    })
    reg = SubsetRegistry({}, "ws")
    reg.add(f"{SCRIPT} {LINK}", range(4), origin="cohort", detail=f"label = '{IMG}' OR x = '{PICTURE}'",
            note=f"{IMG}\n{LINK} & {PICTURE}", params={"k": SCRIPT})
    return build_report(reg.subsets(), meta, ["<svg onload=alert(5)>"], title=f"Findings {SCRIPT}",
                        load_image=lambda row: Image.new("RGB", (4, 4)), fmt="markdown", thumbs=2)


def test_markdown_report_has_no_live_html_or_links():
    text = _report()
    for live in ("<script", "<img", "<svg", "](javascript:", "![pic]", "[click me]"):
        assert live not in text, live
    # the only Markdown links or images left are the inlined thumbnails
    targets = re.findall(r"(?<!\\)\]\(([^)]*)", text)
    assert targets and all(t.startswith("data:image/png;base64,") for t in targets)
    assert "&" not in text.replace("&lt;", "").replace("&gt;", "").replace("&amp;", "")


def test_markdown_report_shows_the_text_as_typed():
    text = _report()
    shown_script = r"&lt;script&gt;alert\(1\)&lt;/script&gt;"
    shown_link = r"\[click me\]\(javascript:alert\(3\)\)"
    assert f"# Findings {shown_script}" in text  # the title
    assert f"## {shown_script} {shown_link}" in text  # the subset's name
    assert r"query: label = '&lt;img src=x onerror=alert\(2\)&gt;' OR x = '\!\[pic\]\(javascript:alert\(4\)\)'" in text
    assert r'parameters: {"k": "&lt;script&gt;alert\(1\)&lt;/script&gt;"}' in text
    assert r"> &lt;img src=x onerror=alert\(2\)&gt;" in text  # each note line quoted and escaped
    assert rf"> {shown_link} &amp; \!\[pic\]\(javascript:alert\(4\)\)" in text
    assert f"- classes: {shown_script} 50.0%, dog 50.0%" in text
    # table cells: an attribute name or value cannot open HTML, a link or a new column
    assert rf"| &lt;svg onload=alert\(5\)&gt; | {shown_link} |" in text
    assert r"| &lt;svg onload=alert\(5\)&gt; | b\|c |" in text
    assert rf"![dog \(true: {shown_script}\)](data:image/png;base64," in text  # a thumbnail's caption
