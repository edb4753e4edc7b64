"""Neuron Activation Profiles (NAPs) of groups and their topographic maps (Krug & Stober).

Sec. 4.2 and 5.4 of the paper, for the intersectional groups of ``core.methods.intersectional.groups``:

- ``NAPs().fit(A_l, labels, group_values, columns)``: in layer l, the mean activation of each
  group G, ``mean(A_l(G))``, minus the expected activation ``E(mean(A_l))`` = the
  group-size-weighted mean of the group means (= the mean over every included row):
  ``NAP_l(G) = mean(A_l(G)) - E(mean(A_l))``. ``A_l`` is the per-channel spatial mean of the
  layer (the store's pooled channels), read in row chunks, so a float16 memmap of a million
  rows never sits in memory whole. ``unions(["gender"])`` gives the NAPs of unions of groups
  sharing one or two variables, normalised with the same expectation as the intersectional
  groups (the paper's choice: those vary less within a group).
- ``TopographicLayout().fit(naps)``: every channel is a particle, described by its NAP values
  across the groups; UMAP (seeded) places them in 2-D, then the paper's particle relaxation
  spreads them evenly (``relaxation_step``); positions are min-max scaled to [0, 1].
- ``topomap(positions, values)``: one group's map, NAP values interpolated linearly onto a
  100x100 grid (NaN outside the particles' hull -> 0). ``map_scale`` is the shared,
  0-symmetric colour limit of all groups' maps; ``nap_similarity`` turns "these groups look
  alike" into a number (cosine similarity, ordered by hierarchical clustering).

NaN (or infinite) activations in an included row are refused with a ``DataError`` naming
the groups and the number of channels affected: a mean over them would be meaningless, and
skipping rows silently would change group sizes behind the user's back.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.interpolate import griddata
from scipy.spatial import QhullError
from scipy.spatial.distance import squareform
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from core.errors import DataError, InputError, ParameterError

MIN_LAYOUT_CHANNELS = 16  # the paper draws maps only for layers with more than 15 channels

# The paper's particle forces (Sec. 4.2): attr(d) = 1.5 (d+1)^-3, rep(d) = 15 exp(-d/2).
ATTRACTION = 1.5
REPULSION = 15.0
MIN_DISTANCE = 0.01  # distances are floored here, so close particles get a finite push

class NAPs(BaseEstimator):
    """Neuron Activation Profiles of G groups in one layer.

    ``chunk``: rows read per step (the memory bound: ``chunk`` x C float32).

    ``fit(activations, labels, group_values=None, columns=None)``: ``activations`` (N, C)
    per-channel spatial means of one layer (any float array or memmap); ``labels`` (N,) the
    group index 0..G-1 of each row, -1 for rows left out; ``group_values`` (G rows) each
    group's value of each variable, named by ``columns``.

    Fitted attributes: ``means_`` (G, C) group means mean(A_l(G)); ``sizes_`` (G,) rows per
    group; ``expected_`` (C,) E(mean(A_l)), the size-weighted mean of the group means;
    ``naps_`` (G, C) = ``means_ - expected_``; ``group_values_`` (G, K) and ``columns_`` (K,)
    as given (one unnamed variable when not given); ``fit_seconds_``.
    """

    def __init__(self, chunk: int = 65536):
        self.chunk = chunk

    def fit(
        self,
        activations: np.ndarray,
        labels: np.ndarray,
        group_values: Sequence[Sequence[str]] | None = None,
        columns: Sequence[str] | None = None,
    ) -> NAPs:
        """One pass over the rows: S^T A per chunk, S the normalised membership matrix."""
        start = time.perf_counter()
        if int(self.chunk) < 1:
            raise ParameterError(f"chunk must be at least 1, got {self.chunk}: set a positive number of rows per step")
        if getattr(activations, "ndim", None) != 2:
            raise DataError(f"activations must be a 2-D array (rows x channels), got shape {np.shape(activations)}")
        n, c = activations.shape
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise DataError(f"labels must have one entry per activation row ({n}), got shape {labels.shape}")
        if n == 0 or c == 0:
            raise DataError("no activations to profile: the layer has no rows or no channels")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError("labels must be integer group indices (-1 = left out)")
        labels = labels.astype(np.int64, copy=False)
        if labels.min() < -1:
            raise DataError("labels must be group indices 0..G-1 or -1 (left out)")
        n_groups = len(group_values) if group_values is not None else int(labels.max()) + 1
        if labels.max() >= n_groups:
            raise DataError(f"a label ({int(labels.max())}) names a group beyond the {n_groups} given")
        values, names = _group_table(group_values, columns, n_groups)
        if n_groups < 2:
            raise DataError(f"NAPs compare groups: at least 2 groups are needed, got {n_groups}")

        sizes = np.bincount(labels[labels >= 0], minlength=n_groups).astype(np.int64)
        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            listed = ", ".join(_group_name(values[g]) for g in empty[:5])
            raise DataError(f"{empty.size} group(s) have no rows: {listed}{' ...' if empty.size > 5 else ''}")

        # sums[g] = sum of the A rows in g, i.e. S^T A with S the (rows x G) membership
        # matrix, as a scatter-add per chunk (torch: its float16 -> float32 conversion is
        # SIMD, numpy's is not); rows left out go to a spare row G that is dropped.
        sums = torch.zeros((n_groups + 1, c), dtype=torch.float64)
        step = int(self.chunk)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            chunk_labels = labels[lo:hi]
            if (chunk_labels < 0).all():
                continue
            block = _as_tensor(activations[lo:hi])
            index = torch.from_numpy(np.where(chunk_labels >= 0, chunk_labels, n_groups))
            part = torch.zeros((n_groups + 1, c), dtype=block.dtype)
            part.index_add_(0, index, block)
            sums += part
        sums = sums[:n_groups].numpy()

        bad = ~np.isfinite(sums)
        if bad.any():
            groups = np.flatnonzero(bad.any(axis=1))
            listed = ", ".join(_group_name(values[g]) for g in groups[:5])
            raise DataError(
                f"the activations hold NaN or infinite values in {int(bad.any(axis=0).sum())} channel(s) "
                f"for {groups.size} group(s) ({listed}{' ...' if groups.size > 5 else ''}); "
                "the model produced non-finite activations: check its weights and inputs, then rebuild the store"
            )
        means = sums / sizes[:, None]  # mean(A_l(G)) = S^T A with S normalised by group size
        expected = (sizes[:, None] * means).sum(axis=0) / sizes.sum()  # E(mean(A_l))
        self.means_ = means
        self.sizes_ = sizes
        self.expected_ = expected
        self.naps_ = means - expected  # NAP_l(G)
        self.group_values_ = values
        self.columns_ = names
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def union_members(self, variables: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
        """Unions of the groups sharing the values of ``variables``: (names, member group indices).

        In order of first appearance among the groups; names join the values with ", ".
        """
        check_is_fitted(self, "naps_")
        if isinstance(variables, str):
            variables = [variables]
        if not variables:
            raise DataError("choose at least one variable to form unions of groups")
        missing = [v for v in variables if v not in self.columns_]
        if missing:
            raise DataError(f"unknown variable(s) {missing}; the groups are defined by {list(self.columns_)}")
        if len(set(variables)) != len(variables):
            raise DataError(f"a variable is repeated in {list(variables)}")
        index = [list(self.columns_).index(v) for v in variables]
        members: dict[tuple[str, ...], list[int]] = {}
        for g, row in enumerate(self.group_values_):
            members.setdefault(tuple(row[k] for k in index), []).append(g)
        names = [", ".join(key) for key in members]
        return names, [np.asarray(m, dtype=np.int64) for m in members.values()]

    def unions(self, variables: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """NAPs (U, C) of unions of groups sharing the values of ``variables`` (e.g. ["gender"]).

        A union's mean is the size-weighted mean of its groups' means, normalised with the
        intersectional groups' expectation ``expected_`` (Sec. 5.4).
        """
        names, members = self.union_members(variables)
        naps = np.empty((len(members), self.naps_.shape[1]), dtype=np.float64)
        for u, m in enumerate(members):
            w = self.sizes_[m].astype(np.float64)
            naps[u] = (w[:, None] * self.means_[m]).sum(axis=0) / w.sum() - self.expected_
        return names, naps

    def union_sizes(self, variables: Sequence[str]) -> np.ndarray:
        """Rows in each union of ``unions(variables)``."""
        _, members = self.union_members(variables)
        return np.array([int(self.sizes_[m].sum()) for m in members], dtype=np.int64)

    def group_names(self) -> list[str]:
        """Each group's name: its values joined by ", "."""
        check_is_fitted(self, "naps_")
        return [_group_name(row) for row in self.group_values_]


