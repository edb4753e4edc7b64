"""AppTest of the Filter saliency page on the tiny workspace: building the profiles, every
panel (figures, picking an image, top filters and k, the input map, turning off, masking,
fine-tuning, neighbours saved as a subset, the aggregate, failure modes), hosted mode and a
model without conv layers."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.errors import DataError
from core.methods.saliency.record import RECORD as SALIENCY
from core.services.workspace import load_workspaces
from core.ui import saliency_view as view
from core.ui.method_page import KEPT_CAPTION
from tests.app.conftest import REPO, write_workspaces
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_hosted import _app, _scripted_workspace
from tests.app.test_settings_form import check_live_widgets
from tests.app.test_subgroups_page import MLP_MODEL
from tests.support import failing_switch

PAGE = "pages/saliency.py"
BUILD = "saliency.build"


def open_saliency(at: AppTest) -> AppTest:
    at.switch_page(PAGE).run()
    no_exception(at)
    assert at.title[0].value == "Filter saliency"
    return at


def ws_key(name: str = "tiny") -> str:
    return load_workspaces().workspaces[name].key()


def texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.markdown, at.caption, at.warning, at.info, at.error, at.subheader) for e in kind]
    return "\n".join(str(p) for p in parts)


def images(at: AppTest) -> list[str]:
    return [c for im in at.image for c in im.captions]


@pytest.fixture
def built(app) -> AppTest:
    """The tiny workspace's page with its profiles built from the page."""
    at = open_saliency(build_tiny(app))
    assert not at.error
    assert any("Saliency profiles of 200 images over 40 conv filters" in i.value for i in at.info)  # the size, first
    assert not at.subheader or "Pick an image" not in [s.value for s in at.subheader]
    at.button(key=BUILD).click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    return at.run()


def test_build_and_every_panel(built):
    at = built
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert not [b for b in at.button if b.key == BUILD]  # built: no button any more
    heads = [s.value for s in at.subheader]
    for head in ("Profiles of the dataset", "Pick an image", "Turning filters off over many errors", "Failure modes"):
        assert head in heads
    assert len(at.get("vega_lite_chart")) >= 3  # Fig. 1, Fig. 2, this image's turning-off curves
    assert any("Input-space saliency of the top 10 filters" in c for c in images(at))
    assert any(c.startswith("Masked: ") for c in images(at))
    text = texts(at)
    assert "the model in the app is never modified" in text
    assert "Mode #0" in text
    assert all(c.value.startswith("How to read this") or c.value for c in at.caption)

    # save a failure mode as a subset through the one save form
    pick = at.selectbox(key=f"saliency.save_mode_pick:{ws_key()}")
    last = pick.options[-1]
    pick.set_value(int(last.removeprefix("#"))).run()
    no_exception(at)
    saves = [b for b in at.button if b.label == "Save as subset" and f"save_mode:{ws_key()}:{last.removeprefix('#')}" in (b.key or "")]
    assert len(saves) == 1
    saves[0].click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]

    # choose another misclassified image from the gallery
    row_key = f"saliency.row:{ws_key()}"
    first = at.session_state[row_key]
    selects = [b for b in at.button if (b.key or "").startswith("saliency.select:")]
    assert len(selects) >= 2
    next(b for b in selects if b.key != f"saliency.select:{first}").click().run()  # the page opens on tour_error's image
    no_exception(at)
    assert at.session_state[row_key] != first
    assert f"(row {at.session_state[row_key]})" in texts(at)

    # k: more than the model's 40 filters is clamped, with the estimator's note
    at.number_input(key="saliency.k").set_value(60).run()
    no_exception(at)
    assert "k = 60 is more than the model's 40 filters" in texts(at)
    assert len(at.dataframe[0].value) == 40
    at.number_input(key="saliency.k").set_value(5).run()
    assert len(at.dataframe[0].value) == 5

    # the masking threshold and the control
    at.slider(key="saliency.threshold").set_value(0.8).run()
    no_exception(at)
    at.toggle(key="saliency.least").set_value(True).run()
    no_exception(at)
    assert not at.error

    # neighbours: misclassified only, then saved as a subset
    at.radio(key="saliency.nb_scope").set_value("Misclassified only").run()
    no_exception(at)
    row = at.session_state[row_key]
    form = f"saliency.save_neighbours:{ws_key()}:{row}"
    at.button(key=f"FormSubmitter:{form}-Save as subset").click().run()
    no_exception(at)
    assert not at.error
    name = at.text_input(key=f"{form}:name").value
    at.run()
    # the saved subset is offered as a reference set and on the Cohorts page
    assert name in at.selectbox(key=f"saliency.reference:{ws_key()}").options
    at.switch_page("pages/cohorts.py").run()
    no_exception(at)
    assert name in at.selectbox(key=f"cohorts.open:{ws_key()}").options


