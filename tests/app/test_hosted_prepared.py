"""A hosted server after ``python -m core prepare``: visitors use the Filter saliency and
Intersectional pages at their defaults without starting a heavy run, see each run's
expected time before they start it, and are refused a run past the hosted caps, with what
to lower and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.__main__ import main
from core.methods import LinearProbes, TopographicLayout
from core.services import estimates
from core.ui import saliency_view
from tests.app.conftest import REPO
from tests.app.test_app import no_exception
from tests.support import digits_arrays, make_tiny_cnn

WS = "scripted"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files) -> tuple[Path, Path]:
    """A TorchScript tiny CNN (allowed when hosted) over the digits with two attribute
    columns, prepared by the CLI in hosted mode: (workspace file, cache)."""
    root = tmp_path_factory.mktemp("hosted-prepared")
    _, labels, attributes = digits_arrays(200)
    lines = ["path,label,tint,parity"] + [
        f"{tiny_files / 'images' / str(label) / f'{i:04d}.png'},{label},{attributes.loc[i, 'tint']},{attributes.loc[i, 'parity']}"
        for i, label in enumerate(labels)
    ]
    (root / "inter.csv").write_text("\n".join(lines) + "\n")
    weights = root / "tiny.ts.pt"
    torch.jit.script(make_tiny_cnn()).save(str(weights))
    workspaces = root / "workspaces.toml"
    workspaces.write_text(
        f'[workspace.{WS}]\ntitle = "Scripted tiny"\n'
        f'model = {{ kind = "torchscript", weights = "{weights}", input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}\n'
        f'dataset = {{ kind = "csv", csv = "{root / "inter.csv"}" }}\n'
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIASLENS_HOSTED", "1")
        assert main(["--file", str(workspaces), "prepare", WS, "--cache", str(root / "cache")]) == 0
    return workspaces, root / "cache"


@pytest.fixture
def visitor(server, monkeypatch) -> AppTest:
    """A hosted app on the prepared server, where no heavy run of the pages' defaults may start."""
    workspaces, cache = server
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(workspaces))
    monkeypatch.setenv("BIASLENS_CACHE", str(cache))
    monkeypatch.setenv("BIASLENS_HOSTED", "1")
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
    at.session_state["app.workspace"] = WS
    return at.run()


def refuse(*args, **kwargs):
    raise AssertionError("a visitor's page started a heavy run that prepare had done")


def texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.markdown, at.caption, at.warning, at.info, at.error, at.subheader) for e in kind]
    return "\n".join(str(p) for p in parts)


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    return at


def test_intersectional_shows_the_prepared_probes_and_maps_without_running_them(visitor, monkeypatch):
    monkeypatch.setattr(LinearProbes, "fit", refuse)
    monkeypatch.setattr(TopographicLayout, "fit", refuse)
    monkeypatch.setattr("core.methods.intersectional.features._build", refuse)
    at = open_page(visitor, "pages/intersectional.py")
    assert any(m.value.startswith("**Most frequent errors**") for m in at.markdown)
    assert not [b for b in at.button if b.label == "Train the probes"]
    assert sum(c.startswith("n=") for im in at.image for c in im.captions) == 4  # the maps, from the prepared layout
    assert "On this server, a probe run takes at most 8 layers, 5 seeds, 100 epochs and 256 images per group" in texts(at)


def test_filter_saliency_works_for_visitors_at_its_defaults(visitor, monkeypatch):
    monkeypatch.setattr(saliency_view, "build_profiles", refuse)  # where the page's view calls it
    at = open_page(visitor, "pages/saliency.py")
    text = texts(at)
    assert "Pick an image" in text and "has not prepared" not in text
    assert "On this server, a run over many images takes at most 200 images" in text
    assert "Expected: about" in text  # beside the turn-off and fine-tuning buttons
    assert "python -m" not in text and "/stores/" not in text


def test_filter_saliency_for_unprepared_layers_says_to_pick_the_prepared_ones(visitor):
    at = open_page(visitor, "pages/saliency.py")
    key = next(m.key for m in at.multiselect if m.label == "Conv layers profiled")
    at.multiselect(key=key).set_value(["block1"]).run()
    no_exception(at)
    text = texts(at)
    assert "has prepared the saliency profiles over every conv layer" in text and "python -m" not in text


def test_a_probe_run_past_the_disk_budget_is_refused_before_it_starts(visitor, server, monkeypatch):
    _, cache = server
    monkeypatch.setattr(estimates, "HOSTED_REQUEST_DISK_BYTES", 1000)
    at = open_page(visitor, "pages/intersectional.py")
    at.number_input(key="intersectional.per_group").set_value(20).run()  # another sample: new activations
    no_exception(at)
    warning = " ".join(w.value for w in at.warning)
    assert "would write" in warning and "Use fewer layers or a smaller cap per group" in warning
    assert next(b for b in at.button if b.label == "Train the probes").proto.disabled  # a browser cannot click it
    assert "writes" in texts(at) and "on this server" in texts(at)  # the estimate, before any click
    assert len(list(cache.glob("stores/*/probes/*/manifest.json"))) == 1  # only the prepared activations


def test_a_probe_run_past_the_time_cap_is_refused_saying_what_to_lower(visitor, monkeypatch):
    monkeypatch.setattr(estimates, "HOSTED_MAX_RUN_SECONDS", 1e-4)
    at = open_page(visitor, "pages/intersectional.py")
    at.number_input(key="intersectional.epochs").set_value(40).run()
    no_exception(at)
    warning = " ".join(w.value for w in at.warning)
    assert "Training these probes would take about" in warning and "visitors may start runs of up to" in warning
    assert "Use fewer seeds, layers or epochs" in warning
    assert next(b for b in at.button if b.label == "Train the probes").proto.disabled


def test_a_turn_off_run_past_the_time_cap_is_refused_with_how_many_images_fit(visitor, monkeypatch):
    monkeypatch.setattr(estimates, "HOSTED_MAX_RUN_SECONDS", 1e-4)
    at = open_page(visitor, "pages/saliency.py")
    warnings = " ".join(w.value for w in at.warning)
    assert "Turning filters off would take about" in warnings and "Use at most 1 image." in warnings
    assert next(b for b in at.button if b.key == "saliency.aggregate").proto.disabled
