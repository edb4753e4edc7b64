"""Subsets: named sets of images (store rows) with their origin, shared across pages.

Pages that find groups (cohorts, spotlights, subgroups, classes) save them; pages that
compare groups read them. The registry is plain Python so it lives in any dict-like state
(``st.session_state`` in the app) and exports to CSV.
"""

from __future__ import annotations

import io
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.errors import BiasLensError

ORIGINS = ("cohort", "spotlight", "subgroup", "class", "manual")


@dataclass(frozen=True)
class Subset:
    """A named set of store rows; ``origin`` says which method made it, ``detail`` how."""

    name: str
    rows: tuple[int, ...]
    origin: str
    detail: str = ""
    created: float = field(default_factory=time.time)

    def __len__(self) -> int:
        return len(self.rows)


class SubsetRegistry:
    """Subsets of one workspace, kept in a caller-provided dict (e.g. session state)."""

    def __init__(self, storage: MutableMapping[str, Any], workspace_key: str) -> None:
        self._subsets: dict[str, Subset] = storage.setdefault(f"subsets:{workspace_key}", {})

    def add(self, name: str, rows: Any, origin: str, detail: str = "", overwrite: bool = False) -> Subset:
        """Save a subset; refuses empty names, empty sets, unknown origins and silent overwrites."""
        name = name.strip()
        if not name:
            raise BiasLensError("Give the subset a name.")
        if origin not in ORIGINS:
            raise BiasLensError(f"Unknown subset origin '{origin}'; use one of {', '.join(ORIGINS)}.")
        unique = tuple(int(r) for r in np.unique(np.asarray(rows, dtype=np.int64)))
        if not unique:
            raise BiasLensError("A subset needs at least one image; this one is empty.")
        if name in self._subsets and not overwrite:
            raise BiasLensError(f"A subset named '{name}' exists: pick another name or delete it first.")
        subset = Subset(name=name, rows=unique, origin=origin, detail=detail)
        self._subsets[name] = subset
        return subset

    def remove(self, name: str) -> None:
        self._subsets.pop(name, None)

    def get(self, name: str) -> Subset:
        if name not in self._subsets:
            raise BiasLensError(f"No subset named '{name}'.")
        return self._subsets[name]

    def names(self) -> list[str]:
        return list(self._subsets)

    def __len__(self) -> int:
        return len(self._subsets)

    def summary(self) -> pd.DataFrame:
        """One line per subset: name, size, origin, detail."""
        return pd.DataFrame(
            [
                {"name": s.name, "size": len(s), "origin": s.origin, "detail": s.detail}
                for s in self._subsets.values()
            ],
            columns=["name", "size", "origin", "detail"],
        )

    def to_csv(self, meta: pd.DataFrame, names: list[str] | None = None) -> bytes:
        """CSV with one line per (subset, image): subset, origin, row, id, label, pred, correct."""
        frames = []
        for name in names if names is not None else self.names():
            subset = self.get(name)
            part = meta.iloc[list(subset.rows)][["row", "id", "label", "pred", "correct"]].copy()
            part.insert(0, "origin", subset.origin)
            part.insert(0, "subset", subset.name)
            frames.append(part)
        columns = ["subset", "origin", "row", "id", "label", "pred", "correct"]
        out = pd.concat(frames) if frames else pd.DataFrame(columns=columns)
        buffer = io.StringIO()
        out.to_csv(buffer, index=False)
        return buffer.getvalue().encode()
