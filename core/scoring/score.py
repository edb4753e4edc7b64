"""One command to check the discovery methods on a workspace with ground truth.

``score_store(store, methods)`` runs each discovery method with its page's defaults on the
store (the demo, or any dataset with ``slice_*`` columns), scores its groups against the
planted slices with Domino's measures beside the confusion-cell baseline
(``core.scoring.scorecard``), and tests every group it proposed (``core.scoring.significance``). The CLI's
``python -m core score WS`` prints the table and a JSON line: the way to check a method on a
new slices file in one command.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from core.errors import DataError
from core.methods import UDIS, VISCUIT_THRESHOLD, Spotlight, top_loss_rows
from core.methods.spotlight.search import MIN_IMAGES as SPOTLIGHT_MIN_IMAGES
from core.methods.subgroups.udis import MIN_IMAGES as UDIS_MIN_IMAGES
from core.scoring.scorecard import baseline_groups, domino_scorecard
from core.scoring.significance import group_tests, split_half
from core.store.read import Store

Groups = tuple[list[str], list[np.ndarray], list[np.ndarray]]  # names, rankings, members
BASELINE = "baseline"
MARGIN = 0.3  # a method "beats" the baseline on a slice by at least this much P@10
PAPER_SIZE = 0.02  # the paper's S: 2% of the images
MIN_SPOTLIGHT_TOP = 25  # the default S is at least this many images (see default_size)
MAX_DEFAULT_SIZE = 0.25  # ... but never more than a quarter of the images


def default_size(n: int) -> float:
    """The default spotlight size S for ``n`` images, as a fraction: the paper's 2%, but at least
    MIN_SPOTLIGHT_TOP images and at most a quarter of them, rounded up to 0.01% (what the page's
    box shows). A spotlight's accuracy is measured on its top S images: at 2% of 200 images that
    is 4 images, and its 95% interval reads 0.0-0.0%; 25 images give an interval worth reading.
    From 1,250 images on, 2% is already 25 or more, so large datasets keep the paper's S."""
    share = min(max(PAPER_SIZE, MIN_SPOTLIGHT_TOP / max(1, n)), MAX_DEFAULT_SIZE)
    return math.ceil(round(share * 10_000, 6)) / 10_000


def page_spotlight(n: int) -> Spotlight:
    """The Spotlight page's defaults for ``n`` images: 5 spotlights of ``default_size(n)``."""
    return Spotlight(size=default_size(n), n_spotlights=5)


def spotlight_groups(store: Store, meta: pd.DataFrame) -> Groups:
    """The Spotlight page's default run: 5 spotlights of ``default_size`` of the embedding; each ranks
    the images by weight, and its members are its top S images."""
    fitted = page_spotlight(len(meta)).fit(np.asarray(store.representation("embedding")), meta["loss"].to_numpy())
    names = [f"spotlight {s.index + 1}" for s in fitted.spotlights_]
    return names, [s.weights for s in fitted.spotlights_], [s.top_rows(fitted.size_) for s in fitted.spotlights_]


def udis_groups(store: Store, meta: pd.DataFrame) -> Groups:
    """The Subgroups page's default run: every UDIS cluster of the embedding, ranked by loss."""
    fitted = UDIS().fit(np.asarray(store.representation("embedding")), meta["correct"].to_numpy())
    losses = meta["loss"].to_numpy()
    ids = [int(g) for g in fitted.subgroups_["subgroup"]]
    members = [fitted.rows(g) for g in ids]
    return [f"subgroup {g}" for g in ids], loss_rankings(members, losses), members


def loss_rankings(members: Sequence[np.ndarray], losses: np.ndarray) -> list[np.ndarray]:
    """Each group's whole membership, highest loss first: the ranking its P@k and AUROC are
    measured on. Cutting it short (to the 10 highest-loss images, say) caps P@25 at 10/25 and
    P@100 at 0.10, and scores the rest of the group like images outside it in AUROC."""
    return [top_loss_rows(rows, losses, len(rows)) for rows in members]


def _check_halves(n: int, minimum: int, search: str) -> None:
    """DataError unless each half of ``n`` images holds the ``minimum`` the search needs."""
    if n // 2 < minimum:
        raise DataError(
            f"The held-out check finds the groups on one half of the images and measures them on the "
            f"other; {search} needs at least {minimum} images per half, so at least {2 * minimum} "
            f"images, and this set has {n}."
        )


def _check_half_size(n: int, size: float) -> None:
    """DataError unless a spotlight of ``size`` (a fraction of the images, or a count) covers at
    least one image of a half of ``n`` images, and not all of them. Only the page's own S can
    fail here: the default (``default_size``) fits every half of 40 images or more."""
    half = n // 2
    share = isinstance(size, float) and 0 < size < 1
    count, shown = (size * half, f"{100 * size:g}%") if share else (float(size), f"{size:g} images")
    if round(count) < 1:
        least = math.ceil(10_000 / half) / 100
        raise DataError(
            f"The held-out check searches the spotlights on one half of the images ({half:,}), where S = "
            f"{shown} covers {count:.1f} images: fewer than 1. Raise Size S to at least {least:g}% on the "
            "Spotlight page and run again."
        )
    if round(count) >= half:
        raise DataError(
            f"The held-out check searches the spotlights on one half of the images ({half:,}), where S = "
            f"{shown} covers all of them. Lower Size S on the Spotlight page and run again."
        )


