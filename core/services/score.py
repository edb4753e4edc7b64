"""One command to check the discovery methods on a workspace with ground truth.

``score_store(store, methods)`` runs each discovery method with its page's defaults on the
store (the demo, or any dataset with ``slice_*`` columns), scores its groups against the
planted slices with Domino's measures beside the confusion-cell baseline
(``core.scoring.scorecard``), and tests every group it proposed (``core.scoring.significance``). The CLI's
``python -m core score WS`` prints the table and a JSON line: the way to check a method on a
new slices file in one command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from core.errors import DataError
from core.methods.records import scored_methods
from core.scoring.scorecard import BUDGETS, baseline_groups, flagged_scorecard
from core.scoring.significance import group_tests
from core.services.runs import groups_on_store, held_out_on_store
from core.store.read import Store

BASELINE = "baseline"
MARGIN = 0.3  # a method "beats" the baseline on a slice by at least this much P@10


def method_names() -> tuple[str, ...]:
    """The score command's methods (their records' score names), in navigation order."""
    return tuple(scored_methods())


def _check_methods(methods: Sequence[str]) -> None:
    known = method_names()
    if not methods:
        raise DataError(f"No method given: name at least one of {', '.join(known)}.")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise DataError(f"Unknown method(s) {', '.join(unknown)}; use {', '.join(known)}.")


def held_out_tables(store: Store, methods: Sequence[str] | None = None, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Each method's split-half confirmation with its page's defaults (spotlights; UDIS's
    under-performing subgroups at VisCUIT's threshold). Needs no ground truth."""
    methods = method_names() if methods is None else methods
    _check_methods(methods)
    meta, records = store.meta(), scored_methods()
    return {m: held_out_on_store(records[m].defaults(store.n), store, meta=meta, seed=seed) for m in methods}


def score_store(store: Store, methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Every method's scorecard (and the baseline's) per planted slice, and its significance
    counts. DataError when the store has no ground truth or a method is unknown."""
    if not store.slice_columns:
        raise DataError("This workspace has no ground truth (slice_* columns): nothing to score against.")
    methods = method_names() if methods is None else methods
    _check_methods(methods)
    meta, records = store.meta(), scored_methods()
    truth = meta[store.slice_columns].to_numpy(dtype=bool)
    slices = [c.removeprefix("slice_") for c in store.slice_columns]
    cards, tests = [], {}
    runs = {m: groups_on_store(records[m], store, meta) for m in methods}
    runs[BASELINE] = baseline_groups(meta)
    for method, (names, rankings, members) in runs.items():
        card = flagged_scorecard(truth, rankings, slices, names, members=members)
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
    for method, card in result["table"].groupby("method", sort=False):
        for row in card.to_dict("records"):
            first = row["first hit"]
            out[f"{method}_{row['slice']}_first_hit"] = None if first != first else int(first)
        for budget in BUDGETS:
            out[f"{method}_first{budget}_identified"] = int(card[f"within {budget}"].sum())
    out["methods_beat_baseline"] = len(result["beats_baseline"])
    out["slices_beaten"] = result["beats_baseline"]
    out["significance"] = result["significance"]
    return out
