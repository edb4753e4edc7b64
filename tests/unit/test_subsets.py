"""Subsets: create, refuse bad ones, rename, note, delete, export; stored on disk, safely shared."""

import io
import json
import multiprocessing
import threading
import time

import numpy as np
import pandas as pd
import pytest

from core.errors import BiasLensError
from core.services.subsets import SubsetRegistry


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


# --------------------------------------------------------------------------- stored in the store folder


def test_file_registry_survives_a_restart(tmp_path, meta):
    reg = SubsetRegistry.in_folder(tmp_path)
    assert reg.persistent and reg.names() == []
    reg.add("errors", [1], origin="cohort", detail="NOT correct", note="look at these")
    reg.add("sp", [0, 2], origin="spotlight", detail="spotlight 1: top 2", params={"size": 0.02, "seed": np.int64(3)})
    data = json.loads((tmp_path / "subsets.json").read_text())
    assert data["format"] == 1 and [e["name"] for e in data["subsets"]] == ["errors", "sp"]
    assert data["subsets"][1]["params"] == {"size": 0.02, "seed": 3}
    again = SubsetRegistry.in_folder(tmp_path)  # a new process, a reload or a server restart
    assert again.names() == ["errors", "sp"]
    subset = again.get("sp")
    assert subset.rows == (0, 2) and subset.origin == "spotlight" and subset.detail == "spotlight 1: top 2"
    assert subset.params == {"size": 0.02, "seed": 3}
    assert again.get("errors").note == "look at these"
    assert abs(subset.created - time.time()) < 60 and subset.created_text.endswith("Z")
    assert not list(tmp_path.glob(".subsets-*"))  # no temp file left behind


@pytest.mark.parametrize("storage", ["session", "file"])
def test_rename_note_delete(tmp_path, storage):
    reg = SubsetRegistry({}, "ws") if storage == "session" else SubsetRegistry.in_folder(tmp_path)
    reg.add("a", [1], origin="manual")
    reg.add("b", [2], origin="manual")
    reg.add("c", [3], origin="manual")
    reg.rename("b", "  bee ")
    assert reg.names() == ["a", "bee", "c"]  # keeps its place
    assert reg.get("bee").rows == (2,)
    with pytest.raises(BiasLensError, match="exists"):
        reg.rename("a", "c")
    with pytest.raises(BiasLensError, match="No subset"):
        reg.rename("zz", "y")
    reg.set_note("bee", "  checked by hand ")
    assert reg.get("bee").note == "checked by hand"
    with pytest.raises(BiasLensError, match="No subset"):
        reg.set_note("zz", "x")
    with pytest.raises(BiasLensError, match="at most"):
        reg.set_note("a", "x" * 6000)
    reg.remove("a")
    reg.remove("not there")  # a no-op
    assert reg.names() == ["bee", "c"]
    if storage == "file":
        assert SubsetRegistry.in_folder(tmp_path).names() == ["bee", "c"]
        assert SubsetRegistry.in_folder(tmp_path).get("bee").note == "checked by hand"


@pytest.mark.parametrize("bad, message", [
    ("", "name"), ("   ", "name"), ("x" * 121, "at most 120"), ("two\nlines", "line breaks"), ("tab\there", "control"),
])
def test_bad_names(tmp_path, bad, message):
    reg = SubsetRegistry.in_folder(tmp_path)
    with pytest.raises(BiasLensError, match=message):
        reg.add(bad, [1], origin="manual")
    reg.add("ok", [1], origin="manual")
    with pytest.raises(BiasLensError, match=message):
        reg.rename("ok", bad)
    assert reg.names() == ["ok"]


def test_negative_rows_refused():
    with pytest.raises(BiasLensError, match="negative"):
        SubsetRegistry({}, "ws").add("n", [-1, 2], origin="manual")


def _add_many(folder: str, prefix: str, count: int) -> None:
    reg = SubsetRegistry.in_folder(folder)
    for i in range(count):
        reg.add(f"{prefix}{i}", [i, i + 1], origin="manual")


def test_two_threads_lose_nothing(tmp_path):
    threads = [threading.Thread(target=_add_many, args=(str(tmp_path), p, 25)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = SubsetRegistry.in_folder(tmp_path).names()
    assert sorted(names) == sorted([f"{p}{i}" for p in "ab" for i in range(25)])


def test_two_processes_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_add_many, args=(str(tmp_path), p, 20)) for p in "xy"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)  # generous: two spawned interpreters importing torch on a loaded machine
        assert p.exitcode == 0
    names = SubsetRegistry.in_folder(tmp_path).names()
    assert sorted(names) == sorted([f"{p}{i}" for p in "xy" for i in range(20)])


