"""AppTest of the Spotlight page: a run on a tiny workspace, saving a subset, bad input, the demo."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.services.workspace import load_workspaces
from core.ui import cache
from tests.app.test_app import build_tiny, no_exception


def open_spotlight(at: AppTest) -> AppTest:
    at.switch_page("pages/spotlight.py").run()
    no_exception(at)
    return at


def run_spotlights(at: AppTest, count: int, steps: int = 100, size: float | None = None) -> AppTest:
    at.number_input[1].set_value(count)  # Spotlights
    at.number_input[2].set_value(steps)  # Steps
    if size is not None:
        at.number_input[0].set_value(size)  # Size S (% of images)
    [b for b in at.button if b.label == "Run"][0].click().run()
    no_exception(at)
    return at


def test_run_two_spotlights_and_save_a_subset(app):
    at = open_spotlight(build_tiny(app))
    assert at.title[0].value == "Spotlight"
    assert any("press **Run**" in i.value for i in at.info)
    run_spotlights(at, 2, size=10.0)
    assert not at.error
    panel = at.button_group(key="spotlight.panel")
    assert list(panel.options) == ["Spotlight 1", "Spotlight 2", "Highest loss", "Random sample"]
    assert panel.value == "Spotlight 1"
    summary = at.dataframe[0].value
    assert list(summary["spotlight"]) == [1, 2]
    assert (summary["effective size"] >= 20 - 1e-3).all()  # S = 10% of 200 images
    metrics = {m.label: m.value for m in at.metric}
    assert "Weighted mean loss" in metrics and "Effective size (sum of weights)" in metrics
    assert any("✗" in c or "✓" in c for im in at.image for c in im.captions)  # galleries
    assert any("How to read this" in c.value for c in at.caption)
    # no planted slices on this workspace: no scorecard
    assert "Scorecard: planted slices" not in [s.value for s in at.subheader]
    # found on one half, measured on the other (one row per spotlight)
    [b for b in at.button if b.label == "Confirm on a held-out half"][0].click().run()
    no_exception(at)
    held = next(d.value for d in at.dataframe if "held-out gap" in d.value.columns)
    assert list(held["group"]) == ["Spotlight 1", "Spotlight 2"] and (held["discovery n"] >= 10).all()
    # a rerun (another widget) reuses the cached result: no new status box
    at.selectbox(key="spotlight.map_spotlight").set_value("Spotlight 2").run()
    no_exception(at)
    assert not at.status
    # save the first spotlight's top 20 as a subset; the Cohorts page lists it
    [b for b in at.button if b.label == "Save as subset"][0].click().run()
    no_exception(at)
    at.switch_page("pages/cohorts.py").run()
    subsets = at.dataframe[-1].value
    assert list(subsets["origin"]) == ["spotlight"] and list(subsets["size"]) == [20]
    # back on the page: the results (cached) and the settings they were found with
    open_spotlight(at)
    assert "Spotlights found" in [s.value for s in at.subheader] and not at.status
    assert at.number_input(key="spotlight.size").value == 10.0 and at.number_input(key="spotlight.n_spotlights").value == 2


def test_bad_sizes_give_clear_errors(app):
    at = open_spotlight(build_tiny(app))
    run_spotlights(at, 1, size=0.1)  # 0.2 of an image
    assert at.error and "at least one image" in at.error[0].value
    run_spotlights(at, 1, size=99.9)  # 199.8 of 200 images: all of them
    assert at.error and "must be below N" in at.error[0].value


def test_a_layer_missing_from_the_store_shows_the_store_message(app):
    at = open_spotlight(build_tiny(app))
    key = f"spotlight.run:{load_workspaces().workspaces['tiny'].key()}"
    assert key not in at.session_state  # nothing run yet
    run_spotlights(at, 1)
    run = at.session_state[key]
    # a run of a layer the store does not have (e.g. kept from before the store was rebuilt)
    at.session_state[key] = {**run, "representation": "block9:mean"}
    at.run()
    no_exception(at)
    assert at.error and "Unknown representation 'block9:mean'" in at.error[0].value


@pytest.mark.parametrize(
    ("loss", "element", "message"),
    [(0.0, "success", "Nothing to find"), (float("nan"), "error", "NaN or infinite")],
)
def test_zero_or_nan_losses_are_explained_on_the_page(app, monkeypatch, loss, element, message):
    at = open_spotlight(build_tiny(app))
    real = cache.meta_for

    def meta_with(store):
        meta = real(store).copy()
        meta["loss"] = loss
        return meta

    monkeypatch.setattr(cache, "meta_for", meta_with)
    run_spotlights(at, 1)
    shown = getattr(at, element)
    assert shown and message in shown[0].value


@pytest.mark.slow
def test_spotlight_page_on_the_demo(demo_app):
    at = demo_app.run()  # Overview builds the demo store on first open
    no_exception(at)
    at = open_spotlight(at)
    run_spotlights(at, 2, steps=300)
    assert not at.error
    assert "Scorecard: planted slices" in [s.value for s in at.subheader]
    card = next(d.value for d in at.dataframe if "P@10" in d.value.columns)
    assert len(card) >= 3 and card["P@10"].between(0, 1).all()
    assert {"P@25", "P@100", "AUROC"} <= set(card.columns)
    # beside it, the confusion-cell baseline measured the same way, and which slices the method beats it on
    cards = [d.value for d in at.dataframe if "P@10" in d.value.columns]
    assert len(cards) == 2 and cards[1]["best group"].str.contains("→").all()
    assert any("beats the baseline" in c.value for c in at.caption)
    # every spotlight's accuracy gap with its interval, p and BH q
    tests = next(d.value for d in at.dataframe if {"q", "group"} <= set(d.value.columns))
    assert sorted(tests["group"]) == ["Spotlight 1", "Spotlight 2"] and tests["q"].between(0, 1).all()
    # the spotlights are listed by evidence: significant failures first, by excess errors
    found = next(d.value for d in at.dataframe if "excess errors" in d.value.columns)
    assert [f"Spotlight {k}" for k in found["spotlight"]] == list(tests["group"])
    excess = found["excess errors"].str.replace(",", "").astype(float) if found["excess errors"].dtype == object else found["excess errors"]
    assert list(excess) == sorted(excess, reverse=True)
    # on the demo the spotlights are real failures: their gap holds on the held-out half
    [b for b in at.button if b.label == "Confirm on a held-out half"][0].click().run()
    no_exception(at)
    held = next(d.value for d in at.dataframe if "held-out gap" in d.value.columns)
    assert (held["held-out gap"] < -20).all() and (held["held-out high"] < 0).all()  # percentage points
    [b for b in at.button if b.label == "Save as subset"][0].click().run()
    no_exception(at)


def test_held_out_on_too_few_images_is_a_clear_error(tmp_path, tiny_files, monkeypatch):
    """30 images: a spotlight search is possible, a held-out half of 15 is not. The page said
    so with a traceback (found by a hostile-input sweep); now with st.error and the minimum."""
    from tests.app.conftest import REPO, write_workspaces

    extra = f'[workspace.small]\ntitle = "Small"\nmodel = {{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", ' \
            f'input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}\n' \
            f'dataset = {{ kind = "imagefolder", root = "{tiny_files / "images"}", limit = 30 }}\n'
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    at = open_spotlight(build_tiny(AppTest.from_file(str(REPO / "app.py"), default_timeout=240), "small"))
    run_spotlights(at, 1, size=20.0)
    assert not at.error
    [b for b in at.button if b.label == "Confirm on a held-out half"][0].click().run()
    no_exception(at)
    assert any("at least 40 images" in e.value and "has 30" in e.value for e in at.error)


def test_the_seed_option_reaches_the_search(app, monkeypatch):
    """The README lists a seed among the page's options: it is a widget, and the search gets it."""
    from core.methods import Spotlight

    seeds: list[int] = []
    real = Spotlight.fit

    def spy(self, *args, **kwargs):
        seeds.append(self.seed)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Spotlight, "fit", spy)
    at = open_spotlight(build_tiny(app))
    at.number_input(key="spotlight.seed").set_value(7)
    run_spotlights(at, 1, size=10.0)
    assert seeds == [7]
    assert at.number_input(key="spotlight.seed").value == 7  # kept with the run's settings
