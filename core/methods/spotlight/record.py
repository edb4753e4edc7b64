"""The Spotlight page's record: its defaults, its settings form, its split-half check, the groups it flags."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd
from sklearn.base import clone

from core.errors import DataError
from core.methods.records import Groups, MethodRecord, Setting, WorkshopStep
from core.methods.spotlight.search import KERNELS, MIN_IMAGES, PRECISIONS, Spotlight
from core.scoring.significance import check_halves, evidence_order, split_half
from core.store.read import expand

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


def spotlight_on_rows(fitted: Spotlight, scope: np.ndarray, n: int) -> Spotlight:
    """A Spotlight run on a subset's rows, its weights mapped back to all ``n`` store rows (0
    outside the subset)."""
    fitted.spotlights_ = [replace(f, weights=expand(f.weights, scope, n)) for f in fitted.spotlights_]
    return fitted


def spotlight_order(fitted: Spotlight, meta: pd.DataFrame) -> pd.DataFrame:
    """The spotlights in the order the page lists them, by evidence (``evidence_order``: each
    spotlight's top S images tested against the rest; significant failures first by excess
    errors, near-duplicates last); ``position`` indexes ``fitted.spotlights_``."""
    spotlights = fitted.spotlights_
    return evidence_order(meta["correct"].to_numpy(dtype=bool), [s.top_rows(fitted.size_) for s in spotlights],
                          [f"spotlight {s.index + 1}" for s in spotlights])


def spotlight_groups(fitted: Spotlight, meta: pd.DataFrame) -> Groups:
    """The groups a Spotlight run flags, in the page's order (``spotlight_order``): each
    spotlight ranks the images by weight, and its members are its top S images."""
    order = spotlight_order(fitted, meta)
    picked = [fitted.spotlights_[int(p)] for p in order["position"]]
    return list(order["group"]), [s.weights for s in picked], [s.top_rows(fitted.size_) for s in picked]


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


def spotlight_held_out(
    x: np.ndarray, losses: np.ndarray, correct: np.ndarray, spotlight: Spotlight, seed: int = 0
) -> pd.DataFrame:
    """Split-half confirmation of the spotlights (core.scoring.significance.split_half): they are
    searched on a random half; an image of the other half belongs to a spotlight when its
    kernel weight reaches that of the spotlight's S-th highest-weighted image of the
    discovery half, i.e. when it falls in the region the spotlight's top S covered there."""
    x = np.asarray(x, dtype=np.float32)
    check_halves(len(x), MIN_IMAGES, "the spotlight search")
    _check_half_size(len(x), spotlight.size)
    losses = np.asarray(losses, dtype=np.float64)

    def discover(rows: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        fitted = clone(spotlight).fit(x[rows], losses[rows])
        weights = fitted.weights_for(x)  # the fitted kernels on every image, once (the same arithmetic on both halves)
        thresholds = -np.sort(-weights[:, rows], axis=1)[:, fitted.size_ - 1]  # each spotlight's S-th discovery weight
        return {f"Spotlight {j + 1}": (lambda r, j=j, t=t: weights[j, r] >= t) for j, t in enumerate(thresholds)}

    return split_half(np.asarray(correct, dtype=bool), discover, seed=seed)


# The Spotlight page's settings form: a representation of the store (the page's choice, the
# embedding by default), then the estimator's parameters; S is shown as a percentage, PCA 0 = off.
SETTINGS = (
    Setting("representation", "Representation", "choice", help="The paper uses the last hidden layer.", page_only=True),
    Setting("size", "Size S (% of images)", "float", 0.0, 99.9, step=0.5, format="%.2f", scale=100,
            help=f"The minimum total weight, as a share of the images: 2% in the paper, but at least {MIN_SPOTLIGHT_TOP} "
                 "images by default (at most 25%). A spotlight averages the losses of at least S images, so a failing group much "
                 "smaller than S is diluted by its neighbours: to look for small groups, lower S (or ask for more spotlights)."),
    Setting("n_spotlights", "Spotlights", "int", 1, 10, help="Found in sequence; each next one ignores losses already covered."),
    Setting("steps", "Steps", "int", 50, 5000, step=50, help="Adam steps per spotlight (the paper: 1000-5000)."),
    Setting("kernel", "Kernel", "choice", options=KERNELS, help="Gaussian exp(-d²/2) as in the paper, or compact max(1 - d², 0)."),
    Setting("precision", "Precision", "choice", options=PRECISIONS,
            help="Spherical c·I as in the paper, or one precision per dimension (slow on wide layers: add PCA)."),
    Setting("pca", "PCA components (0 = off)", "int", 0, 4096, none_as=0, help="Project the representation on its top components first."),
    Setting("lr", "Learning rate", "float", 1e-4, 1.0, format="%.4f", help="Adam; halved each time the objective plateaus."),
    Setting("seed", "Seed", "int", 0, 10_000,
            help="Seeds the high-loss starts and the principal directions; the same store and settings "
                 "give the same spotlights on this server. On another machine the gradient search "
                 "may round differently and move a later spotlight."),
)

RECORD = MethodRecord(
    name="spotlight", title="Spotlight", page="pages/spotlight.py", icon=":material/highlight:", origin="spotlight",
    estimator=Spotlight, defaults=page_spotlight, target="loss", on_rows=spotlight_on_rows,
    held_out=lambda spotlight, x, losses, correct, seed=0, **_: spotlight_held_out(x, losses, correct, spotlight, seed),
    groups=spotlight_groups, settings=SETTINGS,
    steps=(
        WorkshopStep("spotlight-run", "Spotlight", "Run Spotlight with its defaults: each spotlight is a high-loss region of "
                     "the model's last hidden layer.", "pages/spotlight.py", 1),
        WorkshopStep("spotlight-lift", "Read the lift", "Open a spotlight and read its top attribute values by lift, and its "
                     "class mix: what do its images share?", "pages/spotlight.py", 2),
    ),
)
