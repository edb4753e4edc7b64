"""Compare two models on the same images: where did the new checkpoint (B) get worse than the
old one (A), and is it real? No Streamlit: the CLI (``python -m core compare``), the bench and
a page call it.

Everything is paired: both models saw the same images, so each image is one of four cells
(A right/wrong x B right/wrong) and a change in accuracy is measured on the images that
changed (the discordant pairs), not on two independent samples.

- ``check_comparable``: the two stores must hold the same images in the same order (ids,
  sizes, class names); a clear DataError otherwise.
- Overall: both accuracies with 95% Wilson intervals, the 2x2 table, McNemar's exact test
  (a binomial test of b = #(A right, B wrong) against c = #(A wrong, B right), p = 1/2).
- A table per class, per attribute value and per saved subset: both accuracies, the paired
  difference acc_B - acc_A = (c - b) / n with its 95% interval (Bonett & Price's adjusted Wald
  interval for paired proportions, on the per-image differences), McNemar's p and the
  Benjamini-Hochberg q over the table.
- Regression slices found without attribute labels: Spotlight run on the per-image loss
  difference l_B - l_A (shifted to be non-negative: a constant shift leaves every spotlight's
  objective, a weighted mean, unchanged) in B's embedding, and UDIS fitted with "correct" =
  not (A right and B wrong), its clusters ranked by their share of such flips. Each candidate
  is discovered on a random half of the images and measured on the other half (McNemar on its
  held-out members, Benjamini-Hochberg over every candidate), as the methods' split-half checks
  do. The mirror image (l_A - l_B, "A wrong, B right") gives the improvements.
- Flips: the images A got right and B wrong, and the reverse, with both predictions.

The statistics run on arrays (``PairedData``), so tests and notebooks need no store.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import clone

from core.errors import BiasLensError, DataError
from core.methods.spotlight.record import page_spotlight
from core.methods.spotlight.search import MIN_IMAGES as SPOTLIGHT_MIN
from core.methods.spotlight.search import Spotlight, SpotlightError
from core.methods.subgroups.udis import MIN_IMAGES as UDIS_MIN
from core.methods.subgroups.udis import UDIS, SubgroupError
from core.scoring.significance import ALPHA, benjamini_hochberg
from core.scoring.stats import wilson
from core.services.subsets import SubsetRegistry
from core.store.read import Store

Progress = Callable[[float, str], None]

MIN_SEARCH = 2 * max(SPOTLIGHT_MIN, UDIS_MIN)  # the regression search needs two halves of 20 images
UDIS_CANDIDATES = 10  # the UDIS clusters with the highest share of flips that are tested, per direction
MIN_CLUSTER = 5  # smaller UDIS clusters are not candidates (UDIS's own under_performing minimum)
MAX_TERMS = 3  # a description is a conjunction of at most this many values
MAX_LEVELS = 12  # a numeric attribute with more values is cut into quartiles for the tables
SHOWN_ROWS = 50  # rows per candidate in the Markdown report
DUPLICATE_OVERLAP = 0.5  # a candidate sharing this share of its images with a higher-ranked one repeats it
Z95 = float(stats.norm.ppf(0.975))
# What a comparison may never read as an attribute: ground truth, ids, paths, what the store computes.
_COMPUTED = {"row", "id", "path", "file", "filename", "label", "label_idx", "pred", "pred_idx", "correct", "loss",
             "confidence", "p_true"}


# --------------------------------------------------------------------------- statistics on counts


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of b (A right, B wrong) against c (A wrong, B right):
    the binomial test of b successes in b + c trials at p = 1/2. 1.0 when nothing changed."""
    b, c = int(b), int(c)
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


def paired_difference(b: int, c: int, n: int) -> tuple[float, float, float]:
    """acc_B - acc_A = (c - b) / n on n paired images, with its 95% interval.

    The interval is Bonett & Price's (2012) adjusted Wald interval for a difference of paired
    proportions: with p_b = (b + 1) / (n + 2) and p_c = (c + 1) / (n + 2), centre p_c - p_b and
    half-width z sqrt((p_b + p_c - (p_c - p_b)^2) / (n + 2)), clipped to [-1, 1]. It is the
    Wald interval of the mean of the per-image differences (B right) - (A right) with one
    pseudo-flip added each way, which keeps its coverage when few images changed. NaN for n = 0.
    """
    b, c, n = int(b), int(c), int(n)
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    diff = (c - b) / n
    pb, pc = (b + 1) / (n + 2), (c + 1) / (n + 2)
    centre = pc - pb
    half = Z95 * math.sqrt(max(pb + pc - centre**2, 0.0) / (n + 2))
    return diff, max(-1.0, centre - half), min(1.0, centre + half)