def _as_tensor(block: np.ndarray) -> torch.Tensor:
    """A chunk of rows as a float32 (float64 stays float64) tensor, without a numpy copy."""
    block = np.ascontiguousarray(block)
    if block.dtype not in (np.float16, np.float32, np.float64):
        block = block.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only memmap: torch warns, we never write
        tensor = torch.from_numpy(block)
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _group_table(
    group_values: Sequence[Sequence[str]] | None, columns: Sequence[str] | None, n_groups: int
) -> tuple[list[tuple[str, ...]], list[str]]:
    """(values per group, variable names), checked against each other."""
    if group_values is None:
        values = [(str(g),) for g in range(n_groups)]
        names = list(columns) if columns is not None else ["group"]
        if len(names) != 1:
            raise DataError("columns were given without group_values")
        return values, names
    values = [tuple(str(v) for v in row) for row in group_values]
    width = {len(row) for row in values}
    if len(width) > 1:
        raise DataError("every group needs one value per variable")
    k = width.pop() if width else 0
    names = list(columns) if columns is not None else [f"variable {i + 1}" for i in range(k)]
    if len(names) != k:
        raise DataError(f"{len(names)} column name(s) for groups of {k} variable(s)")
    return values, names


def _group_name(row: Sequence[str]) -> str:
    return ", ".join(row)