def udis_held_out(x: np.ndarray, correct: np.ndarray, udis: UDIS, threshold: float, seed: int = 0) -> pd.DataFrame:
    """Split-half confirmation of UDIS's under-performing subgroups (core.scoring.significance.split_half):
    UDIS is fitted on a random half; an image of the other half joins the subgroup whose mean
    embedding (centroid) is nearest, so each subgroup's gap can be measured again on images
    that played no part in finding it."""
    x = np.asarray(x, dtype=np.float32)
    _check_halves(len(x), UDIS_MIN_IMAGES, "the subgroup search")

    def discover(rows: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        fitted = clone(udis).fit(x[rows], correct[rows])
        centroids = fitted.centroids_.astype(np.float32)
        ids = [int(g) for g in fitted.under_performing(threshold)["subgroup"]]

        def nearest(r: np.ndarray) -> np.ndarray:
            points = x[r]
            distances = (points**2).sum(1)[:, None] - 2 * points @ centroids.T + (centroids**2).sum(1)[None, :]
            return distances.argmin(1)

        return {f"#{g}": (lambda r, g=g: nearest(r) == g) for g in ids}

    return split_half(np.asarray(correct, dtype=bool), discover, seed=seed)


def spotlight_held_out(
    x: np.ndarray, losses: np.ndarray, correct: np.ndarray, spotlight: Spotlight, seed: int = 0
) -> pd.DataFrame:
    """Split-half confirmation of the spotlights (core.scoring.significance.split_half): they are
    searched on a random half; an image of the other half belongs to a spotlight when its
    kernel weight reaches that of the spotlight's S-th highest-weighted image of the
    discovery half, i.e. when it falls in the region the spotlight's top S covered there."""
    x = np.asarray(x, dtype=np.float32)
    _check_halves(len(x), SPOTLIGHT_MIN_IMAGES, "the spotlight search")
    _check_half_size(len(x), spotlight.size)
    losses = np.asarray(losses, dtype=np.float64)

    def discover(rows: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        fitted = clone(spotlight).fit(x[rows], losses[rows])
        weights = fitted.weights_for(x)  # the fitted kernels on every image, once (the same arithmetic on both halves)
        thresholds = -np.sort(-weights[:, rows], axis=1)[:, fitted.size_ - 1]  # each spotlight's S-th discovery weight
        return {f"Spotlight {j + 1}": (lambda r, j=j, t=t: weights[j, r] >= t) for j, t in enumerate(thresholds)}

    return split_half(np.asarray(correct, dtype=bool), discover, seed=seed)


METHODS: dict[str, Callable[[Store, pd.DataFrame], Groups]] = {"spotlight": spotlight_groups, "udis": udis_groups}


def _check_methods(methods: Sequence[str]) -> None:
    if not methods:
        raise DataError(f"No method given: name at least one of {', '.join(METHODS)}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DataError(f"Unknown method(s) {', '.join(unknown)}; use {', '.join(METHODS)}.")


def held_out_tables(store: Store, methods: Sequence[str] = tuple(METHODS), seed: int = 0) -> dict[str, pd.DataFrame]:
    """Each method's split-half confirmation with its page's defaults: spotlights
    (``spotlight_held_out``) and UDIS's under-performing subgroups at VisCUIT's threshold
    (``udis_held_out``). Needs no ground truth."""
    _check_methods(methods)
    meta = store.meta()
    x, correct = np.asarray(store.representation("embedding")), meta["correct"].to_numpy(dtype=bool)
    runs = {
        "spotlight": lambda: spotlight_held_out(x, meta["loss"].to_numpy(), correct, page_spotlight(len(meta)), seed),
        "udis": lambda: udis_held_out(x, correct, UDIS(), VISCUIT_THRESHOLD, seed),
    }
    return {m: runs[m]() for m in methods}


def score_store(store: Store, methods: Sequence[str] = tuple(METHODS)) -> dict[str, Any]:
    """Every method's scorecard (and the baseline's) per planted slice, and its significance
    counts. DataError when the store has no ground truth or a method is unknown."""
    if not store.slice_columns:
        raise DataError("This workspace has no ground truth (slice_* columns): nothing to score against.")
    _check_methods(methods)
    meta = store.meta()
    truth = meta[store.slice_columns].to_numpy(dtype=bool)
    slices = [c.removeprefix("slice_") for c in store.slice_columns]
    cards, tests = [], {}
    runs = {m: METHODS[m](store, meta) for m in methods}
    runs[BASELINE] = baseline_groups(meta)
    for method, (names, rankings, members) in runs.items():
        card = domino_scorecard(truth, rankings, slices, names, members=members)
        cards.append(card.assign(method=method))
        if method != BASELINE:
            table = group_tests(meta["correct"].to_numpy(dtype=bool), members, names)
            tests[method] = {"groups": len(table), "significant": int(table["significant"].sum())}
    table = pd.concat(cards, ignore_index=True)
    table = table[["method", *[c for c in table.columns if c != "method"]]]
    base = table[table["method"] == BASELINE].set_index("slice")["P@10"]
    beats = [
        s for s in slices
        if any(table[(table["method"] == m) & (table["slice"] == s)]["P@10"].iloc[0] - base[s] >= MARGIN - 1e-9 for m in methods)
    ]
    return {"table": table, "significance": tests, "beats_baseline": beats}


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON figures: per method (and baseline) and slice, p10, p100, recall and auroc."""
    out: dict[str, Any] = {}
    for row in result["table"].to_dict("records"):
        for key, column in (("p10", "P@10"), ("p100", "P@100"), ("recall", "recall"), ("auroc", "AUROC")):
            value = row[column]
            out[f"{row['method']}_{row['slice']}_{key}"] = None if value != value else round(float(value), 3)
    out["methods_beat_baseline"] = len(result["beats_baseline"])
    out["slices_beaten"] = result["beats_baseline"]
    out["significance"] = result["significance"]
    return out
