"""Subsets: create, refuse bad ones, delete, export."""

import io

import pandas as pd
import pytest

from core.errors import BiasLensError
from core.subsets import SubsetRegistry


@pytest.fixture
def meta():
    return pd.DataFrame(
        {"row": range(4), "id": list("abcd"), "label": ["x", "x", "y", "y"], "pred": ["x", "y", "y", "y"],
         "correct": [True, False, True, True]}
    )


def test_add_list_export_remove(meta):
    state: dict = {}
    reg = SubsetRegistry(state, "ws1")
    reg.add("errors", [1, 1], origin="cohort", detail="NOT correct")
    reg.add("class y", [2, 3], origin="class")
    assert reg.names() == ["errors", "class y"]
    assert len(reg.get("errors")) == 1  # duplicates collapse
    assert list(reg.summary()["size"]) == [1, 2]
    exported = pd.read_csv(io.BytesIO(reg.to_csv(meta)))
    assert list(exported["subset"]) == ["errors", "class y", "class y"]
    assert list(exported["id"]) == ["b", "c", "d"]
    # state persists through a new registry object on the same storage (as across reruns)
    assert SubsetRegistry(state, "ws1").names() == ["errors", "class y"]
    assert SubsetRegistry(state, "other").names() == []
    reg.remove("errors")
    assert reg.names() == ["class y"]


def test_refusals():
    reg = SubsetRegistry({}, "ws")
    with pytest.raises(BiasLensError, match="name"):
        reg.add("  ", [1], origin="manual")
    with pytest.raises(BiasLensError, match="empty"):
        reg.add("e", [], origin="manual")
    with pytest.raises(BiasLensError, match="origin"):
        reg.add("o", [1], origin="magic")
    reg.add("a", [1], origin="manual")
    with pytest.raises(BiasLensError, match="exists"):
        reg.add("a", [2], origin="manual")
    reg.add("a", [2], origin="manual", overwrite=True)
    assert reg.get("a").rows == (2,)
