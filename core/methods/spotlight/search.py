"""The spotlight (d'Eon, d'Eon, Wright & Leyton-Brown, 2022): contiguous high-loss regions.

The paper's symbols, used in the comments below:

- ``x_i`` in R^d: the representation of image i (last hidden layer), i = 1..N
- ``l_i``: its loss, the per-example cross-entropy computed from the logits
- ``mu``: the spotlight's centre; ``tau``: its precision, ``c I`` (spherical, the paper's
  choice) or ``diag(tau_1..tau_d)`` (per-dimension, an option)
- ``k_i = exp(-1/2 (x_i - mu)^T tau (x_i - mu))``: the Gaussian kernel weight of image i
  (the authors' later code offers the compact ``max(1 - (x_i - mu)^T tau (x_i - mu), 0)``)
- ``S``: the spotlight size, a count (2% of N for images)

Objective: ``max_{mu, tau} sum_i k_i l_i / sum_i k_i  subject to  sum_i k_i >= S``.
It is optimised with Adam, halving the learning rate on plateaus, under a barrier penalty
``scale * (W - (S + b_t))^2 / b_t^2`` applied while ``W = sum_i k_i < S + b_t``; the width
``b_t`` shrinks geometrically from ``N - S`` to ``0.05 S`` over the run, so the path runs
through the interior of the feasible region. Several spotlights: before each next one,
``l_i <- (1 - k_i / max_j k_j) l_i``.

Implementation choices (none changes the objective):

- Coordinates are centred and divided by one global scale, so the learning rate means the
  same on any embedding; ``c`` is reported back in the representation's own units.
- Two starts are run and the better spotlight is kept: the authors' zero start (``mu = 0``,
  ``c = 1e-4``, barrier from ``N - S``, all the steps), exactly as alone, and the centroid
  of the densest high-loss neighbourhood (starting at ``sum_i k_i = 2 S`` with its barrier
  shrinking from that slack; being local already, it gets half the steps). The kept
  spotlight is never worse than the zero-start run; both objectives are reported.
- On large problems on a CPU the spherical centre is searched in the span of the top
  principal directions plus the two starts; each ``||x_i - mu||^2`` still uses the full
  vector (``||x_i||^2 - 2 x_i . mu + ||mu||^2``), so every weight and objective value is the
  paper's exactly, only ``mu`` is restricted to that subspace (``search_dims``).
- After the run, a spotlight that ended just inside the constraint (``W < S``) is widened
  by lowering its precision until ``W = S``: every reported spotlight is feasible.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator

from core.errors import BiasLensError
from core.scoring.stats import bootstrap_ci

KERNELS = ("gaussian", "compact")
PRECISIONS = ("spherical", "diagonal")
STARTS = ("best", "zero", "high-loss")
MIN_IMAGES = 20
ZERO_LOSS = 1e-6  # cross-entropy at or below this everywhere (p_true >= 0.999999): nothing to find
ZERO_START_PRECISION = 1e-4  # the authors' code starts log(c) at log(1e-4)
# A CPU run searches the centre in all of R^d while N x d stays below FULL_SEARCH_ENTRIES;
# above, in as many principal directions as keep N x (directions + 4) near SEARCH_ENTRIES.
FULL_SEARCH_ENTRIES = 4_000_000
SEARCH_ENTRIES = 1_000_000
MIN_SEARCH_DIMS = 16
TOP_LOSS_CANDIDATES = 32  # high-loss start: the highest-loss images...
DRAWN_CANDIDATES = 96  # ...and images drawn with probability proportional to loss
HIGH_LOSS_WIDTH = 2.0  # the high-loss start begins with sum k_i = 2 S
PROGRESS_EVERY = 25

Progress = Callable[[int, int, str], None]


class SpotlightError(BiasLensError):
    """The inputs cannot give a spotlight (too few images, bad losses, a bad size...)."""


class NothingToFind(SpotlightError):
    """Every image has the same loss (e.g. zero): no region is worse than another."""


@dataclass
class SpotlightFit:
    """One spotlight: its kernel parameters, weights k_i and how the search went."""

    index: int
    centre: np.ndarray  # mu, (d,) in the representation's coordinates (after PCA when set)
    precision: np.ndarray  # c (shape (1,), spherical) or tau_1..tau_d (diagonal)
    weights: np.ndarray  # k_i, (N,) float32 in [0, 1]
    mean_loss: float  # sum k_i l_i / sum k_i with the original losses
    objective: float  # the same on the down-weighted losses this spotlight maximised
    size: float  # effective size sum k_i
    trace: np.ndarray  # objective at every step (down-weighted losses)
    size_trace: np.ndarray  # sum k_i at every step
    start: str  # which start won: "zero" or "high-loss"
    start_objectives: dict[str, float]  # each start's final objective (the best is kept)

    def top_rows(self, k: int) -> np.ndarray:
        """Rows of the k highest weights, highest first (ties by row)."""
        k = max(0, min(int(k), self.weights.size))
        return np.argsort(-self.weights, kind="stable")[:k]


def resolve_size(size: float, n: int) -> int:
    """S as a count: a float below 1 is a fraction of N, anything else a count of images."""
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)) or not math.isfinite(size):
        raise SpotlightError(f"The spotlight size must be a number, got {size!r}.")
    count = float(size) * n if isinstance(size, (float, np.floating)) and 0 < size < 1 else float(size)
    s = int(round(count))
    if s < 1:
        raise SpotlightError(
            f"A spotlight of size {size} covers {count:.2f} of {n:,} images: it must cover at least "
            "one image. Increase the size."
        )
    if s >= n:
        raise SpotlightError(
            f"A spotlight of {s:,} images would cover all {n:,}: the size must be below N "
            "(the paper uses 2% of the images)."
        )
    return s


def check_inputs(embeddings: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated float32 (N, d) representation and float64 (N,) losses, or a SpotlightError."""
    x = np.asarray(embeddings, dtype=np.float32)
    loss = np.asarray(losses, dtype=np.float64)
    if x.ndim != 2:
        raise SpotlightError(f"The representation must be a matrix (images x dimensions), got shape {x.shape}.")
    if loss.ndim != 1 or loss.shape[0] != x.shape[0]:
        raise SpotlightError(f"Got {x.shape[0]:,} representations but {loss.size:,} losses: one loss per image is needed.")
    if x.shape[0] < MIN_IMAGES:
        raise SpotlightError(f"A spotlight needs at least {MIN_IMAGES} images; this set has {x.shape[0]}.")
    if x.shape[1] < 1:
        raise SpotlightError("The representation has no dimensions.")
    bad = ~np.isfinite(loss)
    if bad.any():
        raise SpotlightError(
            f"{int(bad.sum()):,} loss value(s) are NaN or infinite (first at row {int(np.argmax(bad))}). "
            "The model's logits overflowed or the store is damaged: rebuild the store, or check the model."
        )
    if (loss < 0).any():
        raise SpotlightError("Some losses are negative: the spotlight needs cross-entropy losses (>= 0).")
    if not np.isfinite(x).all():
        raise SpotlightError("The representation holds NaN or infinite values: rebuild the store, or pick another layer.")
    if loss.max() <= ZERO_LOSS:
        raise NothingToFind(
            f"The model's loss is zero on every image (at most {loss.max():.1g}): it makes no errors "
            "and is certain of every answer, so there is nothing for a spotlight to find."
        )
    if loss.max() - loss.min() <= 1e-9 * max(1.0, float(loss.max())):
        raise NothingToFind(
            f"Every image has the same loss ({loss.max():.3g}): no region of the representation is "
            "worse than another, so there is nothing for a spotlight to find."
        )
    if float(np.ptp(x, axis=0).max()) == 0.0:
        raise NothingToFind("Every image has the same representation: a spotlight cannot tell them apart.")
    return x, loss


