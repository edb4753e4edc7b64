"""AppTest of the settings widgets drawn from a method's ``Setting``s (core/ui/method_page.py's
``settings_form``, and ``settings_widgets`` live): on the Spotlight, Subgroups and
Intersectional pages the widgets, their keys, labels, ranges, help texts, defaults and columns
are those the pages wrote out by hand before, and the chosen values come back in the
estimator's units; a hosted server caps a number, and a remembered choice no longer offered
falls back to its default. (Filter saliency's live widgets: tests/app/test_saliency_page.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block

from core.methods.intersectional.record import RECORD as INTERSECTIONAL
from core.methods.records import MethodRecord, Setting, setting_defaults
from core.methods.spotlight.record import RECORD as SPOTLIGHT
from core.methods.spotlight.record import default_size
from core.methods.subgroups.record import RECORD as SUBGROUPS
from core.services.workspace import load_workspaces
from tests.app.test_app import build_tiny, no_exception

NUMBER_TYPES = {0: "int", 1: "float"}  # NumberInput.proto.data_type


def form_rows(at: AppTest, form: str) -> list[list[tuple[float, str]]]:
    """The form's rows of columns, each column as (its share of the row's width, its widget's key)."""
    def find(node: Any) -> Block | None:
        if getattr(node, "type", None) == "form" and node.proto.form.form_id == form:
            return node
        return next((hit for child in getattr(node, "children", {}).values() if (hit := find(child))), None)

    rows = [row for row in find(at.main).children.values() if row.type == "flex_container"]
    return [[(round(column.weight, 3), next(iter(column.children.values())).key) for column in row.children.values()]
            for row in rows]


def check_widgets(at: AppTest, record: MethodRecord, form: str, n: int, page_defaults: dict[str, Any]) -> None:
    """Every setting of ``record`` is a widget of ``form`` keyed ``<page>.<name>``, with its label, help,
    range, step, format and number type, showing the estimator's default for ``n`` images."""
    defaults = {**record.defaults(n).get_params(), **page_defaults}
    for setting in record.settings:
        key = f"{record.name}.{setting.name}"
        widget = {"int": at.number_input, "float": at.number_input, "choice": at.selectbox, "bool": at.checkbox}[setting.kind](key=key)
        assert (widget.label, widget.help, widget.form_id) == (setting.label, setting.help or "", form), key
        assert widget.value == pytest.approx(setting.shown(defaults[setting.name])), key
        if setting.kind in ("int", "float"):
            assert (widget.min, widget.max) == (setting.low, setting.high), key
            assert NUMBER_TYPES[widget.proto.data_type] == setting.kind, key
            assert setting.step is None or widget.step == setting.step, key
            assert widget.proto.format == (setting.format or ("%d" if setting.kind == "int" else "%0.2f")), key


def check_live_widgets(at: AppTest, record: MethodRecord, settings: tuple[Setting, ...], n: int, hosted: bool = False) -> None:
    """Each of ``settings`` is a live widget (in no form) keyed ``<page>.<name>``, of its kind, with its label,
    help, range, step and format, showing its owner's default for ``n`` images."""
    defaults = setting_defaults(record, n)
    for setting in settings:
        key = f"{record.name}.{setting.name}"
        kind = setting.widget or {"int": "number_input", "float": "number_input", "choice": "selectbox", "bool": "checkbox"}[setting.kind]
        widget = getattr(at, kind)(key=key)
        assert (widget.label, widget.form_id) == (setting.label, ""), key
        assert widget.help == (setting.help or "") or (hosted and setting.hosted_note), key
        assert widget.value == pytest.approx(setting.shown(defaults[setting.name])), key
        if setting.kind in ("int", "float"):
            assert (widget.min, widget.max) == (setting.low, setting.high_for(hosted)), key
            assert setting.step is None or widget.step == setting.step, key
        if kind == "number_input":
            assert NUMBER_TYPES[widget.proto.data_type] == setting.kind, key
            assert widget.proto.format == (setting.format or ("%d" if setting.kind == "int" else "%0.2f")), key


def row_of(at: AppTest, key: str) -> list[str]:
    """The labels of the widgets in the row of columns that holds the widget keyed ``key``."""
    def find(node: Any, row: Block | None) -> Block | None:
        if getattr(node, "key", None) == key:
            return row
        here = node if getattr(node, "type", None) == "flex_container" and getattr(node, "children", None) else row
        return next((hit for child in getattr(node, "children", {}).values() if (hit := find(child, here))), None)

    row = find(at.main, None)
    return [next(iter(column.children.values())).label for column in row.children.values() if column.children]


@pytest.fixture
def tiny(app) -> AppTest:
    return build_tiny(app)


