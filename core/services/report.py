"""A findings report: the saved subsets with their origin, figures and thumbnails, as one
self-contained HTML file (thumbnails inlined as base64 PNG) or one Markdown file; with a
comparison of two models (core/services/compare.py) when one is given: both accuracies with
their intervals, McNemar's test and the regression and improvement slices.

UI-free: the app passes the subsets, the store metadata and a function that loads an image.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from core.data.images import thumbnail
from core.errors import ParameterError
from core.scoring.significance import ALPHA
from core.scoring.stats import bootstrap_ci
from core.scoring.summary import attribute_enrichment
from core.services.compare import Comparison, paired_difference
from core.services.subsets import Subset, defining_params

FORMATS = ("html", "markdown")


@dataclass(frozen=True)
class SubsetFigures:
    """What the report (and the subset view) says about one subset."""

    size: int
    share: float  # of all images
    accuracy: float
    low: float
    high: float
    overall: float  # accuracy of all images
    mean_loss: float
    classes: pd.DataFrame  # class, n, share, accuracy (largest first)
    lift: pd.DataFrame  # attribute, value, inside, overall, lift (highest first)


def subset_figures(rows: Sequence[int], meta: pd.DataFrame, attributes: Sequence[str]) -> SubsetFigures:
    """Size, accuracy with its 95% bootstrap interval, class mix and attribute lift vs the
    whole dataset (``attribute_enrichment`` with 0/1 weights) of one set of store rows."""
    rows = np.asarray(rows, dtype=np.int64)
    part = meta.iloc[rows]
    accuracy, low, high = bootstrap_ci(part["correct"].to_numpy())
    classes = (
        part.groupby("label", observed=True)
        .agg(n=("correct", "size"), accuracy=("correct", "mean"))
        .reset_index()
        .rename(columns={"label": "class"})
        .sort_values(["n", "class"], ascending=[False, True], kind="stable")
        .reset_index(drop=True)
    )
    classes.insert(2, "share", classes["n"] / max(len(part), 1))
    weights = np.zeros(len(meta))
    weights[rows] = 1.0
    lift = attribute_enrichment(meta, list(attributes), weights)
    lift = lift[lift["inside"] > 0].reset_index(drop=True)
    return SubsetFigures(
        size=len(part), share=len(part) / max(len(meta), 1), accuracy=accuracy, low=low, high=high,
        overall=float(meta["correct"].mean()), mean_loss=float(part["loss"].mean()), classes=classes, lift=lift,
    )


def _pct(value: float) -> str:
    return "–" if value != value else f"{100 * value:.1f}%"


def _png_data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# Characters that make Markdown syntax inline (links and images, code, emphasis, tables,
# headings) and the backslash that escapes them; < > & are HTML-escaped instead.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()!#|~])")


def _md(text: Any) -> str:
    """User text (a subset name, note line, query, class or attribute) as literal Markdown
    text on one line: a renderer shows ``<script>``, ``<img onerror=...>`` and
    ``[x](javascript:...)`` as typed instead of running or linking them."""
    line = " ".join(str(text).splitlines())
    return html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", line), quote=False)


def _origin_line(subset: Subset) -> str:
    parts = [f"origin: {subset.origin}"]
    if subset.detail:
        parts.append(f"{'query' if subset.origin == 'cohort' else 'how'}: {subset.detail}")
    if defining_params(subset.params):
        parts.append("parameters: " + json.dumps(defining_params(subset.params), sort_keys=True))
    parts.append(f"created {subset.created_text}")
    return " · ".join(parts)


def build_report(
    subsets: Sequence[Subset],
    meta: pd.DataFrame,
    attributes: Sequence[str],
    *,
    title: str,
    load_image: Callable[[int], Image.Image] | None = None,
    fmt: str = "html",
    thumbs: int = 8,
    size: int = 96,
    top_lift: int = 5,
    comparison: Comparison | None = None,
) -> str:
    """The report as text: per subset its origin, note, size, accuracy with interval, mean
    loss, largest classes, top lift values and the thumbnails of its highest-loss images;
    first the comparison of two models (``comparison_rows``) when one is given."""
    if fmt not in FORMATS:
        raise ParameterError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}: use one of those.")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    overall = float(meta["correct"].mean()) if len(meta) else float("nan")
    sections: list[dict[str, Any]] = []
    for subset in subsets:
        figures = subset_figures(subset.rows, meta, attributes)
        worst = meta.iloc[list(subset.rows)].sort_values("loss", ascending=False).head(thumbs)
        images = []
        if load_image is not None:
            for record in worst.to_dict("records"):
                caption = (f"{record['label']}" if record["correct"] else f"{record['pred']} (true: {record['label']})")
                images.append((_png_data_uri(thumbnail(load_image(int(record["row"])), size)), caption, bool(record["correct"])))
        sections.append({"subset": subset, "figures": figures, "images": images})
    if fmt == "markdown":
        return _markdown(title, stamp, len(meta), overall, sections, top_lift, comparison)
    return _html(title, stamp, len(meta), overall, sections, top_lift, comparison)


def _markdown(title: str, stamp: str, n: int, overall: float, sections: list[dict[str, Any]], top_lift: int,
              comparison: Comparison | None) -> str:
    out = [f"# {_md(title)}", "", f"{len(sections)} saved subsets · {n:,} images · overall accuracy {_pct(overall)} · {stamp}", ""]
    if comparison is not None:
        out += _comparison_markdown(comparison)
    for section in sections:
        s, f = section["subset"], section["figures"]
        out += [f"## {_md(s.name)}", "", _md(_origin_line(s)), ""]
        if s.note:
            out += [f"> {_md(line)}" for line in s.note.splitlines()] + [""]
        out += [
            f"- size: {f.size:,} images ({_pct(f.share)} of all)",
            f"- accuracy: {_pct(f.accuracy)} (95% interval {_pct(f.low)} – {_pct(f.high)}; overall {_pct(f.overall)})",
            f"- mean loss: {f.mean_loss:.3f}",
            "- classes: " + ", ".join(f"{_md(c)} {_pct(sh)}" for c, sh in zip(f.classes["class"].head(5), f.classes["share"].head(5), strict=True)),
            "",
        ]
        if len(f.lift):
            out += ["| attribute | value | inside | overall | lift |", "|---|---|---|---|---|"]
            for r in f.lift.head(top_lift).to_dict("records"):
                out.append(f"| {_md(r['attribute'])} | {_md(r['value'])} | {_pct(r['inside'])} | {_pct(r['overall'])} | {r['lift']:.2f} |")
            out.append("")
        if section["images"]:
            out.append(" ".join(f"![{_md(caption)}]({uri})" for uri, caption, _ in section["images"]))
            out.append("")
    return "\n".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h2 { border-top: 1px solid #ddd; padding-top: 1em; }
.origin { color: #555; font-size: 0.9em; }
.note { border-left: 3px solid #999; padding-left: 0.8em; color: #333; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; text-align: center; font-size: 0.8em; }
figure img { border: 3px solid #fff; image-rendering: pixelated; }
figure.error img { border-color: #dc1e1e; }
"""


