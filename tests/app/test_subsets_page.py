"""Saved subsets in the app: kept on disk across sessions (per session when hosted), opened,
renamed, noted, exported, reported."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.testing.v1 import AppTest

import core.services.subsets
from core.services.subsets import SubsetRegistry
from tests.app.conftest import REPO
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_hosted import _app, _scripted_workspace


def fresh_session(name: str) -> AppTest:
    """A new browser session after a server restart: no caches, nothing in memory."""
    st.cache_data.clear()
    st.cache_resource.clear()
    core.services.subsets._READ_CACHE.clear()
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
    at.session_state["app.workspace"] = name
    at.run()
    no_exception(at)
    at.switch_page("pages/cohorts.py").run()
    no_exception(at)
    return at


def save_cohort(at: AppTest, where: str) -> None:
    at.switch_page("pages/cohorts.py").run()
    at.text_input[0].input(where).run()
    no_exception(at)
    [b for b in at.button if b.label == "Save as subset"][0].click().run()
    no_exception(at)


def listed(at: AppTest) -> list[str]:
    frames = [d.value for d in at.dataframe if "created" in d.value.columns]
    return list(frames[-1]["name"]) if frames else []


def test_a_saved_subset_is_listed_in_a_new_session(app, tmp_path):
    at = build_tiny(app)
    save_cohort(at, "NOT correct")
    assert listed(at) == ["NOT correct"]
    files = list((tmp_path / "cache").rglob("subsets.json"))
    assert len(files) == 1  # in the store's folder
    again = fresh_session("tiny")
    assert listed(again) == ["NOT correct"]
    assert any("kept across reloads and restarts" in c.value for c in again.caption)
    entry = json.loads(files[0].read_text())["subsets"][0]
    assert entry["origin"] == "cohort" and entry["detail"] == "NOT correct" and entry["created"].endswith("Z")
    # another workspace has its own store, so its own subsets
    assert listed(fresh_session("folder")) == []


def test_hosted_subsets_stay_in_the_session(tmp_path, tiny_files, monkeypatch):
    from core.__main__ import main

    workspaces = _scripted_workspace(tmp_path, tiny_files)
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    assert main(["--file", str(workspaces), "build", "scripted"]) == 0
    at = _app(monkeypatch, tmp_path, workspaces, "1")
    at.session_state["app.workspace"] = "scripted"
    at.run()
    save_cohort(at, "correct = false")
    assert listed(at) == ["correct = false"]
    assert any("this server's memory for you alone" in c.value for c in at.caption)
    assert not list((tmp_path / "cache").rglob("subsets.json"))
    assert listed(fresh_session("scripted")) == []  # another visitor, or a reload


def test_open_rename_note_export(app, monkeypatch):
    exported: list[bytes] = []
    real = SubsetRegistry.to_csv

    def spy(self, meta, names=None, attributes=None):
        exported.append(real(self, meta, names, attributes))
        return exported[-1]

    monkeypatch.setattr(SubsetRegistry, "to_csv", spy)
    at = build_tiny(app)
    at.switch_page("pages/cohorts.py").run()
    [b for b in at.button if b.label == "Add one subset per class"][0].click().run()
    no_exception(at)
    opener = at.selectbox(key=next(s.key for s in at.selectbox if s.label == "Open subset"))
    opener.set_value("class: 3").run()
    no_exception(at)
    summary = next(d.value for d in reversed(at.dataframe) if "created" in d.value.columns)
    size = int(summary.loc[summary["name"] == "class: 3", "size"].iloc[0])
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Images"].replace(",", "")) == size
    assert metrics["Accuracy"].endswith("%")
    assert any("95% bootstrap interval of the subset's accuracy" in c.value for c in at.caption)
    assert len(at.image) > 0  # the gallery
    mix = next(d.value for d in at.dataframe if "share" in d.value.columns and "class" in d.value.columns)
    assert list(mix["class"]) == ["3"] and mix["share"].iloc[0] == 100.0  # shown as 100.0%
    lift = next(d.value for d in at.dataframe if "lift" in d.value.columns)
    assert set(lift["attribute"]) <= {"tint"} and (lift["lift"] > 0).all()
    # export this subset: its rows with loss and attributes, and its query
    frame = pd.read_csv(io.BytesIO(exported[-1]))
    assert set(frame["subset"]) == {"class: 3"} and len(frame) == size
    assert {"loss", "tint", "query"} <= set(frame.columns) and set(frame["query"]) == {"label = '3'"}
    assert {b.label for b in at.download_button} >= {
        "Export this subset (CSV)", "Export all subsets (CSV)", "Findings report (HTML)", "Findings report (Markdown)"}
    # rename: the panel stays open on the new name
    [t for t in at.text_input if t.label == "New name"][0].input("threes")
    [b for b in at.button if b.label == "Rename"][0].click().run()
    no_exception(at)
    assert any("Renamed 'class: 3' to 'threes'" in s.value for s in at.success)
    assert opener.key in at.session_state and at.session_state[opener.key] == "threes"
    assert "threes" in listed(at) and "class: 3" not in listed(at)
    # a taken name is refused
    [t for t in at.text_input if t.label == "New name"][0].input("class: 4")
    [b for b in at.button if b.label == "Rename"][0].click().run()
    assert any("exists" in e.value for e in at.error)
    # note
    at.text_area[0].input("mostly red tints?")
    [b for b in at.button if b.label == "Save note"][0].click().run()
    no_exception(at)
    assert any(i.value == "mostly red tints?" for i in at.info)
    again = fresh_session("tiny")
    assert "threes" in listed(again)
    notes = next(d.value for d in again.dataframe if "created" in d.value.columns)
    assert notes.loc[notes["name"] == "threes", "note"].iloc[0] == "mostly red tints?"
    # delete
    again.selectbox(key=opener.key).set_value("threes").run()
    [b for b in again.button if b.label == "Delete subset"][0].click().run()
    no_exception(again)
    assert "threes" not in listed(again) and len(listed(again)) == 9


def test_spotlight_scoped_to_a_subset(app):
    from tests.app.test_spotlight_page import open_spotlight, run_spotlights

    at = build_tiny(app)
    at.switch_page("pages/cohorts.py").run()
    [b for b in at.button if b.label == "Add one subset per class"][0].click().run()
    summary = next(d.value for d in reversed(at.dataframe) if "created" in d.value.columns)
    threes = int(summary.loc[summary["name"] == "class: 3", "size"].iloc[0])
    open_spotlight(at)
    scope = next(s for s in at.selectbox if s.label == "Scope")
    assert scope.value == "All images" and "class: 3" in scope.options
    scope.set_value("class: 3").run()
    run_spotlights(at, 1, size=20.0)
    assert not at.error
    assert any(f"scope: subset 'class: 3' ({threes:,} images)" in c.value for c in at.caption)
    [b for b in at.button if b.label == "Save as subset"][0].click().run()
    no_exception(at)
    # the saved spotlight holds store rows of the scope only
    at.switch_page("pages/cohorts.py").run()
    opener = next(s for s in at.selectbox if s.label == "Open subset")
    saved = [n for n in opener.options if n.startswith("spotlight 1")]
    assert len(saved) == 1
    opener.set_value(saved[0]).run()
    mix = next(d.value for d in at.dataframe if "share" in d.value.columns and "class" in d.value.columns)
    assert list(mix["class"]) == ["3"]
    # the scope is remembered when coming back; a deleted subset falls back to all images
    open_spotlight(at)
    assert next(s for s in at.selectbox if s.label == "Scope").value == "class: 3"
    at.switch_page("pages/cohorts.py").run()
    opener = next(s for s in at.selectbox if s.label == "Open subset")
    opener.set_value("class: 3").run()
    [b for b in at.button if b.label == "Delete subset"][0].click().run()
    open_spotlight(at)
    assert next(s for s in at.selectbox if s.label == "Scope").value == "All images"


def test_subgroups_scoped_to_a_subset(app, tmp_path, monkeypatch):
    import core.methods

    exported: list[bytes] = []
    real = core.methods.subgroups_csv

    def spy(result, ids, threshold):
        exported.append(real(result, ids, threshold))
        return exported[-1]

    monkeypatch.setattr(core.methods, "subgroups_csv", spy)
    at = build_tiny(app)
    save_cohort(at, "label_idx < 5")
    folder = next((tmp_path / "cache").rglob("subsets.json")).parent
    scope = SubsetRegistry.in_folder(folder).get("label_idx < 5").rows
    ids = set(pd.read_parquet(folder / "meta.parquet")["id"].iloc[list(scope)].astype(str))
    at.switch_page("pages/subgroups.py").run()
    no_exception(at)
    full = pd.read_csv(io.BytesIO(exported[-1]))
    assert full["size"].sum() == 200
    next(s for s in at.selectbox if s.label == "Scope").set_value("label_idx < 5").run()
    no_exception(at)
    scoped = pd.read_csv(io.BytesIO(exported[-1]))
    assert scoped["size"].sum() == len(scope) < 200
    members = {i for cell in scoped["image_ids"] for i in cell.split(";")}
    assert members == ids  # every subgroup holds images of the scope only, as store ids


def _store_folder(tmp_path) -> Path:
    return next((tmp_path / "cache").rglob("meta.parquet")).parent


def _options(at: AppTest, label: str) -> list[str]:
    return list(next(s for s in at.selectbox if s.label == label).options)


def test_reserved_names_never_mean_all_images(app, tmp_path):
    """A subset named "All images" or "(none)" was taken for every image (or no subset) by the
    Within, Scope and Compare selects. Such a name is refused, and a file entry that has one is
    skipped as damaged (and kept in the file)."""
    at = build_tiny(app)
    entry = {"origin": "manual", "created": "2026-01-01T00:00:00Z"}
    (_store_folder(tmp_path) / "subsets.json").write_text(json.dumps({"format": 1, "subsets": [
        {**entry, "name": "All images", "rows": [0, 1]}, {**entry, "name": "(NONE)", "rows": [2]},
        {**entry, "name": "ok", "rows": [3, 4]},
    ]}))
    at.switch_page("pages/cohorts.py").run()
    no_exception(at)
    assert _options(at, "Within") == ["All images", "ok"]
    assert any("2 damaged subset entries" in w.value and "reserved" in w.value for w in at.warning)
    at.text_input[0].input("correct = false").run()
    name_box = next(t for t in at.text_input if t.label == "Subset name")
    name_box.input(" all  Images ")
    [b for b in at.button if b.label == "Save as subset"][0].click().run()
    no_exception(at)
    assert any("reserved" in e.value for e in at.error)
    assert listed(at) == ["ok"]
    at.switch_page("pages/spotlight.py").run()
    no_exception(at)
    assert _options(at, "Scope") == ["All images", "ok"]
    assert _options(at, "Compare a subset with the rest") == ["(none)", "ok"]
    names = [e["name"] for e in json.loads((_store_folder(tmp_path) / "subsets.json").read_text())["subsets"]]
    assert sorted(names) == ["(NONE)", "All images", "ok"]  # kept in the file, untouched


def test_one_subset_per_class_saves_all_or_none(app, tmp_path, tiny_files):
    """A class name over the subset name limit stopped "Add one subset per class" half way,
    with the first classes saved. Now every class is saved, the long name shortened the same
    way each time."""
    from tests.app.conftest import write_workspaces

    long_label = "3 " + "very long class name " * 8
    lines = (tiny_files / "manifest.csv").read_text().splitlines()
    rows = [lines[0]] + [
        ",".join([str(tiny_files / path), long_label if label == "3" else label, tint])
        for path, label, tint in (line.split(",") for line in lines[1:])
    ]
    (tmp_path / "long.csv").write_text("\n".join(rows) + "\n")
    write_workspaces(tmp_path, tiny_files, extra=f"""