def paired_table(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, int]:
    """The 2x2 table of paired outcomes: both right, A right B wrong (b), A wrong B right (c), both wrong."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    return {"both right": int((a & b).sum()), "A right, B wrong": int((a & ~b).sum()),
            "A wrong, B right": int((~a & b).sum()), "both wrong": int((~a & ~b).sum())}


def group_row(correct_a: np.ndarray, correct_b: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """One group's paired figures on its member ``rows``: n, both accuracies, b, c, the
    difference acc_B - acc_A with its interval and McNemar's p."""
    a, bb = correct_a[rows], correct_b[rows]
    n = int(len(rows))
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    diff, low, high = paired_difference(b, c, n)
    return {"n": n, "acc A": float(a.mean()) if n else float("nan"), "acc B": float(bb.mean()) if n else float("nan"),
            "A right, B wrong": b, "A wrong, B right": c, "difference": diff, "low": low, "high": high,
            "p": mcnemar_exact(b, c)}


def group_table(correct_a: np.ndarray, correct_b: np.ndarray, groups: Sequence[tuple[str, str, np.ndarray]]) -> pd.DataFrame:
    """One row per (kind, group, rows): the paired figures of ``group_row`` and the BH q over the table."""
    columns = ["kind", "group", "n", "acc A", "acc B", "A right, B wrong", "A wrong, B right", "difference", "low",
               "high", "p", "q", "significant"]
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    out = [{"kind": kind, "group": name, **group_row(correct_a, correct_b, np.asarray(rows, dtype=np.int64))}
           for kind, name, rows in groups]
    if not out:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(out)
    frame["q"] = benjamini_hochberg(frame["p"].to_numpy())
    frame["significant"] = frame["q"] < ALPHA
    return frame[columns]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PairedData:
    """Two models' outcomes on the same n images, as arrays (row i is the same image for both).

    ``correct_a``/``correct_b`` bool, ``loss_a``/``loss_b`` per-image cross-entropy,
    ``embedding`` (n, d) the representation the search runs in (B's by default), ``labels``
    each image's class name, ``attributes`` the attribute columns usable for the tables and the
    descriptions (never ground truth), ``subsets`` saved name -> store rows, ``ids``, and
    optionally both predictions and confidences (for the flips).
    """

    correct_a: np.ndarray
    correct_b: np.ndarray
    loss_a: np.ndarray
    loss_b: np.ndarray
    embedding: np.ndarray
    labels: np.ndarray
    attributes: pd.DataFrame = field(default_factory=pd.DataFrame)
    subsets: dict[str, np.ndarray] = field(default_factory=dict)
    ids: np.ndarray | None = None
    pred_a: np.ndarray | None = None
    pred_b: np.ndarray | None = None
    confidence_a: np.ndarray | None = None
    confidence_b: np.ndarray | None = None
    name_a: str = "A"
    name_b: str = "B"
    embedding_of: str = "B"

    @property
    def n(self) -> int:
        return int(len(self.correct_a))

    def checked(self) -> PairedData:
        """The same data as numpy arrays of one length; InputError-like DataError otherwise."""
        n = len(np.asarray(self.correct_a))
        arrays = {"correct_b": self.correct_b, "loss_a": self.loss_a, "loss_b": self.loss_b,
                  "embedding": self.embedding, "labels": self.labels}
        for name, value in arrays.items():
            if len(np.asarray(value)) != n:
                raise DataError(f"Give one value per image for both models: {name} has {len(np.asarray(value))} "
                                f"entries for {n} images.")
        if len(self.attributes) not in (0, n):
            raise DataError(f"The attributes have {len(self.attributes)} rows for {n} images: give one row per image.")
        embedding = np.asarray(self.embedding, dtype=np.float32)
        if embedding.ndim != 2:
            raise DataError(f"The embedding must be (images, dimensions), got shape {embedding.shape}.")
        return PairedData(
            correct_a=np.asarray(self.correct_a, dtype=bool), correct_b=np.asarray(self.correct_b, dtype=bool),
            loss_a=np.asarray(self.loss_a, dtype=np.float64), loss_b=np.asarray(self.loss_b, dtype=np.float64),
            embedding=embedding, labels=np.asarray(self.labels).astype(str),
            attributes=self.attributes.reset_index(drop=True), subsets=dict(self.subsets),
            ids=np.arange(n).astype(str) if self.ids is None else np.asarray(self.ids).astype(str),
            pred_a=self.pred_a, pred_b=self.pred_b, confidence_a=self.confidence_a, confidence_b=self.confidence_b,
            name_a=self.name_a, name_b=self.name_b, embedding_of=self.embedding_of,
        )

    def swapped(self, mask: np.ndarray) -> PairedData:
        """A's and B's outcomes exchanged on the images where ``mask`` is true (the null of "no
        difference": a permutation of the labels A and B per image)."""
        mask = np.asarray(mask, dtype=bool)

        def swap(x: Any, y: Any) -> tuple[Any, Any]:
            if x is None or y is None:
                return x, y
            x, y = np.asarray(x), np.asarray(y)
            return np.where(mask, y, x), np.where(mask, x, y)

        ca, cb = swap(self.correct_a, self.correct_b)
        la, lb = swap(self.loss_a, self.loss_b)
        pa, pb = swap(self.pred_a, self.pred_b)
        fa, fb = swap(self.confidence_a, self.confidence_b)
        return PairedData(correct_a=ca, correct_b=cb, loss_a=la, loss_b=lb, embedding=self.embedding,
                          labels=self.labels, attributes=self.attributes, subsets=self.subsets, ids=self.ids,
                          pred_a=pa, pred_b=pb, confidence_a=fa, confidence_b=fb, name_a=self.name_a,
                          name_b=self.name_b, embedding_of=self.embedding_of)


