"""Is a discovered group's accuracy gap real? Tests, intervals and false-discovery control.

A slice-discovery method looks at many candidate groups and shows the worst ones, so a
low accuracy in a shown group is partly selection. Two guards, both method-agnostic (a
group is a set of rows):

- ``group_tests``: for each group G, the gap acc(G) - acc(rest) with a 95% interval
  (Newcombe's hybrid score interval), a two-sided p-value of "G's accuracy equals the
  rest's" (Fisher's exact test, or a permutation test), and Benjamini-Hochberg q-values
  over all the groups of the call, so that "significant" (q < 0.05) keeps the expected
  share of false alarms among the flagged groups at 5% -- provided every group the method
  looked at is passed, not only the shown ones.
- ``split_half``: discover on a random half of the images and confirm on the other half,
  the check that needs no count of how many groups were looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from core.errors import DataError, InputError, ParameterError

ALPHA = 0.05
METHODS = ("exact", "permutation")

# A discovered group: member rows (a 1-D array of row indices, or a boolean mask over all
# rows), or a membership rule ``f(rows) -> bool mask`` that can be applied to any rows.
Group = np.ndarray | Callable[[np.ndarray], np.ndarray]

_COLUMNS = ["group", "n", "accuracy", "rest n", "rest accuracy", "gap", "low", "high", "p", "q", "significant", "note"]
_PER_HALF = ["n", "accuracy", "rest accuracy", "gap", "low", "high", "p"]
# what a reader of split_half's table needs: the gap where the group was found and where it was not
HELD_OUT_SHOWN = ["group", "discovery n", "discovery gap", "held-out n", "held-out gap", "held-out low", "held-out high",
                  "held-out q", "note"]


def benjamini_hochberg(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (adjusted p-values) of a list of p-values.

    A group with q < 0.05 is flagged at a 5% false-discovery rate: among all flagged
    groups, the expected share of false alarms is at most 5% (for independent or
    positively dependent tests). NaN p-values stay NaN and do not count in the family.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def newcombe_interval(
    k1: np.ndarray, n1: np.ndarray, k2: np.ndarray, n2: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval (1998, method 10) of p1 - p2, vectorised.

    Built from the two Wilson score intervals, so it stays inside [-1, 1] and keeps its
    coverage for small groups and accuracies near 0 or 1, where the Wald interval fails.
    NaN where either proportion has no observations.
    """
    k1, n1, k2, n2 = (np.asarray(a, dtype=np.float64) for a in (k1, n1, k2, n2))
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    (p1, l1, u1), (p2, l2, u2) = _wilson(k1, n1, z), _wilson(k2, n2, z)
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return low, high


def _wilson(k: np.ndarray, n: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proportion and Wilson score interval per entry; NaN where n = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, k / n, np.nan)
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, centre - half, centre + half


def _rows(group: np.ndarray, n: int) -> np.ndarray:
    """A group's unique member rows, from row indices or a boolean mask over all ``n`` rows."""
    group = np.asarray(group)
    if group.ndim != 1:
        raise InputError("A group must be a 1-D array of row indices or a boolean mask: flatten it, or give its rows.")
    if group.dtype == bool:
        if group.size != n:
            raise InputError(f"A boolean mask must have one value per image ({n}), got {group.size}: build it over all the images.")
        return np.flatnonzero(group)
    if group.size and not np.issubdtype(group.dtype, np.integer):
        raise InputError("Row indices must be integers: cast them with .astype(int), or give a boolean mask.")
    group = np.unique(group.astype(np.int64))
    if group.size and (group[0] < 0 or group[-1] >= n):
        raise InputError(f"A group holds rows outside 0..{n - 1}: use rows of these images only.")
    return group


def _compare(
    correct: np.ndarray, members: Sequence[np.ndarray], method: str, n_permutations: int, rng: np.random.Generator
) -> dict[str, np.ndarray | list[str]]:
    """Gap, interval and p-value of each group (unique rows of ``correct``) against the rest."""
    if method not in METHODS:
        raise ParameterError(f"method must be one of {METHODS}, got {method!r}: use one of those.")
    total_n, total_k = correct.size, int(correct.sum())
    n = np.array([len(m) for m in members], dtype=np.int64)
    k = np.array([int(correct[m].sum()) for m in members], dtype=np.int64)
    rest_n, rest_k = total_n - n, total_k - k
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(n > 0, k / n, np.nan)
        rest_acc = np.where(rest_n > 0, rest_k / rest_n, np.nan)
    low, high = newcombe_interval(k, n, rest_k, rest_n)
    p = np.ones(len(members))
    notes = [""] * len(members)
    for g in range(len(members)):
        if n[g] == 0 or rest_n[g] == 0:
            notes[g] = "empty group" if n[g] == 0 else "covers every row"
            continue
        if method == "exact":
            table = [[k[g], n[g] - k[g]], [rest_k[g], rest_n[g] - rest_k[g]]]
            p[g] = float(stats.fisher_exact(table).pvalue)
        else:
            p[g] = _permutation_p(int(k[g]), int(n[g]), total_k, total_n, n_permutations, rng)
    return {"n": n, "accuracy": acc, "rest n": rest_n, "rest accuracy": rest_acc, "gap": acc - rest_acc,
            "low": low, "high": high, "p": p, "note": notes}


