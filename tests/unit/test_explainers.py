"""Every per-image explainer in core.methods keeps the explainer contract, checked on the tiny CNN.

The contract (core/methods/explainer.py): keyword-only parameters with defaults, each stored
unchanged under its own name; ``get_params()`` returns them (the key of a cached result) and
round-trips through the constructor; one call ``explain(model, images, targets, **context)``
returns the explainer's frozen ``result_type`` and leaves the explainer and the model as
they were. The results are checked against the same quantities computed independently here
(softmax, profiles, the input gradient of eq. 4, zeroed filters, the one-step update,
masked pixels). A new explainer needs a case in CASES, or the test fails.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator

import core.methods
from core.methods import (
    CounterfactualCheck,
    Explainer,
    FilterSaliency,
    FilterTurnOff,
    FineTuneCheck,
    GradCAM,
    MaskingExperiment,
    OcclusionMap,
)
from core.methods.saliency.filters import ProfileStats, conv_filters, filter_profiles, standardise
from core.models.loading import make_transform, model_view
from tests.support import digits_dataset, tiny_model

EXPLAINERS = [
    value
    for value in (getattr(core.methods, name) for name in core.methods.__all__)
    if isinstance(value, type) and issubclass(value, Explainer) and value is not Explainer
]


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    """The tiny model, its filter index, 8 digits (images, normalised batch, labels), their z
    profiles and reference statistics."""
    model, dataset = tiny_model(), digits_dataset(8)
    index = conv_filters(model.module)
    transform = make_transform(model.input_size, model.mean, model.std)
    x = torch.stack([transform(dataset.load_image(i)) for i in range(8)])
    y = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.int64)
    profiles = filter_profiles(model.module, x, y, index).numpy()
    stats = ProfileStats(index.n_filters).update(profiles)
    return {"model": model, "dataset": dataset, "index": index, "x": x, "y": y, "mu": stats.mu, "sigma": stats.sigma,
            "z": standardise(profiles, stats.mu, stats.sigma), "transform": transform}


def _softmax(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.module(x).float(), dim=1).numpy()


# --------------------------------------------------------------------------- inputs: (images, targets, context)


def _gradcam_inputs(s: dict) -> tuple:
    return s["dataset"].load_image(0), [0, 1], {}


def _saliency_inputs(s: dict) -> tuple:
    return s["dataset"].load_image(0), int(s["y"][0]), {"mu": s["mu"], "sigma": s["sigma"], "index": s["index"]}


def _turn_off_inputs(s: dict) -> tuple:
    return s["x"][:2], s["y"][:2], {"z": s["z"][:2], "index": s["index"]}


def _fine_tune_inputs(s: dict) -> tuple:
    return s["x"][:1], int(s["y"][0]), {"z": s["z"][0], "index": s["index"], "neighbours": s["x"][1:4],
                                         "neighbour_targets": s["y"][1:4]}


def _masking_inputs(s: dict) -> tuple:
    size = s["model"].input_size
    saliency_map = np.linspace(0, 1, size**2).reshape(size, size)
    return s["dataset"].load_image(0), int(s["y"][0]), {"saliency_map": saliency_map, "top": np.arange(3), "mu": s["mu"],
                                                       "sigma": s["sigma"], "index": s["index"]}


# --------------------------------------------------------------------------- expected results, computed here


def _check_gradcam(result, s: dict, images, targets, context) -> None:
    model = s["model"]
    assert result.layer == "block2" and result.targets == [0, 1]
    assert result.maps.shape == (2, model.input_size, model.input_size)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    np.testing.assert_allclose(result.probabilities, _softmax(model, s["transform"](images)[None])[0], rtol=1e-5, atol=1e-7)


def _input_gradient(model, x: torch.Tensor, label: int, index, mu, sigma, top, boost: float) -> np.ndarray:
    """d/dx of the cosine distance between z(x) and z with its top filters boosted (eq. 3-4)."""
    modules = dict(model.module.named_modules())
    weights = [modules[layer].weight for layer in index.layers]
    xi = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model.module(xi), torch.tensor([label]))
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    profile = torch.cat([g.abs().flatten(1).mean(dim=1) for g in grads])
    z = (profile - torch.as_tensor(mu, dtype=torch.float32)) / torch.as_tensor(sigma, dtype=torch.float32)
    boosted = z.detach().clone()
    boosted[torch.as_tensor(top)] *= boost
    distance = 1 - F.cosine_similarity(z[None], boosted[None])[0]
    (gradient,) = torch.autograd.grad(distance, xi)
    return gradient[0].numpy()


def _check_saliency(result, s: dict, images, targets, context) -> None:
    model, index, mu, sigma = s["model"], s["index"], s["mu"], s["sigma"]
    x = s["transform"](images)[None]
    probabilities = _softmax(model, x)[0]
    np.testing.assert_allclose(result.probabilities, probabilities, rtol=1e-5, atol=1e-7)
    assert result.prediction == int(np.argmax(probabilities))
    profile = filter_profiles(model.module, x, torch.tensor([targets]), index, method="loop")[0].numpy()
    np.testing.assert_allclose(result.profile, profile, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(result.z, standardise(profile[None], mu, sigma)[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(result.top, np.argsort(-result.z, kind="stable")[:3])
    assert [(f["layer"], f["filter"]) for f in result.top_filters] == [index.name(int(c)) for c in result.top]
    gradient = _input_gradient(model, x, targets, index, mu, sigma, result.top, 100.0)
    np.testing.assert_allclose(result.raw_map, np.abs(gradient.max(axis=0)), rtol=1e-3, atol=1e-9)
    assert result.raw_map.max() > 0
    assert result.map.shape == (model.input_size, model.input_size) and 0 <= result.map.min() <= result.map.max() <= 1
    np.testing.assert_array_equal(result.view, model_view(model, images))
    assert result.index is index and result.notes == []


def _without(model, columns: list[int], index) -> torch.nn.Module:
    """A copy of the model with these profile columns' filters zeroed (W[f] = 0)."""
    module = copy.deepcopy(model.module)
    modules = dict(module.named_modules())
    with torch.no_grad():
        for c in columns:
            layer, f = index.name(int(c))
            modules[layer].weight[f] = 0
    return module