def attribute_columns(store: Store, meta: pd.DataFrame) -> list[str]:
    """The store's attribute columns usable as groups: never ground truth (``slice_*``), ids,
    paths or the columns the store computes; only columns with at least two values."""
    return [c for c in store.attribute_columns if c in meta.columns and not str(c).lower().startswith("slice_")
            and str(c).lower() not in _COMPUTED and meta[c].nunique(dropna=False) > 1]


def check_comparable(store_a: Store, store_b: Store) -> None:
    """DataError unless both stores hold the same images in the same order with the same classes.

    Comparing a store with itself is allowed (the comparison then finds nothing)."""
    if store_a.n != store_b.n:
        raise DataError(
            f"The two stores hold different numbers of images ({store_a.n:,} and {store_b.n:,}): a comparison "
            "pairs each image's two predictions, so both models must run on the same dataset. Register both "
            "workspaces with the same dataset and build them."
        )
    if list(store_a.classes) != list(store_b.classes):
        only_a = [c for c in store_a.classes if c not in store_b.classes]
        only_b = [c for c in store_b.classes if c not in store_a.classes]
        what = (f"A has {', '.join(only_a[:5]) or 'no other class'}; B has {', '.join(only_b[:5]) or 'no other class'}"
                if only_a or only_b else "the same names in another order")
        raise DataError(
            f"The two stores have different classes ({what}): both models must predict the same classes, in "
            "the same order, to be compared. Use workspaces with the same dataset and class list."
        )
    ids_a = store_a.meta()["id"].astype(str).to_numpy()
    ids_b = store_b.meta()["id"].astype(str).to_numpy()
    if np.array_equal(ids_a, ids_b):
        return
    if set(ids_a) == set(ids_b):
        first = int(np.flatnonzero(ids_a != ids_b)[0])
        raise DataError(
            f"The two stores hold the same images in a different order (row {first} is '{ids_a[first]}' in A and "
            f"'{ids_b[first]}' in B): build both from the same dataset definition, so that the rows line up."
        )
    missing = len(set(ids_a) - set(ids_b))
    raise DataError(
        f"The two stores hold different images ({missing:,} of A's image ids are not in B, e.g. "
        f"'{next(iter(sorted(set(ids_a) - set(ids_b))))}'): a comparison needs both models run on the same "
        "dataset. Register both workspaces with the same dataset and build them."
    )


def _saved_subsets(store: Store) -> dict[str, np.ndarray]:
    """The saved subsets of a store's folder (name -> rows); none when the file is missing or unreadable."""
    try:
        registry = SubsetRegistry.in_folder(store.path, n=store.n)
        return {s.name: np.asarray(s.rows, dtype=np.int64) for s in registry.subsets()}
    except (BiasLensError, OSError, ValueError, KeyError):  # a damaged file is reported on the pages, not here
        return {}


def paired_from_stores(store_a: Store, store_b: Store, *, embedding_of: str = "B", name_a: str = "A",
                       name_b: str = "B") -> PairedData:
    """The arrays of two comparable stores (``check_comparable`` first): outcomes of both, the
    embedding of B (or of A), B's attributes and the saved subsets of both stores' folders."""
    if embedding_of not in ("A", "B"):
        raise DataError(f"embedding_of must be 'A' or 'B', got {embedding_of!r}: search in one model's embedding.")
    check_comparable(store_a, store_b)
    meta_a, meta_b = store_a.meta(), store_b.meta()
    columns = attribute_columns(store_b, meta_b)
    subsets = {**_saved_subsets(store_a), **_saved_subsets(store_b)}
    embedding = (store_b if embedding_of == "B" else store_a).embedding()
    return PairedData(
        correct_a=meta_a["correct"].to_numpy(bool), correct_b=meta_b["correct"].to_numpy(bool),
        loss_a=meta_a["loss"].to_numpy(np.float64), loss_b=meta_b["loss"].to_numpy(np.float64),
        embedding=np.asarray(embedding, dtype=np.float32), labels=meta_b["label"].astype(str).to_numpy(),
        attributes=meta_b[columns].reset_index(drop=True), subsets=subsets, ids=meta_b["id"].astype(str).to_numpy(),
        pred_a=meta_a["pred"].astype(str).to_numpy(), pred_b=meta_b["pred"].astype(str).to_numpy(),
        confidence_a=meta_a["confidence"].to_numpy(np.float64) if "confidence" in meta_a else None,
        confidence_b=meta_b["confidence"].to_numpy(np.float64) if "confidence" in meta_b else None,
        name_a=name_a, name_b=name_b, embedding_of=embedding_of,
    )


