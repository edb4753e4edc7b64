"""One command to check the discovery methods on a workspace with ground truth.

``score_store(store, methods)`` runs each discovery method with its page's defaults on the
store (the demo, or any dataset with ``slice_*`` columns), scores its groups against the
planted slices with Domino's measures beside the confusion-cell baseline
(``core.scorecard``), and tests every group it proposed (``core.significance``). The CLI's
``python -m core score WS`` prints the table and a JSON line: the way to check a method on a
new slices file in one command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from core.errors import DataError
from core.methods import UDIS, VISCUIT_THRESHOLD, Spotlight, top_loss_rows
from core.methods.spotlight import MIN_IMAGES as SPOTLIGHT_MIN_IMAGES
from core.methods.udis import MIN_IMAGES as UDIS_MIN_IMAGES
from core.scorecard import baseline_groups, domino_scorecard
from core.significance import group_tests, split_half
from core.store import Store

Groups = tuple[list[str], list[np.ndarray], list[np.ndarray]]  # names, rankings, members
BASELINE = "baseline"
MARGIN = 0.3  # a method "beats" the baseline on a slice by at least this much P@10
PAGE_SPOTLIGHT = Spotlight(size=0.02, n_spotlights=5)  # the Spotlight page's defaults (fit clones it)


def spotlight_groups(store: Store, meta: pd.DataFrame) -> Groups:
    """The Spotlight page's default run: 5 spotlights of 2% of the embedding; each ranks the images by
    weight, and its members are its top S images."""
    fitted = PAGE_SPOTLIGHT.fit(np.asarray(store.representation("embedding")), meta["loss"].to_numpy())
    names = [f"spotlight {s.index + 1}" for s in fitted.spotlights_]
    return names, [s.weights for s in fitted.spotlights_], [s.top_rows(fitted.size_) for s in fitted.spotlights_]


def udis_groups(store: Store, meta: pd.DataFrame) -> Groups:
    """The Subgroups page's default run: every UDIS cluster of the embedding, ranked by loss."""
    fitted = UDIS().fit(np.asarray(store.representation("embedding")), meta["correct"].to_numpy())
    losses = meta["loss"].to_numpy()
    ids = [int(g) for g in fitted.subgroups_["subgroup"]]
    return [f"subgroup {g}" for g in ids], [top_loss_rows(fitted.rows(g), losses, 100) for g in ids], [fitted.rows(g) for g in ids]


def _check_halves(n: int, minimum: int, search: str) -> None:
    """DataError unless each half of ``n`` images holds the ``minimum`` the search needs."""
    if n // 2 < minimum:
        raise DataError(
            f"The held-out check finds the groups on one half of the images and measures them on the "
            f"other; {search} needs at least {minimum} images per half, so at least {2 * minimum} "
            f"images, and this set has {n}."
        )


def udis_held_out(x: np.ndarray, correct: np.ndarray, udis: UDIS, threshold: float, seed: int = 0) -> pd.DataFrame:
    """Split-half confirmation of UDIS's under-performing subgroups (core.significance.split_half):
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
    """Split-half confirmation of the spotlights (core.significance.split_half): they are
    searched on a random half; an image of the other half belongs to a spotlight when its
    kernel weight reaches that of the spotlight's S-th highest-weighted image of the
    discovery half, i.e. when it falls in the region the spotlight's top S covered there."""
    x = np.asarray(x, dtype=np.float32)
    _check_halves(len(x), SPOTLIGHT_MIN_IMAGES, "the spotlight search")
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
        "spotlight": lambda: spotlight_held_out(x, meta["loss"].to_numpy(), correct, PAGE_SPOTLIGHT, seed),
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