def test_same_name_from_two_registries_is_refused(tmp_path):
    first, second = SubsetRegistry.in_folder(tmp_path), SubsetRegistry.in_folder(tmp_path)
    assert second.names() == []  # read before the other one writes
    first.add("mine", [1], origin="manual")
    with pytest.raises(BiasLensError, match="exists"):
        second.add("mine", [2], origin="manual")
    assert second.get("mine").rows == (1,)


def test_damaged_file_is_reported_and_kept_aside(tmp_path):
    (tmp_path / "subsets.json").write_text("{not json")
    reg = SubsetRegistry.in_folder(tmp_path)
    assert reg.names() == [] and "cannot be read" in reg.problem
    reg.add("fresh", [1], origin="manual")
    assert reg.names() == ["fresh"] and reg.problem == ""
    assert len(list(tmp_path.glob("subsets.damaged-*.json"))) == 1
    # one bad entry among good ones is skipped and reported
    data = json.loads((tmp_path / "subsets.json").read_text())
    data["subsets"].append({"name": "broken", "origin": "magic", "rows": [1], "created": "2026-01-01T00:00:00Z"})
    (tmp_path / "subsets.json").write_text(json.dumps(data))
    again = SubsetRegistry.in_folder(tmp_path)
    assert again.names() == ["fresh"] and "1 damaged subset entry" in again.problem


def test_rows_outside_the_store_are_damaged_entries(tmp_path):
    """A hand-edited subsets.json with a row past the store's images crashed the pages that
    scope to it (IndexError), and a negative row silently meant the last image. Both entries
    are skipped and named; adding such rows is refused."""
    entry = {"origin": "manual", "created": "2026-01-01T00:00:00Z"}
    data = {"format": 1, "subsets": [
        {**entry, "name": "ok", "rows": [3, 1, 1, 2]},
        {**entry, "name": "past the end", "rows": [1, 2, 3, 999999]},
        {**entry, "name": "negative", "rows": [-1, 2, 5]},
        {**entry, "name": "empty", "rows": []},
    ]}
    (tmp_path / "subsets.json").write_text(json.dumps(data))
    reg = SubsetRegistry.in_folder(tmp_path, n=30)
    assert reg.names() == ["ok"] and reg.get("ok").rows == (1, 2, 3)
    assert "3 damaged subset entries were skipped" in reg.problem
    assert "'past the end': row 999999 is beyond the store's 30 images" in reg.problem
    # without the store's size only the negative and the empty entries are refused
    assert SubsetRegistry.in_folder(tmp_path).names() == ["ok", "past the end"]
    with pytest.raises(BiasLensError, match=r"store rows 0\.\.29; this set has row 30"):
        reg.add("too far", [0, 30], origin="manual")
    with pytest.raises(BiasLensError, match="negative"):
        reg.add("negative", [-1], origin="manual")


def test_csv_columns_exact():
    meta = pd.DataFrame({
        "row": range(4), "id": list("abcd"), "label": ["x", "x", "y", "y"], "label_idx": [0, 0, 1, 1],
        "pred": ["x", "y", "y", "y"], "pred_idx": [0, 1, 1, 1], "correct": [True, False, True, True],
        "loss": [0.1, 2.0, 0.3, 0.2], "confidence": [0.9] * 4, "p_true": [0.9] * 4,
        "tint": ["red", "red", "blue", "blue"], "size": [1, 2, 3, 4], "slice_secret": [True, False, False, False],
    })
    reg = SubsetRegistry({}, "ws")
    reg.add("errors", [1], origin="cohort", detail="NOT correct", note="n")
    reg.add("sp", [0, 3], origin="spotlight", detail="spotlight 1", params={"size": 0.02})
    frame = pd.read_csv(io.BytesIO(reg.to_csv(meta)))
    assert list(frame.columns) == [
        "subset", "origin", "query", "params", "note", "row", "id", "label", "pred", "correct", "loss", "tint", "size",
    ]
    assert list(frame["subset"]) == ["errors", "sp", "sp"]
    assert list(frame["query"]) == ["NOT correct", "spotlight 1", "spotlight 1"]
    assert json.loads(frame["params"].iloc[1]) == {"size": 0.02}
    assert list(frame["loss"]) == [2.0, 0.1, 0.2] and list(frame["tint"]) == ["red", "red", "blue"]
    empty = pd.read_csv(io.BytesIO(SubsetRegistry({}, "e").to_csv(meta)))
    assert list(empty.columns) == list(frame.columns) and empty.empty


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    import core.services.subsets

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(core.services.subsets.tempfile, "mkstemp", refuse)
    reg = SubsetRegistry.in_folder(tmp_path)
    with pytest.raises(BiasLensError, match="could not be saved.*Permission denied"):
        reg.add("a", [1], origin="manual")
    assert reg.names() == []
