"""AppTest of the Subgroups page: thresholds, selecting a subgroup, the Grad-CAM and neuron
windows, saving and exporting, bad input (small dataset, no conv layers, no stored layers,
a single-class subgroup) and the demo's scorecard."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

import core.methods
from core.services.workspace import load_workspaces
from core.ui import cache
from tests.app.conftest import REPO, write_workspaces
from tests.app.test_app import build_tiny, no_exception

PAGE = "pages/subgroups.py"
CHOICE = "subgroups.threshold_choice"
CUSTOM = "subgroups.threshold_custom"
COUNT = re.compile(r"(\d+) under-performing at accuracy < ([\d.]+) ×")
HINT = re.compile(r"A threshold of ([\d.]+) \(Custom\) would list the worst one")
MLP_MODEL = (
    '{ kind = "entrypoint", entrypoint = "tests.app.test_subgroups_page:make_mlp", '
    "input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }"
)
CNN_MODEL = (
    '{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", '
    "input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }"
)


def make_mlp() -> nn.Module:
    """A model with no convolutional layer (entry point of the 'mlp' workspace below)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 12), nn.ReLU(), nn.Linear(12, 10))


# --------------------------------------------------------------------------- helpers


def open_subgroups(at: AppTest) -> AppTest:
    at.switch_page(PAGE).run()
    no_exception(at)
    assert at.title[0].value == "Subgroups"
    return at


def selected_key(name: str = "tiny") -> str:
    return f"subgroups.selected:{load_workspaces().workspaces[name].key()}"


def save_name_key(target: int, name: str = "tiny") -> str:
    """The name box of the save-as-subset form for one subgroup."""
    return f"subgroups.save:{load_workspaces().workspaces[name].key()}:{target}:name"


def under_count(at: AppTest) -> tuple[int, float]:
    """The caption's '<n> under-performing at accuracy < <threshold> × ...'."""
    found = [COUNT.search(c.value) for c in at.caption]
    match = next(m for m in found if m)
    return int(match.group(1)), float(match.group(2))


def buttons(at: AppTest, label: str | None = None, prefix: str | None = None) -> list:
    return [
        b for b in at.button
        if (label is None or b.label == label) and (prefix is None or (b.key or "").startswith(prefix))
    ]


def set_threshold(at: AppTest, value: float) -> AppTest:
    at.slider(key=CUSTOM).set_value(value).run()
    no_exception(at)
    return at


def click(at: AppTest, button) -> AppTest:
    """Click a button whose handler may call st.rerun(), then run again for a clean tree."""
    button.click().run()
    no_exception(at)
    at.run()
    no_exception(at)
    return at


def walk(node) -> Iterator:
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)


def confusion_charts(at: AppTest) -> dict[str, dict]:
    """'Confusion matrix of #g' -> the Vega-Lite spec of the chart that follows its heading."""
    charts, title = {}, None
    for node in walk(at.main):
        if node.type == "markdown" and node.value.startswith("**Confusion matrix of #"):
            title = node.value.strip("*")
        elif node.type == "vega_lite_chart" and title:
            charts[title] = json.loads(node.proto.spec)
            title = None
    return charts


def chart_classes(spec: dict) -> list[str]:
    return spec["layer"][0]["encoding"]["x"]["sort"]


def recluster(at: AppTest, max_size: int) -> AppTest:
    """More, smaller subgroups: the tiny random CNN gives several with 0% accuracy."""
    next(n for n in at.number_input if n.label == "Max subgroup size").set_value(max_size)
    at.button(key="FormSubmitter:udis_settings-Re-cluster").click().run()
    no_exception(at)
    return at


def neuron_buttons(at: AppTest) -> dict[str, tuple[float, float]]:
    """key -> (under, well) activation scores read from 'channel: under/well' labels."""
    out = {}
    for b in buttons(at, prefix="neuron:"):
        under, well = b.label.split(": ")[1].split("/")
        out[b.key] = (float(under), float(well))
    return out


@pytest.fixture
def tiny(app) -> AppTest:
    return open_subgroups(build_tiny(app))


# --------------------------------------------------------------------------- tiny workspace


