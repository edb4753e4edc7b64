"""AppTest: the Compare page through app.py: the planted demo (B) against its control model (A)
finds the slices where B got worse, saves one as a subset and opens one as a cohort; a model A
without a store says how to build it; two tiny models on the same images: the two-model image
dialog with both Grad-CAMs, the report downloads, and a model compared with an identical one
finding nothing; students in workshop mode do not see it."""

from __future__ import annotations

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.data.sources import build_dataset
from core.models.loading import load_model
from core.services.workspace import control_workspace
from core.store.build import build_store
from core.store.read import find_store
from tests.app.conftest import write_workspaces
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_workshop_page import assert_hidden, workshop_app  # noqa: F401  (a fixture)
from tests.support import TinyCNN

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
    # the first slice's thumbnails open the two-model dialog: A's and B's Grad-CAM side by side
    next(s for s in at.selectbox if (s.key or "").endswith(":compare-regression-1")).select_index(0).run()
    no_exception(at)
    cams = [c for im in at.image for c in im.captions if c.startswith(("A (", "B ("))]
    assert len(cams) == 2 and cams[0].startswith(f"A ({control_workspace().title}): "), cams
    assert {"Download the comparison report (HTML)", "Download the comparison report (Markdown)"} <= {
        b.label for b in at.download_button}
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


TINY_MODEL = ('{ kind = "entrypoint", entrypoint = "%s", input_size = 16, mean = [0.5, 0.5, 0.5], '
              'std = [0.5, 0.5, 0.5] }')


def make_reseeded_tiny_cnn() -> torch.nn.Module:
    """The tiny CNN with other random weights (seed 1): it predicts another class than the
    seed-0 one, so the two models disagree on the images of both classes."""
    torch.manual_seed(1)
    return TinyCNN()


@pytest.mark.slow
def test_two_tiny_models_side_by_side(app, tmp_path, tiny_files, monkeypatch):
    manifest = tiny_files / "manifest.csv"
    extra = "".join(f'''
[workspace.{name}]
title = "{title}"
model = {TINY_MODEL % entrypoint}
dataset = {{ kind = "csv", csv = "{manifest}" }}
''' for name, title, entrypoint in (
        ("tiny-b", "Tiny digits, model B", "tests.app.test_compare_page:make_reseeded_tiny_cnn"),
        ("tiny-same", "Tiny digits, same model", "tests.support:make_tiny_cnn")))
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    at = AppTest.from_file(app._script_path, default_timeout=240)
    for name in ("tiny-b", "tiny-same", "tiny"):
        build_tiny(at, name)
    at.switch_page(PAGE).run()
    no_exception(at)
    assert not at.error
    assert next(s for s in at.selectbox if s.label == "Model A (compare with)").value == "Tiny digits, model B"
    assert "Accuracy of A (tiny-b)" in {m.label for m in at.metric}
    # a flipped image opens the two-model dialog: both predictions, both Grad-CAMs for B's prediction
    picker = next(s for s in at.selectbox if (s.key or "").startswith("compare.pick:") and "flips-worse" in s.key)
    shown_id = picker.options[0].split(" · ")[0]
    picker.select_index(0).run()
    no_exception(at)
    assert not at.error
    shown = [c for im in at.image for c in im.captions]
    cams = [c for c in shown if c.startswith(("A (Tiny digits, model B): ", "B (Tiny digits): "))]
    assert len(cams) == 2, shown
    chooser = next(s for s in at.selectbox if s.label == "Grad-CAM for the class")
    assert "(B predicts" in chooser.options[0] and any("true" in o for o in chooser.options[:3])
    first = chooser.options[0].split(" (")[0]
    assert all(f": {first} " in c for c in cams)  # both maps explain the same class
    other = chooser.options[-1]
    chooser.select(other).run()
    no_exception(at)
    cams = [c for im in at.image for c in im.captions if c.startswith(("A (", "B ("))]
    assert len(cams) == 2 and all(f": {other.split(' (')[0]} " in c for c in cams)
    assert any(m.value.startswith(f"**{shown_id}** (row ") for m in at.markdown)
    facts = next(d.value for d in at.dataframe if "prediction" in d.value.columns)
    assert list(facts["model"]) == ["A: Tiny digits, model B", "B: Tiny digits"]
    assert list(facts["right"]) == ["✓", "✗"]  # a flip A right -> B wrong
    labels = {b.label for b in at.download_button}
    assert {"Download the comparison report (HTML)", "Download the comparison report (Markdown)"} <= labels
    # the same model under another name: nothing to find
    next(s for s in at.selectbox if s.label == "Model A (compare with)").select("Tiny digits, same model").run()
    no_exception(at)
    assert any("there is nothing to find" in s.value for s in at.success)
    assert not [s for s in at.selectbox if (s.key or "").startswith("compare.pick:")]