def _permutation_p(k: int, n: int, total_k: int, total_n: int, n_permutations: int, rng: np.random.Generator) -> float:
    """Two-sided permutation p-value of |acc(G) - acc(rest)|, with (1 + hits) / (1 + draws).

    Shuffling the membership labels puts n rows drawn without replacement in G; the count
    of correct ones among them is then a hypergeometric draw, so the shuffles are drawn as
    those counts directly (one vectorised numpy call, O(n_permutations) whatever N is).
    """
    draws = rng.hypergeometric(total_k, total_n - total_k, n, size=n_permutations)
    gap = k / n - (total_k - k) / (total_n - n)
    gaps = draws / n - (total_k - draws) / (total_n - n)
    hits = int(np.count_nonzero(np.abs(gaps) >= abs(gap) - 1e-12))
    return (1 + hits) / (1 + n_permutations)


def group_tests(
    correct: np.ndarray,
    members: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    method: str = "exact",
    n_permutations: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per group: is its accuracy different from the rest of the images?

    ``correct`` is one bool per image; each group is its member rows (indices, or a boolean
    mask). Columns: ``n``, ``accuracy``, ``rest n``, ``rest accuracy``, ``gap`` =
    acc(G) - acc(rest), ``low``/``high`` its 95% Newcombe hybrid score interval, ``p`` the
    two-sided p-value of "G's accuracy equals the rest's", ``q`` its Benjamini-Hochberg
    q-value over all the groups of this call, ``significant`` = q < 0.05, and ``note``.

    ``method="exact"``: Fisher's exact test on the 2x2 table (G vs rest x correct vs wrong),
    the exact test conditional on the margins (it is conservative: p is never too small).
    ``method="permutation"``: ``n_permutations`` random reshuffles of group membership
    (seeded), two-sided on |gap|. A group that holds every row or none has nothing to
    compare with: p = 1 and a note. Pass every candidate the method looked at, not only
    the ones it shows, or the q-values are too optimistic.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 1:
        raise InputError("correct must be one boolean per image: give a 1-D array.")
    names = list(names) if names is not None else [f"group {g + 1}" for g in range(len(members))]
    if len(names) != len(members):
        raise InputError(f"Give one name per group: {len(names)} name(s) for {len(members)} group(s).")
    if not len(members):
        return pd.DataFrame(columns=_COLUMNS)
    rows = [_rows(m, correct.size) for m in members]
    out = _compare(correct, rows, method, n_permutations, np.random.default_rng(seed))
    q = benjamini_hochberg(out["p"])
    frame = pd.DataFrame({"group": names, **{c: out[c] for c in _COLUMNS[1:8]}, "p": out["p"], "q": q,
                          "significant": q < ALPHA, "note": out["note"]})
    return frame[_COLUMNS]


EVIDENCE_COLUMNS = ["group", "position", "n", "accuracy", "rest accuracy", "gap", "q", "significant", "excess errors",
                    "same as"]
DUPLICATE_JACCARD = 0.5  # two groups sharing this much of their members (Jaccard) are one failure, listed once


def excess_errors(tests: pd.DataFrame) -> np.ndarray:
    """n_g x (acc(rest) - acc(g)) per row of ``group_tests``: the errors a group holds beyond what
    the rest's error rate predicts for its size; the impact measure a list is ranked by (a small
    group at 0% and a large one at 60% are weighed by the errors they explain). 0 when undefined."""
    excess = tests["n"].to_numpy(dtype=np.float64) * (tests["rest accuracy"].to_numpy(dtype=np.float64)
                                                      - tests["accuracy"].to_numpy(dtype=np.float64))
    return np.nan_to_num(excess, nan=0.0)


def evidence_order(
    correct: np.ndarray, members: Sequence[np.ndarray], names: Sequence[str],
    family: Sequence[np.ndarray] = (),
) -> pd.DataFrame:
    """The order a method's list shows its flagged groups in, by evidence (issue 24).

    Each group is tested against the rest (``group_tests``: Fisher's exact test, with
    Benjamini-Hochberg q-values over the groups *and* ``family``, the run's other candidates,
    so the q-values count everything the method looked at). Then, in this order:
    1. groups that fail significantly (q < 0.05 and accuracy below the rest's), by excess
       errors (``excess_errors``), largest first;
    2. the other groups, by excess errors;
    3. near-duplicates: a group whose members overlap a group listed before it by Jaccard
       >= ``DUPLICATE_JACCARD`` is listed after every distinct group, marked ``same as`` that
       group (one failure found twice is not two findings).
    Ties keep the method's own order. Returns one row per group in list order with its
    ``position`` in ``members`` and the columns of ``EVIDENCE_COLUMNS``."""
    correct = np.asarray(correct, dtype=bool)
    names = list(names)
    if len(names) != len(members):
        raise InputError(f"Give one name per group: {len(names)} name(s) for {len(members)} group(s).")
    if not len(members):
        return pd.DataFrame(columns=EVIDENCE_COLUMNS)
    rows = [_rows(m, correct.size) for m in members]
    tests = group_tests(correct, [*rows, *family], [*names, *[f"candidate {i}" for i in range(len(family))]])
    tests = tests.iloc[: len(rows)].reset_index(drop=True)
    excess = excess_errors(tests)
    failing = (tests["significant"] & (tests["gap"] < 0)).to_numpy(dtype=bool)
    ranked = sorted(range(len(rows)), key=lambda g: (not failing[g], -excess[g], g))
    sets = [set(r.tolist()) for r in rows]
    distinct: list[int] = []
    duplicates: list[tuple[int, int]] = []
    for g in ranked:
        twin = next((d for d in distinct if _jaccard(sets[g], sets[d]) >= DUPLICATE_JACCARD), None)
        if twin is None:
            distinct.append(g)
        else:
            duplicates.append((g, twin))
    order = distinct + [g for g, _ in duplicates]
    same_as = {g: names[d] for g, d in duplicates}
    frame = tests.loc[order, ["group", "n", "accuracy", "rest accuracy", "gap", "q", "significant"]].copy()
    frame.insert(1, "position", order)
    frame["excess errors"] = excess[order]
    frame["same as"] = [same_as.get(g, "") for g in order]
    return frame.reset_index(drop=True)[EVIDENCE_COLUMNS]


def _jaccard(a: set[int], b: set[int]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def split_half(
    correct: np.ndarray,
    discover: Callable[[np.ndarray], Sequence[Group] | Mapping[str, Group]],
    seed: int = 0,
    method: str = "exact",
    n_permutations: int = 10_000,
) -> pd.DataFrame:
    """Discover groups on a random half of the images, then test them on the other half.

    ``discover(rows)`` gets the sorted rows of the discovery half (the only rows it may
    look at) and returns its groups, as a list (or a name -> group mapping). A group is
    either a membership rule ``f(rows) -> bool mask over rows`` (e.g. ``lambda r: x[r] < t``
    or a fitted clusterer's ``predict(features[r]) == c``), or an array of member rows in
    the full index space. To confirm a group its definition must reach the held-out rows:
    a rule is applied to them; an array counts its rows that fall in each half (an array of
    discovery rows only has no held-out members: the row says so in ``note``).

    Columns: ``group``, then ``discovery n``, ``discovery gap``, ... ``discovery p`` (within
    the discovery half: members vs the half's other rows) and the same for ``held-out``,
    plus ``held-out q`` (Benjamini-Hochberg over the groups) and ``note``. How to read it:
    the discovery figures are optimistic, since the groups were picked on those rows; a
    real slice keeps its gap on the held-out half (interval away from 0, small ``held-out
    q``), a group selected by chance shrinks to a gap near 0 whose interval covers 0.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 1 or correct.size < 2:
        raise InputError("correct must be one boolean per image, at least two images: give a 1-D array of two or more.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(correct.size)
    halves = (np.sort(order[: correct.size // 2]), np.sort(order[correct.size // 2 :]))
    found = discover(halves[0].copy())
    names = list(found) if isinstance(found, Mapping) else [f"group {g + 1}" for g in range(len(found))]
    groups = list(found.values()) if isinstance(found, Mapping) else list(found)
    frame = pd.DataFrame({"group": names})
    notes = [""] * len(groups)
    for label, half in zip(("discovery", "held-out"), halves, strict=True):
        members = [_members_in(group, half, correct.size) for group in groups]  # positions within the half
        out = _compare(correct[half], members, method, n_permutations, rng)
        for column in _PER_HALF:
            frame[f"{label} {column}"] = out[column] if len(groups) else []
        if label == "held-out":
            frame["held-out q"] = benjamini_hochberg(out["p"]) if len(groups) else []
            notes = [f"{label}: {note}" if note else "" for note in out["note"]]
    frame["note"] = notes
    return frame


def _members_in(group: Group, half: np.ndarray, n: int) -> np.ndarray:
    """Positions within ``half`` (sorted rows) of a group's members among those rows."""
    if callable(group):
        mask = np.asarray(group(half.copy()), dtype=bool)
        if mask.shape != half.shape:
            raise InputError("A membership rule must return one bool per row it is given: return a mask over its rows argument.")
        return np.flatnonzero(mask)
    return np.flatnonzero(np.isin(half, _rows(group, n), assume_unique=True))


def check_halves(n: int, minimum: int, search: str) -> None:
    """DataError unless each half of ``n`` images holds the ``minimum`` the search needs."""
    if n // 2 < minimum:
        raise DataError(
            f"The held-out check finds the groups on one half of the images and measures them on the "
            f"other; {search} needs at least {minimum} images per half, so at least {2 * minimum} "
            f"images, and this set has {n}."
        )
