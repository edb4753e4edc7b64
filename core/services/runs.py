"""Running a method on a store, without Streamlit: the one place pages, the CLI, the benches and
the scorecards fit a method.

``fit_on_store`` fits an estimator on a store's representation against the per-image target
its method reads (the loss for Spotlight, correctness for UDIS), optionally on a subset's rows
only, and maps the fitted result back to store rows. ``held_out_on_store`` runs the method's
split-half check the same way. What is particular to a method (its target, how
a scoped run maps back, its check) comes from its record (``core.methods.records``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone

from core.methods.records import Groups, MethodRecord, record_for
from core.store.read import Store


def store_inputs(store: Store, representation: str, target: str, scope: np.ndarray | None = None,
                 meta: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): the representation's rows and the per-image ``target`` column of the store's
    metadata ("loss", "correct"), limited to ``scope`` (store rows) when given."""
    meta = store.meta() if meta is None else meta
    x, y = store.representation(representation), meta[target].to_numpy()
    if scope is None:
        return x, y
    return np.asarray(x[scope]), y[scope]


def fit_on_store(estimator: BaseEstimator, store: Store, representation: str = "embedding", scope: np.ndarray | None = None,
                 meta: pd.DataFrame | None = None, **fit_params: Any) -> BaseEstimator:
    """A fitted clone of ``estimator`` (a method with a record: Spotlight, UDIS) on the store's
    ``representation`` and its method's target, on ``scope``'s rows only when given, its result
    mapped back to store rows. ``fit_params`` go to ``fit`` (e.g. ``progress``)."""
    record = record_for(estimator)
    x, y = store_inputs(store, representation, record.target, scope, meta)
    fitted = clone(estimator).fit(x, y, **fit_params)
    return fitted if scope is None else record.on_rows(fitted, scope, store.n)


def held_out_on_store(estimator: BaseEstimator, store: Store, representation: str = "embedding",
                      scope: np.ndarray | None = None, meta: pd.DataFrame | None = None, seed: int = 0,
                      **options: Any) -> pd.DataFrame:
    """The method's split-half confirmation of ``estimator``'s groups on the store (on ``scope``'s
    rows only when given); ``options`` go to the check (UDIS: ``threshold``)."""
    record = record_for(estimator)
    if record.held_out is None:
        raise TypeError(f"{record.title} has no held-out check.")  # programming error: only records with a check call this
    meta = store.meta() if meta is None else meta
    x, losses = store_inputs(store, representation, "loss", scope, meta)
    correct = meta["correct"].to_numpy(dtype=bool)
    return record.held_out(estimator, x, losses, correct if scope is None else correct[scope], seed, **options)


def groups_on_store(record: MethodRecord, store: Store, meta: pd.DataFrame | None = None) -> Groups:
    """The groups a method flags with its page's defaults on the store's embedding, in the order
    its page lists them (for the score command and the scorecards)."""
    meta = store.meta() if meta is None else meta
    return record.groups(fit_on_store(record.defaults(store.n), store, meta=meta), meta)