def test_threshold_control_and_suggested_threshold(tiny):
    at = tiny
    seg = at.segmented_control(key=CHOICE)
    assert seg.options == ["0.5 (VisCUIT paper)", "0.66 (UDIS code)", "Custom"]
    assert seg.value == "0.5 (VisCUIT paper)" and under_count(at)[1] == 0.5
    assert at.download_button[0].label == "Export subgroups (CSV)"
    seg.set_value("0.66 (UDIS code)").run()
    no_exception(at)
    assert under_count(at)[1] == 0.66
    seg.set_value("Custom").run()
    no_exception(at)
    assert at.slider(key=CUSTOM).value == 0.8 and under_count(at)[1] == 0.8
    # a very low threshold: nothing listed, the page says so and suggests a threshold
    set_threshold(at, 0.05)
    assert under_count(at) == (0, 0.05)
    assert not buttons(at, "Select") and not at.subheader  # the page stops after the message
    hints = [HINT.search(i.value) for i in at.info]
    assert any(hints), [i.value for i in at.info]
    hint = float(next(h for h in hints if h).group(1))
    assert 0.05 < hint <= 1
    # the suggested threshold lists the worst subgroup, one step below lists none
    set_threshold(at, hint)
    count, shown = under_count(at)
    assert shown == hint and count >= 1
    assert len(buttons(at, "Select")) == count
    assert "Under-performing subgroups" in [s.value for s in at.subheader]
    if round(hint - 0.01, 2) >= 0.05:
        set_threshold(at, round(hint - 0.01, 2))
        assert under_count(at)[0] == 0 and at.info
    # raising the threshold never lists fewer subgroups; the caption matches the list
    previous = 0
    for value in (0.05, hint, 0.8, 1.0):
        set_threshold(at, value)
        count, shown = under_count(at)
        assert shown == value and count >= previous
        assert len(buttons(at, "Select")) == count
        previous = count


def test_select_a_subgroup(tiny):
    at = recluster(tiny, 30)
    ids = [int(b.key.split(":")[1]) for b in buttons(at, "Select")]
    assert len(ids) >= 2 and under_count(at)[0] == len(ids)
    key = selected_key()
    assert at.session_state[key] == ids[0]  # the first listed is selected first
    heads = [m.value for m in at.markdown if m.value.startswith("**▶ ")]
    assert len(heads) == 1 and heads[0].startswith(f"**▶ #{ids[0]} ·")
    # listed by evidence: significant failures by excess errors, largest first, then the others
    lines = [m.value for m in at.markdown if re.match(r"\*\*(▶ )?#\d+ ·", m.value)]
    assert len(lines) == len(ids) and all("excess errors" in line for line in lines)
    excess = [float(re.search(r"([-\d.]+) excess errors", line).group(1)) for line in lines]
    significant = ["not significant" not in line for line in lines]
    assert significant == sorted(significant, reverse=True)
    for flag in (True, False):
        tier = [e for e, s in zip(excess, significant, strict=True) if s is flag]
        assert tier == sorted(tier, reverse=True)
    click(at, at.button(key=f"select:{ids[1]}"))
    assert at.session_state[key] == ids[1]
    heads = [m.value for m in at.markdown if m.value.startswith("**▶ ")]
    assert len(heads) == 1 and heads[0].startswith(f"**▶ #{ids[1]} ·")
    assert at.button(key=f"select:{ids[1]}").proto.type == "primary"
    assert at.button(key=f"select:{ids[0]}").proto.type == "secondary"
    assert any(m.value.startswith(f"**Under-performing #{ids[1]} ·") for m in at.markdown)
    assert buttons(at, "CAM", prefix=f"under:{ids[1]}:")
    assert not buttons(at, "CAM", prefix=f"under:{ids[0]}:")
    assert at.text_input(key=save_name_key(ids[1])).value == f"subgroup {ids[1]}"
    charts = confusion_charts(at)
    assert f"Confusion matrix of #{ids[1]}" in charts
    for spec in charts.values():  # only the classes present in the subgroup, in class order
        classes = chart_classes(spec)
        assert 1 <= len(classes) <= 10 and classes == sorted(classes)
    # the choice survives another widget's rerun
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    no_exception(at)
    assert at.session_state[key] == ids[1]


