"""Findings: one ranked, honest answer to "where does the model fail?" (no Streamlit).

``find_failures`` pools the candidate groups of every discovery source (Spotlight and UDIS
with their pages' defaults, Filter saliency's failure modes when the dataset's profiles are
given, error clusters: the misclassified images of each class clustered in the embedding,
the confusion matrix's off-diagonal cells, and SliceLine's attribute slices), merges
near-duplicates (Jaccard >= 0.5, or 80% of the smaller inside the larger: agreement between
sources is evidence), tests every pooled candidate and ranks what fails: significant findings
(q < 0.05 and worse on the held-out half) first, as a greedy cover: each next finding is the one
that adds the most beyond those above it, measured by the sure gap (the near end of the 95%
interval of the held-out accuracy gap: how much worse a group surely is) of its images not yet
listed (``marginal_sure_gap``), so a second part of a failure already listed waits behind the
next distinct failure.

Honesty: with 40 images or more, the images are split in two halves (``seed``); every source
looks at half A only, and each candidate's rule (spotlight kernel, nearest UDIS centroid,
nearest failure-mode centroid, error cluster's region, confusion cell, attribute slice) is
applied to every image.
Its p-value (Fisher's exact test, group vs rest) and its held-out gap are measured on half B,
which played no part in finding it, and the q-values are Benjamini-Hochberg over every pooled
candidate. Size, accuracy and excess errors are read on all the images.

Groups defined by their errors (a confusion cell, a failure mode) fail by construction. Their
tested rule does not read correctness: a confusion cell true -> predicted holds the images of
the true class whose two highest-scored classes include the predicted one (the errors of the
cell and the correct images that nearly made it); a failure mode holds the images whose
saliency profile is nearest its centroid; an error cluster holds the images of its class
near its errors' centroid, correct or not, within a radius fitted on the discovery half.
SliceLine slices that pair a label with another predicted class are read the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from sliceline.slicefinder import Slicefinder

from core.errors import BiasLensError
from core.methods.saliency.failure_modes import FailureModes
from core.methods.spotlight.record import page_spotlight
from core.methods.subgroups.udis import UDIS, VISCUIT_THRESHOLD
from core.scoring.scorecard import baseline_groups, top_loss_rows
from core.scoring.significance import ALPHA, group_tests, newcombe_interval
from core.scoring.stats import wilson
from core.services.runs import fit_on_store

SOURCES = ("spotlight", "udis", "saliency", "error clusters", "confusion", "sliceline")
MIN_HELD_OUT = 40  # fewer images: no held-out half (the methods need 20 per half)
MERGE_JACCARD = 0.5  # one finding when the members overlap this much (Jaccard) ...
MERGE_CONTAINED = 0.8  # ... or when most of the smaller lies inside the larger (one failure, found wide and narrow)
MAX_CELLS = 10  # confusion cells pooled: the largest ones on the discovery half ...
MIN_CELL = 5  # ... of at least this many errors
MIN_CLUSTER_ERRORS = 5  # an error cluster holds at least this many misclassified images ...
CLUSTER_ERROR_SHARE = 0.005  # ... and about this share of the discovery half: a 1.5% slice failing at 1/3
SLICELINE_K, SLICELINE_MAX_L = 10, 3
SLICELINE_ALPHA = 0.95  # the default 0.6 scores every slice under 2-5% of the images below 0: none is found
MAX_TERMS = 3  # a description's conjunction holds at most this many values
MAX_LEVELS = 12  # a numeric attribute with more values is cut into quartiles
NO_FAILURE = "no significant failure found"
_PROTECTED = {"row", "id", "path", "file", "filename", "label", "label_idx", "pred", "pred_idx", "correct", "loss",
              "confidence", "p_true"}

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Finding:
    """One place the model fails, pooled over the sources that found it (see the module docstring)."""

    rank: int
    methods: tuple[str, ...]
    names: tuple[str, ...]
    rows: np.ndarray
    size: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    rest_accuracy: float
    excess_errors: float
    p: float
    q: float
    held_out_gap: float | None
    description: str
    description_precision: float | None
    description_recall: float | None

    @property
    def significant(self) -> bool:
        """q < 0.05 and worse than the rest where it was tested (a group better there is no failure)."""
        return bool(self.q < ALPHA) and (self.held_out_gap is None or self.held_out_gap > 0)


@dataclass(frozen=True)
class FindingsReport:
    """The ranked findings, each failing source's error message, notes, and how many candidates were pooled."""

    findings: tuple[Finding, ...]
    errors: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    candidates: int = 0

    def to_json(self) -> dict:
        """A JSON-ready dict: findings (rank, methods, size, accuracy, q, held_out_gap, description, rows), errors, notes, candidates."""
        return {
            "findings": [
                {"rank": f.rank, "methods": list(f.methods), "size": f.size, "accuracy": _num(f.accuracy), "q": _num(f.q),
                 "held_out_gap": _num(f.held_out_gap), "description": f.description,
                 "rows": [int(r) for r in f.rows]}
                for f in self.findings
            ],
            "errors": dict(self.errors),
            "notes": list(self.notes),
            "candidates": int(self.candidates),
        }

    def table(self) -> pd.DataFrame:
        """One line per finding: rank, methods, size, accuracy, q, held-out gap, description."""
        return pd.DataFrame(
            [{"rank": f.rank, "methods": ", ".join(f.methods), "size": f.size, "accuracy": f.accuracy, "q": f.q,
              "held-out gap": np.nan if f.held_out_gap is None else f.held_out_gap, "description": f.description}
             for f in self.findings],
            columns=["rank", "methods", "size", "accuracy", "q", "held-out gap", "description"],
        )

    def to_text(self) -> str:
        """A readable table (the CLI's default output), then the errors and notes."""
        lines = []
        if self.findings:
            with pd.option_context("display.width", 200, "display.max_columns", 10, "display.max_colwidth", 70):
                lines.append(self.table().to_string(index=False, formatters={
                    "accuracy": lambda v: f"{v:.1%}", "q": lambda v: f"{v:.2g}",
                    "held-out gap": lambda v: "-" if np.isnan(v) else f"{v:+.1%}"}))
        else:
            lines.append("no findings")
        lines += [f"error ({source}): {message}" for source, message in self.errors.items()]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"{self.candidates} candidate group(s) pooled")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The findings as a Markdown table, then the errors and notes as lists."""
        out = ["| # | methods | size | accuracy (95% CI) | q | held-out gap | description |",
               "|---|---|---|---|---|---|---|"]
        for f in self.findings:
            gap = "–" if f.held_out_gap is None else f"{f.held_out_gap:+.1%}"
            out.append(f"| {f.rank} | {', '.join(f.methods)} | {f.size} | {f.accuracy:.1%} ({f.accuracy_low:.1%}–"
                       f"{f.accuracy_high:.1%}) | {f.q:.2g} | {gap} | {f.description.replace('|', '/')} |")
        if not self.findings:
            out = ["No findings."]
        if self.errors:
            out += ["", "**Sources that failed:**", *[f"- {s}: {m}" for s, m in self.errors.items()]]
        if self.notes:
            out += ["", "**Notes:**", *[f"- {n}" for n in self.notes]]
        out += ["", f"{self.candidates} candidate group(s) pooled."]
        return "\n".join(out)


def _num(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


@dataclass
class _Candidate:
    source: str
    name: str
    members: np.ndarray  # (n,) bool: the group's rule applied to every image
    rows: np.ndarray  # its member rows, most typical / highest loss first
    order: int = 0


# --------------------------------------------------------------------------- the pieces


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(discovery rows, held-out rows), the split ``split_half`` makes; (every row, None) under 40 images."""
    if n < MIN_HELD_OUT:
        return np.arange(n), None
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def attribute_columns(store: Any, meta: pd.DataFrame) -> list[str]:
    """The store's attribute columns usable as slice predicates: never ground truth (``slice_*``),
    ids, paths or the columns the store computes."""
    named = list(getattr(store, "attribute_columns", []) or [])
    return [c for c in named if c in meta.columns and not str(c).lower().startswith("slice_")
            and str(c).lower() not in _PROTECTED and meta[c].nunique(dropna=False) > 1]


