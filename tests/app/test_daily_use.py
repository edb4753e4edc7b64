"""AppTest of issue 10's defects: settings that survive leaving a page, a rejected Spotlight
run that keeps the results on screen, fewer spotlights served from a cached larger run,
confusion matrices that print what they colour, and the save-as-subset names."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from tests.app.conftest import REPO
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_spotlight_page import open_spotlight, run_spotlights
from tests.app.test_subgroups_page import CHOICE, CUSTOM, buttons, open_subgroups, walk

OVERVIEW = "pages/overview.py"


def leave_and_come_back(at: AppTest, page: str) -> AppTest:
    at.switch_page(OVERVIEW).run()
    no_exception(at)
    at.switch_page(page).run()
    no_exception(at)
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(node.proto.spec) for node in walk(at.main) if node.type == "vega_lite_chart"]


def confusion_layers(at: AppTest) -> list[dict]:
    """The text layer of every confusion-matrix chart on the page."""
    return [
        spec["layer"][1] for spec in charts(at)
        if "layer" in spec and spec["layer"][1].get("mark", {}).get("type") == "text"
        and spec["layer"][1]["encoding"]["y"]["field"] == "true"
    ]


def test_cohort_filter_survives_leaving_the_page(app):
    at = build_tiny(app)
    at.switch_page("pages/cohorts.py").run()
    box = next(t for t in at.text_input if t.label == "WHERE")
    box.set_value("correct = false").run()
    no_exception(at)
    leave_and_come_back(at, "pages/cohorts.py")
    assert next(t for t in at.text_input if t.label == "WHERE").value == "correct = false"
    assert any(m.label == "Images" for m in at.metric)  # the cohort is shown again


def test_subgroup_threshold_and_sliders_survive_leaving_the_page(app):
    at = open_subgroups(build_tiny(app))
    at.segmented_control(key=CHOICE).set_value("Custom").run()
    at.slider(key=CUSTOM).set_value(0.9).run()
    no_exception(at)
    at.slider(key="subgroups.neuron_threshold").set_value(0.7).run()
    at.slider(key="subgroups.mass").set_value(5.0).run()
    at.slider(key="subgroups.cluster_threshold").set_value(0.8).run()
    no_exception(at)
    leave_and_come_back(at, "pages/subgroups.py")
    assert at.segmented_control(key=CHOICE).value == "Custom"
    assert at.slider(key=CUSTOM).value == 0.9
    assert at.slider(key="subgroups.neuron_threshold").value == 0.7
    assert at.slider(key="subgroups.mass").value == 5.0
    assert at.slider(key="subgroups.cluster_threshold").value == 0.8
    # the custom value is kept while another choice is shown
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    at.segmented_control(key=CHOICE).set_value("Custom").run()
    assert at.slider(key=CUSTOM).value == 0.9


def test_a_rejected_spotlight_run_keeps_the_results_on_screen(app):
    at = open_spotlight(build_tiny(app))
    run_spotlights(at, 2, size=10.0)
    assert "Spotlights found" in [s.value for s in at.subheader] and not at.error
    run_spotlights(at, 1, size=0.1)  # 0.2 of an image: refused
    assert at.error and "at least one image" in at.error[0].value
    assert "Spotlights found" in [s.value for s in at.subheader]
    assert list(at.dataframe[0].value["spotlight"]) == [1, 2]  # the last good run, with its own settings
    assert any("last run that succeeded" in c.value for c in at.caption)
    assert at.number_input(key="spotlight.size").value == 0.1  # the form keeps what was asked


def test_fewer_spotlights_reuse_a_cached_larger_run(app):
    at = open_spotlight(build_tiny(app))
    run_spotlights(at, 3, size=10.0)
    three = at.dataframe[0].value
    run_spotlights(at, 2, size=10.0)
    assert not at.status  # no search ran: served from the run of 3
    two = at.dataframe[0].value
    assert sorted(two["spotlight"]) == [1, 2]  # the first two the search found (the table lists them by evidence)
    # the same spotlights as in the run of 3; only their q-values differ (Benjamini-Hochberg over 2 tests, not 3)
    found = [c for c in two.columns if c != "q"]
    same = three[three["spotlight"].isin([1, 2])].set_index("spotlight")[found[1:]]
    assert two.set_index("spotlight")[found[1:]].loc[same.index].equals(same)


def test_saving_a_spotlight_by_threshold_names_the_threshold(app):
    at = open_spotlight(build_tiny(app))
    run_spotlights(at, 1, size=10.0)
    assert at.text_input(key="spotlight.save:1:top 20 by weight:name").value == "spotlight 1: top 20 by weight"
    at.radio(key="spotlight.save_mode:1").set_value("weight threshold").run()
    no_exception(at)
    names = [t.value for t in at.text_input if (t.key or "").startswith("spotlight.save:1:")]
    assert names == ["spotlight 1: weight >= 0.50"]


def test_subgroups_refuse_a_taken_subset_name(app):
    at = open_subgroups(build_tiny(app))
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    name = next(t for t in at.text_input if (t.key or "").startswith("subgroups.save:"))
    name.set_value("mine")
    save = next(b for b in at.button if b.label == "Save as subset")
    save.click().run()
    no_exception(at)
    assert not at.error
    name = next(t for t in at.text_input if (t.key or "").startswith("subgroups.save:"))
    name.set_value("mine")
    next(b for b in at.button if b.label == "Save as subset").click().run()
    no_exception(at)
    assert at.error and "mine" in at.error[0].value  # refused, not overwritten
    assert buttons(at, "Select")


def test_confusion_matrices_print_what_they_colour_and_stay_readable(app):
    at = build_tiny(app)
    shares = at.toggle[0]
    assert shares.label.startswith("Confusion matrix as shares")
    (layer,) = confusion_layers(at)
    assert layer["encoding"]["text"]["field"] == "rate" and layer["encoding"]["text"]["format"] == ".0%"
    assert "rate" in layer["encoding"]["color"]["condition"]["test"]
    shares.set_value(False).run()
    (layer,) = confusion_layers(at)
    assert layer["encoding"]["text"]["field"] == "count"
    # white text only on the darker half of the counts' colour scale
    test = layer["encoding"]["color"]["condition"]["test"]
    assert "count" in test and "rate" not in test
    # the subgroup matrices print counts: their text colour follows counts too
    at = open_subgroups(at)
    for layer in confusion_layers(at):
        assert layer["encoding"]["text"]["field"] == "count"
        assert "count" in layer["encoding"]["color"]["condition"]["test"]


def test_demo_build_offers_no_layer_picker_it_would_ignore(demo_app, monkeypatch):
    """The demo's store is built at once: a layer picker during that build had no effect."""
    import core.ui.store_panel as panel
    from core.ui import cache

    built = []
    monkeypatch.setattr(panel, "run_build", lambda ctx, layers, label: built.append(list(layers)))
    monkeypatch.setattr(cache, "store_for", lambda *args, **kwargs: None)  # as on an empty cache
    at = demo_app.run()
    no_exception(at)
    assert not at.multiselect
    assert len(built) == 1 and built[0]  # built with the default layers, named on the page
    assert any("Building the demo's store now" in c.value and f"`{built[0][0]}`" in c.value for c in at.caption)


def test_a_loading_message_comes_before_the_heavy_imports():
    """The first open imports torch (about 10 s): app.py says so before, not a blank page."""
    source = (REPO / "app.py").read_text()
    assert source.index("st.set_page_config(") < source.index("Starting BiasLens") < source.index("from core")