def _check_turn_off(result, s: dict, images, targets, context) -> None:
    model, index, z = s["model"], s["index"], context["z"]
    probabilities = _softmax(model, images)
    predictions = probabilities.argmax(axis=1)
    np.testing.assert_array_equal(result.predictions, predictions)
    assert result.max_k == 2 and len(result.curves) == 2 * 3 * 3
    curves = result.curves.set_index(["image", "order", "k"])
    for i in range(len(images)):
        label = int(targets[i])
        for order in ("salient", "random", "least"):  # k = 0: the unchanged model
            assert curves.loc[(i, order, 0), "true_confidence"] == pytest.approx(probabilities[i, label], rel=1e-5, abs=1e-8)
        magnitude = np.abs(z[i])
        for order, ranked in (("salient", np.argsort(-magnitude, kind="stable")), ("least", np.argsort(magnitude, kind="stable"))):
            for k in (1, 2):
                with torch.no_grad():
                    after = torch.softmax(_without(model, list(ranked[:k]), index)(images[i : i + 1]), dim=1)[0].numpy()
                row = curves.loc[(i, order, k)]
                assert row["true_confidence"] == pytest.approx(after[label], rel=1e-5, abs=1e-8)
                assert row["wrong_confidence"] == pytest.approx(after[predictions[i]], rel=1e-5, abs=1e-8)
                assert row["correct"] == float(after.argmax() == label)
    assert result.summary().shape[0] == 3 * 3


