"""AppTest of the Overview's intersection heatmap and its link into Cohorts."""

from __future__ import annotations

import json

from tests.app.test_app import build_tiny, no_exception
from tests.app.test_spotlight_page import open_spotlight, run_spotlights
from tests.app.test_subgroups_page import walk


def test_intersection_heatmap_opens_a_cell_as_a_cohort(app):
    at = build_tiny(app)
    assert "Intersections" in [t.label for t in at.tabs]
    specs = [json.loads(n.proto.spec) for n in walk(at.main) if n.type == "vega_lite_chart"]
    heatmaps = [s for s in specs if any(p.get("name") == "cell" for p in s.get("params", []))]
    assert heatmaps, "the intersection heatmap is drawn with its cell selection"
    assert [s.value for s in at.selectbox if s.label in ("Rows", "Columns")] == ["label", "tint"]
    assert not [b for b in at.button if b.label == "Open as cohort"]  # nothing clicked yet

    workspace = next(s for s in at.selectbox if s.label == "Rows").key.split(":", 1)[1]  # the workspace's key
    at.session_state[f"overview.cross_cell:{workspace}:label:tint"] = {"selection": {"cell": [{"row_text": "3", "column_text": "red"}]}}
    at.run()
    no_exception(at)
    n = int({m.label: m.value for m in at.metric}["Images"].replace(",", ""))
    assert 0 < n < 200  # the cell, not the whole dataset
    [b for b in at.button if b.label == "Open as cohort"][0].click().run()
    no_exception(at)
    assert at.title[0].value == "Cohorts & subsets"
    box = next(t for t in at.text_input if t.label == "WHERE")
    assert box.value == "\"label\" = '3' AND \"tint\" = 'red'"
    assert int({m.label: m.value for m in at.metric}["Images"].replace(",", "")) == n


def test_a_spotlight_lift_row_opens_as_a_cohort(app):
    at = open_spotlight(build_tiny(app))
    run_spotlights(at, 1, steps=50, size=10.0)
    lift = next(d for d in at.dataframe if "lift" in d.value.columns)
    table = lift.value
    assert not [b for b in at.button if b.label == "Open as cohort"]
    at.session_state[lift.key] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    no_exception(at)
    attribute, value = table["attribute"].iloc[0], table["value"].iloc[0]
    expected = f"\"{attribute}\" = '{value}'"
    assert any(c.value == expected for c in at.code)
    [b for b in at.button if b.label == "Open as cohort"][0].click().run()
    no_exception(at)
    assert at.title[0].value == "Cohorts & subsets"
    assert next(t for t in at.text_input if t.label == "WHERE").value == expected
    images = int({m.label: m.value for m in at.metric}["Images"].replace(",", ""))
    assert images == int(round(table["overall"].iloc[0] / 100 * 200))  # the value's share (in %) of all 200 images
