"""The method pages' settings forms are described next to their estimators (``Setting`` in
core.methods.records, ``RECORD.settings`` in each method's record.py): every field names a
real parameter of the estimator (or says it is the page's own), its default is the
estimator's ``get_params()`` (a Setting holds no default of its own), and its range holds it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from core.methods import KERNELS, PRECISIONS
from core.methods.records import MethodRecord, Setting, method_records
from core.methods.spotlight.record import RECORD as SPOTLIGHT
from core.methods.subgroups.record import RECORD as SUBGROUPS

WITH_SETTINGS = [r for r in method_records() if r.settings]
SIZES = (20, 200, 1_000, 1_250, 10_000, 200_000)  # images in a store: the Spotlight's default S depends on it


def test_spotlight_and_subgroups_describe_their_forms():
    assert [r.name for r in WITH_SETTINGS] == ["spotlight", "subgroups"]
    assert [s.name for s in SPOTLIGHT.settings] == [
        "representation", "size", "n_spotlights", "steps", "kernel", "precision", "pca", "lr", "seed"]
    assert [s.name for s in SUBGROUPS.settings] == [
        "min_size", "max_size", "silhouette_sample", "max_cuts", "exact_limit", "micro_clusters", "stop_at_perfect", "seed"]


@pytest.mark.parametrize("record", WITH_SETTINGS, ids=lambda r: r.name)
def test_every_setting_is_a_parameter_of_the_estimator_or_the_pages_own(record: MethodRecord):
    params = record.estimator().get_params()
    names = [s.name for s in record.settings]
    assert len(set(names)) == len(names), names
    for setting in record.settings:
        assert (setting.name in params) != setting.page_only, setting.name
        assert setting.label and setting.kind in ("int", "float", "choice", "bool"), setting.name


def test_a_setting_has_no_default_of_its_own():
    """The defaults come from the estimator only: settings_form takes them from get_params()."""
    assert not {f.name for f in fields(Setting)} & {"default", "value", "initial"}


@pytest.mark.parametrize("record", WITH_SETTINGS, ids=lambda r: r.name)
@pytest.mark.parametrize("n", SIZES)
def test_the_ranges_hold_the_estimators_defaults(record: MethodRecord, n: int):
    defaults = record.defaults(n).get_params()
    for setting in record.settings:
        if setting.page_only:
            continue
        value = defaults[setting.name]
        shown = setting.shown(value)
        if setting.kind in ("int", "float"):
            assert setting.low <= shown <= setting.high, (setting.name, shown)
            assert setting.hosted_high is None or setting.low <= shown <= setting.hosted_high, setting.name
            back = setting.chosen(shown)  # the form gives back the estimator's own value
            assert back is None if value is None else back == pytest.approx(value), setting.name
        elif setting.kind == "choice":
            assert value in setting.options, (setting.name, value)
        else:
            assert isinstance(value, bool), setting.name


def test_the_spotlight_pages_defaults_are_the_papers_settings():
    """Known values: 5 spotlights, S = 2% from 1,250 images on (at least 25 images below), 1000 Adam steps."""
    defaults = SPOTLIGHT.defaults(10_000).get_params()
    shown = {s.name: s.shown(defaults[s.name]) for s in SPOTLIGHT.settings if not s.page_only}
    assert shown == {"size": 2.0, "n_spotlights": 5, "steps": 1000, "kernel": "gaussian", "precision": "spherical",
                     "pca": 0, "lr": 0.01, "seed": 0}
    size = next(s for s in SPOTLIGHT.settings if s.name == "size")
    assert size.shown(SPOTLIGHT.defaults(200).get_params()["size"]) == pytest.approx(12.5)  # 25 of 200 images
    kernel, precision = (next(s for s in SPOTLIGHT.settings if s.name == name) for name in ("kernel", "precision"))
    assert kernel.options == KERNELS and precision.options == PRECISIONS


def test_shown_and_chosen_convert_units():
    share = Setting("size", "Size S (%)", "float", 0.0, 99.9, scale=100)
    assert share.shown(0.02) == 2.0 and share.chosen(2.0) == 0.02 and share.chosen(12.5) == 0.125
    off = Setting("pca", "PCA (0 = off)", "int", 0, 4096, none_as=0)
    assert off.shown(None) == 0 and off.shown(16) == 16
    assert off.chosen(0) is None and off.chosen(16.0) == 16 and isinstance(off.chosen(16.0), int)
    plain = Setting("steps", "Steps", "int", 50, 5000)
    assert plain.chosen(300.0) == 300 and isinstance(plain.chosen(300.0), int)
    choice = Setting("kernel", "Kernel", "choice", options=("a", "b"))
    assert choice.shown("b") == "b" and choice.chosen("b") == "b"


def test_a_hosted_cap_lowers_the_maximum_on_a_hosted_server_only():
    capped = Setting("epochs", "Epochs", "int", 1, 500, hosted_high=50)
    assert capped.high_for(hosted=True) == 50 and capped.high_for(hosted=False) == 500
    assert Setting("seed", "Seed", "int", 0, 10_000).high_for(hosted=True) == 10_000
