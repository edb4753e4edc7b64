"""AppTest: the Compare page through app.py: the planted demo (B) against its control model (A)
finds the slices where B got worse, saves one as a subset and opens one as a cohort; a model A
without a store says how to build it; students in workshop mode do not see it."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.data.sources import build_dataset
from core.models.loading import load_model
from core.services.workspace import control_workspace
from core.store.build import build_store
from core.store.read import find_store
from tests.app.conftest import write_workspaces
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_workshop_page import assert_hidden, workshop_app  # noqa: F401  (a fixture)

PAGE = "pages/compare.py"


@pytest.fixture(scope="module")
def control_store():
    """The control model's store in the shared cache the demo app reads (built once, about 15 s)."""
    workspace = control_workspace()
    model, dataset = load_model(workspace.model, None), build_dataset(workspace.dataset)
    return find_store(workspace.name, model, dataset) or build_store(workspace.name, model, dataset,
                                                                        batch_size=workspace.batch_size)


def cards(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith(":material/trending_down:")]


@pytest.mark.slow
def test_the_planted_demo_against_its_control(demo_app, control_store):
    at = demo_app.run()
    at.switch_page(PAGE).run()
    no_exception(at)
    assert not at.error
    assert next(s for s in at.selectbox if s.label == "Model A (compare with)").value == control_workspace().title
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Accuracy of A (demo-control)"].rstrip("%")) > float(metrics["Accuracy of B (demo)"].rstrip("%"))
    worse = next(s.value for s in at.subheader if s.value.startswith("Where B got worse"))
    assert int(worse.split(": ")[1].split(" ")[0]) >= 4  # the four planted slices, confirmed on the held-out half
    assert len(cards(at)) == 5
    assert any("A right → B wrong" in t.label for t in at.tabs)
    # a slice saved as a subset, then one opened as a cohort
    [b for b in at.button if b.label == "Save as subset"][0].click().run()
    no_exception(at)
    [b for b in at.button if b.label == "Open as cohort"][0].click().run()
    no_exception(at)
    within = next(s for s in at.selectbox if s.label == "Within")
    assert within.value == "regression 1"
    assert any(o.startswith("regressed in B: ") for o in next(s for s in at.selectbox if s.label == "Open subset").options)


def test_model_a_must_be_on_the_same_images_and_built(app, tmp_path, tiny_files, monkeypatch):
    at = build_tiny(app)  # the tiny CSV workspace; the other one reads the same images from a folder
    at.switch_page(PAGE).run()
    no_exception(at)
    assert any("No other workspace uses this workspace's images" in i.value for i in at.info)
    # a second model registered on the same dataset, its store not built yet
    model = ('{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, '
             'mean = [0.4, 0.4, 0.4], std = [0.5, 0.5, 0.5] }')
    extra = f'''
[workspace.tiny-b]
title = "Tiny digits, model B"
model = {model}
dataset = {{ kind = "csv", csv = "{tiny_files / 'manifest.csv'}" }}
'''
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    at = AppTest.from_file(app._script_path, default_timeout=240)
    at.session_state["app.workspace"] = "tiny"
    at.run()
    at.switch_page(PAGE).run()
    no_exception(at)
    assert next(s for s in at.selectbox if s.label == "Model A (compare with)").value == "Tiny digits, model B"
    assert any("has no complete activation store yet" in i.value for i in at.info)


def test_compare_is_hidden_from_students_until_the_reveal(workshop_app):  # noqa: F811
    at = workshop_app().run()
    at.switch_page(PAGE).run()
    no_exception(at)
    assert any("hidden during the workshop" in i.value for i in at.info)
    assert_hidden(at)
