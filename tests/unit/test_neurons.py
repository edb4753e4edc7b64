"""VisCUIT's neuron panel: Summit's selection rule, scores, columns, masks, concept patches,
neuron clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import ModelError
from core.methods.subgroups.neurons import (
    ConceptPatches,
    ConceptPatchFinder,
    NeuronClusters,
    NeuronSelector,
    mask_positions,
    neuron_columns,
    patch_size_for,
)
from core.models.loading import make_transform
from tests.support import digits_dataset, tiny_model

LAYERS = ("block1", "block3")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def dataset():
    return digits_dataset(40)


@pytest.fixture(scope="module")
def activations(model, dataset):
    """Per-channel max over space of two blocks for every image, as the store keeps them."""
    captured = {}
    handles = [
        model.module.get_submodule(name).register_forward_hook(
            lambda _m, _a, out, name=name: captured.__setitem__(name, out.amax((2, 3)))
        )
        for name in LAYERS
    ]
    transform = make_transform(model.input_size, model.mean, model.std)
    with torch.no_grad():
        model.module(torch.stack([transform(dataset.load_image(i)) for i in range(len(dataset))]))
    for handle in handles:
        handle.remove()
    return {name: value.numpy() for name, value in captured.items()}


# --------------------------------------------------------------------------- selection


def selected_by(activations: np.ndarray, mass: float = 0.03) -> np.ndarray:
    """The (N, C) selection of a NeuronSelector fitted on ``activations``."""
    return NeuronSelector(mass=mass).fit(activations).selected_


def test_select_neurons_by_hand():
    row = np.array([[0.5, 0.3, 0.2]])
    # 0.5 does not exceed 0.6 x 1.0, 0.5 + 0.3 does: the crossing channel is included
    assert selected_by(row, 0.6).tolist() == [[True, True, False]]
    # exactly equal is not exceeding: 0.5 alone is not enough for mass 0.5
    assert selected_by(row, 0.5).tolist() == [[True, True, False]]
    assert selected_by(row, 0.4).tolist() == [[True, False, False]]
    assert selected_by(row, 1.0).tolist() == [[True, True, True]]
    # a zero row selects nothing; negative values count as zero and are never selected
    table = np.array([[0.0, 0.0, 0.0], [-5.0, 0.2, 0.1], [0.1, -1.0, 0.0]])
    assert selected_by(table, 0.5).tolist() == [
        [False, False, False],
        [False, True, False],
        [True, False, False],
    ]
    assert selected_by(np.array([[0.5, 0.5, 0.0]]), 1.0).tolist() == [[True, True, False]]


def test_select_neurons_ties_take_the_lower_channel_first():
    # two equal channels, one is enough to exceed 40%: only the first is taken
    assert selected_by(np.array([[0.0, 0.5, 0.5]]), 0.4).tolist() == [[False, True, False]]


def _selected_by_loop(values: np.ndarray, mass: float) -> np.ndarray:
    """The rule written as a loop: each row's largest positive values until they hold ``mass``."""
    expected = np.zeros(values.shape, dtype=bool)
    for i, row in enumerate(np.maximum(values, 0)):
        order = np.argsort(-row, kind="stable")
        total, running = row.sum(), 0.0
        for c in order:
            if row[c] <= 0 or running > mass * total:
                break
            expected[i, c] = True
            running += row[c]
    return expected


def test_select_neurons_matches_a_loop():
    """The vectorised selection equals the loop (its speed is measured by bench/subgroups.py)."""
    rng = np.random.default_rng(0)
    small = rng.integers(-2, 5, size=(200, 9)).astype(np.float64)  # many ties and zeros
    for mass in (0.03, 0.3, 0.5, 1.0):
        assert (selected_by(small, mass) == _selected_by_loop(small, mass)).all()
    big = rng.random((2_000, 512)).astype(np.float32)  # a layer's width: the loop on a sample of rows
    selected = selected_by(big)
    assert selected.shape == big.shape and selected.any(axis=1).all()
    sample = rng.choice(len(big), 20, replace=False)
    assert (selected[sample] == selected_by(big[sample])).all()
    assert (selected_by(big[sample].astype(np.float64), 0.5) == _selected_by_loop(big[sample].astype(np.float64), 0.5)).all()