# --------------------------------------------------------------------------- descriptions


def _categorical(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column as text; a numeric column with more than MAX_LEVELS values cut into quartiles."""
    out = {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and values.nunique() > MAX_LEVELS:
            values = pd.qcut(values, 4, duplicates="drop")
        out[column] = values.astype(str).to_numpy(dtype=object)
    return pd.DataFrame(out, index=frame.index)


def describe(members: np.ndarray, values: pd.DataFrame, max_terms: int = MAX_TERMS) -> tuple[str, float, float]:
    """The conjunction of at most ``max_terms`` column values (one per column) whose images best
    match the group (highest F1 against its members, a beam search), with its precision and
    recall. ("", nan, nan) for an empty group or no columns."""
    members = np.asarray(members, dtype=bool)
    if not members.any() or values.shape[1] == 0:
        return "", float("nan"), float("nan")
    predicates, masks = [], []
    for column in values.columns:
        col = values[column].to_numpy(dtype=object)
        for value in pd.unique(col[members]):
            predicates.append((column, value))
            masks.append(col == value)
    matrix = np.stack(masks, axis=1)
    size = float(members.sum())

    def score(mask: np.ndarray) -> tuple[float, float, float]:
        tp = float((mask & members).sum())
        if tp == 0:
            return 0.0, 0.0, 0.0
        precision, recall = tp / float(mask.sum()), tp / size
        return 2 * precision * recall / (precision + recall), precision, recall

    singles = sorted(((score(matrix[:, j])[0], (j,)) for j in range(len(predicates))), key=lambda t: -t[0])
    beam = [(terms, matrix[:, terms[0]]) for _, terms in singles[:8]]
    best_f1, best_terms, best_mask = singles[0][0], singles[0][1], matrix[:, singles[0][1][0]]
    for _ in range(max_terms - 1):
        grown: dict[tuple[int, ...], tuple[float, np.ndarray]] = {}
        for terms, mask in beam:
            used = {predicates[t][0] for t in terms}
            for j, (column, _) in enumerate(predicates):
                key = tuple(sorted((*terms, j)))
                if column in used or key in grown:
                    continue
                candidate = mask & matrix[:, j]
                grown[key] = (score(candidate)[0], candidate)
        if not grown:
            break
        ranked = sorted(grown.items(), key=lambda item: -item[1][0])[:8]
        beam = [(terms, mask) for terms, (_, mask) in ranked]
        if ranked[0][1][0] > best_f1 + 0.01:  # a longer rule must earn its term
            best_f1, best_terms, best_mask = ranked[0][1][0], ranked[0][0], ranked[0][1][1]
    _, precision, recall = score(best_mask)
    text = " AND ".join(f"{predicates[t][0]} = {predicates[t][1]}" for t in best_terms)
    return text, precision, recall


def label_mix(labels: np.ndarray, members: np.ndarray, top: int = 3) -> str:
    """'Sandal 62%, Sneaker 20%, Bag 9%': the group's most common labels and their shares."""
    counts = pd.Series(np.asarray(labels)[members]).value_counts()
    if counts.empty:
        return ""
    total = counts.sum()
    return ", ".join(f"{name} {count / total:.0%}" for name, count in counts.head(top).items())


# --------------------------------------------------------------------------- the search


@dataclass
class _Candidate:
    source: str  # "spotlight" or "udis"
    direction: str  # "regression" or "improvement"
    index: int  # the spotlight's or cluster's number within its source
    members: np.ndarray  # bool (n,): the rule applied to every image
    found: np.ndarray  # bool (n,): its members among the discovery half


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(discovery rows, held-out rows): the split ``core.scoring.significance.split_half`` makes."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def spotlight_candidates(x: np.ndarray, score: np.ndarray, discovery: np.ndarray, direction: str,
                         spotlight: Spotlight | None = None) -> tuple[list[_Candidate], str]:
    """Spotlights of high ``score`` (a per-image loss difference) searched on the discovery rows;
    an image belongs to one when its kernel weight reaches that of the spotlight's S-th
    discovery image (``spotlight_held_out``'s rule), so the rule reaches the held-out half."""
    spotlight = page_spotlight(len(discovery)) if spotlight is None else spotlight
    target = score[discovery] - float(score[discovery].min())  # the search needs losses >= 0; a shift changes nothing
    try:
        fitted = clone(spotlight).fit(x[discovery], target)
    except SpotlightError as exc:  # nothing to find (no image changed), or a search that cannot run here
        return [], f"Spotlight ({direction}s): {exc}"
    weights = fitted.weights_for(x)
    out = []
    for j in range(weights.shape[0]):
        threshold = -np.sort(-weights[j, discovery])[fitted.size_ - 1]
        members = weights[j] >= threshold
        found = np.zeros(len(x), dtype=bool)
        found[discovery] = members[discovery]
        out.append(_Candidate("spotlight", direction, j + 1, members, found))
    return out, ""