def test_spotlight_form_is_the_one_written_before(tiny):
    at = tiny
    at.switch_page("pages/spotlight.py").run()
    no_exception(at)
    n = 200
    check_widgets(at, SPOTLIGHT, "spotlight_controls", n, {"representation": "embedding"})
    # known values, as the page wrote them by hand
    size = at.number_input(key="spotlight.size")
    assert (size.label, size.min, size.max, size.step, size.value) == ("Size S (% of images)", 0.0, 99.9, 0.5, 100 * default_size(n))
    assert size.value == 12.5  # 25 of 200 images
    assert at.number_input(key="spotlight.n_spotlights").value == 5 and at.number_input(key="spotlight.steps").max == 5000
    assert at.selectbox(key="spotlight.kernel").options == ["gaussian", "compact"]
    assert at.selectbox(key="spotlight.representation").options[0].startswith("Last hidden layer")  # format_func
    assert form_rows(at, "spotlight_controls") == [
        [(0.4, "spotlight.representation"), (0.2, "spotlight.size"), (0.2, "spotlight.n_spotlights"), (0.2, "spotlight.steps")],
        [(0.2, "spotlight.kernel"), (0.2, "spotlight.precision"), (0.2, "spotlight.pca"), (0.2, "spotlight.lr"), (0.2, "spotlight.seed")],
    ]
    [run] = [b for b in at.button if b.label == "Run"]
    assert run.proto.type == "primary"


def test_spotlight_form_gives_the_run_the_estimators_units(tiny):
    at = tiny
    at.switch_page("pages/spotlight.py").run()
    at.number_input(key="spotlight.size").set_value(10.0)
    at.number_input(key="spotlight.n_spotlights").set_value(1)
    at.number_input(key="spotlight.steps").set_value(50)
    at.selectbox(key="spotlight.kernel").set_value("compact")
    [b for b in at.button if b.label == "Run"][0].click().run()
    no_exception(at)
    run_key = f"spotlight.run:{load_workspaces().workspaces['tiny'].key()}"
    assert at.session_state[run_key] == {
        "representation": "embedding",
        "params": {"size": 0.1, "n_spotlights": 1, "steps": 50, "kernel": "compact", "precision": "spherical",
                   "pca": None, "lr": 0.01, "seed": 0},  # S as a share, PCA 0 = off
    }
    at.number_input(key="spotlight.pca").set_value(3)
    [b for b in at.button if b.label == "Run"][0].click().run()
    no_exception(at)
    assert at.session_state[run_key]["params"]["pca"] == 3


def test_subgroups_form_is_the_one_written_before_and_keeps_max_above_min(tiny):
    at = tiny
    at.switch_page("pages/subgroups.py").run()
    no_exception(at)
    check_widgets(at, SUBGROUPS, "udis_settings", 200, {})
    assert [e.label for e in at.expander][:1] == ["Clustering settings (UDIS)"]
    sample = at.number_input(key="subgroups.silhouette_sample")
    assert (sample.label, sample.min, sample.max, sample.step, sample.value) == ("Silhouette sample", 100, 20_000, 500, 4000)
    assert at.checkbox(key="subgroups.stop_at_perfect").value is True
    assert form_rows(at, "udis_settings") == [
        [(0.25, "subgroups.min_size"), (0.25, "subgroups.max_size"), (0.25, "subgroups.silhouette_sample"), (0.25, "subgroups.max_cuts")],
        [(0.25, "subgroups.exact_limit"), (0.25, "subgroups.micro_clusters"), (0.25, "subgroups.stop_at_perfect"), (0.25, "subgroups.seed")],
    ]
    at.number_input(key="subgroups.min_size").set_value(30)
    at.number_input(key="subgroups.max_size").set_value(10)
    at.button(key="FormSubmitter:udis_settings-Re-cluster").click().run()
    no_exception(at)
    run_key = f"subgroups.run:{load_workspaces().workspaces['tiny'].key()}"
    assert at.session_state[run_key] == {"min_size": 30, "max_size": 31, "silhouette_sample": 4000, "max_cuts": 40,
                                         "exact_limit": 5000, "micro_clusters": 4096, "stop_at_perfect": True, "seed": 0}
    assert at.number_input(key="subgroups.max_size").value == 10  # the box keeps what was typed, the run the fix


def generic_form(hosted: bool) -> None:
    """A settings form of four made-up settings (run by AppTest.from_function)."""
    import streamlit as st

    from core.methods.records import Setting
    from core.ui.method_page import settings_form

    settings = (
        Setting("share", "Share (%)", "float", 0.0, 50.0, step=0.5, format="%.2f", scale=100),
        Setting("cap", "Cap", "int", 1, 1000, hosted_high=10, help="At most."),
        Setting("pca", "PCA (0 = off)", "int", 0, 64, none_as=0),
        Setting("mode", "Mode", "choice", options=("a", "b")),
    )
    st.session_state["chosen"] = settings_form(
        "spotlight", "generic_form", settings, {"share": 0.1, "cap": 5, "pca": None, "mode": "a", "unused": 1},
        last=st.session_state.get("last"), columns=([2, 1], 2), submit="Go", hosted=hosted)