def _html(title: str, stamp: str, n: int, overall: float, sections: list[dict[str, Any]], top_lift: int,
          comparison: Comparison | None) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
        f"<p>{len(sections)} saved subsets · {n:,} images · overall accuracy {_pct(overall)} · {e(stamp)}</p>",
    ]
    if comparison is not None:
        out += _comparison_html(comparison)
    for section in sections:
        s, f = section["subset"], section["figures"]
        out += [f"<h2>{e(s.name)}</h2>", f'<p class="origin">{e(_origin_line(s))}</p>']
        if s.note:
            out.append(f'<p class="note">{e(s.note)}</p>')
        classes = ", ".join(f"{e(str(c))} {_pct(sh)}" for c, sh in zip(f.classes["class"].head(5), f.classes["share"].head(5), strict=True))
        out.append(
            "<ul>"
            f"<li>size: {f.size:,} images ({_pct(f.share)} of all)</li>"
            f"<li>accuracy: {_pct(f.accuracy)} (95% interval {_pct(f.low)} – {_pct(f.high)}; overall {_pct(f.overall)})</li>"
            f"<li>mean loss: {f.mean_loss:.3f}</li><li>classes: {classes}</li></ul>"
        )
        if len(f.lift):
            out.append("<table><tr><th>attribute</th><th>value</th><th>inside</th><th>overall</th><th>lift</th></tr>")
            for r in f.lift.head(top_lift).to_dict("records"):
                out.append(
                    f"<tr><td>{e(str(r['attribute']))}</td><td>{e(str(r['value']))}</td><td>{_pct(r['inside'])}</td>"
                    f"<td>{_pct(r['overall'])}</td><td>{r['lift']:.2f}</td></tr>"
                )
            out.append("</table>")
        if section["images"]:
            out.append('<div class="thumbs">')
            for uri, caption, correct in section["images"]:
                klass = "" if correct else ' class="error"'
                out.append(f'<figure{klass}><img src="{uri}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>')
            out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


# --------------------------------------------------------------------------- a comparison of two models

SLICE_COLUMNS = ("#", "slice", "description", "images", "acc A", "acc B", "paired difference (95% CI)", "q",
                 "held-out difference (95% CI)", "held-out")


def _points(value: float) -> str:
    return "–" if value != value else f"{100 * value:+.1f}"


