"""Workshop mode: score a student's finding against the hidden planted slices.

No Streamlit here (the page furniture is core/ui/workshop.py). A *finding* is a set of
store rows: a saved subset or the rows of a ``WHERE`` filter. It is scored the way the
method scorecards score a group (core/scoring/scorecard.py), so a student's number and a method's
number mean the same thing:

- **P@10**: rank the finding's images by loss, highest first (ties: lower row first), and
  take the top 10; P@10 is the share of them inside a planted slice. A finding of fewer
  than 10 images counts its missing slots as misses.
- **recall**: the share of that slice's images that the finding holds.
- **best slice**: the slice with the highest P@10, ties broken by the higher recall, then
  by the slice's order.
- **identified**: P@10 >= 0.8 (``core.scoring.scorecard.IDENTIFIED``), as on the scorecards.

What a student is shown (``student_view``): whether the finding matches a planted slice
(identified), its P@10 and recall against the best slice, and that slice's name **only
when it is identified**. The other slices, their names, sizes and the best slice's name
below 0.8 stay hidden. The baseline (``random_baseline``) is what a random subset of the
same size scores by the same rule, averaged over seeded draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import BiasLensError
from core.scoring.scorecard import IDENTIFIED

K = 10


@dataclass(frozen=True)
class FindingScore:
    """How one finding scores against the planted slices (``best`` is internal: never shown
    unless ``identified``)."""

    size: int
    p_at_k: float
    recall: float
    best: str
    identified: bool
    k: int = K


@dataclass(frozen=True)
class Baseline:
    """The mean score of random subsets of the same size, and how often one is identified."""

    size: int
    p_at_k: float
    recall: float
    identified_share: float
    draws: int


def _checked(rows: Any, loss: np.ndarray, truth: np.ndarray, names: list[str]) -> np.ndarray:
    truth = np.asarray(truth, dtype=bool)
    if truth.ndim != 2 or truth.shape[0] != len(loss) or truth.shape[1] != len(names) or not names:
        raise BiasLensError("The ground truth must be an (images x slices) matrix with one name per slice.")
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if rows.size == 0:
        raise BiasLensError("The finding is empty: pick a subset or a filter that matches images.")
    if rows[0] < 0 or rows[-1] >= len(loss):
        raise BiasLensError(f"The finding holds rows outside 0..{len(loss) - 1}.")
    return rows


def top_by_loss(rows: np.ndarray, loss: np.ndarray, k: int = K) -> np.ndarray:
    """The k rows of highest loss among ``rows`` (sorted rows), highest first; ties to the lower row."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    order = np.argsort(-np.asarray(loss, dtype=np.float64)[rows], kind="stable")
    return rows[order[:k]]


def score_finding(rows: Any, loss: np.ndarray, truth: np.ndarray, slice_names: list[str], k: int = K) -> FindingScore:
    """Score a finding (store rows) against every planted slice; keep the best slice."""
    loss = np.asarray(loss, dtype=np.float64)
    names = list(slice_names)
    rows = _checked(rows, loss, truth, names)
    truth = np.asarray(truth, dtype=bool)
    top = top_by_loss(rows, loss, k)
    p = truth[top].sum(axis=0) / k                                 # (slices,)
    recall = truth[rows].sum(axis=0) / np.maximum(1, truth.sum(axis=0))
    best = int(np.lexsort((np.arange(len(names)), -recall, -p))[0])  # max P@k, then recall, then order
    return FindingScore(
        size=int(rows.size), p_at_k=float(p[best]), recall=float(recall[best]), best=names[best],
        identified=bool(p[best] >= IDENTIFIED), k=k,
    )


def random_baseline(
    size: int, loss: np.ndarray, truth: np.ndarray, k: int = K, draws: int = 200, seed: int = 0
) -> Baseline:
    """Mean P@k, recall and identified share of ``draws`` random subsets of ``size`` images,
    each scored by ``score_finding``'s rule (best slice per draw). Seeded: the same inputs
    give the same baseline."""
    loss = np.asarray(loss, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    n = len(loss)
    if not 1 <= size <= n:
        raise BiasLensError(f"A baseline needs a size between 1 and {n}.")
    rng = np.random.default_rng(seed)
    rank = np.empty(n, dtype=np.int64)                   # position of each row in the loss order
    rank[np.argsort(-loss, kind="stable")] = np.arange(n)
    sizes = np.maximum(1, truth.sum(axis=0))
    ps, recalls, hits = [], [], 0
    for _ in range(draws):
        rows = rng.choice(n, size=size, replace=False)
        top = rows[np.argsort(rank[rows])[:k]]
        p = truth[top].sum(axis=0) / k
        recall = truth[rows].sum(axis=0) / sizes
        best = int(np.lexsort((np.arange(truth.shape[1]), -recall, -p))[0])
        ps.append(p[best])
        recalls.append(recall[best])
        hits += int(p[best] >= IDENTIFIED)
    return Baseline(size=size, p_at_k=float(np.mean(ps)), recall=float(np.mean(recalls)),
                    identified_share=hits / draws, draws=draws)


def student_view(score: FindingScore) -> dict[str, Any]:
    """What a student may see of a score: the match, P@k and recall, and the slice's name only
    when the finding identifies it (P@k >= 0.8)."""
    return {
        "matches a planted slice": "yes" if score.identified else "no",
        f"P@{score.k}": score.p_at_k,
        "recall": score.recall,
        "slice": score.best if score.identified else "(hidden until identified)",
        "images": score.size,
    }