# ----------------------------------------------------------------------------- layout


def relaxation_step(positions: np.ndarray) -> np.ndarray:
    """One step of the paper's particle relaxation: the positions moved by their forces.

    For particle i, f(i) = sum over j != i of (attr(i, j) - rep(i, j)) u_ij / |N \\ i|, with
    attr = 1.5 (d + 1)^-3, rep = 15 exp(-d / 2), d = dist(i, j) floored at 0.01 and u_ij the
    unit vector from i towards j (attraction pulls i towards j, repulsion pushes it away).
    Returns positions + f. Plain numpy, O(C^2) memory: the reference that the fast
    kernel of ``TopographicLayout`` is tested against.
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 2:
        raise InputError(f"positions must be (n >= 2, 2), got shape {p.shape}: give an (x, y) pair for at least two particles")
    diff = p[None, :, :] - p[:, None, :]  # diff[i, j] = p_j - p_i
    d = np.sqrt((diff**2).sum(axis=2))
    np.maximum(d, MIN_DISTANCE, out=d)
    magnitude = ATTRACTION * (d + 1.0) ** -3 - REPULSION * np.exp(-d / 2.0)
    np.fill_diagonal(magnitude, 0.0)  # j != i (diff is 0 there anyway)
    force = (magnitude[:, :, None] * diff / d[:, :, None]).sum(axis=1) / (len(p) - 1)
    return p + force


@functools.cache
def _relax_kernel():
    """The numba kernel: ``iterations`` relaxation steps in place, float32, SIMD.

    Compiled on first use and cached on disk (numba is imported lazily; umap needs it
    anyway). exp is computed as (Taylor_8(z/64))^64 so the inner loop vectorises (libm's
    expf does not; relative error < 2e-5, tested against ``relaxation_step``).
    """
    from numba import njit, prange

    @njit(fastmath=True, inline="always", cache=True)
    def fast_exp(z):  # exp(z) for z <= 0
        u = max(z, np.float32(-40.0)) * np.float32(1.0 / 64.0)
        q = np.float32(1.0 / 40320.0)
        q = q * u + np.float32(1.0 / 5040.0)
        q = q * u + np.float32(1.0 / 720.0)
        q = q * u + np.float32(1.0 / 120.0)
        q = q * u + np.float32(1.0 / 24.0)
        q = q * u + np.float32(1.0 / 6.0)
        q = q * u + np.float32(0.5)
        q = q * u + np.float32(1.0)
        q = q * u + np.float32(1.0)
        q = q * q
        q = q * q
        q = q * q
        q = q * q
        q = q * q
        return q * q

    @njit(parallel=True, fastmath=True, nogil=True, cache=True)
    def relax(x, y, iterations):
        n = x.shape[0]
        fx = np.empty_like(x)
        fy = np.empty_like(y)
        scale = np.float32(1.0 / (n - 1))  # mean over the others, |N \ i|
        for _ in range(iterations):
            for i in prange(n):
                xi = x[i]
                yi = y[i]
                ax = np.float32(0.0)
                ay = np.float32(0.0)
                for j in range(n):
                    dx = x[j] - xi
                    dy = y[j] - yi
                    d = max(np.sqrt(dx * dx + dy * dy), np.float32(MIN_DISTANCE))
                    t = np.float32(1.0) / (d + np.float32(1.0))
                    # (attr - rep) / d: attr = 1.5 (d+1)^-3, rep = 15 exp(-d/2); i == j adds 0
                    w = (np.float32(ATTRACTION) * t * t * t - np.float32(REPULSION) * fast_exp(np.float32(-0.5) * d)) / d
                    ax += w * dx
                    ay += w * dy
                fx[i] = ax * scale
                fy[i] = ay * scale
            for i in range(n):
                x[i] += fx[i]
                y[i] += fy[i]

    return relax


def relax(positions: np.ndarray, iterations: int) -> np.ndarray:
    """``iterations`` relaxation steps with the fast kernel (float32); returns new positions."""
    p = np.asarray(positions, dtype=np.float32)
    x = np.ascontiguousarray(p[:, 0])
    y = np.ascontiguousarray(p[:, 1])
    kernel = _relax_kernel()
    import numba

    # One thread (numba's setting is per calling thread): every step ends in a barrier, and
    # with the other core busy (another session, UMAP, a build) two threads ran 2-3x slower
    # than one; the parallel lowering is kept because it vectorises the inner loop.
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        kernel(x, y, int(iterations))
    finally:
        numba.set_num_threads(previous)
    return np.stack([x, y], axis=1)


class TopographicLayout(BaseEstimator):
    """Topographic layout of a layer's channels from their NAPs (Sec. 4.2).

    ``n_neighbors``, ``min_dist``: UMAP's; ``iterations``: relaxation steps (paper: 1000);
    ``seed``: UMAP's random_state (the paper's code does not seed it) and the tiny jitter that
    separates channels UMAP put on the same spot.

    ``fit(naps)``: ``naps`` (G, C); channel c is the point naps[:, c] in G dimensions.
    Fitted attributes: ``initial_`` (C, 2) UMAP positions; ``positions_`` (C, 2) after
    relaxation, min-max scaled to [0, 1] per axis; ``umap_seconds_``, ``relax_seconds_``.
    """

    def __init__(self, n_neighbors: int = 15, min_dist: float = 0.1, iterations: int = 1000, seed: int = 0):
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.iterations = iterations
        self.seed = seed

    def fit(self, naps: np.ndarray) -> TopographicLayout:
        """UMAP of the channels, then ``iterations`` relaxation steps, scaled to [0, 1]."""
        naps = np.asarray(naps, dtype=np.float64)
        if naps.ndim != 2:
            raise DataError(f"NAPs must be a (groups x channels) array, got shape {naps.shape}")
        n_groups, n_channels = naps.shape
        if n_channels < MIN_LAYOUT_CHANNELS:
            raise DataError(
                f"this layer has {n_channels} channel(s); a topographic layout needs more than "
                f"{MIN_LAYOUT_CHANNELS - 1} channels, so pick a wider layer"
            )
        if n_groups < 1:
            raise DataError("a topographic layout needs the NAPs of at least one group")
        if not np.isfinite(naps).all():
            raise DataError("the NAPs hold NaN or infinite values; no layout can be computed")
        if int(self.n_neighbors) < 2 or int(self.iterations) < 0:
            raise ParameterError(
                f"n_neighbors must be at least 2 and iterations not negative, got {self.n_neighbors} and "
                f"{self.iterations}: use e.g. n_neighbors=15, iterations=1000"
            )

        start = time.perf_counter()
        points = naps.T  # C points in G dimensions
        initial = _umap_2d(points, int(self.n_neighbors), float(self.min_dist), int(self.seed))
        self.umap_seconds_ = time.perf_counter() - start

        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        spread = float(np.ptp(initial, axis=0).max()) or 1.0
        jittered = initial + rng.normal(scale=1e-4 * spread, size=initial.shape)
        relaxed = relax(jittered, int(self.iterations)).astype(np.float64)
        low, high = relaxed.min(axis=0), relaxed.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        self.initial_ = initial
        self.positions_ = np.clip((relaxed - low) / span, 0.0, 1.0)
        self.relax_seconds_ = time.perf_counter() - start
        return self


def _umap_2d(points: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    """Seeded 2-D UMAP of ``points`` (n, g); umap is imported here (its import is slow)."""
    import umap

    n = len(points)
    if np.ptp(points, axis=0).max() == 0:  # every channel alike: nothing for UMAP to embed
        return np.random.default_rng(seed).normal(size=(n, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", spectral fallbacks
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(n_neighbors, n - 1),
            min_dist=min_dist,
            random_state=seed,
            init="spectral" if n > n_neighbors + 1 else "random",
        )
        return np.asarray(reducer.fit_transform(points), dtype=np.float64)


# ----------------------------------------------------------------------------- maps


def topomap(positions: np.ndarray, values: np.ndarray, size: int = 100) -> np.ndarray:
    """One map: ``values`` (C,) at ``positions`` (C, 2) interpolated linearly on a size x size grid.

    The grid spans [0, 1]^2 (row r = y of r / (size - 1), column = x); outside the particles'
    convex hull, and wherever interpolation gives NaN, the map is 0 (white).
    """
    positions = np.asarray(positions, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or values.shape != (len(positions),):
        raise InputError(
            f"positions (C, 2) and values (C,) expected, got {positions.shape} and {values.shape}: "
            "give one value per positioned channel"
        )
    grid = np.linspace(0.0, 1.0, int(size))
    gx, gy = np.meshgrid(grid, grid)  # gx[r, c] = grid[c], gy[r, c] = grid[r]
    try:
        image = griddata(positions, values, (gx, gy), method="linear")
    except QhullError:  # fewer than 3 particles, or all on a line: no triangles to fill
        image = griddata(positions, values, (gx, gy), method="nearest")
    return np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)


def map_scale(naps: np.ndarray, clip: bool = False) -> float:
    """The colour limit shared by every group's map (the scale is [-limit, limit]).

    max |NAP| over all groups; with ``clip``, the paper's contrast setting: the 0.5 or the
    99.5 percentile of all NAP values, whichever is larger in absolute value. 1.0 when every
    NAP is 0, so a colour scale never collapses.
    """
    values = np.asarray(naps, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0
    if clip:
        low, high = np.percentile(values, [0.5, 99.5])
        limit = max(abs(low), abs(high))
    else:
        limit = float(np.abs(values).max())
    return float(limit) if limit > 0 else 1.0


def nap_similarity(naps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity (G, G) of the groups' NAPs and an order that sits alike groups together.

    The order is the leaf order of an average-linkage tree on cosine distance (1 - similarity).
    A group whose NAP is all zeros is similar to no other (0) and to itself (1).
    """
    naps = np.asarray(naps, dtype=np.float64)
    if naps.ndim != 2 or len(naps) == 0:
        raise InputError(f"naps must be (G >= 1, C), got shape {naps.shape}: give the NAPs of at least one group")
    norms = np.linalg.norm(naps, axis=1)
    unit = naps / np.where(norms > 0, norms, 1.0)[:, None]
    similarity = np.clip(unit @ unit.T, -1.0, 1.0)
    similarity = (similarity + similarity.T) / 2.0
    np.fill_diagonal(similarity, 1.0)
    if len(naps) < 3:
        return similarity, np.arange(len(naps))
    distance = np.clip(1.0 - similarity, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    order = leaves_list(linkage(squareform(distance, checks=False), method="average"))
    return similarity, np.asarray(order, dtype=np.int64)