def test_live_settings_are_the_ones_written_before(built):
    """The settings drawn from the record's Settings (each explainer's parameter, its default
    from the explainer) keep the labels, ranges, defaults and widgets the page wrote by hand."""
    at = built
    check_live_widgets(at, SALIENCY, SALIENCY.settings, 200)
    numbers = {name: at.number_input(key=f"saliency.{name}") for name in ("k", "step", "n_groups")}
    assert {name: (w.label, w.min, w.max, w.value) for name, w in numbers.items()} == {
        "k": ("Top filters (k)", 1, 100_000, 10), "step": ("Step (share of their weight norm)", 0.01, 2.0, 0.1),
        "n_groups": ("Groups", 2, 50, 8)}
    assert numbers["step"].proto.format == "%.2f" and numbers["step"].step == 0.05
    ranking = at.radio(key="saliency.ranking")
    assert (ranking.label, ranking.options, ranking.value) == (
        "Rank the filters by", ["|z| (the authors' code)", "z (the paper's text)"], "magnitude")
    threshold = at.slider(key="saliency.threshold")
    assert (threshold.label, threshold.min, threshold.max, threshold.step, threshold.value) == ("Mask pixels with map ≥", 0.05, 0.95, 0.05, 0.5)
    assert (at.toggle(key="saliency.least").label, at.toggle(key="saliency.least").value) == ("least salient (control)", False)
    # the ranking chosen beside the image's curves is the one the aggregate uses
    at.radio(key="saliency.ranking").set_value("signed").run()
    no_exception(at)
    assert "Filters are ranked by z (the paper's text)" in texts(at)
    at.number_input(key="saliency.n_groups").set_value(2).run()
    no_exception(at)
    assert any(c.value.startswith(("1 failure mode(s)", "2 failure mode(s)")) for c in at.caption)


def test_pick_by_row_and_a_correct_image(built):
    at = built
    at.segmented_control(key="saliency.pick_mode").set_value("By row").run()
    no_exception(at)
    meta_correct = None
    for row in range(200):
        at.number_input(key=f"saliency.row_id:{ws_key()}").set_value(row).run()
        no_exception(at)
        if "✓" in " ".join(m.value for m in at.markdown if m.value.startswith("Label **")):
            meta_correct = row
            break
    assert meta_correct is not None
    assert "The paper studies errors" in texts(at)
    assert not at.error


def test_aggregate_and_reference_subset(built):
    at = built
    at.number_input(key="saliency.agg_cap").set_value(6).run()
    button = next(b for b in at.button if b.key == "saliency.aggregate")
    button.click().run()
    no_exception(at)
    assert not at.error
    assert "mean confidence over 6 misclassified images" in texts(at)
    at.run()  # a rerun shows the cached aggregate without the button
    assert "mean confidence over 6 misclassified images" in texts(at)
    assert not [b for b in at.button if b.key == "saliency.aggregate"]
    # the fine-tuning check over the same 6 errors, with intervals, then cached
    next(b for b in at.button if b.key == "saliency.aggregate_tune").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "neighbours corrected" in d.value.columns and "images" in d.value.columns)
    assert table["variant"].tolist() == ["salient", "random", "least"] and (table["images"] == 6).all()
    assert all("(" in v for v in table["image corrected"])  # mean (low–high)
    at.run()
    assert not [b for b in at.button if b.key == "saliency.aggregate_tune"]