[workspace.long]
title = "Long class names"
model = {{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}
dataset = {{ kind = "csv", csv = "{tmp_path / 'long.csv'}" }}
""")
    at = build_tiny(app, "long")
    at.switch_page("pages/cohorts.py").run()
    [b for b in at.button if b.label == "Add one subset per class"][0].click().run()
    no_exception(at)
    assert not at.error
    names = listed(at)
    assert len(names) == 10 and all(len(n) <= core.services.subsets.MAX_NAME for n in names)
    (long_name,) = [n for n in names if n.startswith("class: 3 very long")]
    assert long_name == core.services.subsets.fitted_name(long_label, "class: ") and len(long_name) == core.services.subsets.MAX_NAME
    meta = pd.read_parquet(_store_folder(tmp_path) / "meta.parquet")
    saved = SubsetRegistry.in_folder(_store_folder(tmp_path)).get(long_name)
    assert list(saved.rows) == list(meta.loc[meta["label"] == long_label.strip(), "row"])
    assert saved.detail == f"label = '{long_label.strip()}'"


def test_a_rejected_subgroups_run_keeps_the_last_good_one(app):
    """UDIS on a subset too small to cluster is refused with a message; the subgroups of the last
    run that succeeded stay on screen (method_page.kept_run), as on Spotlight."""
    at = build_tiny(app)
    save_cohort(at, "label_idx = 3 AND tint = 'red'")  # a handful of images: fewer than UDIS needs
    at.switch_page("pages/subgroups.py").run()
    no_exception(at)
    assert not at.error
    first = [c.value for c in at.caption if "subgroups (" in c.value]
    next(s for s in at.selectbox if s.label == "Scope").set_value("label_idx = 3 AND tint = 'red'").run()
    no_exception(at)
    assert at.error and "The subgroups cannot be computed" in at.error[0].value
    assert any("last run that succeeded" in c.value for c in at.caption)
    assert [c.value for c in at.caption if "subgroups (" in c.value] == first  # the whole-dataset run, still shown