def test_select_neurons_rejects_bad_mass():
    for mass in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="mass"):
            selected_by(np.ones((1, 3)), mass)


def test_activation_scores_by_hand():
    selected = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool)
    selector = NeuronSelector(mass=1.0).fit(selected.astype(float))  # mass 1: every active channel
    np.testing.assert_array_equal(selector.selected_, selected)
    np.testing.assert_allclose(selector.activation_scores(np.array([0, 1, 3])), [1, 1 / 3, 1 / 3])
    np.testing.assert_allclose(selector.activation_scores(np.array([2])), [0, 0, 1])
    mask = np.array([True, False, True, False])
    np.testing.assert_allclose(selector.activation_scores(mask), [0.5, 0, 1])
    np.testing.assert_array_equal(selector.activation_scores(np.array([], dtype=int)), [0, 0, 0])


def test_neuron_columns_by_hand():
    under = {"conv1": np.array([0.9, 0.6, 0.2, 0.1]), "conv2": np.array([0.5, 0.0, 0.7])}
    well = {"conv1": np.array([0.1, 0.7, 0.8, 0.4]), "conv2": np.array([0.5, 0.49, 0.0])}
    table = neuron_columns(under, well, threshold=0.5, layer_order=["conv1", "conv2"])
    assert list(table.columns) == ["layer", "layer_index", "neuron", "under", "well", "column"]
    rows = list(table[["layer", "layer_index", "neuron", "column"]].itertuples(index=False))
    assert [tuple(r) for r in rows] == [
        ("conv1", 0, 0, "under only"),
        ("conv1", 0, 1, "both"),
        ("conv1", 0, 2, "well only"),
        ("conv2", 1, 2, "under only"),  # column order: under only, both, well only
        ("conv2", 1, 0, "both"),  # conv2's neuron 1 (0.49) stays hidden
    ]
    # network order decides the layer order; a higher threshold hides more
    reordered = neuron_columns(under, well, threshold=0.75, layer_order=["conv2", "conv1"])
    assert [tuple(r) for r in reordered[["layer", "neuron", "column"]].itertuples(index=False)] == [
        ("conv1", 0, "under only"),
        ("conv1", 2, "well only"),
    ]
    assert reordered["layer_index"].tolist() == [1, 1]
    # within a column, the best score comes first
    ranked = neuron_columns({"c": np.array([0.6, 0.9, 0.7])}, {"c": np.zeros(3)})
    assert ranked["neuron"].tolist() == [1, 2, 0]
    empty = neuron_columns(under, well, threshold=1.0)
    assert empty.empty and list(empty.columns) == list(table.columns)


def test_neuron_columns_rejects_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        neuron_columns({"c": np.ones(2)}, {"c": np.ones(2)}, threshold=1.2)
    with pytest.raises(ValueError, match="conv9"):
        neuron_columns({"conv9": np.ones(2)}, {}, layer_order=["conv1"])
    with pytest.raises(ValueError, match="one length"):
        neuron_columns({"c": np.ones(2)}, {"c": np.ones(3)})


# --------------------------------------------------------------------------- masks


def test_patch_size_for():
    assert patch_size_for(224) == 30
    assert patch_size_for(32) == 8
    assert patch_size_for(28) == 7
    assert patch_size_for(16) == 4
    assert patch_size_for(448) == 60
    assert patch_size_for(8) == 3
    assert patch_size_for(2) == 2


def test_mask_positions_respect_size_bounds_and_spacing():
    for seed in range(60):
        side, size, gap = [(224, 30, 5), (32, 8, 5), (16, 4, 1), (20, 20, 5)][seed % 4]
        corners = mask_positions(side, size, 32, gap, np.random.default_rng(seed))
        assert corners.ndim == 2 and corners.shape[1] == 2 and 1 <= len(corners) <= 32
        assert corners.dtype.kind == "i"
        assert (corners >= 0).all() and (corners + size <= side).all()
        for i in range(len(corners)):
            for j in range(i):
                dy, dx = np.abs(corners[i] - corners[j])
                assert dy >= size + gap or dx >= size + gap
    assert len(mask_positions(224, 30, 5, 5, np.random.default_rng(0))) == 5
    assert len(mask_positions(20, 20, 32, 5, np.random.default_rng(0))) == 1  # only one fits
    assert mask_positions(16, 4, 0, 5, np.random.default_rng(0)).shape == (0, 2)
    first, again = (mask_positions(224, 30, 32, 5, np.random.default_rng([3, 7])) for _ in "ab")
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match="size"):
        mask_positions(16, 17, 4, 5, np.random.default_rng(0))