def test_a_failed_aggregate_keeps_the_last_good_one_on_screen(built, monkeypatch):
    """Turning filters off over many errors on its button: when a run fails (a BiasLensError) the
    page says why and keeps the last aggregate that succeeded below, labelled as such."""
    at = built
    failing = failing_switch(monkeypatch, view, "aggregate_turn_off",
                             DataError("An image cannot be read: pick another subset."), on=False)
    at.number_input(key="saliency.agg_cap").set_value(6).run()
    next(b for b in at.button if b.key == "saliency.aggregate").click().run()
    no_exception(at)
    assert not at.error and "mean confidence over 6 misclassified images" in texts(at)
    assert KEPT_CAPTION not in [c.value for c in at.caption]
    failing["on"] = True
    at.number_input(key="saliency.agg_cap").set_value(4).run()
    assert "mean confidence over" not in texts(at)  # a new run waits for its button, as before
    next(b for b in at.button if b.key == "saliency.aggregate").click().run()
    no_exception(at)
    assert [e.value for e in at.error] == ["The aggregate cannot be computed: An image cannot be read: pick another subset."]
    assert KEPT_CAPTION in [c.value for c in at.caption]
    assert "mean confidence over 6 misclassified images" in texts(at)  # the last good run's, not 4


def test_hosted_without_profiles_names_other_pages_not_commands(tmp_path, tiny_files, monkeypatch):
    """A visitor of a server that has not prepared the profiles reads that plainly, with the
    pages that work instead: never an operator's command or a server path."""
    at = _app(monkeypatch, tmp_path, _scripted_workspace(tmp_path, tiny_files), None)
    at.session_state["app.workspace"] = "scripted"
    at.run()
    at.button[0].click().run()  # build the store (not hosted yet)
    no_exception(at)
    monkeypatch.setenv("BIASLENS_HOSTED", "1")
    st.cache_data.clear()  # the workspace list (and its hosted flag) is cached
    st.cache_resource.clear()
    hosted = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
    hosted.session_state["app.workspace"] = "scripted"
    hosted.run()
    open_saliency(hosted)
    assert not [b for b in hosted.button if b.key == BUILD]
    text = texts(hosted)
    assert "has not prepared the saliency profiles" in text and "Spotlight, Subgroups, Intersectional" in text
    assert "python -m" not in text and "`" not in text and str(tmp_path) not in text


def saliency_of(name: str, model: str, tmp_path, tiny_files, monkeypatch) -> AppTest:
    """The Filter saliency page of a workspace ``name`` with ``model`` (a TOML inline table) over
    the tiny CSV, its store built."""
    extra = f"""
[workspace.{name}]
model = {model}
dataset = {{ kind = "csv", csv = "{tiny_files / 'manifest.csv'}" }}
"""
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    return open_saliency(build_tiny(AppTest.from_file(str(REPO / "app.py"), default_timeout=240), name))


def test_model_without_conv_layers(tmp_path, tiny_files, monkeypatch):
    at = saliency_of("mlp", MLP_MODEL, tmp_path, tiny_files, monkeypatch)
    assert not at.error
    assert any("Filter saliency needs convolutional layers" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == BUILD]


def test_warm_rerun_calls_no_model(built, monkeypatch):
    """A rerun reads every result from the cache: the explainers never explain again and the
    estimators are never fitted again."""
    import core.methods.saliency.explain as saliency
    import core.methods.saliency.failure_modes as search

    def refuse(*args, **kwargs):
        raise AssertionError("a rerun called the model again")

    for cls in (saliency.FilterSaliency, saliency.FilterTurnOff, saliency.FineTuneCheck, saliency.MaskingExperiment):
        monkeypatch.setattr(cls, "explain", refuse)
    monkeypatch.setattr(search.FailureModes, "fit", refuse)
    built.run()
    no_exception(built)
    assert not built.error


def test_deleted_reference_subset_falls_back(built):
    at = built
    at.session_state[f"saliency.reference:{ws_key()}:kept"] = "a subset deleted since"
    at.run()
    no_exception(at)
    assert any("no longer exists: the whole dataset is used" in w.value for w in at.warning)
    assert at.selectbox(key=f"saliency.reference:{ws_key()}").value == "Whole dataset"
    assert not at.error