def udis_candidates(x: np.ndarray, flipped: np.ndarray, discovery: np.ndarray, direction: str,
                    udis: UDIS | None = None, keep: int = UDIS_CANDIDATES) -> list[_Candidate]:
    """UDIS fitted on the discovery rows with "correct" = not ``flipped``; its ``keep`` clusters
    of more than MIN_CLUSTER images with the highest share of flips (at least one) become
    candidates; an image joins the cluster whose centroid is nearest (``udis_held_out``'s rule)."""
    udis = UDIS() if udis is None else udis
    fitted = clone(udis).fit(x[discovery], ~flipped[discovery])
    table = fitted.subgroups_
    table = table[(table["size"] > MIN_CLUSTER) & (table["accuracy"] < 1)]
    table = table.sort_values(["accuracy", "size"], ascending=[True, False], kind="stable").head(keep)
    if table.empty:
        return []
    centroids = fitted.centroids_.astype(np.float32)
    nearest = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), 4096):  # nearest centroid of every image, in blocks
        points = x[start:start + 4096]
        d = (points**2).sum(1)[:, None] - 2 * points @ centroids.T + (centroids**2).sum(1)[None, :]
        nearest[start:start + 4096] = d.argmin(1)
    nearest[discovery] = fitted.labels_  # the discovery images keep the cluster UDIS gave them
    out = []
    for g in table["subgroup"].astype(int):
        members = nearest == g
        found = np.zeros(len(x), dtype=bool)
        found[discovery] = members[discovery]
        out.append(_Candidate("udis", direction, g, members, found))
    return out


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Comparison:
    """What ``compare`` found. ``overall``: both accuracies and intervals, the 2x2 table,
    McNemar's p, the difference and its interval. ``groups``: the per class / attribute value /
    subset table. ``regressions`` and ``improvements``: the candidates in rank order (each a dict:
    name, source, rows by loss difference, size, both accuracies, difference, discovery and
    held-out figures, p, q, significant, description, precision, recall). ``flips``: the images
    A got right and B wrong (``worse``) and the reverse (``better``). ``notes``: what was skipped."""

    name_a: str
    name_b: str
    n: int
    overall: dict[str, Any]
    groups: pd.DataFrame
    regressions: list[dict[str, Any]]
    improvements: list[dict[str, Any]]
    worse: pd.DataFrame
    better: pd.DataFrame
    identical: bool
    embedding_of: str
    seconds: float
    notes: tuple[str, ...] = ()

    @property
    def significant_regressions(self) -> list[dict[str, Any]]:
        """The regression slices confirmed on the held-out half (repeats of a slice left out)."""
        return [r for r in self.regressions if r["significant"] and not r["duplicate of"]]

    @property
    def significant_improvements(self) -> list[dict[str, Any]]:
        """The improvement slices confirmed on the held-out half (repeats of a slice left out)."""
        return [r for r in self.improvements if r["significant"] and not r["duplicate of"]]

    def summary(self) -> str:
        """One sentence: what changed overall and how many slices got significantly worse."""
        if self.identical:
            return (f"{self.name_a} and {self.name_b} make the same prediction on every one of the {self.n:,} images: "
                    "there is nothing to find.")
        o = self.overall
        verdict = "significantly" if o["p"] < ALPHA else "not significantly"
        return (f"Accuracy {o['acc A']:.1%} -> {o['acc B']:.1%} ({o['difference']:+.1%}, 95% CI {o['low']:+.1%} to "
                f"{o['high']:+.1%}; McNemar p = {o['p']:.3g}: {verdict} different). "
                f"{len(self.significant_regressions)} regression slice(s) and {len(self.significant_improvements)} "
                "improvement slice(s) hold up on the held-out half.")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (numbers as floats, NaN as null); rows of candidates and flips as store rows."""
        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, np.ndarray):
                return [clean(v) for v in value.tolist()]
            if isinstance(value, (np.integer,)):
                return int(value)
            if isinstance(value, (float, np.floating)):
                return None if not math.isfinite(float(value)) else float(value)
            if isinstance(value, np.bool_):
                return bool(value)
            return value

        def frame(f: pd.DataFrame) -> list[dict[str, Any]]:
            return clean(f.to_dict(orient="records"))

        return clean({
            "A": self.name_a, "B": self.name_b, "images": self.n, "identical": self.identical,
            "embedding": self.embedding_of, "summary": self.summary(), "overall": self.overall,
            "groups": frame(self.groups), "regressions": self.regressions, "improvements": self.improvements,
            "flips": {"A right, B wrong": frame(self.worse), "A wrong, B right": frame(self.better)},
            "seconds": round(self.seconds, 2), "notes": list(self.notes),
        })

    def to_markdown(self) -> str:
        """A Markdown report: the summary, the overall table, the candidate slices, the group
        table (significant rows first) and the first flips."""
        o = self.overall
        lines = [f"# {self.name_b} compared with {self.name_a}", "", self.summary(), "",
                 "| | accuracy | 95% CI |", "|---|---|---|",
                 f"| A: {self.name_a} | {o['acc A']:.2%} | {o['acc A low']:.2%} - {o['acc A high']:.2%} |",
                 f"| B: {self.name_b} | {o['acc B']:.2%} | {o['acc B low']:.2%} - {o['acc B high']:.2%} |", "",
                 "| | B right | B wrong |", "|---|---|---|",
                 f"| A right | {o['table']['both right']:,} | {o['table']['A right, B wrong']:,} |",
                 f"| A wrong | {o['table']['A wrong, B right']:,} | {o['table']['both wrong']:,} |", ""]
        for title, found in (("Regression slices (B worse)", self.regressions), ("Improvement slices (B better)", self.improvements)):
            lines += [f"## {title}", "",
                      f"Found in {self.embedding_of}'s embedding on a random half of the images, measured on the other half "
                      "(McNemar, Benjamini-Hochberg q over every candidate).", ""]
            if not found:
                lines += ["None.", ""]
                continue
            lines += ["| # | slice | source | images | acc A | acc B | held-out difference | q | description |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for rank, c in enumerate(found, start=1):
                mark = "**" if c["significant"] else ""
                lines.append(f"| {rank} | {mark}{c['name']}{mark} | {c['source']} | {c['size']:,} | {c['acc A']:.1%} | "
                             f"{c['acc B']:.1%} | {_pct(c['held-out difference'])} | {_num(c['q'])} | {c['description']}"
                             + (f" (repeats {c['duplicate of']})" if c["duplicate of"] else "") + " |")
            lines.append("")
        lines += ["## Per class, attribute value and saved subset", ""]
        if len(self.groups):
            shown = self.groups.sort_values(["significant", "q"], ascending=[False, True], kind="stable")
            lines += ["| kind | group | images | acc A | acc B | difference (95% CI) | p | q |", "|---|---|---|---|---|---|---|---|"]
            for _, r in shown.iterrows():
                mark = "**" if r["significant"] else ""
                lines.append(f"| {r['kind']} | {mark}{r['group']}{mark} | {int(r['n']):,} | {r['acc A']:.1%} | {r['acc B']:.1%} | "
                             f"{r['difference']:+.1%} ({r['low']:+.1%} to {r['high']:+.1%}) | {_num(r['p'])} | {_num(r['q'])} |")
        else:
            lines.append("No groups.")
        lines.append("")
        for title, flips in (("A right, B wrong", self.worse), ("A wrong, B right", self.better)):
            lines += [f"## Flips: {title} ({len(flips):,})", ""]
            if len(flips):
                lines += ["| row | id | label | A predicts | A confidence | B predicts | B confidence |", "|---|---|---|---|---|---|---|"]
                for _, r in flips.head(SHOWN_ROWS).iterrows():
                    lines.append(f"| {r['row']} | {r['id']} | {r['label']} | {r['pred A']} | {_num(r['confidence A'])} | "
                                 f"{r['pred B']} | {_num(r['confidence B'])} |")
            lines.append("")
        if self.notes:
            lines += ["## Notes", "", *[f"- {note}" for note in self.notes], ""]
        return "\n".join(lines)

    def to_text(self) -> str:
        """The summary and the ranked regression slices, for a terminal."""
        lines = [self.summary()]
        for title, found in (("regressions", self.regressions), ("improvements", self.improvements)):
            lines.append(f"\n{title} (found on one half, measured on the other):")
            if not found:
                lines.append("  none")
            for rank, c in enumerate(found, start=1):
                flag = "*" if c["significant"] else " "
                lines.append(f" {flag}{rank:>2}. {c['name']:<14} {c['size']:>6,} images  acc {c['acc A']:.1%} -> {c['acc B']:.1%}  "
                             f"held-out {_pct(c['held-out difference'])}  q {_num(c['q'])}  {c['description']}"
                             + (f"  (repeats {c['duplicate of']})" if c["duplicate of"] else ""))
        if len(self.groups):
            sig = self.groups[self.groups["significant"]]
            lines.append(f"\n{len(sig)} of {len(self.groups)} classes / attribute values / subsets changed significantly (q < 0.05):")
            for _, r in sig.sort_values("difference", kind="stable").iterrows():
                lines.append(f"  {r['kind']:<9} {r['group']:<32} {r['acc A']:.1%} -> {r['acc B']:.1%} ({r['difference']:+.1%}, q {_num(r['q'])})")
        lines.append(f"\nflips: {len(self.worse):,} A right -> B wrong, {len(self.better):,} A wrong -> B right")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.3g}"


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):+.1%}"


def _flips(data: PairedData, mask: np.ndarray, order_by: np.ndarray) -> pd.DataFrame:
    rows = np.flatnonzero(mask)
    rows = rows[np.argsort(-order_by[rows], kind="stable")]

    def pick(values: np.ndarray | None, fill: Any) -> Any:
        return np.asarray(values)[rows] if values is not None else np.full(len(rows), fill)

    return pd.DataFrame({
        "row": rows, "id": data.ids[rows], "label": data.labels[rows],
        "pred A": pick(data.pred_a, ""), "confidence A": pick(data.confidence_a, np.nan),
        "pred B": pick(data.pred_b, ""), "confidence B": pick(data.confidence_b, np.nan),
        "loss A": data.loss_a[rows], "loss B": data.loss_b[rows],
    })


def _groups(data: PairedData) -> list[tuple[str, str, np.ndarray]]:
    """(kind, name, rows) of every class, attribute value and saved subset."""
    out: list[tuple[str, str, np.ndarray]] = []
    for label in sorted(pd.unique(data.labels)):
        out.append(("class", str(label), np.flatnonzero(data.labels == label)))
    values = _categorical(data.attributes) if data.attributes.shape[1] else data.attributes
    for column in values.columns:
        col = values[column].to_numpy(dtype=object)
        for value in sorted(pd.unique(col), key=str):
            out.append(("attribute", f"{column} = {value}", np.flatnonzero(col == value)))
    for name, rows in data.subsets.items():
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < data.n)]
        if rows.size:
            out.append(("subset", str(name), np.unique(rows)))
    return out


def compare(data: PairedData, *, seed: int = 0, progress: Progress | None = None,
            spotlight: Spotlight | None = None, udis: UDIS | None = None, search: bool = True) -> Comparison:
    """Compare two models' outcomes on the same images (see the module docstring).

    ``spotlight`` / ``udis``: the estimators of the search (default: the Spotlight page's
    defaults for a half of the images, UDIS's defaults); ``search=False`` skips it (tables and
    flips only); ``seed`` picks the halves.
    """
    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    data = data.checked()
    n = data.n
    if n == 0:
        raise DataError("The stores hold no image: there is nothing to compare. Build them on a dataset with images.")
    ca, cb = data.correct_a, data.correct_b
    table = paired_table(ca, cb)
    b, c = table["A right, B wrong"], table["A wrong, B right"]
    diff, low, high = paired_difference(b, c, n)
    acc_a, a_low, a_high = wilson(int(ca.sum()), n)
    acc_b, b_low, b_high = wilson(int(cb.sum()), n)
    overall = {"acc A": acc_a, "acc A low": a_low, "acc A high": a_high, "acc B": acc_b, "acc B low": b_low,
               "acc B high": b_high, "table": table, "difference": diff, "low": low, "high": high, "p": mcnemar_exact(b, c)}
    identical = b == 0 and c == 0 and np.allclose(data.loss_a, data.loss_b)
    report(0.05, "per class, attribute value and subset")
    groups = group_table(ca, cb, _groups(data))
    notes: list[str] = []
    regressions: list[dict[str, Any]] = []
    improvements: list[dict[str, Any]] = []
    if identical:
        notes.append("Both models give the same losses on every image: no slice can have changed.")
    elif not search:
        notes.append("The regression search was not run.")
    elif n < MIN_SEARCH:
        notes.append(f"The regression search finds slices on one half of the images and measures them on the other; it "
                     f"needs at least {MIN_SEARCH} images and these stores hold {n}.")
    else:
        regressions, improvements = _search(data, seed, report, spotlight, udis, notes)
    report(0.98, "flips")
    delta = data.loss_b - data.loss_a
    worse, better = _flips(data, ca & ~cb, delta), _flips(data, ~ca & cb, -delta)
    report(1.0, "done")
    return Comparison(name_a=data.name_a, name_b=data.name_b, n=n, overall=overall, groups=groups,
                      regressions=regressions, improvements=improvements, worse=worse, better=better,
                      identical=bool(identical), embedding_of=data.embedding_of,
                      seconds=time.perf_counter() - started, notes=tuple(notes))


def _search(data: PairedData, seed: int, report: Progress, spotlight: Spotlight | None, udis: UDIS | None,
            notes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both directions' candidates, tested on the held-out half, BH over all, ranked."""
    x, ca, cb = data.embedding, data.correct_a, data.correct_b
    delta = data.loss_b - data.loss_a
    discovery, held = halves(data.n, seed)
    candidates: list[_Candidate] = []
    steps = (("regression", delta, ca & ~cb), ("improvement", -delta, ~ca & cb))
    for k, (direction, score, flipped) in enumerate(steps):
        if not flipped[discovery].any():  # McNemar cannot confirm a slice without a flip that way
            notes.append(f"No image of the discovery half flipped the {direction} way: no {direction} slice to search.")
            continue
        report(0.1 + 0.4 * k, f"Spotlight on the loss difference ({direction}s)")
        found, note = spotlight_candidates(x, score, discovery, direction, spotlight)
        candidates += found
        if note:
            notes.append(note)
        report(0.3 + 0.4 * k, f"UDIS on the flips ({direction}s)")
        try:
            candidates += udis_candidates(x, flipped, discovery, direction, udis)
        except SubgroupError as exc:  # a clustering that cannot run here: the spotlights still count
            notes.append(f"UDIS ({direction}s): {exc}")
    in_held = np.zeros(data.n, dtype=bool)
    in_held[held] = True
    labels = data.labels
    values = _categorical(data.attributes) if data.attributes.shape[1] else data.attributes
    values = values.assign(label=labels)  # descriptions by attribute and label values
    rows_out: list[dict[str, Any]] = []
    for cand in candidates:
        members = np.flatnonzero(cand.members)
        held_members = np.flatnonzero(cand.members & in_held)
        found_members = np.flatnonzero(cand.found)
        whole = group_row(ca, cb, members)
        test = group_row(ca, cb, held_members)
        disc = group_row(ca, cb, found_members)
        if data.attributes.shape[1]:
            description, precision, recall = describe(cand.members, values)
        else:
            description, precision, recall = f"labels: {label_mix(labels, members)}", float("nan"), float("nan")
        sign = 1 if cand.direction == "regression" else -1
        ranked = members[np.argsort(-(sign * delta[members]), kind="stable")]
        name = f"{'Spotlight' if cand.source == 'spotlight' else 'UDIS cluster'} {cand.index}"
        rows_out.append({
            "name": name, "source": cand.source, "direction": cand.direction, "size": int(members.size),
            "acc A": whole["acc A"], "acc B": whole["acc B"], "difference": whole["difference"],
            "A right, B wrong": whole["A right, B wrong"], "A wrong, B right": whole["A wrong, B right"],
            "excess flips": sign * (whole["A right, B wrong"] - whole["A wrong, B right"]),
            "discovery n": disc["n"], "discovery difference": disc["difference"],
            "held-out n": test["n"], "held-out difference": test["difference"], "held-out low": test["low"],
            "held-out high": test["high"], "p": test["p"],
            "description": description, "precision": precision, "recall": recall, "rows": ranked,
            "members": cand.members,
        })
    q = benjamini_hochberg([r["p"] for r in rows_out]) if rows_out else np.zeros(0)
    for r, value in zip(rows_out, q, strict=True):
        right_way = r["held-out difference"] < 0 if r["direction"] == "regression" else r["held-out difference"] > 0
        r["q"] = float(value)
        r["significant"] = bool(value < ALPHA and right_way)

    def key(r: dict[str, Any]) -> tuple[bool, float, float]:  # significant first, then by excess flips
        return not r["significant"], -r["excess flips"], r["q"]

    regressions = _merged(sorted((r for r in rows_out if r["direction"] == "regression"), key=key))
    improvements = _merged(sorted((r for r in rows_out if r["direction"] == "improvement"), key=key))
    for r in regressions + improvements:
        del r["members"]
    return regressions, improvements