def _check_fine_tune(result, s: dict, images, targets, context) -> None:
    model, index, z = s["model"], s["index"], context["z"]
    assert result.k == 1 and result.notes == []  # 1% of the tiny CNN's 40 filters, at least 1
    column = int(np.argsort(-z, kind="stable")[0])
    np.testing.assert_array_equal(result.selected["salient"], [column])
    np.testing.assert_array_equal(result.selected["least"], [int(np.argsort(-z, kind="stable")[::-1][0])])
    # the salient variant's step (the default, 0.1), by hand: W[f] -= step * ||W[f]|| * g[f] / ||g[f]||
    layer, f = index.name(column)
    weight = dict(model.module.named_modules())[layer].weight
    loss = F.cross_entropy(model.module(images), torch.tensor([targets]))
    (gradient,) = torch.autograd.grad(loss, [weight])
    stepped = copy.deepcopy(model.module)
    with torch.no_grad():
        g, w = gradient[f].double(), weight[f].double()
        dict(stepped.named_modules())[layer].weight[f] -= (0.1 * w.norm() / g.norm()).float() * gradient[f]
    batch = torch.cat([images, context["neighbours"]])
    labels = np.concatenate([[targets], np.asarray(context["neighbour_targets"])])
    before = _softmax(model, batch)
    with torch.no_grad():
        after = torch.softmax(stepped(batch), dim=1).numpy()
    rows = np.arange(len(labels))
    salient = result.results.set_index("variant").loc["salient"]
    assert salient["image_corrected"] == float(after[0].argmax() == targets)
    # the tiny CNN is barely trained: its confidences move by about 1e-5, hence the tight tolerance
    assert salient["image_true_confidence_change"] == pytest.approx(after[0, targets] - before[0, targets], abs=1e-8)
    change = (after[rows, labels] - before[rows, labels])[1:].mean()
    assert salient["neighbours_true_confidence_change"] == pytest.approx(change, abs=1e-8)
    wrong = before.argmax(axis=1)[1:] != labels[1:]
    expected = (after.argmax(axis=1)[1:] == labels[1:])[wrong].mean() if wrong.any() else np.nan
    np.testing.assert_allclose(salient["neighbours_corrected_share"], expected)
    assert list(result.results["variant"]) == ["salient", "random", "least"]


