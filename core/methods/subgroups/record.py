"""The Subgroups (VisCUIT) page's record: UDIS's settings form, its split-half check and the groups it flags."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.base import clone

from core.methods.records import Groups, MethodRecord, Setting, WorkshopStep
from core.methods.subgroups.udis import MIN_IMAGES, UDIS, VISCUIT_THRESHOLD
from core.scoring.scorecard import loss_rankings
from core.scoring.significance import check_halves, evidence_order, split_half
from core.store.read import expand


def udis_on_rows(fitted: UDIS, scope: np.ndarray, n: int) -> UDIS:
    """A UDIS run on a subset's rows, ``labels_`` mapped back to all ``n`` store rows (-1 outside),
    so ``rows(g)`` gives store rows."""
    fitted.labels_ = expand(fitted.labels_, scope, n, fill=-1)
    return fitted


def udis_order(fitted: UDIS, meta: pd.DataFrame, threshold: float = VISCUIT_THRESHOLD) -> pd.DataFrame:
    """The under-performing subgroups in the order the Subgroups page lists them, by evidence
    (``evidence_order``, with Benjamini-Hochberg over every cluster of the run, since UDIS looked
    at all of them): significant failures first by excess errors, near-duplicates last.
    ``subgroup`` is each one's id."""
    ids = [int(g) for g in fitted.under_performing(threshold)["subgroup"]]
    others = [fitted.rows(int(g)) for g in fitted.subgroups_["subgroup"] if int(g) not in set(ids)]
    order = evidence_order(meta["correct"].to_numpy(dtype=bool), [fitted.rows(g) for g in ids],
                           [f"subgroup {g}" for g in ids], family=others)
    order.insert(0, "subgroup", [ids[int(p)] for p in order["position"]])
    return order


def udis_groups(fitted: UDIS, meta: pd.DataFrame) -> Groups:
    """The groups a UDIS run flags, as the Subgroups page lists them (``udis_order``): its
    under-performing subgroups at VisCUIT's threshold, each with its members ranked by loss."""
    ids = [int(g) for g in udis_order(fitted, meta)["subgroup"]]
    members = [fitted.rows(g) for g in ids]
    return [f"subgroup {g}" for g in ids], loss_rankings(members, meta["loss"].to_numpy()), members


def udis_held_out(x: np.ndarray, correct: np.ndarray, udis: UDIS, threshold: float, seed: int = 0) -> pd.DataFrame:
    """Split-half confirmation of UDIS's under-performing subgroups (core.scoring.significance.split_half):
    UDIS is fitted on a random half; an image of the other half joins the subgroup whose mean
    embedding (centroid) is nearest, so each subgroup's gap can be measured again on images
    that played no part in finding it."""
    x = np.asarray(x, dtype=np.float32)
    check_halves(len(x), MIN_IMAGES, "the subgroup search")

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


# The Subgroups page's "Clustering settings (UDIS)" form: UDIS's parameters, its defaults.
SETTINGS = (
    Setting("min_size", "Min subgroup size", "int", 2, 1000, help="No split leaves a subgroup with fewer images."),
    Setting("max_size", "Max subgroup size", "int", 3, 100_000, help="Cuts are scored only once no splittable subgroup is bigger."),
    Setting("silhouette_sample", "Silhouette sample", "int", 100, 20_000, step=500,
            help="Images on which each cut's silhouette score is measured."),
    Setting("max_cuts", "Cuts scored", "int", 1, 200, help="At most this many cuts, geometrically spaced, compete."),
    Setting("exact_limit", "Exact Ward up to N images", "int", 100, 50_000, step=500,
            help="Above it: k-means micro-clusters, then Ward on them (memory O(N))."),
    Setting("micro_clusters", "Micro-clusters", "int", 100, 20_000, step=256,
            help="Number of k-means micro-clusters in the two-stage tree."),
    Setting("stop_at_perfect", "Keep perfect regions whole", "bool", help="UDIS's code stops splitting at clusters with 100% accuracy."),
    Setting("seed", "Seed", "int", 0, 10_000),
)

RECORD = MethodRecord(
    name="subgroups", title="Subgroups", page="pages/subgroups.py", icon=":material/groups:", origin="subgroup", score_name="udis",
    estimator=UDIS, defaults=lambda n: UDIS(), target="correct", on_rows=udis_on_rows,
    held_out=lambda udis, x, losses, correct, seed=0, threshold=VISCUIT_THRESHOLD, **_: udis_held_out(x, correct, udis, threshold, seed),
    groups=udis_groups, settings=SETTINGS,
    steps=(
        WorkshopStep("grad-cam", "Grad-CAM and neurons", "On Subgroups, run the clustering, select the subgroup that matches "
                     "your cohort, press CAM under an image and read the neuron panel: what does the model look at?",
                     "pages/subgroups.py", 4),
    ),
)