def _merged(ranked: list[dict[str, Any]], overlap: float = DUPLICATE_OVERLAP) -> list[dict[str, Any]]:
    """The ranked candidates with the repeats of a slice moved to the end. A candidate that shares
    at least ``overlap`` of the smaller one's images with one ranked above it (Spotlight and
    UDIS, or two spotlights, finding the same slice) repeats it; of the two, the sharper one (the
    significant one, then the larger change in accuracy) keeps the higher place and the other
    is marked ``duplicate of`` it: a broad cluster that holds a slice gives way to the spotlight
    on the slice itself."""
    kept: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []

    def sharpness(r: dict[str, Any]) -> tuple[bool, float]:
        change = r["difference"] if r["direction"] == "improvement" else -r["difference"]
        return bool(r["significant"]), float(change) if math.isfinite(change) else -math.inf

    for r in ranked:
        r["duplicate of"] = ""
        for i, k in enumerate(kept):
            shared = int((r["members"] & k["members"]).sum())
            if shared >= overlap * max(1, min(r["size"], k["size"])):
                if sharpness(r) > sharpness(k):
                    kept[i], r, k = r, k, r
                r["duplicate of"] = k["name"]
                break
        (repeats if r["duplicate of"] else kept).append(r)
    for r in repeats:  # a repeat names the slice's candidate that stayed in the list
        while any(k["name"] == r["duplicate of"] and k["duplicate of"] for k in repeats):
            r["duplicate of"] = next(k["duplicate of"] for k in repeats if k["name"] == r["duplicate of"])
    return kept + repeats


def compare_stores(store_a: Store, store_b: Store, *, seed: int = 0, progress: Progress | None = None,
                   embedding_of: str = "B", name_a: str = "A", name_b: str = "B", **options: Any) -> Comparison:
    """Compare model B's store with model A's on the same images (``check_comparable`` first);
    ``options`` go to ``compare`` (``spotlight``, ``udis``, ``search``)."""
    data = paired_from_stores(store_a, store_b, embedding_of=embedding_of, name_a=name_a, name_b=name_b)
    return compare(data, seed=seed, progress=progress, **options)


def to_json_line(comparison: Comparison) -> str:
    """The comparison as one JSON line."""
    return json.dumps(comparison.to_json())
