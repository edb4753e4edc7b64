"""Every estimator in core.methods keeps scikit-learn's estimator contract, checked on tiny data.

(The per-image explainers, which learn nothing and have no ``fit``, keep their own contract:
tests/unit/test_explainers.py.)

Parameters are stored unchanged by ``__init__`` (keywords with defaults), so ``clone``,
``get_params`` and ``set_params`` work and ``get_params()`` can key a cache; ``fit`` returns
``self``, leaves the parameters as they were and stores what it learned in attributes that
end with ``_``. A new estimator needs a case in CASES, or the test fails.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_estimator_repr,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)
from sklearn.utils.validation import check_is_fitted

import core.methods
from core.methods import (
    UDIS,
    ActivationMatrix,
    ConceptPatches,
    ConceptPatchFinder,
    FailureModes,
    LinearProbes,
    NAPs,
    NeuronClusters,
    NeuronSelector,
    Projection,
    Spotlight,
    TopographicLayout,
)
from tests.support import digits_dataset, tiny_model

ESTIMATORS = [
    value
    for value in (getattr(core.methods, name) for name in core.methods.__all__)
    if isinstance(value, type) and issubclass(value, BaseEstimator)
]


def _spotlight_data() -> tuple:
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 3)), rng.exponential(size=40)


def _udis_data() -> tuple:
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 3)), rng.random(40) < 0.7


def _patch_data() -> tuple:
    model, dataset = tiny_model(), digits_dataset(12)
    activations = np.random.default_rng(0).random((len(dataset), 16))  # block3 has 16 channels
    return model, dataset, [("block3", 5)], lambda layer: activations


def _concepts() -> tuple:
    empty = np.zeros(0, dtype=np.int64)
    patches = {
        (name, 0): ConceptPatches((name, 0), empty, empty, np.zeros((0, 3), dtype=np.int64), np.zeros(0), [], np.array(v))
        for name, v in (("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [1.0, 0.1]))
    }
    return (patches,)


# estimator -> (constructor parameters for a quick fit, the fit's arguments)
CASES: dict[type, tuple[dict[str, Any], Callable[[], tuple]]] = {
    Spotlight: ({"steps": 30}, _spotlight_data),
    UDIS: ({}, _udis_data),
    NeuronSelector: ({"mass": 0.5}, lambda: (np.random.default_rng(0).random((10, 4)),)),
    ConceptPatchFinder: ({"n_images": 2, "n_masks": 3, "n_patches": 2}, _patch_data),
    NeuronClusters: ({}, _concepts),
    FailureModes: ({"n_groups": 2, "min_size": 2}, lambda: (np.random.default_rng(0).normal(size=(12, 6)), np.arange(12))),
    LinearProbes: ({"epochs": 2, "n_seeds": 2}, lambda: (
        {"l": np.random.default_rng(0).normal(size=(30, 4))}, np.arange(30) % 3, ["a", "b", "c"])),
    NAPs: ({"chunk": 5}, lambda: (np.random.default_rng(0).normal(size=(12, 4)), np.arange(12) % 3)),
    TopographicLayout: ({"iterations": 5}, lambda: (np.random.default_rng(0).normal(size=(3, 20)),)),
    ActivationMatrix: ({"chunk": 5, "top_n": 3}, lambda: (np.random.default_rng(0).normal(size=(12, 4)), [np.arange(6), np.array([2, 9])])),
    Projection: ({"method": "pca"}, lambda: (np.random.default_rng(0).normal(size=(12, 4)),)),
}


def test_every_method_module_has_an_estimator():
    packages = [info.name for info in pkgutil.iter_modules(core.methods.__path__) if info.ispkg]
    assert packages
    for name in packages:  # a method's package: its estimators, its own data, its groups
        package = importlib.import_module(f"core.methods.{name}")
        inside = [info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
        assert any(cls.__module__ in inside for cls in ESTIMATORS), (
            f"core/methods/{name}/ exports no BaseEstimator through core.methods"
        )
    assert set(CASES) == set(ESTIMATORS), "every estimator in core.methods needs a case in CASES"


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_sklearn_parameter_checks(cls):
    name = cls.__name__
    for check in (
        check_parameters_default_constructible,
        check_no_attributes_set_in_init,
        check_get_params_invariance,
        check_set_params,
        check_estimator_repr,
    ):
        check(name, cls())


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_clone_and_params_round_trip(cls):
    params, _ = CASES[cls]
    estimator = cls(**params)
    copy = clone(estimator)
    assert copy is not estimator and copy.get_params() == estimator.get_params()
    other = cls().set_params(**estimator.get_params())
    assert other.get_params() == estimator.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(estimator)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_fit_returns_self_and_learns_only_underscored_attributes(cls):
    params, data = CASES[cls]
    estimator = cls(**params)
    before = estimator.get_params()
    assert estimator.fit(*data()) is estimator
    assert estimator.get_params() == before  # fit never changes a parameter
    learned = set(vars(estimator)) - set(before)
    assert learned and all(name.endswith("_") and not name.startswith("_") for name in learned), learned
    check_is_fitted(estimator)
    assert not set(vars(clone(estimator))) & learned  # a clone is unfitted


def test_readers_refuse_an_unfitted_estimator():
    with pytest.raises(NotFittedError):
        UDIS().rows(0)
    with pytest.raises(NotFittedError):
        UDIS().under_performing(0.5)
    with pytest.raises(NotFittedError):
        NeuronSelector().activation_scores(np.array([0]))
