"""The method pages' settings widgets are described next to their estimators (``Setting`` in
core.methods.records, ``RECORD.settings`` in each method's record.py): every field names a
real parameter of its owner (the record's estimator, or the estimator or explainer it names)
or says it is the page's own, its default is the owner's ``get_params()`` (a Setting holds no
default of its own), and its range, and its hosted cap, hold it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from core.methods import (
    KERNELS,
    PRECISIONS,
    FailureModes,
    FilterSaliency,
    FilterTurnOff,
    FineTuneCheck,
    LinearProbes,
    MaskingExperiment,
)
from core.methods.intersectional.record import RECORD as INTERSECTIONAL
from core.methods.records import (
    MethodRecord,
    Setting,
    method_records,
    scored_methods,
    setting_defaults,
)
from core.methods.saliency.explain import RANKINGS
from core.methods.saliency.record import RECORD as SALIENCY
from core.methods.spotlight.record import RECORD as SPOTLIGHT
from core.methods.subgroups.record import RECORD as SUBGROUPS
from core.services.estimates import (
    HOSTED_MAX_EPOCHS,
    HOSTED_MAX_FILTERS_K,
    HOSTED_MAX_PER_GROUP,
    HOSTED_MAX_SEEDS,
)

WITH_SETTINGS = [r for r in method_records() if r.settings]
SIZES = (20, 200, 1_000, 1_250, 10_000, 200_000)  # images in a store: the Spotlight's default S depends on it


def test_the_method_pages_describe_their_settings():
    assert [r.name for r in WITH_SETTINGS] == ["spotlight", "subgroups", "saliency", "intersectional"]
    assert [s.name for s in SPOTLIGHT.settings] == [
        "representation", "size", "n_spotlights", "steps", "kernel", "precision", "pca", "lr", "seed"]
    assert [s.name for s in SUBGROUPS.settings] == [
        "min_size", "max_size", "silhouette_sample", "max_cuts", "exact_limit", "micro_clusters", "stop_at_perfect", "seed"]
    assert [s.name for s in INTERSECTIONAL.settings] == ["per_group", "seed", "n_seeds", "epochs"]
    assert [s.name for s in SALIENCY.settings] == ["k", "ranking", "threshold", "least", "step", "n_groups"]
    assert [s.owner for s in SALIENCY.settings] == [FilterSaliency, FilterTurnOff, MaskingExperiment, MaskingExperiment,
                                                    FineTuneCheck, FailureModes]


@pytest.mark.parametrize("record", WITH_SETTINGS, ids=lambda r: r.name)
def test_every_setting_is_a_parameter_of_its_owner_or_the_pages_own(record: MethodRecord):
    names = [s.name for s in record.settings]
    assert len(set(names)) == len(names), names
    for setting in record.settings:
        owner = setting.owner or record.estimator
        assert owner is not None, setting.name  # a record without an estimator names each setting's owner
        assert (setting.name in owner().get_params()) != setting.page_only, setting.name
        assert setting.label and setting.kind in ("int", "float", "choice", "bool"), setting.name
        assert setting.widget in {"int": ("", "slider"), "float": ("", "slider"), "choice": ("", "radio"),
                                  "bool": ("", "toggle")}[setting.kind], setting.name


def test_a_setting_has_no_default_of_its_own():
    """The defaults come from the estimator only: settings_form takes them from get_params()."""
    assert not {f.name for f in fields(Setting)} & {"default", "value", "initial"}


@pytest.mark.parametrize("record", WITH_SETTINGS, ids=lambda r: r.name)
@pytest.mark.parametrize("n", SIZES)
def test_the_ranges_hold_the_estimators_defaults(record: MethodRecord, n: int):
    defaults = setting_defaults(record, n)
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


def test_the_intersectional_and_saliency_defaults_are_their_estimators():
    """Known values, as the pages wrote them by hand before: the probes' 128 images per group,
    sampling seed 0, 5 seeds, 50 epochs; saliency's top 10 filters ranked by |z|, a mask at 0.5,
    a 0.1 step, 8 failure modes. They come from the estimators, not from a copy."""
    assert setting_defaults(INTERSECTIONAL, 200) == {"per_group": 128, "seed": 0, "n_seeds": 5, "epochs": 50}
    assert setting_defaults(INTERSECTIONAL, 200) == {s.name: LinearProbes().get_params()[s.name] for s in INTERSECTIONAL.settings}
    assert setting_defaults(SALIENCY, 200) == {"k": 10, "ranking": "magnitude", "threshold": 0.5, "least": False, "step": 0.1,
                                               "n_groups": 8}
    caps = {s.name: s.hosted_high for s in (*INTERSECTIONAL.settings, *SALIENCY.settings) if s.hosted_high is not None}
    assert caps == {"per_group": HOSTED_MAX_PER_GROUP, "n_seeds": HOSTED_MAX_SEEDS, "epochs": HOSTED_MAX_EPOCHS,
                    "k": HOSTED_MAX_FILTERS_K}
    ranking = SALIENCY.settings_named("ranking")[0]
    assert ranking.options == RANKINGS and ranking.widget == "radio"


def test_the_probes_record_is_not_scored():
    """Intersectional names its estimator (LinearProbes) but turns no run into groups: the score command leaves it out."""
    assert INTERSECTIONAL.estimator is LinearProbes and INTERSECTIONAL.groups is None
    assert set(scored_methods()) == {"spotlight", "udis"}
    assert SALIENCY.estimator is None and SALIENCY.defaults is None


def test_settings_named_picks_in_the_order_asked():
    assert [s.name for s in INTERSECTIONAL.settings_named("epochs", "seed")] == ["epochs", "seed"]
    with pytest.raises(KeyError):
        INTERSECTIONAL.settings_named("nap_cap")