def test_cam_on_the_last_selections_images_still_opens_after_another_select(tiny):
    """A CAM click on the gallery the browser still shows, arriving in or after the run of a
    Select (issue 21's class: a starved page clicks before the new gallery is drawn), opens
    that image's dialog; before, the request named the old gallery and nothing drew it."""
    at = recluster(tiny, 30)  # several subgroups to select from
    old_cam = buttons(at, "CAM", prefix="under:")[0]
    _, group, row = old_cam.key.split(":")
    other = next(b for b in buttons(at, "Select") if b.key != f"select:{group}")
    other.click()  # both clicks in one run, as Streamlit folds a click sent while a run is busy
    old_cam.click().run()
    no_exception(at)
    assert not buttons(at, "CAM", prefix=f"under:{group}:")  # the page now shows the other subgroup
    header = [m.value for m in at.markdown if " · label **" in m.value]
    assert len(header) == 1  # ... and the clicked image's dialog
    assert at.selectbox(key=f"detail.gradcam_layer:{row}")


def test_grad_cam_window(tiny):
    at = tiny
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    cam = buttons(at, "CAM", prefix="under:")
    assert cam and buttons(at, "CAM", prefix="well:")  # both sides have images
    _, group, row = cam[0].key.split(":")
    images_before = len(at.image)
    cam[0].click().run()
    no_exception(at)
    # the dialog's content is in the tree: the image, its label and prediction, two maps
    header = [m.value for m in at.markdown if " · label **" in m.value]
    assert len(header) == 1 and "predicted **" in header[0] and "confidence" in header[0]
    assert header[0].startswith("**images/")
    captions = [c for im in at.image for c in im.captions]
    assert "Image (as the model sees it)" in captions
    assert any(c.startswith("Predicted: ") for c in captions)
    assert any(c.startswith("True: ") for c in captions)
    assert len(at.image) == images_before + 3
    layer = at.selectbox(key=f"detail.gradcam_layer:{row}")
    assert layer.options == ["block1", "block2", "block3"] and layer.value == "block3"
    assert not at.error
    # the details: top scores and attributes beside the image
    tables = [t.value for t in at.dataframe]
    assert any(list(t.columns[:2]) == ["class", "score"] and len(t) == 5 for t in tables)
    assert any(list(t.columns) == ["attribute", "value"] for t in tables)
    # another layer: the dialog stays open and redraws its maps
    layer.set_value("block1").run()
    no_exception(at)
    assert any(c.startswith("Predicted: ") for im in at.image for c in im.captions)
    # dismissing it (Escape or the close button clears the request) closes it
    del at.session_state["detail.open"]
    at.run()
    no_exception(at)
    assert not [m for m in at.markdown if " · label **" in m.value]


def test_neuron_panel_sliders_and_concept_window(tiny):
    at = tiny
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    no_exception(at)
    assert "Neuron activation panel" in [s.value for s in at.subheader]
    assert [m.value for m in at.markdown if m.value in ("`block1`", "`block2`", "`block3`")] == [
        "`block1`", "`block2`", "`block3`"
    ]
    base = neuron_buttons(at)
    assert base and all(max(u, w) >= 0.5 - 0.005 for u, w in base.values())
    # a stricter activation-score threshold keeps a subset of the neurons
    at.slider(key="subgroups.neuron_threshold").set_value(0.9).run()
    no_exception(at)
    strict = neuron_buttons(at)
    assert set(strict) <= set(base)
    assert all(max(u, w) >= 0.9 - 0.005 for u, w in strict.values())
    assert all(strict[k] == base[k] for k in strict)
    # a larger mass rule selects more neurons per image: scores only grow
    at.slider(key="subgroups.neuron_threshold").set_value(0.5).run()
    at.slider(key="subgroups.mass").set_value(20.0).run()
    no_exception(at)
    wide = neuron_buttons(at)
    assert set(base) <= set(wide)
    assert all(wide[k][0] >= base[k][0] and wide[k][1] >= base[k][1] for k in base)
    at.slider(key="subgroups.mass").set_value(3.0).run()
    # open a neuron: its concept window
    key = next(iter(base))
    _, layer, channel = key.split(":")
    at.button(key=key).click().run()
    no_exception(at)
    texts = [m.value for m in at.markdown]
    assert any(t.startswith(f"**{layer} · neuron {channel}** — activation score") for t in texts)
    assert any(t.startswith("**Concept patches**") for t in texts)
    assert any(t.startswith("**Top images**") for t in texts)
    patch_values = [c for im in at.image for c in im.captions if re.fullmatch(r"-?\d+\.\d\d", c)]
    assert 1 <= len(patch_values) <= 10  # the concept patches, captioned with the activation
    assert not at.error
    keys = [k for k in at.session_state._state.filtered_state if k.startswith("subgroups.highlight:")]
    assert len(keys) == 1  # scoped to the workspace and the subgroup pair
    highlight = [tuple(n) for n in at.session_state[keys[0]]]
    assert highlight[0] == (layer, int(channel))
    # next run: the neuron (and its cluster mates) are highlighted in the panel
    at.run()
    no_exception(at)
    assert at.button(key=key).proto.type == "primary"
    for mate_layer, mate in highlight[1:]:
        assert at.button(key=f"neuron:{mate_layer}:{mate}").proto.type == "primary"
    lit = {f"neuron:{name}:{channel}" for name, channel in highlight}
    assert all(at.button(key=k).proto.type == "secondary" for k in neuron_buttons(at) if k not in lit)
    # another subgroup: its panel starts with nothing highlighted
    others = [b for b in at.button if b.key and b.key.startswith("select:") and b.proto.type == "secondary"]
    if others:
        others[0].click().run()
        at.run()
        no_exception(at)
        assert all(at.button(key=k).proto.type == "secondary" for k in neuron_buttons(at))