def categorical(meta: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns as strings (``label`` and ``pred`` named as they read); a numeric column with
    more than MAX_LEVELS values is cut into quartiles."""
    out = {}
    for column in columns:
        values = meta[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and values.nunique() > MAX_LEVELS:
            values = pd.qcut(values, 4, duplicates="drop")
        out[column] = values.astype(str).fillna("nan").to_numpy(dtype=object)
    return pd.DataFrame(out, index=meta.index)


def top_two(store: Any, meta: pd.DataFrame) -> np.ndarray | None:
    """(n, 2) the two highest-scored classes of every image (None when the store has no logits)."""
    try:
        logits = np.asarray(store.logits())
    except (AttributeError, OSError, BiasLensError):
        return None
    if logits.ndim != 2 or logits.shape[0] != len(meta) or logits.shape[1] < 2:
        return None
    best = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    pred = meta["pred_idx"].to_numpy()  # the prediction the store records comes first
    return np.column_stack([pred, np.where(best[:, 0] == pred, best[:, 1], best[:, 0])])


def at_risk(meta: pd.DataFrame, top2: np.ndarray | None, true: int, predicted: int) -> np.ndarray:
    """Images of class ``true`` whose two highest-scored classes include ``predicted`` (the cell's
    errors and the correct images that nearly made it); without logits, the cell itself."""
    label = meta["label_idx"].to_numpy() == true
    if top2 is None:
        return label & (meta["pred_idx"].to_numpy() == predicted)
    return label & ((top2[:, 0] == predicted) | (top2[:, 1] == predicted))


def _by_loss(members: np.ndarray, losses: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(members)
    return top_loss_rows(rows, losses, len(rows))


# --------------------------------------------------------------------------- the sources


def spotlight_candidates(store: Any, meta: pd.DataFrame, discovery: np.ndarray, scoped: bool) -> list[_Candidate]:
    """The Spotlight page's spotlights found on the discovery rows; an image belongs to one when
    its kernel weight reaches that of the spotlight's S-th discovery image (its top S there)."""
    fitted = fit_on_store(page_spotlight(len(discovery)), store, scope=discovery if scoped else None, meta=meta)
    weights = fitted.weights_for(store.representation("embedding"))
    out = []
    for j in range(len(weights)):
        threshold = -np.sort(-weights[j, discovery])[fitted.size_ - 1]
        members = weights[j] >= threshold
        rows = np.flatnonzero(members)
        rows = rows[np.argsort(-weights[j, rows], kind="stable")]
        out.append(_Candidate("spotlight", f"spotlight {j + 1}", members, rows, j))
    return out


def udis_candidates(store: Any, meta: pd.DataFrame, discovery: np.ndarray, scoped: bool) -> list[_Candidate]:
    """UDIS's under-performing subgroups (accuracy < VISCUIT_THRESHOLD x overall) found on the
    discovery rows; other images join the subgroup whose centroid is nearest."""
    fitted = fit_on_store(UDIS(), store, scope=discovery if scoped else None, meta=meta)
    ids = [int(g) for g in fitted.under_performing(VISCUIT_THRESHOLD)["subgroup"]]
    if not ids:
        return []
    x = np.asarray(store.representation("embedding"), dtype=np.float32)
    centroids = fitted.centroids_.astype(np.float32)
    labels = np.asarray(fitted.labels_).copy()
    others = np.flatnonzero(labels < 0)
    for start in range(0, len(others), 4096):
        chunk = others[start:start + 4096]
        points = x[chunk]
        distances = (points ** 2).sum(1)[:, None] - 2 * points @ centroids.T + (centroids ** 2).sum(1)[None, :]
        labels[chunk] = distances.argmin(1)
    losses = meta["loss"].to_numpy()
    return [_Candidate("udis", f"subgroup {g}", labels == g, _by_loss(labels == g, losses), i) for i, g in enumerate(ids)]


def saliency_candidates(store: Any, meta: pd.DataFrame, discovery: np.ndarray, profiles: Any) -> list[_Candidate]:
    """Filter saliency's failure modes of the discovery half's misclassified images (as the
    page fits them); every image joins the mode whose centroid (mean unit profile) is nearest
    in cosine, when its cosine reaches the lower quartile of the mode's own members'."""
    correct = meta["correct"].to_numpy(dtype=bool)
    wrong = np.sort(discovery[~correct[discovery]])
    if len(wrong) < 2:
        return []
    estimator = FailureModes(n_groups=8, min_size=min(5, max(1, len(wrong) // 10)))
    fitted = estimator.fit(profiles.z(wrong), wrong, profiles.index)
    if not fitted.groups_:
        return []
    cols = fitted.columns_
    unit = np.zeros((len(meta), len(cols)), dtype=np.float32)
    for start in range(0, len(meta), 4096):
        block = np.asarray(profiles.z(np.arange(start, min(start + 4096, len(meta)))), dtype=np.float32)[:, cols]
        block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        unit[start:start + len(block)] = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    centroids = np.stack([unit[g.rows].mean(0) for g in fitted.groups_])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    cosine = unit @ centroids.T
    nearest = cosine.argmax(1)
    out = []
    for j, group in enumerate(fitted.groups_):
        threshold = float(np.quantile(cosine[group.rows, j], 0.25))
        members = (nearest == j) & (cosine[:, j] >= threshold)
        members[group.rows] = True
        rows = np.flatnonzero(members)
        rows = rows[np.argsort(-cosine[rows, j], kind="stable")]
        out.append(_Candidate("saliency", f"failure mode #{group.index}", members, rows, j))
    return out


def error_cluster_candidates(store: Any, meta: pd.DataFrame, discovery: np.ndarray) -> list[_Candidate]:
    """The misclassified images of the discovery half, per true class, clustered in the embedding
    by Ward's method (deterministic): every cluster of every cut of the tree into 1 to K
    clusters (K = the class's errors / ``errors_per_cluster``; 2K - 1 nested clusters), so a
    failure is found whole as well as in parts, and the merging keeps the best-evidenced one.
    Each cluster is tested as its region (``_region``: the class's images, correct ones included,
    within the radius around the cluster's errors that fails most surely on the discovery half,
    so the region hugs a dense core of failures rather than every image near it). A failure the
    model makes on one kind of image sits close together in its embedding; errors scattered
    along a class boundary make wide regions that are not much worse than the rest, and their
    held-out test says so."""
    correct = meta["correct"].to_numpy(dtype=bool)
    label = meta["label_idx"].to_numpy()
    x = np.asarray(store.representation("embedding"), dtype=np.float32)
    per_cluster = errors_per_cluster(len(discovery))
    wrong = discovery[~correct[discovery]]
    names = dict(zip(meta["label_idx"], meta["label"], strict=True))
    out: list[_Candidate] = []
    for true in np.unique(label[wrong]):
        errors = wrong[label[wrong] == true]
        if len(errors) < MIN_CLUSTER_ERRORS:
            continue
        of_class = np.flatnonzero(label == true)
        clusters = [c for c in nested_clusters(x[errors], round(len(errors) / per_cluster)) if c.sum() >= MIN_CLUSTER_ERRORS]
        for number, cluster in enumerate(clusters):
            members = _region(x, of_class, errors[cluster], discovery, correct)
            out.append(_Candidate("error clusters", f"{names[true]} errors, cluster {number + 1}", members,
                                  failures_first(members, x, correct), len(out)))
    return out


def nested_clusters(points: np.ndarray, most: int) -> list[np.ndarray]:
    """The distinct clusters (boolean masks over ``points``) of Ward's tree cut into 1, 2, ...,
    ``most`` clusters: the whole, then each split in turn (2 x most - 1 masks, largest first)."""
    if most <= 1 or len(points) < 2:
        return [np.ones(len(points), dtype=bool)]
    tree = linkage(points.astype(np.float64), method="ward")
    seen: dict[bytes, np.ndarray] = {}
    for k in range(1, min(most, len(points)) + 1):
        cut = fcluster(tree, t=k, criterion="maxclust")
        for c in np.unique(cut):
            mask = cut == c
            seen.setdefault(np.packbits(mask).tobytes(), mask)
    return sorted(seen.values(), key=lambda m: -int(m.sum()))


def _region(x: np.ndarray, of_class: np.ndarray, cluster: np.ndarray, discovery: np.ndarray,
            correct: np.ndarray) -> np.ndarray:
    """(n,) bool: the images of ``of_class`` within a radius of the centroid of the cluster's
    errors. The radius is fitted on the discovery half: of the balls around the centroid that
    hold at least as many discovery images of the class as the cluster has errors, the one that
    surely fails most there (``scanned_radius``). Only discovery images' correctness is read,
    so the held-out test stays honest."""
    centroid = x[cluster].mean(0)
    distance = ((x[of_class] - centroid) ** 2).sum(1)
    seen = np.zeros(len(x), dtype=bool)
    seen[discovery] = True
    found = seen[of_class]
    correct_rest = int(correct[discovery].sum()) - int(correct[of_class[found]].sum())
    radius = scanned_radius(distance[found], correct[of_class[found]], len(cluster),
                            len(discovery) - int(found.sum()), correct_rest)
    members = np.zeros(len(x), dtype=bool)
    members[of_class[distance <= radius]] = True
    return members


def scanned_radius(distance: np.ndarray, correct: np.ndarray, smallest: int, others: int, others_correct: int) -> float:
    """The radius whose ball (the images at ``distance`` or nearer, each ``correct`` or not,
    at least ``smallest`` of them) is surely the worst against every other image: the ball
    that maximises the near end of the 95% Newcombe interval of its accuracy gap (the same
    sure gap the findings are ranked by, here on the discovery half). Outside the class there
    are ``others`` images, ``others_correct`` of them correct. A tight core of errors gives a
    ball just around it; errors spread evenly give a wide ball no worse than the rest."""
    order = np.argsort(distance, kind="stable")
    n = np.arange(1, len(order) + 1)
    k = np.cumsum(correct[order])
    total_n, total_k = len(order) + others, int(correct.sum()) + others_correct
    _, high = newcombe_interval(k, n, total_k - k, total_n - n)
    score = np.where((n >= min(max(smallest, 1), len(order))) & (total_n - n > 0), -high, -np.inf)
    return float(distance[order][int(np.argmax(score))])


def errors_per_cluster(discovered: int) -> int:
    """About how many misclassified images one error cluster holds: CLUSTER_ERROR_SHARE of the
    discovery half (a slice of 1.5% of the images failing at one in three), at least MIN_CLUSTER_ERRORS."""
    return max(MIN_CLUSTER_ERRORS, int(np.ceil(CLUSTER_ERROR_SHARE * discovered)))


def failures_first(members: np.ndarray, x: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """A group's rows as a user should first see them: its misclassified images, then its
    correct ones, each nearest the centroid of its misclassified images first (the most typical
    failures; the highest-loss ones are more often outliers or label noise)."""
    rows = np.flatnonzero(members)
    wrong = rows[~correct[rows]]
    centroid = x[wrong if len(wrong) else rows].mean(0)
    distance = ((x[rows] - centroid) ** 2).sum(1)
    return rows[np.lexsort((distance, correct[rows]))]


def confusion_candidates(meta: pd.DataFrame, discovery: np.ndarray, top2: np.ndarray | None) -> list[_Candidate]:
    """The largest off-diagonal confusion cells of the discovery half (at most MAX_CELLS, of
    MIN_CELL errors or more), each tested as its at-risk images (``at_risk``)."""
    part = meta.iloc[discovery]
    names, rankings, _ = baseline_groups(part)
    losses = meta["loss"].to_numpy()
    out = []
    for name, ranking in zip(names, rankings, strict=True):
        if len(ranking) < MIN_CELL or len(out) >= MAX_CELLS:
            break
        first = discovery[ranking[0]]
        true, predicted = int(meta["label_idx"].iat[first]), int(meta["pred_idx"].iat[first])
        members = at_risk(meta, top2, true, predicted)
        out.append(_Candidate("confusion", name, members, _by_loss(members, losses), len(out)))
    return out


def sliceline_candidates(meta: pd.DataFrame, discovery: np.ndarray, columns: list[str], top2: np.ndarray | None,
                         values: pd.DataFrame) -> list[_Candidate]:
    """SliceLine's top slices over the attributes, label and prediction on the discovery half
    (k = SLICELINE_K, at most SLICELINE_MAX_L values, support >= max(10, 1.5%)), each a rule
    applied to every image."""
    correct = meta["correct"].to_numpy(dtype=bool)
    x = values[columns].iloc[discovery].to_numpy(dtype=object)
    errors = (~correct[discovery]).astype(np.float64)
    if errors.sum() == 0:
        return []
    finder = Slicefinder(alpha=SLICELINE_ALPHA, k=SLICELINE_K, max_l=SLICELINE_MAX_L, min_sup=max(10, int(0.015 * len(discovery))), verbose=False)
    finder.fit(pd.DataFrame(x, columns=columns), errors)
    losses = meta["loss"].to_numpy()
    classes = _class_index(meta)
    out = []
    for slice_values in np.asarray(finder.top_slices_, dtype=object):
        rule = {c: v for c, v in zip(columns, slice_values, strict=True) if v is not None and not _missing(v)}
        if not rule:
            continue
        members = np.ones(len(meta), dtype=bool)
        label, pred = rule.get("label"), rule.get("pred")
        for column, value in rule.items():
            if column == "pred" and label is not None and label != pred and label in classes and pred in classes:
                members &= at_risk(meta, top2, classes[label], classes[pred])  # label -> another class: the at-risk images
            else:
                members &= values[column].to_numpy(dtype=object) == value
        name = " AND ".join(f"{_shown(c)} = {v}" for c, v in rule.items())
        out.append(_Candidate("sliceline", name, members, _by_loss(members, losses), len(out)))
    return out


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _class_index(meta: pd.DataFrame) -> dict[str, int]:
    pairs = pd.concat([meta[["label", "label_idx"]].set_axis(["name", "idx"], axis=1),
                       meta[["pred", "pred_idx"]].set_axis(["name", "idx"], axis=1)]).drop_duplicates("name")
    return {str(n): int(i) for n, i in zip(pairs["name"], pairs["idx"], strict=True)}


def _shown(column: str) -> str:
    return "prediction" if column == "pred" else column


# --------------------------------------------------------------------------- descriptions


def describe(members: np.ndarray, values: pd.DataFrame, columns: list[str],
             max_terms: int = MAX_TERMS) -> tuple[str, float | None, float | None, dict[str, str]]:
    """The conjunction of at most ``max_terms`` values (one per column) whose images best match
    the group (highest F1 against its members), with its precision and recall, and the rule."""
    members = np.asarray(members, dtype=bool)
    if not members.any() or not columns:
        return "", None, None, {}
    predicates, masks = [], []
    for column in columns:
        col = values[column].to_numpy(dtype=object)
        for value in pd.unique(col[members]):
            predicates.append((column, value))
            masks.append(col == value)
    if not predicates:
        return "", None, None, {}
    matrix = np.stack(masks, axis=1)
    size = members.sum()

    def scores(candidate: np.ndarray) -> tuple[float, float, float]:  # (f1, precision, recall) of a (n,) mask
        tp = float((candidate & members).sum())
        if tp == 0:
            return 0.0, 0.0, 0.0
        precision, recall = tp / candidate.sum(), tp / size
        return 2 * precision * recall / (precision + recall), precision, recall

    tp = members @ matrix
    precision = tp / np.maximum(matrix.sum(0), 1)
    recall = tp / size
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    beam = [((int(i),), matrix[:, i]) for i in np.argsort(-f1, kind="stable")[:8]]
    best = (float(f1[beam[0][0][0]]), beam[0][0], beam[0][1])
    for _ in range(max_terms - 1):
        grown: dict[tuple[int, ...], tuple[float, np.ndarray]] = {}
        for terms, mask in beam:
            used = {predicates[t][0] for t in terms}
            for j, (column, _) in enumerate(predicates):
                if column in used:
                    continue
                key = tuple(sorted((*terms, j)))
                if key not in grown:
                    candidate = mask & matrix[:, j]
                    grown[key] = (scores(candidate)[0], candidate)
        if not grown:
            break
        ranked = sorted(grown.items(), key=lambda item: -item[1][0])[:8]
        beam = [(terms, mask) for terms, (_, mask) in ranked]
        if ranked[0][1][0] > best[0] + 0.01:  # a longer rule must earn its term
            best = (ranked[0][1][0], ranked[0][0], ranked[0][1][1])
    _, p, r = scores(best[2])
    rule = {predicates[t][0]: str(predicates[t][1]) for t in best[1]}
    text = " AND ".join(f"{_shown(c)} = {v}" for c, v in rule.items())
    return text, p, r, rule


def _plain(rule: dict[str, str], recall: float | None) -> str:
    """Without attributes: 'mostly Sandal → Sneaker (80%)', the share of the group the rule covers."""
    label, pred = rule.get("label"), rule.get("pred")
    if label and pred:
        what = f"{label} → {pred}" if label != pred else f"{label}, predicted correctly"
    elif label:
        what = f"label {label}"
    else:
        what = f"predicted {pred}"
    return f"mostly {what} ({(recall or 0):.0%})"


# --------------------------------------------------------------------------- the pooling


def find_failures(store: Any, *, with_attributes: bool = True, profiles: Any = None, seed: int = 0,
                  progress: Progress | None = None) -> FindingsReport:
    """Pool every source's candidate groups, merge near-duplicates, test and rank them (see the module docstring)."""
    meta = store.meta()
    n = len(meta)
    correct = meta["correct"].to_numpy(dtype=bool)
    losses = meta["loss"].to_numpy(dtype=np.float64)
    discovery, held_out = halves(n, seed)
    scoped = held_out is not None
    notes: list[str] = []
    if scoped:
        notes.append(f"Every source searched a random half of the images ({len(discovery):,}, seed {seed}); p, q and the "
                     f"held-out gap are measured on the other half ({len(held_out):,}), which played no part in finding them.")
    else:
        notes.append(f"Only {n} images (fewer than {MIN_HELD_OUT}): no held-out half; p and q are measured on the images "
                     "the groups were found on, so they are optimistic.")
    attrs = attribute_columns(store, meta) if with_attributes else []
    if with_attributes and not attrs:
        notes.append("The dataset has no attribute columns: no SliceLine slices; descriptions use label and prediction only.")
    described = [*attrs, "label", "pred"]
    values = categorical(meta, described)
    top2 = top_two(store, meta)

    steps: list[tuple[str, Callable[[], list[_Candidate]]]] = [
        ("spotlight", lambda: spotlight_candidates(store, meta, discovery, scoped)),
        ("udis", lambda: udis_candidates(store, meta, discovery, scoped)),
    ]
    if profiles is not None:
        steps.append(("saliency", lambda: saliency_candidates(store, meta, discovery, profiles)))
    steps.append(("error clusters", lambda: error_cluster_candidates(store, meta, discovery)))
    steps.append(("confusion", lambda: confusion_candidates(meta, discovery, top2)))
    if attrs:
        steps.append(("sliceline", lambda: sliceline_candidates(meta, discovery, [*attrs, "label", "pred"], top2, values)))
    total = len(steps) + 1
    pooled: list[_Candidate] = []
    errors: dict[str, str] = {}
    for done, (source, run) in enumerate(steps):
        if progress is not None:
            progress(done, total, f"Searching: {source}")
        try:
            found = run()
        except BiasLensError as exc:
            errors[source] = str(exc)
            continue
        except Exception as exc:  # a failing source never stops the others: its message is reported
            errors[source] = f"{type(exc).__name__}: {exc}"
            continue
        pooled += [c for c in found if c.members.any()]
    if progress is not None:
        progress(len(steps), total, "Testing the candidates")
    findings = _ranked(pooled, correct, losses, held_out, values, described, bool(attrs))
    if not any(f.significant for f in findings):
        findings = []
        notes.append(f"{NO_FAILURE} among {len(pooled)} candidate group(s) (q < {ALPHA} on "
                     f"{'the held-out half' if scoped else 'all the images'}).")
    if progress is not None:
        progress(total, total, "Done")
    return FindingsReport(tuple(findings), errors, tuple(notes), len(pooled))


def marginal_sure_gap(members: np.ndarray, correct: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """(candidates,) the sure gap of each candidate's images not yet ``shown`` (those of the
    findings listed above it), against every other image: what it adds to the list. The sure
    gap is how much worse than the rest a group surely is, the near end of the 95% Newcombe
    interval of its accuracy gap: it weighs the size of a failure and the evidence for it (a
    group of 1,000 images 11 points worse and a slice of 163 images 72 points worse add about
    as many errors, but the slice is the sharper answer to "where does it fail"). A part of
    a failure already listed adds little (its new images are few, or fail no worse than the
    rest); a distinct failure adds its whole sure gap. ``members`` is (candidates, n) bool over
    the tested images; -inf where a candidate adds no image (or leaves none outside it)."""
    new = members & ~shown[None, :]
    n = new.sum(1)
    k = (new & correct[None, :]).sum(1)
    rest_n, rest_k = len(correct) - n, int(correct.sum()) - k
    _, high = newcombe_interval(k, n, rest_k, rest_n)
    return np.where((n > 0) & (rest_n > 0), -high, -np.inf)


def _ranked(pooled: list[_Candidate], correct: np.ndarray, losses: np.ndarray, held_out: np.ndarray | None,
            values: pd.DataFrame, described: list[str], with_attributes: bool) -> list[Finding]:
    """Test every candidate, list them greedily (significant first, each next by the sure gap it
    adds beyond the findings above it: ``marginal_sure_gap``), merge near-duplicates, describe."""
    if not pooled:
        return []
    n = len(correct)
    tested = held_out if held_out is not None else np.arange(n)
    tests = group_tests(correct[tested], [np.flatnonzero(c.members[tested]) for c in pooled])
    size = np.array([c.members.sum() for c in pooled])
    right = np.array([correct[c.members].sum() for c in pooled])
    rest_n, rest_k = n - size, correct.sum() - right
    accuracy = right / np.maximum(size, 1)
    rest = np.where(rest_n > 0, rest_k / np.maximum(rest_n, 1), np.nan)
    excess = size * (rest - accuracy)
    # Wilson's interval: a group with no (or only) errors still gets an interval worth reading
    low, high = (np.array(bounds) for bounds in zip(*[wilson(k, m)[1:] for k, m in zip(right, size, strict=True)], strict=True))
    worse = tests["gap"].to_numpy() < 0
    significant = (tests["q"].to_numpy() < ALPHA) & worse
    groups = _greedy_groups(pooled, np.stack([c.members[tested] for c in pooled]), correct[tested], significant)
    findings = []
    for group in groups:
        i = group[0]
        if not excess[i] > 0:
            continue  # not worse than the rest: no failure
        text, p, r, rule = describe(pooled[i].members, values, described)
        if not with_attributes and rule:
            text = _plain(rule, r)
        gap = tests["gap"].iat[i]
        methods = tuple(dict.fromkeys(pooled[j].source for j in group))
        findings.append(Finding(
            rank=len(findings) + 1, methods=methods, names=tuple(pooled[j].name for j in group), rows=pooled[i].rows,
            size=int(size[i]), accuracy=float(accuracy[i]), accuracy_low=float(low[i]), accuracy_high=float(high[i]),
            rest_accuracy=float(rest[i]), excess_errors=float(excess[i]), p=float(tests["p"].iat[i]),
            q=float(tests["q"].iat[i]),
            held_out_gap=None if held_out is None or not np.isfinite(gap) else float(-gap),
            description=text, description_precision=p, description_recall=r,
        ))
    return findings


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Near-duplicates: Jaccard >= MERGE_JACCARD, or MERGE_CONTAINED of the smaller inside the larger."""
    shared = (a & b).sum()
    return bool(shared >= MERGE_JACCARD * (a | b).sum() or shared >= MERGE_CONTAINED * min(a.sum(), b.sum()))


def _greedy_groups(pooled: list[_Candidate], tested_members: np.ndarray, tested_correct: np.ndarray,
                   significant: np.ndarray) -> list[list[int]]:
    """The candidates in the order a user reads them, as groups of near-duplicates (each led by
    the one listed first). Significant candidates come first; each next one is the candidate
    that adds the most beyond the leaders already listed (``marginal_sure_gap`` on the tested
    images: a greedy cover, so a second part of a failure already listed waits behind the next
    distinct failure), ties broken by source and the source's own order. A candidate that is a
    near-duplicate (``_same``) of a listed leader joins its group instead of being listed."""
    remaining = list(range(len(pooled)))
    shown = np.zeros(tested_members.shape[1], dtype=bool)
    groups: list[list[int]] = []
    while remaining:
        adds = marginal_sure_gap(tested_members[remaining], tested_correct, shown)
        pick = min(range(len(remaining)), key=lambda j: (not significant[remaining[j]], -adds[j],
                                                          SOURCES.index(pooled[remaining[j]].source),
                                                          pooled[remaining[j]].order))
        i = remaining.pop(pick)
        for group in groups:
            if _same(pooled[group[0]].members, pooled[i].members):
                group.append(i)
                break
        else:
            groups.append([i])
            shown |= tested_members[i]
    return groups