def _interval(value: float, low: float, high: float) -> str:
    """A paired difference in points with its 95% interval: "-12.0 (-20.1 to -4.3) pts"."""
    return "–" if value != value else f"{_points(value)} ({_points(low)} to {_points(high)}) pts"


def comparison_rows(found: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table rows of ranked slice candidates (a comparison's regressions or improvements),
    repeats of a slice left out: rank, name, description, size, both accuracies, the paired
    difference on all its images with its 95% interval (``paired_difference`` of its flips),
    the BH q of its held-out test, the held-out difference with its interval and whether the
    held-out half confirms it."""
    rows = []
    for rank, r in enumerate((r for r in found if not r["duplicate of"]), start=1):
        diff, low, high = paired_difference(r["A right, B wrong"], r["A wrong, B right"], r["size"])
        rows.append({
            "#": rank, "slice": r["name"], "description": r["description"], "images": f"{r['size']:,}",
            "acc A": _pct(r["acc A"]), "acc B": _pct(r["acc B"]), "paired difference (95% CI)": _interval(diff, low, high),
            "q": f"{r['q']:.3g}", "held-out difference (95% CI)": _interval(r["held-out difference"], r["held-out low"],
                                                                          r["held-out high"]),
            "held-out": f"confirmed ({r['held-out n']:,} images)" if r["significant"] else f"not confirmed ({r['held-out n']:,} images)",
        })
    return rows


def _comparison_facts(c: Comparison) -> list[str]:
    """The overall lines of a comparison, as plain text (escaped by the caller)."""
    o, t = c.overall, c.overall["table"]
    verdict = "significantly different" if o["p"] < ALPHA else "not significantly different"
    return [
        f"A ({c.name_a}): accuracy {_pct(o['acc A'])} (95% interval {_pct(o['acc A low'])} – {_pct(o['acc A high'])})",
        f"B ({c.name_b}): accuracy {_pct(o['acc B'])} (95% interval {_pct(o['acc B low'])} – {_pct(o['acc B high'])})",
        f"paired difference B − A: {_interval(o['difference'], o['low'], o['high'])} on {c.n:,} images",
        f"McNemar's exact test: {t['A right, B wrong']:,} images A right and B wrong, {t['A wrong, B right']:,} A wrong "
        f"and B right, p = {o['p']:.3g} ({verdict}); both right {t['both right']:,}, both wrong {t['both wrong']:,}",
    ]


def _slice_intro(c: Comparison) -> str:
    return (f"Found in {c.embedding_of}'s embedding without attribute labels on a random half of the images, tested on "
            "the other half (McNemar's exact test, Benjamini-Hochberg q over every candidate); repeats of a slice are "
            "left out.")


def _comparison_markdown(c: Comparison) -> list[str]:
    out = [f"## Model comparison: {_md(c.name_b)} (B) against {_md(c.name_a)} (A)", ""]
    if c.identical:
        out += [_md(c.summary()), ""]
    out += [f"- {_md(line)}" for line in _comparison_facts(c)] + [""]
    for title, found in (("Regression slices (B worse)", c.regressions), ("Improvement slices (B better)", c.improvements)):
        rows = comparison_rows(found)
        out += [f"### {title}", "", _md(_slice_intro(c)), ""]
        if not rows:
            out += ["None found.", ""]
            continue
        out += ["| " + " | ".join(SLICE_COLUMNS) + " |", "|" + "---|" * len(SLICE_COLUMNS)]
        out += ["| " + " | ".join(_md(r[k]) for k in SLICE_COLUMNS) + " |" for r in rows]
        out.append("")
    out += [f"- note: {_md(note)}" for note in c.notes] + ([""] if c.notes else [])
    return out


def _comparison_html(c: Comparison) -> list[str]:
    e = html.escape
    out = [f"<h2>Model comparison: {e(c.name_b)} (B) against {e(c.name_a)} (A)</h2>"]
    if c.identical:
        out.append(f"<p>{e(c.summary())}</p>")
    out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in _comparison_facts(c)) + "</ul>")
    for title, found in (("Regression slices (B worse)", c.regressions), ("Improvement slices (B better)", c.improvements)):
        rows = comparison_rows(found)
        out += [f"<h3>{title}</h3>", f'<p class="origin">{e(_slice_intro(c))}</p>']
        if not rows:
            out.append("<p>None found.</p>")
            continue
        out.append("<table><tr>" + "".join(f"<th>{e(k)}</th>" for k in SLICE_COLUMNS) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{e(str(r[k]))}</td>" for k in SLICE_COLUMNS) + "</tr>" for r in rows]
        out.append("</table>")
    if c.notes:
        out.append("<ul>" + "".join(f"<li>note: {e(note)}</li>" for note in c.notes) + "</ul>")
    return out