_THREADS_LOCK = threading.Lock()
_threads_state = {"active": 0, "saved": 0}


@contextlib.contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Cap torch's CPU threads while fits run (counted, so concurrent fits restore it once)."""
    if threads is None:
        yield
        return
    with _THREADS_LOCK:
        if _threads_state["active"] == 0:
            _threads_state["saved"] = torch.get_num_threads()
            torch.set_num_threads(max(1, int(threads)))
        _threads_state["active"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_state["active"] -= 1
            if _threads_state["active"] == 0:
                torch.set_num_threads(_threads_state["saved"])


def _pca_basis(y: torch.Tensor, k: int, seed: int, max_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k principal directions (d, k) of centred rows y and their variances, from <= max_rows rows."""
    if y.shape[0] > max_rows:
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(y.shape[0], generator=generator)[:max_rows].to(y.device)
        y = y[rows]
    covariance = (y.T @ y).double() / max(1, y.shape[0] - 1)
    values, vectors = torch.linalg.eigh(covariance)
    order = torch.argsort(values, descending=True)[:k]
    return vectors[:, order].to(y.dtype), values[order].clamp_min(0).to(y.dtype)


def _orthonormal_extend(basis: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``basis`` (d, q) with the parts of ``vectors`` (d, m) outside its span appended, orthonormal."""
    out = basis
    for v in vectors.T:
        r = v - out @ (out.T @ v)
        r = r - out @ (out.T @ r)  # second Gram-Schmidt pass for float32
        norm = r.norm()
        if norm > 1e-4 * max(1.0, float(v.norm())):
            out = torch.cat([out, (r / norm)[:, None]], dim=1)
    return out


class Spotlight(BaseEstimator):
    """The spotlight as a scikit-learn estimator: parameters here, ``fit(X, losses)`` runs it.

    ``size``: S as a fraction of N (a float below 1) or a count; ``n_spotlights``: how many
    to find in sequence; ``kernel``: "gaussian" (the paper) or "compact"; ``precision``:
    "spherical" (c I, the paper) or "diagonal"; ``steps``/``lr``/``patience``: Adam, halving
    the learning rate after ``patience`` steps without improvement; ``barrier_scale`` and
    ``barrier_end`` (final width as a fraction of S): the barrier schedule; ``pca``: project
    the representation on its top components first; ``search_dims``: "auto", None (search
    the centre in the full space) or a number of principal directions; ``start``: "best"
    (the zero start with ``steps`` and the high-loss start with half as many, keep the
    better), "zero" (the authors' code) or "high-loss"; ``device``: None picks CUDA when available; ``threads``: torch CPU threads
    while fitting (1: the steps are small and latency-bound, and extra threads only cost
    on a shared CPU; None keeps torch's setting).

    Fitted attributes: ``spotlights_`` (one SpotlightFit per spotlight, in the order found),
    ``size_`` (S as a count of images), ``n_images_`` (N), ``mean_loss_`` (the dataset's mean
    loss, what a spotlight's weighted mean loss compares to), ``search_dims_`` (principal
    directions the spherical centre was searched in, plus the starts; None: all),
    ``explained_variance_`` (share kept by the optional PCA, else None), ``projection_``
    (the optional PCA's mean and components, else None), ``n_features_in_``, ``seconds_``,
    ``device_`` and ``notes_``. ``weights_for(X)`` applies the fitted kernels to new images.
    """

    def __init__(
        self,
        size: float = 0.02,
        n_spotlights: int = 1,
        kernel: str = "gaussian",
        precision: str = "spherical",
        steps: int = 1000,
        lr: float = 1e-2,
        patience: int = 20,
        barrier_scale: float = 1.0,
        barrier_end: float = 0.05,
        pca: int | None = None,
        search_dims: int | str | None = "auto",
        start: str = "best",
        seed: int = 0,
        device: str | None = None,
        threads: int | None = 1,
    ) -> None:
        self.size = size
        self.n_spotlights = n_spotlights
        self.kernel = kernel
        self.precision = precision
        self.steps = steps
        self.lr = lr
        self.patience = patience
        self.barrier_scale = barrier_scale
        self.barrier_end = barrier_end
        self.pca = pca
        self.search_dims = search_dims
        self.start = start
        self.seed = seed
        self.device = device
        self.threads = threads

    def _check_params(self, d: int) -> None:
        if self.kernel not in KERNELS:
            raise SpotlightError(f"Unknown kernel '{self.kernel}'; use one of {', '.join(KERNELS)}.")
        if self.precision not in PRECISIONS:
            raise SpotlightError(f"Unknown precision '{self.precision}'; use one of {', '.join(PRECISIONS)}.")
        if self.start not in STARTS:
            raise SpotlightError(f"Unknown start '{self.start}'; use one of {', '.join(STARTS)}.")
        if int(self.n_spotlights) < 1:
            raise SpotlightError("Ask for at least one spotlight.")
        if int(self.steps) < 1 or not self.lr > 0 or int(self.patience) < 1:
            raise SpotlightError("Steps, learning rate and patience must be positive.")
        if not 0 < self.barrier_end < 1 or not self.barrier_scale > 0:
            raise SpotlightError("The barrier needs a positive scale and a final width between 0 and 1 (of S).")
        if self.pca is not None and not 1 <= int(self.pca) <= d:
            raise SpotlightError(f"PCA components must be between 1 and the representation's {d} dimensions.")

    def fit(self, X: Any, losses: Any, progress: Progress | None = None) -> Spotlight:
        """Find ``n_spotlights`` spotlights of the (N, d) representation X with losses (N,)."""
        started = time.perf_counter()
        x_np, loss_np = check_inputs(X, losses)
        n, d = x_np.shape
        self._check_params(d)
        s = resolve_size(self.size, n)
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with _cpu_threads(self.threads if device.type == "cpu" else None):
            fits, search_dims, explained, projection, notes = self._fit(x_np, loss_np, s, device, progress)
        self.spotlights_ = fits
        self.projection_ = projection
        self.n_features_in_ = d
        self.size_ = s
        self.n_images_ = n
        self.mean_loss_ = float(loss_np.mean())
        self.search_dims_ = search_dims
        self.explained_variance_ = explained
        self.seconds_ = time.perf_counter() - started
        self.device_ = str(device)
        self.notes_ = notes
        return self

    def weights_for(self, X: Any) -> np.ndarray:
        """k_i of new images under each fitted spotlight, (n_spotlights, M) float32.

        The kernel of each spotlight (centre mu, precision tau) applied to representations the
        fit never saw, e.g. a held-out half: on the fitted images it gives back ``weights``.
        """
        if not hasattr(self, "spotlights_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("This Spotlight is not fitted yet; call fit first.")
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise SpotlightError(f"Expected images x {self.n_features_in_} features, got shape {x.shape}.")
        if self.projection_ is not None:
            mean, components = self.projection_
            x = (x - mean) @ components
        out = np.zeros((len(self.spotlights_), len(x)), dtype=np.float32)
        for j, fit in enumerate(self.spotlights_):
            quad = torch.from_numpy((((x - fit.centre) ** 2) * fit.precision).sum(1))  # q_i = (x_i - mu)^T tau (x_i - mu)
            out[j] = self._kernel(quad).numpy()
        return out

    def first(self, k: int) -> Spotlight:
        """A fitted copy holding only the first ``k`` spotlights, with ``n_spotlights = k``.

        Spotlights are found in sequence and each depends only on those before it, so this
        equals a fit with ``n_spotlights = k`` and the same other parameters: a cached larger
        run answers a smaller request.
        """
        if not hasattr(self, "spotlights_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("This Spotlight is not fitted yet; call fit first.")
        if not 1 <= k <= int(self.n_spotlights):
            raise SpotlightError(f"Ask for 1 to {self.n_spotlights} of the spotlights found, got {k}.")
        out = copy.copy(self)
        out.n_spotlights = k
        out.spotlights_ = self.spotlights_[:k]
        stopped = len(self.spotlights_) < k  # the larger run stopped early: so would this one
        out.notes_ = list(self.notes_) if stopped else [n for n in self.notes_ if not n.startswith("Stopped after")]
        return out

    def _fit(
        self, x_np: np.ndarray, loss_np: np.ndarray, s: int, device: torch.device, progress: Progress | None
    ) -> tuple[list[SpotlightFit], int | None, float | None, tuple[np.ndarray, np.ndarray] | None, list[str]]:
        """The spotlights, the search dimensions, the PCA's explained variance, its projection and notes."""
        n, d = x_np.shape
        notes: list[str] = []

        x = torch.tensor(x_np, device=device)  # one writable copy (the store's arrays are read-only)
        explained, projection = None, None
        if self.pca is not None and int(self.pca) < d:
            # optional PCA: the representation becomes its top components (the rest is dropped)
            mean = x.mean(0)
            components, variances = _pca_basis(x - mean, int(self.pca), self.seed, max_rows=n)
            total = ((x - mean) ** 2).sum() / max(1, n - 1)
            explained = float(variances.sum() / total) if total > 0 else 1.0
            projection = (mean.double().cpu().numpy(), components.double().cpu().numpy())
            x = (x - mean) @ components
            d = x.shape[1]
        # centre and scale once (x = m + scale * y): Adam's step then means the same on any data
        m = x.mean(0)
        y = x.sub_(m)  # in place: x is this method's own copy
        sq = y.pow(2).sum(1)  # ||x_i||^2, shared by every distance computation
        scale = float((sq.sum() / y.numel()).sqrt())
        if scale == 0.0:
            raise NothingToFind("Every image has the same representation: a spotlight cannot tell them apart.")
        y, sq = y.div_(scale), sq.div_(scale**2)
        zero_start = -m / scale  # mu = 0 in the representation's coordinates

        search_dims = self._search_dims(n, d, device)
        basis = None
        if search_dims is not None:  # the top principal directions, and mu = 0 (the zero start)
            components, _ = _pca_basis(y, search_dims, self.seed)
            basis = _orthonormal_extend(components, zero_start[:, None])
        # x_i in the search space, feature-major (q, N), and their squared norms there
        coords = y.T if basis is None else (y @ basis).T.contiguous()
        coords_sq = sq if basis is None else coords.pow(2).sum(0)

        loss = torch.from_numpy(loss_np.astype(np.float32)).to(device)
        current = loss.clone()  # l_i, down-weighted after each spotlight
        fits: list[SpotlightFit] = []
        total_steps = int(self.n_spotlights) * int(self.steps)
        for j in range(int(self.n_spotlights)):
            if float(current.max() - current.min()) <= 1e-9 * max(1.0, float(loss.max())):
                notes.append(f"Stopped after {j} spotlight(s): the remaining losses are all equal.")
                break

            def report(step: int, j: int = j) -> None:
                if progress is not None:
                    # the bar spans the whole run; the text names the spotlight and its own steps
                    progress(j * int(self.steps) + step, total_steps,
                             f"Spotlight {j + 1} of {self.n_spotlights}: step {step:,} of {int(self.steps):,}")

            fit = self._fit_one(j, y, sq, coords, coords_sq, current, loss, s, zero_start, basis, report)
            fit.centre = (m + scale * torch.from_numpy(fit.centre).to(device)).cpu().numpy()
            fit.precision = fit.precision / scale**2
            fits.append(fit)
            k = torch.from_numpy(fit.weights).to(device)
            current = (1 - k / k.max().clamp_min(1e-12)) * current  # l_i <- (1 - k_i / max_j k_j) l_i
        if progress is not None:
            progress(total_steps, total_steps, "Done")
        return fits, search_dims, explained, projection, notes

    # ------------------------------------------------------------------ one spotlight

    def _search_dims(self, n: int, d: int, device: torch.device) -> int | None:
        """How many principal directions the spherical centre is searched in (None: all of R^d)."""
        dims = self.search_dims
        if dims == "auto":
            dims = None if device.type == "cuda" or n * d <= FULL_SEARCH_ENTRIES else max(MIN_SEARCH_DIMS, SEARCH_ENTRIES // n - 4)
        if dims is None or self.precision != "spherical" or int(dims) + 2 >= d:
            return None
        return int(dims)

    def _high_loss_start(
        self, y: torch.Tensor, coords: torch.Tensor, coords_sq: torch.Tensor, losses: torch.Tensor, s: int, seed: int
    ) -> torch.Tensor:
        """Centroid of the densest high-loss neighbourhood: of the candidate images (the highest
        losses, plus images drawn with probability proportional to loss, so that a cluster of
        moderate losses is represented too), the one whose S nearest neighbours (in the search
        space ``coords``, (q, N)) have the highest mean loss (a hard-edged spotlight) gives the start."""
        n = y.shape[0]
        top = torch.topk(losses, min(TOP_LOSS_CANDIDATES, n)).indices
        generator = torch.Generator().manual_seed(seed)
        drawn = torch.multinomial(losses.cpu().double() + 1e-12, min(DRAWN_CANDIDATES, n), generator=generator)
        candidates = torch.unique(torch.cat([top, drawn.to(y.device)]))
        # (candidates, N) squared distances
        distances = coords_sq[candidates, None] - 2 * coords.T[candidates] @ coords + coords_sq[None, :]
        neighbours = torch.topk(distances, s, dim=1, largest=False).indices
        best = int(torch.argmax(losses[neighbours].mean(1)))
        return y[neighbours[best]].mean(0)

    def _kernel(self, quad: torch.Tensor) -> torch.Tensor:
        """k_i from q_i = (x_i - mu)^T tau (x_i - mu): Gaussian exp(-q/2) or compact max(1 - q, 0)."""
        return torch.exp(-0.5 * quad) if self.kernel == "gaussian" else torch.relu(1 - quad)

    def _shift_for_size(self, quad: torch.Tensor, target: float) -> float:
        """delta such that scaling tau by exp(delta) gives sum_i k_i = target (W falls as delta grows)."""
        lo, hi = -60.0, 60.0
        for _ in range(50):
            mid = (lo + hi) / 2
            if float(self._kernel(quad * math.exp(mid)).sum()) > target:
                lo = mid
            else:
                hi = mid
        return lo  # the side with W >= target

    def _fit_one(
        self,
        index: int,
        y: torch.Tensor,
        sq: torch.Tensor,
        coords: torch.Tensor,
        coords_sq: torch.Tensor,
        current: torch.Tensor,
        original: torch.Tensor,
        s: int,
        zero_start: torch.Tensor,
        basis: torch.Tensor | None,
        report: Callable[[int], None],
    ) -> SpotlightFit:
        """Run each start on its own and keep the best feasible spotlight."""
        steps = int(self.steps)
        starts: list[tuple[str, torch.Tensor, int]] = []
        if self.start in ("best", "zero"):
            starts.append(("zero", zero_start, steps))
        if self.start in ("best", "high-loss"):
            centre = self._high_loss_start(y, coords, coords_sq, current, s, self.seed + index)
            starts.append(("high-loss", centre, max(1, steps // 2) if self.start == "best" else steps))
        total, done, runs = sum(run_steps for _, _, run_steps in starts), 0, []
        for name, centre, run_steps in starts:
            def run_report(t: int, done: int = done) -> None:
                report(round((done + t) * steps / total))

            runs.append((name, *self._search(y, sq, coords, current, s, name, centre, basis, run_steps, run_report)))
            done += run_steps
        name, objective, k, centre, log_tau, trace = max(runs, key=lambda run: run[1])  # ties: the zero start
        return SpotlightFit(
            index=index,
            centre=centre.cpu().numpy(),
            precision=log_tau.exp().double().cpu().numpy(),
            weights=k.cpu().numpy().astype(np.float32),
            mean_loss=float((k * original).sum() / k.sum().clamp_min(1e-12)),
            objective=objective,
            size=float(k.sum()),
            trace=trace[:, 0],
            size_trace=trace[:, 1],
            start=name,
            start_objectives={run[0]: run[1] for run in runs},
        )

    def _search(
        self,
        y: torch.Tensor,
        sq: torch.Tensor,
        coords: torch.Tensor,
        current: torch.Tensor,
        s: int,
        name: str,
        centre: torch.Tensor,
        basis: torch.Tensor | None,
        steps: int,
        report: Callable[[int], None],
    ) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """One barrier-method run of Adam from one start.

        Returns the objective, k_i, mu (in y's coordinates), log tau and the (steps, 2) trace
        of the objective and W.
        """
        n, device = y.shape[0], y.device
        if basis is not None:  # the start joins the principal directions of the search space
            known = basis.shape[1]
            basis = _orthonormal_extend(basis, centre[:, None])
            coords = torch.cat([coords, (y @ basis[:, known:]).T])
            centre = basis.T @ centre
        # Augmented coordinates turn the squared distances into one matrix product:
        # ||x_i - mu||^2 = [mu, 1, ||mu||^2] . [-2 x_i, ||x_i||^2, 1], with ||x_i||^2 over the
        # full space, so the distances stay exact when mu is searched in a subspace.
        ones = torch.ones(1, n, device=device)
        if self.precision == "spherical":
            aug = torch.cat([-2 * coords, sq[None, :], ones]).contiguous()
        else:  # (x_i - mu)^T tau (x_i - mu) = [tau, tau mu, tau . mu^2] . [x_i^2, -2 x_i, 1]
            aug = torch.cat([coords.pow(2), -2 * coords, ones]).contiguous()
        # (2, N) rows l_i and 1: one product gives sum k_i l_i and W (this layout is the fast one)
        targets = torch.stack([current, ones[0]]).T
        one = torch.ones(1, 1, device=device)
        # the kernel's factor on q_i, applied once to the coordinates: k_i = exp(-q_i / 2) or max(1 - q_i, 0)
        scaled = aug * (-0.5 if self.kernel == "gaussian" else -1.0)

        def row(z: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
            """(1, q + 2) row whose product with ``aug`` is q_i = (x_i - mu)^T tau (x_i - mu)."""
            tau = log_tau.exp()
            if self.precision == "spherical":  # c ||x_i - mu||^2
                return tau * torch.cat([z, one, z.pow(2).sum(1, keepdim=True)], 1)
            return torch.cat([tau, tau * z, (tau * z.pow(2)).sum(1, keepdim=True)], 1)

        def weights(z: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
            """(1, N) k_i in as few passes over the N images as possible."""
            exponent = row(z, log_tau) @ scaled
            return torch.exp(exponent) if self.kernel == "gaussian" else torch.relu(exponent + 1)

        # The zero start is the authors' code: mu = 0, tau = 1e-4 I, barrier from N - S. The
        # high-loss start keeps its locality: it begins HIGH_LOSS_WIDTH x S wide and its
        # barrier shrinks from that slack (a warm start of the same barrier method).
        width = 1 if self.precision == "spherical" else coords.shape[0]
        z = centre[None, :].clone()
        if name == "zero":
            log_tau, slack = torch.full((1, width), math.log(ZERO_START_PRECISION), device=device), float(n - s)
        else:
            wide = min(HIGH_LOSS_WIDTH * s, (n + s) / 2)
            with torch.no_grad():
                unit = row(z, torch.zeros(1, width, device=device)) @ aug
            log_tau, slack = torch.full((1, width), self._shift_for_size(unit, wide), device=device), wide - s
        z.requires_grad_(True)
        log_tau.requires_grad_(True)
        optimiser = torch.optim.Adam([z, log_tau], lr=self.lr, fused=True)
        end = float(self.barrier_end) * s
        trace = np.zeros((steps, 2), dtype=np.float32)  # objective and W at every step
        best, waited = -math.inf, 0
        for t in range(steps):
            b = slack * (end / slack) ** (t / max(1, steps - 1))  # b_t: from the slack down to 0.05 S
            weighted, w = (weights(z, log_tau) @ targets)[0]  # sum_i k_i l_i and W = sum_i k_i
            objective = weighted / w.clamp_min(1e-12)  # sum_i k_i l_i / sum_i k_i
            # scale * (W - (S + b_t))^2 / b_t^2 while W < S + b_t, else 0
            penalty = self.barrier_scale * torch.relu((s + b - w) / b).pow(2)
            optimiser.zero_grad(set_to_none=True)
            (penalty - objective).backward()
            optimiser.step()
            trace[t, 0], trace[t, 1] = objective.item(), w.item()
            value = trace[t, 0] - penalty.item()
            if value > best:
                best, waited = value, 0
            else:
                waited += 1
                if waited >= self.patience:  # halve the learning rate on a plateau
                    optimiser.param_groups[0]["lr"] /= 2
                    waited = 0
            if t % PROGRESS_EVERY == 0:
                report(t)

        with torch.no_grad():
            z, log_tau = z.detach(), log_tau.detach()
            q = (row(z, log_tau) @ aug).clamp_min(0)
            if float(self._kernel(q).sum()) < s:  # ended just inside the constraint: widen to W = S
                shift = self._shift_for_size(q, s)
                log_tau, q = log_tau + shift, q * math.exp(shift)
            k = self._kernel(q)[0]
            objective = float((k * current).sum() / k.sum().clamp_min(1e-12))
            return objective, k, (z[0] if basis is None else basis @ z[0]), log_tau[0], trace


# --------------------------------------------------------------------------- describing a spotlight


def summary(spotlight: Spotlight, correct: np.ndarray) -> pd.DataFrame:
    """One row per spotlight of a fitted Spotlight: weighted mean loss, effective size,
    accuracy of its top-S images (95% bootstrap).

    ``correct`` is the per-image correctness (N bools). The top-S images are the S = size_
    highest-weighted ones, the images a reader sees first.
    """
    correct = np.asarray(correct, dtype=np.float64)
    mean_loss = spotlight.mean_loss_
    rows = []
    for fit in spotlight.spotlights_:
        accuracy, low, high = bootstrap_ci(correct[fit.top_rows(spotlight.size_)])
        rows.append(
            {
                "spotlight": fit.index + 1,
                "mean loss": fit.mean_loss,
                "loss ratio": fit.mean_loss / mean_loss if mean_loss > 0 else float("nan"),
                "effective size": fit.size,
                "top-S accuracy": accuracy,
                "low": low,
                "high": high,
                "start": fit.start,
            }
        )
    return pd.DataFrame(
        rows, columns=["spotlight", "mean loss", "loss ratio", "effective size", "top-S accuracy", "low", "high", "start"]
    )


def weights_table(spotlight: Spotlight, meta: pd.DataFrame) -> pd.DataFrame:
    """Per image: row, id, label, pred, correct, loss and one weight column per spotlight of a
    fitted Spotlight (for CSV)."""
    columns = [c for c in ("row", "id", "label", "pred", "correct", "loss") if c in meta]
    table = meta[columns].reset_index(drop=True).copy()
    for fit in spotlight.spotlights_:
        table[f"weight_{fit.index + 1}"] = fit.weights
    return table