def _check_masking(result, s: dict, images, targets, context) -> None:
    model, index, mu, sigma = s["model"], s["index"], s["mu"], s["sigma"]
    mask = context["saliency_map"] >= 0.9
    np.testing.assert_array_equal(result.mask, mask)
    assert result.masked_share == pytest.approx(mask.mean())
    x = s["transform"](images)[None]
    masked = x * torch.as_tensor(~mask, dtype=x.dtype)
    np.testing.assert_allclose(result.probabilities_before, _softmax(model, x)[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.probabilities_after, _softmax(model, masked)[0], rtol=1e-5, atol=1e-7)
    y = torch.tensor([targets, targets])
    z = standardise(filter_profiles(model.module, torch.cat([x, masked]), y, index, method="loop").numpy(), mu, sigma)
    np.testing.assert_allclose(result.z_before, z[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(result.z_after, z[1], rtol=1e-3, atol=1e-3)
    assert result.top_saliency_before == pytest.approx(float(result.z_before[:3].mean()))
    assert result.top_saliency_after == pytest.approx(float(result.z_after[:3].mean()))
    assert result.saliency_drop == pytest.approx(result.top_saliency_before - result.top_saliency_after)


def _check_occlusion(result, s: dict, images, targets, context) -> None:
    assert result.attributions.shape == (2, 1, 16, 16) and (result.window, result.stride) == (2, 2)
    np.testing.assert_allclose(result.probabilities, _softmax(s["model"], images), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.targets[:, 0], targets.numpy())


RAMP = np.tile(np.linspace(0, 1, 256).reshape(16, 16), (8, 1, 1))  # a map ranking the bottom rows first


def _check_counterfactual(result, s: dict, images, targets, context) -> None:
    assert list(result.table["region"]) == ["ramp", "random"]
    wrong = np.flatnonzero(_softmax(s["model"], images).argmax(axis=1) != targets.numpy())
    np.testing.assert_array_equal(result.errors, wrong)  # only the misclassified images are checked
    assert result.table.loc[0, "errors"] == len(wrong)


# explainer -> (constructor parameters, its inputs, the checks of its result)
CASES: dict[type, tuple[dict[str, Any], Callable[[dict], tuple], Callable[..., None]]] = {
    GradCAM: ({"layer": "block2"}, _gradcam_inputs, _check_gradcam),
    FilterSaliency: ({"k": 3}, _saliency_inputs, _check_saliency),
    FilterTurnOff: ({"max_k": 2, "n_random": 1}, _turn_off_inputs, _check_turn_off),
    FineTuneCheck: ({"n_random": 1}, _fine_tune_inputs, _check_fine_tune),
    MaskingExperiment: ({"threshold": 0.9}, _masking_inputs, _check_masking),
    OcclusionMap: ({"max_evaluations": 100}, lambda s: (s["x"][:2], s["y"][:2], {}), _check_occlusion),
    CounterfactualCheck: ({"n_random": 2}, lambda s: (s["x"], s["y"], {"maps": {"ramp": RAMP}}), _check_counterfactual),
}


def test_every_explainer_has_a_case_and_none_poses_as_an_estimator():
    assert set(EXPLAINERS) == {GradCAM, FilterSaliency, FilterTurnOff, FineTuneCheck, MaskingExperiment, OcclusionMap,
                               CounterfactualCheck}
    assert set(CASES) == set(EXPLAINERS), "every explainer in core.methods needs a case in CASES"
    for cls in EXPLAINERS:
        assert not issubclass(cls, BaseEstimator) and not hasattr(cls, "fit"), cls
        assert getattr(core.methods, cls.result_type.__name__) is cls.result_type  # exported beside it


@pytest.mark.parametrize("cls", EXPLAINERS, ids=lambda cls: cls.__name__)
def test_keyword_only_defaults_stored_as_attributes(cls):
    parameters = [p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"]
    assert parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty for p in parameters)
    default = cls()
    for p in parameters:
        assert getattr(default, p.name) == p.default
    assert set(vars(default)) == {p.name for p in parameters}  # nothing else is stored
    params, _, _ = CASES[cls]
    given = {name: object() for name in params}  # stored unchanged: the very objects given
    explainer = cls(**given)
    assert all(getattr(explainer, name) is value for name, value in given.items())
    with pytest.raises(TypeError):
        cls(*params.values())  # keywords only


@pytest.mark.parametrize("cls", EXPLAINERS, ids=lambda cls: cls.__name__)
def test_get_params_round_trips(cls):
    params, _, _ = CASES[cls]
    explainer = cls(**params)
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}
    assert explainer.get_params() == {**defaults, **params}
    assert cls(**explainer.get_params()).get_params() == explainer.get_params()
    assert cls().get_params() == defaults
    assert repr(explainer) == f"{cls.__name__}(" + ", ".join(f"{k}={v!r}" for k, v in sorted(params.items())) + ")"
    assert repr(cls()) == f"{cls.__name__}()"


@pytest.mark.parametrize("cls", EXPLAINERS, ids=lambda cls: cls.__name__)
def test_explain_returns_its_result_and_changes_nothing(cls, setup):
    params, inputs, check = CASES[cls]
    model = setup["model"]
    images, targets, context = inputs(setup)
    explainer = cls(**params)
    before = explainer.get_params()
    state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    flags = [p.requires_grad for p in model.module.parameters()]
    result = explainer.explain(model, images, targets, **context)
    assert type(result) is cls.result_type
    assert dataclasses.is_dataclass(result) and result.__dataclass_params__.frozen
    first = dataclasses.fields(result)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, first, None)
    assert not any(f.name.endswith("_") for f in dataclasses.fields(result))
    assert explainer.get_params() == before and set(vars(explainer)) == set(before)  # nothing learned
    after = model.module.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert [p.requires_grad for p in model.module.parameters()] == flags
    assert all(p.grad is None for p in model.module.parameters()) and not model.module.training
    check(result, setup, images, targets, context)
    again = explainer.explain(model, images, targets, **context)  # the same inputs, the same answer
    for f in dataclasses.fields(result):
        assert _equal(getattr(result, f.name), getattr(again, f.name)), f.name


def _equal(a: Any, b: Any) -> bool:
    """Exact equality of result fields: frames, arrays, dicts and lists of them, or identity."""
    if hasattr(a, "equals"):
        return bool(a.equals(b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float | str | bool) or a is None:
        return a == b
    return a is b