def test_neighbours_and_fine_tuning_from_an_independent_set(tmp_path, tiny_files, monkeypatch):
    """The 'Neighbours from' picker: a workspace on other classes is refused with what to do, and
    another set on the same classes is profiled with this model on a button, then used by the
    neighbours, the fine-tuning check and its aggregate."""
    extra = f"""
[workspace.tints]
title = "Digits by tint"
model = {{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}
dataset = {{ kind = "csv", csv = "{tiny_files / 'manifest.csv'}", label_column = "tint" }}
"""
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    at = open_saliency(build_tiny(AppTest.from_file(str(REPO / "app.py"), default_timeout=240)))
    at.button(key=BUILD).click().run()
    at.run()
    no_exception(at)
    picker = at.selectbox(key=f"saliency.image_set:{ws_key()}")
    assert picker.value == "this dataset" and set(picker.options) >= {"This dataset", "Tiny digits folder", "Digits by tint"}
    assert "neighbours from this dataset" in texts(at)

    picker.set_value("tints").run()
    no_exception(at)
    assert any("pick an image set on the same classes" in e.value and "come from this dataset" in e.value for e in at.error)
    assert "neighbours from this dataset" in texts(at)  # the check still runs, on this dataset

    at.selectbox(key=f"saliency.image_set:{ws_key()}").set_value("folder").run()
    no_exception(at)
    assert not at.error
    assert any("'Tiny digits folder' needs its saliency profiles with this model" in i.value for i in at.info)
    at.button(key=f"saliency.build_set:{ws_key()}:folder").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    at.run()
    text = texts(at)
    assert "Neighbours from 'Tiny digits folder' (200 images, profiled with this model" in text
    assert "neighbours from Tiny digits folder" in text  # the fine-tuning check's caption
    assert "cannot be saved as a subset here" in text
    assert not [b for b in at.button if (b.key or "").startswith("saliency.build_set")]  # profiled: no button

    at.number_input(key="saliency.agg_cap").set_value(4).run()
    next(b for b in at.button if b.key == "saliency.aggregate_tune").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "neighbours corrected" in d.value.columns and "images" in d.value.columns)
    assert (table["images"] == 4).all()


def test_hosted_independent_set_not_prepared_falls_back_to_this_dataset(tmp_path, tiny_files, monkeypatch):
    """On a hosted server, an image set whose profiles were not prepared is said so, with no
    button and no command, and the neighbours and the fine-tuning check use this dataset."""
    from core.__main__ import main

    extra = f"""
[workspace.manifest]
title = "Scripted tiny (manifest)"
model = {{ kind = "torchscript", weights = "{tmp_path / 'tiny.ts.pt'}", input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}
dataset = {{ kind = "csv", csv = "{tiny_files / 'manifest.csv'}" }}
"""
    workspaces = _scripted_workspace(tmp_path, tiny_files, extra=extra)
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    assert main(["--file", str(workspaces), "build", "scripted"]) == 0
    assert main(["--file", str(workspaces), "saliency", "scripted"]) == 0
    at = _app(monkeypatch, tmp_path, workspaces, "1")
    at.session_state["app.workspace"] = "scripted"
    at.run()
    open_saliency(at)
    at.selectbox(key=f"saliency.image_set:{ws_key('scripted')}").set_value("manifest").run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    text = texts(at)
    assert "This server has not prepared the profiles of 'Scripted tiny (manifest)' with this model" in text
    assert "neighbours from this dataset" in text and "python -m" not in text and str(tmp_path) not in text
    assert not [b for b in at.button if (b.key or "").startswith("saliency.build_set")]


def make_zero_head_cnn():
    """The tiny CNN with its head's weights at 0, as torchvision's ViT starts: every image gets
    the same logits, so no conv weight changes the loss and every filter's saliency is 0."""
    import torch

    from tests.support import make_tiny_cnn

    model = make_tiny_cnn()
    with torch.no_grad():
        model.head.weight.zero_()
    return model


def test_a_model_whose_saliency_is_all_zero_says_so(tmp_path, tiny_files, monkeypatch):
    model = ('{ kind = "entrypoint", entrypoint = "tests.app.test_saliency_page:make_zero_head_cnn", input_size = 16, '
             'mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }')
    at = saliency_of("flat", model, tmp_path, tiny_files, monkeypatch)
    at.button(key=BUILD).click().run()
    no_exception(at)
    assert any("Every filter's saliency is 0 on every image" in i.value for i in at.info)
    assert not at.get("vega_lite_chart") or all("log" not in str(c.proto) for c in at.get("vega_lite_chart"))