def test_save_subset_and_export_csv(tiny, monkeypatch):
    exported: list[bytes] = []
    real = core.methods.subgroups_csv

    def spy(result, ids, threshold):
        exported.append(real(result, ids, threshold))
        return exported[-1]

    monkeypatch.setattr(core.methods, "subgroups_csv", spy)  # the page imports it on every run
    at = tiny
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    no_exception(at)
    assert at.download_button[0].label == "Export subgroups (CSV)"
    assert at.download_button[0].proto.url.endswith(".csv")
    frame = pd.read_csv(io.BytesIO(exported[-1]))
    assert list(frame.columns[:1]) == ["subgroup"]
    assert {"subgroup", "size", "accuracy", "under_performing", "image_ids"} <= set(frame.columns)
    count, _ = under_count(at)
    assert frame["size"].sum() == 200 and int(frame["under_performing"].sum()) == count
    assert sum(len(ids.split(";")) for ids in frame["image_ids"]) == 200
    selected = at.session_state[selected_key()]
    size = int(frame.loc[frame["subgroup"] == selected, "size"].iloc[0])
    # save the under-performing subgroup; the Cohorts page lists it
    at.text_input(key=save_name_key(selected)).input("worst")
    buttons(at, "Save as subset")[0].click().run()
    no_exception(at)
    assert any(f"Saved subset 'worst' ({size} images)" in t.value for t in at.toast)
    # and the similar well-performing one
    well = int(next(m.value for m in at.markdown if m.value.startswith("**Similar well-performing #"))
               .split("#")[1].split(" ")[0])
    well_size = int(frame.loc[frame["subgroup"] == well, "size"].iloc[0])
    at.radio(key="subgroups.save_which").set_value("well-performing").run()
    at.text_input(key=save_name_key(well)).input("its neighbour")
    buttons(at, "Save as subset")[0].click().run()
    no_exception(at)
    at.switch_page("pages/cohorts.py").run()
    no_exception(at)
    subsets = at.dataframe[-1].value
    assert list(subsets["origin"]) == ["subgroup", "subgroup"]
    assert list(subsets["size"]) == [size, well_size]


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def more_workspaces(tmp_path, tiny_files, monkeypatch):
    """The tiny workspaces plus a 12-image one and one with an MLP (no conv layers)."""
    extra = f"""
[workspace.small]
model = {CNN_MODEL}
dataset = {{ kind = "csv", csv = "{tiny_files / 'manifest.csv'}", limit = 12 }}

[workspace.mlp]
model = {MLP_MODEL}
dataset = {{ kind = "csv", csv = "{tiny_files / 'manifest.csv'}" }}
"""
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    return lambda: AppTest.from_file(str(REPO / "app.py"), default_timeout=240)