# --------------------------------------------------------------------------- concept patches


def patches_of(model, dataset, neurons, max_activations, **params) -> dict:
    """The concept patches of a ConceptPatchFinder fitted on these neurons."""
    return ConceptPatchFinder(**params).fit(model, dataset, neurons, max_activations).patches_


def test_concept_patches_on_the_tiny_cnn(model, dataset, activations):
    neurons = [("block1", 0), ("block3", 5), ("block1", 3)]
    result = patches_of(model, dataset, neurons, activations.__getitem__, batch_size=16)
    assert list(result) == neurons
    size = patch_size_for(model.input_size)
    for (layer, channel), patches in result.items():
        expected_rows = np.argsort(-activations[layer][:, channel], kind="stable")[:10]
        np.testing.assert_array_equal(patches.image_rows, expected_rows)
        assert patches.patch_boxes.shape == (10, 3) and len(patches.patch_rows) == 10
        boxes = patches.patch_boxes
        assert (boxes[:, 2] == size).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + size <= model.input_size).all()
        assert (np.diff(patches.patch_activations) <= 0).all()
        assert set(patches.patch_rows) <= set(patches.image_rows)
        for row, (y, x, _) in zip(patches.patch_rows, boxes, strict=True):
            # the masks of an image depend on its row and the seed only, not on the neuron
            masks = mask_positions(model.input_size, size, 32, 5, np.random.default_rng([0, row]))
            assert [y, x] in masks.tolist()
        assert all(p.shape == (size, size, 3) and p.dtype == np.uint8 for p in patches.patch_images)
        assert patches.embedding.shape == (model.embedding_dim,)
        assert np.linalg.norm(patches.embedding) == pytest.approx(1.0)
    # one neuron alone gets the same patches as within a batch of several
    alone = patches_of(model, dataset, neurons[1:2], activations.__getitem__, batch_size=7)
    np.testing.assert_array_equal(alone[neurons[1]].patch_boxes, result[neurons[1]].patch_boxes)
    np.testing.assert_array_equal(alone[neurons[1]].patch_rows, result[neurons[1]].patch_rows)
    np.testing.assert_allclose(
        alone[neurons[1]].patch_activations, result[neurons[1]].patch_activations, rtol=1e-5
    )


def test_concept_patch_activation_and_crop_match_a_hand_made_mask(model, dataset, activations):
    neuron = ("block3", 5)
    patches = patches_of(model, dataset, [neuron], activations.__getitem__)[neuron]
    row, (y, x, size) = int(patches.patch_rows[0]), patches.patch_boxes[0]
    transform = make_transform(model.input_size, model.mean, model.std)
    image = transform(dataset.load_image(row))
    masked = torch.zeros_like(image)
    masked[:, y : y + size, x : x + size] = image[:, y : y + size, x : x + size]
    captured = {}
    handle = model.module.block3.register_forward_hook(
        lambda _m, _a, out: captured.__setitem__("out", out)
    )
    with torch.no_grad():
        model.module(masked[None])
    handle.remove()
    best = patches.patch_activations[0]
    assert float(captured["out"][0, 5].max()) == pytest.approx(best, rel=1e-5)
    pixels = np.asarray(dataset.load_image(row).resize((model.input_size,) * 2))
    np.testing.assert_allclose(
        patches.patch_images[0], pixels[y : y + size, x : x + size], atol=1
    )


def test_concept_patches_reject_unknown_layers_and_channels(model, dataset, activations):
    with pytest.raises(ModelError, match="not a module"):
        patches_of(model, dataset, [("nope", 0)], activations.__getitem__)
    with pytest.raises(ModelError, match="16 channels"):
        patches_of(model, dataset, [("block3", 16)], activations.__getitem__)
    assert patches_of(model, dataset, [], activations.__getitem__) == {}


# --------------------------------------------------------------------------- clusters


def clusters_of(patches: dict, threshold: float = 0.9) -> dict:
    """Each neuron's cluster, from NeuronClusters fitted on ``patches``."""
    return NeuronClusters(threshold=threshold).fit(patches).clusters_


