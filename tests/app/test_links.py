"""AppTest of issue 10's links: the image-detail dialog from any gallery, a subgroup opened as a
cohort (filtered further by WHERE), and the Spotlight map's box and click selections."""

from __future__ import annotations

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from core.services.workspace import load_workspaces
from core.ui.spotlight_view import MAP_BRUSH, MAP_PICK, map_selection
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_spotlight_page import open_spotlight, run_spotlights
from tests.app.test_subgroups_page import CHOICE, buttons, open_subgroups
from tests.app.test_subsets_page import save_cohort

COHORTS = "pages/cohorts.py"


def tiny_key() -> str:
    return load_workspaces().workspaces["tiny"].key()


def detail_headers(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if " · label **" in m.value and "(row " in m.value]


def test_the_overview_gallery_opens_the_detail_dialog(app):
    at = build_tiny(app)
    pickers = [s for s in at.selectbox if (s.key or "").startswith("detail.pick:")]
    assert len(pickers) == 1 and pickers[0].value is None
    first = pickers[0].options[0]  # "id · label [→ prediction ✗]"
    pickers[0].select_index(0).run()
    no_exception(at)
    headers = detail_headers(at)
    assert len(headers) == 1 and headers[0].startswith("**images/")
    assert any(c == "Image (as the model sees it)" for im in at.image for c in im.captions)
    scores = next(t.value for t in at.dataframe if list(t.value.columns[:2]) == ["class", "score"])
    assert len(scores) == 5 and np.all(np.diff(scores["score"].to_numpy()) <= 0)  # top scores, highest first
    attributes = next(t.value for t in at.dataframe if list(t.value.columns) == ["attribute", "value"])
    assert "tint" in attributes["attribute"].tolist()
    # the picker is a trigger: it is empty again, and the dialog stays open until dismissed
    assert next(s for s in at.selectbox if (s.key or "").startswith("detail.pick:")).value is None
    assert headers[0].startswith(f"**{first.split(' · ')[0]}**")
    at.run()
    assert len(detail_headers(at)) == 1
    del at.session_state["detail.open"]  # what dismissing the dialog does
    at.run()
    no_exception(at)
    assert not detail_headers(at)


def test_a_subgroup_opens_as_a_cohort_and_filters_further(app):
    at = open_subgroups(build_tiny(app))
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    no_exception(at)
    selected = at.session_state[f"subgroups.selected:{tiny_key()}"]
    opened = [b for b in buttons(at, "Open as cohort") if (b.key or "").startswith("subgroups.open_cohort")]
    assert len(opened) == 1
    opened[0].click().run()
    no_exception(at)
    assert at.title[0].value == "Cohorts & subsets"
    within = at.selectbox(key=f"cohorts.within:{tiny_key()}")
    assert within.value == f"subgroup {selected}"
    name, rows = at.session_state[f"cohorts.linked:{tiny_key()}"]
    assert name == f"subgroup {selected}" and rows
    images = next(m for m in at.metric if m.label == "Images")
    assert images.value == f"{len(rows):,}"
    at.switch_page(COHORTS).run()  # AppTest reruns the page it last opened, so follow the switch
    assert at.selectbox(key=f"cohorts.within:{tiny_key()}").value == f"subgroup {selected}"
    # a WHERE filters within the subgroup only
    at.text_input(key=f"cohorts.where:{tiny_key()}").set_value("correct = false").run()
    no_exception(at)
    images = next(m for m in at.metric if m.label == "Images")
    assert 0 < int(images.value.replace(",", "")) <= len(rows)
    # back to all images: the WHERE alone
    at.selectbox(key=f"cohorts.within:{tiny_key()}").set_value("All images").run()
    no_exception(at)
    assert int(next(m for m in at.metric if m.label == "Images").value.replace(",", "")) >= int(images.value.replace(",", ""))


def test_map_selection_reads_the_box_and_the_click() -> None:
    frame = pd.DataFrame(
        {"x": [0.0, 1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0, 3.0], "row": [10, 11, 12, 13], "weight": [0.1, 0.9, 0.5, 0.2]}
    )
    boxed, clicked = map_selection(frame, {"selection": {MAP_BRUSH: {"x": [2.5, 0.5], "y": [0.5, 2.5]}, MAP_PICK: []}})
    assert boxed.tolist() == [11, 12] and clicked is None  # highest weight first; the box's ends in any order
    boxed, clicked = map_selection(frame, {"selection": {MAP_BRUSH: {}, MAP_PICK: [{"row": 13}]}})
    assert boxed.tolist() == [] and clicked == 13
    assert map_selection(frame, None)[0].tolist() == []


def test_a_subset_is_compared_with_the_rest_in_the_subgroups(app):
    at = build_tiny(app)
    save_cohort(at, "correct = false")
    at = open_subgroups(at)
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    compare = at.selectbox(key=f"subgroups.compare:{tiny_key()}")
    assert compare.value == "(none)" and not [s for s in at.subheader if "versus the rest" in s.value]
    compare.set_value("correct = false").run()
    no_exception(at)
    assert [s.value for s in at.subheader if "versus the rest" in s.value] == ["Subset 'correct = false' versus the rest"]
    table = next(d.value for d in at.dataframe if "lift" in d.value.columns and "group" in d.value.columns)
    assert table["group"].iloc[0] == "all images" and table["lift"].iloc[0] == 1.0
    # the subset is the errors: inside it accuracy is 0, outside it 1, in every group
    assert (table["accuracy (subset)"].dropna() == 0).all() and (table["accuracy (rest)"].dropna() == 100).all()  # percent
    assert (table["group"].iloc[1:].str.startswith("#")).all()


def test_a_spotlight_map_box_is_saved_and_a_click_opens_details(app):
    at = open_spotlight(build_tiny(app))
    run_spotlights(at, 1, steps=50, size=10.0)
    key = f"spotlight.map_select:{tiny_key()}"
    at.session_state[key] = {"selection": {MAP_BRUSH: {"x": [-1e9, 1e9], "y": [-1e9, 1e9]}, MAP_PICK: []}}
    at.run()
    no_exception(at)
    assert any(m.value.startswith("**200 images in the box**") for m in at.markdown)  # every point of the tiny map
    [b for b in at.button if b.label == "Save as subset" and "save_box" in (b.key or "")][0].click().run()
    no_exception(at)
    assert not at.error
    at.switch_page(COHORTS).run()
    within = at.selectbox(key=f"cohorts.within:{tiny_key()}")
    assert "map box of 200" in within.options
    at.switch_page("pages/spotlight.py").run()
    at.session_state[key] = {"selection": {MAP_BRUSH: {}, MAP_PICK: [{"row": 7}]}}
    at.run()
    no_exception(at)
    assert any(h.startswith("**") and "(row 7)" in h for h in detail_headers(at))
