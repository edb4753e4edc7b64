"""AppTest through app.py: Overview on a tiny workspace and the demo, the picker, cohorts."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import REPO, pick, write_workspaces


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def build_tiny(at: AppTest, name: str = "tiny") -> AppTest:
    at.session_state["app.workspace"] = name
    at.run()
    no_exception(at)
    assert any("no complete activation store" in w.value for w in at.warning)
    at.button[0].click().run()  # "Build the activation store"
    no_exception(at)
    return at.run()  # a clean tree: AppTest keeps a partial one after st.rerun()


def test_overview_on_tiny_workspace(app):
    at = build_tiny(app)
    assert at.title[0].value == "Tiny digits"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "200"
    assert 0 <= float(metrics["Accuracy"].rstrip("%")) <= 100
    # the CSV's missing file is reported, not fatal
    assert any("skipped" in e.label for e in at.expander)
    assert [t.label for t in at.tabs] == ["Classes", "Attributes", "Intersections", "Gallery"]
    assert any(m.value == "**tint**" for m in at.markdown)  # accuracy per attribute value
    assert len(at.image) > 0 and any("✗" in c or "✓" in c for im in at.image for c in im.captions)  # gallery
    assert not any(s.value == "Planted slices" for s in at.subheader)


def test_picker_persists_across_pages(app):
    # AppTest (streamlit 1.67) drops sidebar elements after an app's first run when the app
    # uses st.navigation (a minimal app shows it), so the picker is driven on the first run
    # and persistence is checked through the pages; the e2e test uses the real sidebar.
    app.session_state["app.workspace"] = "tiny"
    at = app.run()
    pick(at, "folder")
    no_exception(at)
    assert at.title[0].value == "Tiny digits folder"
    at.switch_page("pages/cohorts.py").run()
    no_exception(at)
    assert at.session_state["app.workspace"] == "folder"
    assert any("no complete activation store" in i.value for i in at.info)
    at.switch_page("pages/overview.py").run()
    assert at.title[0].value == "Tiny digits folder"


def test_cohort_query_subset_and_errors(app):
    at = build_tiny(app)
    at.switch_page("pages/cohorts.py").run()
    no_exception(at)
    at.text_input[0].input("tint = 'red' AND label = '3'").run()
    no_exception(at)
    images = {m.label: m.value for m in at.metric}["Images"]
    assert int(images) > 0
    [b for b in at.button if b.label == "Save as subset"][0].click().run()
    no_exception(at)
    frames = [d.value for d in at.dataframe]
    assert any("size" in f.columns and f["size"].iloc[0] == int(images) for f in frames)
    # a bad column: DuckDB's message on the page
    at.text_input[0].input("labl = 'x'").run()
    assert any("The filter was refused" in e.value and "labl" in e.value for e in at.error)
    # a second statement is refused
    at.text_input[0].input("true) ; DROP TABLE meta; SELECT (1").run()
    assert at.error
    no_exception(at)
    # delete the subset
    [b for b in at.button if b.label == "Delete subset"][0].click().run()
    assert any("No subsets yet" in i.value for i in at.info)


def test_invalid_workspace_file_keeps_the_demo(tmp_path, monkeypatch):
    bad = tmp_path / "workspaces.toml"
    bad.write_text("[workspace.broken\n")
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(bad))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
    at.session_state["app.workspace"] = "nonexistent"
    at.run()
    assert any("not valid TOML" in w.value for w in at.sidebar.warning)
    assert at.sidebar.selectbox(key="app.workspace_widget").options == [  # the built-in workspaces only
        "Planted-bias demo (Fashion-MNIST)", "Control model (no plants), planted-bias demo data"]


def test_unfit_weights_give_a_clear_error(tmp_path, tiny_files, monkeypatch):
    import torch
    import torchvision

    weights = tmp_path / "rn18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    extra = f'''
[workspace.unfit]
model = {{ kind = "torchvision", arch = "resnet34", weights = "{weights}" }}
dataset = {{ kind = "imagefolder", root = "{tiny_files / 'images'}" }}
'''
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
    at.session_state["app.workspace"] = "unfit"
    at.run()
    no_exception(at)
    assert at.error and "cannot be opened" in at.error[0].value


@pytest.mark.slow
def test_overview_on_the_demo(demo_app):
    at = demo_app.run()  # the demo is the default workspace; its store is built on first open
    no_exception(at)
    assert "Planted slices" in [s.value for s in at.subheader]
    slices = at.dataframe[0].value
    assert len(slices) >= 3
    overall = float({m.label: m.value for m in at.metric}["Accuracy"].rstrip("%")) / 100
    assert overall >= 0.85
    # every planted slice is far below overall accuracy
    assert all(float(a.rstrip("%")) / 100 <= overall - 0.2 for a in slices["accuracy"])
    # gallery controls
    at.selectbox(key="overview.gallery_class").set_value(at.selectbox(key="overview.gallery_class").options[2]).run()
    no_exception(at)
    at.toggle[0].set_value(False).run()
    no_exception(at)


def test_store_layers_can_be_chosen_and_added(app):
    app.session_state["app.workspace"] = "tiny"
    at = app.run()
    at.multiselect[0].set_value(["block1"]).run()
    [b for b in at.button if b.label == "Build the activation store"][0].click().run()
    at.run()
    no_exception(at)
    assert any("1 stored layers" in e.label for e in at.expander)
    adder = [m for m in at.multiselect if m.label == "Add layers"][0]
    assert adder.options == ["block2", "block3", "fc1"]  # the conv blocks, then the hidden linear layer
    adder.set_value(["block3"]).run()
    [b for b in at.button if b.label == "Add the selected layers"][0].click().run()
    at.run()
    no_exception(at)
    assert any("2 stored layers" in e.label for e in at.expander)


def test_one_subset_per_class(app):
    at = build_tiny(app)
    at.switch_page("pages/cohorts.py").run()
    [b for b in at.button if b.label == "Add one subset per class"][0].click().run()
    no_exception(at)
    summary = at.dataframe[-1].value
    assert len(summary) == 10 and summary["size"].sum() == 200
    assert set(summary["origin"]) == {"class"}