def test_fewer_than_20_images_is_a_clear_error(more_workspaces):
    at = open_subgroups(build_tiny(more_workspaces(), "small"))
    assert len(at.error) == 1
    message = at.error[0].value
    assert "cannot be computed" in message and "Only 12 images" in message and "at least 20" in message
    assert not buttons(at, "Select") and not at.subheader


def test_model_without_conv_layers(more_workspaces):
    at = open_subgroups(build_tiny(more_workspaces(), "mlp"))
    assert not at.error
    count, _ = under_count(at)
    assert count >= 1 and len(buttons(at, "Select")) == count
    assert "Neuron activation panel" in [s.value for s in at.subheader]
    assert any("neuron panel does not apply: the model has no convolutional layers" in i.value for i in at.info)
    assert not buttons(at, prefix="neuron:") and not at.slider
    assert confusion_charts(at)
    # the Grad-CAM window says it does not apply (and still shows the image's label)
    buttons(at, "CAM")[0].click().run()
    no_exception(at)
    assert any("Grad-CAM does not apply: the model has no convolutional layers" in i.value for i in at.info)
    assert any(" · label **" in m.value for m in at.markdown)
    assert not at.error and not at.selectbox


def test_no_conv_layer_in_the_store(app):
    key = load_workspaces().workspaces["tiny"].key()
    app.session_state[f"store.layers:{key}"] = []  # the Overview's layer choice: none
    at = open_subgroups(build_tiny(app))
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    no_exception(at)
    assert under_count(at)[0] >= 1
    assert any("None of the model's conv blocks is in the activation store" in w.value for w in at.warning)
    assert not buttons(at, prefix="neuron:")
    # Grad-CAM needs the model, not the store: it still works
    buttons(at, "CAM")[0].click().run()
    no_exception(at)
    assert any(c.startswith("Predicted: ") for im in at.image for c in im.captions)
    assert not at.error


def test_single_class_subgroups_still_show_a_confusion_matrix(app, monkeypatch):
    at = open_subgroups(build_tiny(app))
    # every image labelled and predicted '7' (correctness kept, so subgroups stay the same)
    real = cache.meta_for

    def one_class(store):
        meta = real(store).copy()
        meta["label_idx"] = meta["pred_idx"] = 7
        meta["label"] = meta["pred"] = "7"
        return meta

    monkeypatch.setattr(cache, "meta_for", one_class)
    at.segmented_control(key=CHOICE).set_value("0.66 (UDIS code)").run()
    no_exception(at)
    charts = confusion_charts(at)
    selected = at.session_state[selected_key()]
    assert f"Confusion matrix of #{selected}" in charts and len(charts) == 2
    for spec in charts.values():
        assert chart_classes(spec) == ["7"]  # one class: a 1 x 1 matrix, still drawn
    assert not at.error


# --------------------------------------------------------------------------- demo


@pytest.mark.slow
def test_subgroups_page_on_the_demo(demo_app):
    at = demo_app.run()  # Overview builds the demo store on first open
    no_exception(at)
    at = open_subgroups(at)
    assert not at.error
    count, threshold = under_count(at)
    assert threshold == 0.5 and count >= 3 and len(buttons(at, "Select")) == count
    assert "Scorecard: planted slices" in [s.value for s in at.subheader]
    card = next(d.value for d in at.dataframe if "P@10" in d.value.columns)
    assert "recall" in card.columns
    slices = card.set_index("slice")
    assert set(slices.index) == {"marked_sandals", "dark_pullovers", "striped_trousers", "green_coats"}
    assert (card["P@10"] >= 0.8).all() and card["identified"].all()  # every planted slice found
    assert card["recall"].between(0, 100).all()  # shown in %
    # the significance of every cluster: the under-performing ones are far from chance
    tests = next(d.value for d in at.dataframe if "q" in d.value.columns)
    assert len(tests) > count and tests["significant"].sum() >= count
    # found on one half, measured on the other: the planted failures keep a clearly negative gap
    [b for b in at.button if b.label == "Confirm on a held-out half"][0].click().run()
    no_exception(at)
    held = next(d.value for d in at.dataframe if "held-out gap" in d.value.columns)
    assert len(held) >= 3 and (held["held-out gap"] < -20).sum() >= 3  # percentage points
    assert neuron_buttons(at)