def _concept(name: str, vector: list[float]) -> ConceptPatches:
    empty = np.zeros(0, dtype=np.int64)
    return ConceptPatches(
        neuron=(name, 0),
        image_rows=empty,
        patch_rows=empty,
        patch_boxes=np.zeros((0, 3), dtype=np.int64),
        patch_activations=np.zeros(0),
        patch_images=[],
        embedding=np.array(vector, dtype=np.float64),
    )


def test_cluster_neurons_by_hand():
    patches = {
        ("a", 0): _concept("a", [1.0, 0.0, 0.0]),
        ("b", 0): _concept("b", [0.0, 1.0, 0.0]),  # orthogonal to a: a new cluster
        ("c", 0): _concept("c", [2.0, 0.0, 0.0]),  # the same direction as a
        ("d", 0): _concept("d", [0.0, 0.8, 0.6]),  # cosine 0.8 with b: not above 0.9
    }
    assert clusters_of(patches) == {("a", 0): 0, ("b", 0): 1, ("c", 0): 0, ("d", 0): 2}
    assert clusters_of(patches, threshold=0.75) == {
        ("a", 0): 0,
        ("b", 0): 1,
        ("c", 0): 0,
        ("d", 0): 1,
    }
    # the most similar cluster wins, not the first one above the threshold
    e, f, g = _concept("e", [1.0, 0.0]), _concept("f", [0.6, 0.8]), _concept("g", [0.8, 0.6])
    assert list(clusters_of({("e", 0): e, ("f", 0): f, ("g", 0): g}, 0.7).values()) == [0, 1, 1]
    # a neuron is compared with the cluster's re-normalised mean: f (cosine 0.6 with e) joins
    # once g has pulled the mean of e's cluster towards it
    assert list(clusters_of({("e", 0): e, ("g", 0): g, ("f", 0): f}, 0.7).values()) == [0, 0, 0]
    with pytest.raises(ValueError, match="threshold"):
        clusters_of(patches, threshold=2.0)


def test_tied_concept_patches_prefer_other_images_then_other_positions():
    """A flat neuron: many masked inputs give the same activation. Among them the patches
    shown come from images (then positions) not shown yet, not the first masks of one image,
    and the ties are counted."""
    from core.methods.subgroups.neurons import _Best, _distinct, _merge, _tied

    # 9 pairs: pair 0 is the best; pairs 1-8 tie. Pairs 0-4 are image 10, 5-6 image 11,
    # 7-8 image 12; pairs 1 and 2 share a position, so do 5 and 3.
    pair_rows = np.array([10, 10, 10, 10, 10, 11, 11, 12, 12])
    corners = np.array([[0, 0], [1, 1], [1, 1], [2, 2], [3, 3], [2, 2], [4, 4], [5, 5], [6, 6]])
    activations = np.array([5.0, 2, 2, 2, 2, 2, 2, 2, 2])
    embeddings = np.eye(9)
    empty = _Best(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, 0)))
    # two batches: the ties of the second batch are kept in the running pool
    pool = _merge(empty, np.arange(5), activations[:5], embeddings[:5], k=4)
    pool = _merge(pool, np.arange(5, 9), activations[5:], embeddings[5:], k=4)
    assert sorted(pool.pairs.tolist()) == list(range(9))
    picked = _distinct(pool, pair_rows, corners, k=5)
    # the best; then images 11 and 12; then image 10 again at positions not shown yet
    # (pair 2 repeats pair 1's position, pair 3 pair 5's)
    assert picked.pairs.tolist() == [0, 5, 7, 1, 4]
    assert pair_rows[picked.pairs].tolist() == [10, 11, 12, 10, 10]
    np.testing.assert_array_equal(picked.embeddings, embeddings[[0, 5, 7, 1, 4]])
    assert _tied(picked.activations) == 4 and _tied(np.array([3.0, 2.0, 1.0])) == 0
    # without ties the order is the activation order
    plain = _merge(empty, np.arange(4), np.array([1.0, 4.0, 3.0, 2.0]), np.eye(4), k=3)
    assert _distinct(plain, np.zeros(4, dtype=int), np.zeros((4, 2), dtype=int), k=3).pairs.tolist() == [1, 2, 3]