@pytest.mark.parametrize("hosted, cap", [(False, 1000), (True, 10)])
def test_a_generic_form_caps_on_a_hosted_server_and_returns_parameter_units(hosted, cap):
    at = AppTest.from_function(generic_form, kwargs={"hosted": hosted}, default_timeout=120).run()
    no_exception(at)
    assert at.number_input(key="spotlight.cap").max == cap
    assert at.number_input(key="spotlight.share").value == 10.0 and at.number_input(key="spotlight.pca").value == 0
    assert at.session_state["chosen"] is None  # not submitted
    assert form_rows(at, "generic_form") == [[(0.667, "spotlight.share"), (0.333, "spotlight.cap")],
                                             [(0.5, "spotlight.pca"), (0.5, "spotlight.mode")]]
    at.number_input(key="spotlight.share").set_value(12.5)
    at.selectbox(key="spotlight.mode").set_value("b")
    at.button(key="FormSubmitter:generic_form-Go").click().run()
    assert at.session_state["chosen"] == {"share": 0.125, "cap": 5, "pca": None, "mode": "b"}


def test_a_generic_form_seeds_from_the_last_run_and_drops_a_choice_no_longer_offered():
    at = AppTest.from_function(generic_form, kwargs={"hosted": False}, default_timeout=120)
    at.session_state["last"] = {"share": 0.2, "cap": 7, "pca": 4, "mode": "gone"}
    at.run()
    no_exception(at)
    assert at.number_input(key="spotlight.share").value == 20.0
    assert at.number_input(key="spotlight.cap").value == 7 and at.number_input(key="spotlight.pca").value == 4
    assert at.selectbox(key="spotlight.mode").value == "a"  # "gone" is not offered: the default


def test_intersectional_probe_widgets_are_the_ones_written_before(tiny):
    at = tiny
    at.switch_page("pages/intersectional.py").run()
    no_exception(at)
    check_live_widgets(at, INTERSECTIONAL, INTERSECTIONAL.settings, 200)
    # known values, as the page wrote them by hand (LinearProbes' defaults)
    shown = {name: at.number_input(key=f"intersectional.{name}") for name in ("per_group", "seed", "n_seeds", "epochs")}
    assert {name: (w.label, w.min, w.max, w.value) for name, w in shown.items()} == {
        "per_group": ("Cap per group (probes)", 4, 100_000, 128), "seed": ("Sampling seed", 0, 10_000, 0),
        "n_seeds": ("Seeds", 1, 20, 5), "epochs": ("Epochs", 1, 500, 50)}
    assert shown["n_seeds"].help == "Each seed draws a new 90/10 split and initialisation: the interval is over seeds."
    # the same places: the probes' sample beside the NAPs' cap, seeds and epochs beside the layers
    assert row_of(at, "intersectional.per_group") == ["Cap per group (NAPs)", "Cap per group (probes)", "Sampling seed"]
    assert row_of(at, "intersectional.epochs") == ["Layers", "Reduce to ≤ 8×8 by", "Seeds", "Epochs"]
    # a change reruns the page at once (no form) and is kept after another page
    at.number_input(key="intersectional.per_group").set_value(20).run()
    no_exception(at)
    assert any(t.label == "Capped at 20 (probes)" for t in at.tabs)
    at.switch_page("pages/spotlight.py").run()
    at.switch_page("pages/intersectional.py").run()
    no_exception(at)
    assert at.number_input(key="intersectional.per_group").value == 20


def live_widgets(hosted: bool) -> None:
    """Live settings widgets of every kind and style (run by AppTest.from_function)."""
    import streamlit as st

    from core.methods.records import Setting
    from core.ui.method_page import settings_widgets

    settings = (
        Setting("k", "Top (k)", "int", 1, 1000, hosted_high=10, hosted_note=True, help="The top ones."),
        Setting("share", "Share (%)", "float", 0.0, 50.0, step=0.5, scale=100, widget="slider"),
        Setting("order", "Order", "choice", options=("up", "down"), widget="radio"),
        Setting("least", "Least", "bool", widget="toggle"),
    )
    c1, c2 = st.columns(2)
    st.session_state["chosen"] = settings_widgets(
        "saliency", settings, {"k": 5, "share": 0.1, "order": "up", "least": False}, (c1, c2, st, st),
        format_funcs={"order": str.upper}, hosted=hosted)


@pytest.mark.parametrize("hosted", [False, True])
def test_live_widgets_of_every_style_return_parameter_units_and_note_the_hosted_cap(hosted):
    at = AppTest.from_function(live_widgets, kwargs={"hosted": hosted}, default_timeout=120).run()
    no_exception(at)
    k = at.number_input(key="saliency.k")
    assert (k.max, k.help) == ((10, "The top ones. This server allows at most 10.") if hosted else (1000, "The top ones."))
    assert at.slider(key="saliency.share").value == 10.0 and at.radio(key="saliency.order").options == ["UP", "DOWN"]
    assert at.toggle(key="saliency.least").value is False
    assert at.session_state["chosen"] == {"k": 5, "share": 0.1, "order": "up", "least": False}
    at.slider(key="saliency.share").set_value(12.5).run()  # live: no button
    at.radio(key="saliency.order").set_value("down").run()
    at.toggle(key="saliency.least").set_value(True).run()
    assert at.session_state["chosen"] == {"k": 5, "share": 0.125, "order": "down", "least": True}
    assert at.session_state["saliency.order:kept"] == "down"  # kept across pages (core.ui.widgets.kept)
