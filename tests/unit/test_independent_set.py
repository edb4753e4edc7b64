"""An independent image set for the fine-tuning check and the saliency-space neighbours (Levin et
al. Sec. 3.3): its profiles are computed with the model under audit, kept beside that model's
store, standardised against the audited dataset and searched there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data.sources import ArrayDataset
from core.demo.dataset import DemoDataset
from core.demo.independent import INDEPENDENT_SEED, independent_images
from core.errors import InputError
from core.methods.saliency.explain import FineTuneCheck
from core.methods.saliency.filters import conv_filters, filter_profiles, standardise
from core.methods.saliency.profiles import (
    build_independent,
    build_profiles,
    find_independent,
    independent_root,
    nearest_in,
)
from core.models.loading import make_transform
from core.services.workspace import (
    CONTROL_NAME,
    INDEPENDENT_DEMO_NAME,
    WorkspaceList,
    builtin_workspaces,
    demo_workspace,
    independent_demo_images,
    independent_sets,
)
from core.store.build import build_store
from core.store.read import find_store
from tests.support import digits_arrays, tiny_model

CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The tiny model's store and profiles on 120 digits, and 120 other digits built beside it."""
    images, labels, attributes = digits_arrays(240)
    audited = ArrayDataset(images[:120], labels[:120], CLASSES, attributes=attributes[:120].reset_index(drop=True),
                           name="audited", ids=[f"d{i}" for i in range(120)])
    other = ArrayDataset(images[120:], labels[120:], CLASSES, name="other", ids=[f"d{i}" for i in range(120, 240)])
    model = tiny_model()
    store = build_store("audited", model, audited, None, batch_size=64, root=tmp_path_factory.mktemp("store"))
    profiles = build_profiles(store, model, audited)
    built = build_independent(store, model, other, "other", audited)
    return model, audited, other, store, profiles, built


def _tensor(model, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    transform = make_transform(model.input_size, model.mean, model.std)
    x = torch.stack([transform(dataset.load_image(i)) for i in range(len(dataset))])
    return x, torch.as_tensor(np.asarray(dataset.labels), dtype=torch.int64)


def test_the_other_set_is_profiled_with_the_audited_model_beside_its_store(sets):
    model, audited, other, store, _, (other_store, other_profiles) = sets
    assert other_store.path.parent.parent == independent_root(store)  # <store>/saliency/independent/stores/...
    assert other_store.n == len(other) and other_profiles.n == len(other)
    assert find_store("audited", model, other) is None  # not a store of its own in the default cache
    x, y = _tensor(model, other)
    expected = filter_profiles(model.module, x, y, conv_filters(model.module)).numpy()
    assert np.allclose(other_profiles.rows(slice(None)), expected, rtol=2e-3, atol=1e-7)
    with torch.inference_mode():
        predictions = model.module(x).argmax(dim=1).numpy()
    assert np.array_equal(other_store.meta()["pred_idx"].to_numpy(), predictions)  # the audited model's predictions
    again = find_independent(store, model, other, "other")
    assert again is not None and again[1].path == other_profiles.path
    assert find_independent(store, model, audited, "audited") is None  # never built for that set


def test_neighbours_are_rows_of_the_other_set_standardised_against_the_audited_one(sets):
    model, _, other, store, profiles, (other_store, other_profiles) = sets
    mu, sigma = profiles.mu, profiles.sigma
    query = profiles.z([3], mu, sigma)[0]
    wrong = np.flatnonzero(~other_store.meta()["correct"].to_numpy())
    assert len(wrong) >= 5
    rows, similarity = nearest_in(other_profiles, query, mu, sigma, k=5, rows=wrong, leave_out=wrong[:1])
    z_other = standardise(other_profiles.rows(slice(None)), mu, sigma)  # against the audited set, not its own
    cosine = z_other @ query / (np.linalg.norm(z_other, axis=1) * np.linalg.norm(query))
    allowed = wrong[1:]
    best = allowed[np.argsort(-cosine[allowed], kind="stable")[:5]]
    assert set(rows) == set(best) and np.allclose(similarity, cosine[rows], atol=2e-3)
    assert wrong[0] not in rows
    own_z = standardise(other_profiles.rows(slice(None)), other_profiles.mu, other_profiles.sigma)
    assert not np.allclose(own_z, z_other)  # the other set's own statistics would give other neighbours

    # the fine-tuning check measured on those neighbours: their images and labels, from the other set
    x_other, y_other = _tensor(model, other)
    x_audited = torch.stack([make_transform(model.input_size, model.mean, model.std)(sets[1].load_image(3))])
    checked = FineTuneCheck(k=1, n_random=1).explain(
        model, x_audited, int(sets[1].labels[3]), z=query, index=profiles.index,
        neighbours=x_other[rows], neighbour_targets=y_other[rows].numpy())
    first = checked.results.set_index("variant")
    assert np.isfinite(first["neighbours_true_confidence_change"]).all()
    assert first.loc["salient", "neighbours_corrected_share"] >= 0  # the neighbours were all errors: a share


def test_a_set_on_other_classes_or_another_image_size_is_refused(sets, tmp_path):
    model, audited, _, store, _, _ = sets
    images, labels, _ = digits_arrays(40)
    renamed = ArrayDataset(images, labels, [f"digit {d}" for d in range(10)], name="renamed")
    with pytest.raises(InputError, match="not this dataset's 0, 1, 2, 3, 4, 5 ...: pick an image set on the same classes"):
        build_independent(store, model, renamed, "renamed", audited)
    small = ArrayDataset(images[:, ::2, ::2], labels, CLASSES, name="small")
    with pytest.raises(InputError, match="8x8 pixels, this dataset 16x16: pick an image set of the same input size"):
        build_independent(store, model, small, "small", audited)
    assert not any(p.name.startswith(("audited-renamed", "audited-small")) for p in independent_root(store).rglob("*"))


def test_the_demo_independent_set_is_the_test_garments_with_their_attributes_drawn_again():
    demo, other = DemoDataset(split="test"), independent_images()
    assert other.seed == INDEPENDENT_SEED != demo.seed and other.split == "test"  # uniform attributes: no plants
    assert other.classes == demo.classes and len(other) == len(demo) == 10_000
    assert np.array_equal(other.labels, demo.labels) and list(other.ids) == list(demo.ids)  # same garments, same ids
    assert (other.attributes.to_numpy() != demo.attributes.to_numpy()).any(axis=1).mean() > 0.9  # drawn again
    assert other.load_image(0).size == demo.load_image(0).size
    assert not np.array_equal(np.asarray(other.load_image(0)), np.asarray(demo.load_image(0)))
    sets = independent_sets(WorkspaceList(builtin_workspaces()), demo_workspace())
    assert list(sets) == [INDEPENDENT_DEMO_NAME]  # the control has the demo's dataset: not independent
    assert CONTROL_NAME not in sets
    assert independent_demo_images(demo_workspace()).fingerprint() == other.fingerprint()


def test_prepare_profiles_the_independent_set_of_a_builtin_demo_workspace(sets, tmp_path, monkeypatch, capsys):
    """``prepare``'s saliency step, for a built-in demo workspace, also profiles its independent
    set with the workspace's model (here the tiny model and digits stand in for the demo's),
    and a second run finds it done; other workspaces get nothing more."""
    from core.services import prepare

    model, audited, other, _, _, _ = sets
    monkeypatch.setattr(prepare, "independent_demo_images", lambda workspace: other)
    preparer = prepare.Preparer("demo", model, audited, root=tmp_path)
    first = preparer.run(["store", "saliency"])
    assert "profiles of the independent demo images (120 images) with this model" in capsys.readouterr().out
    store = find_store("demo", model, audited, tmp_path)
    assert find_independent(store, model, other, INDEPENDENT_DEMO_NAME) is not None
    assert [p.skipped for p in first] == [False, False]
    again = prepare.Preparer("demo", model, audited, root=tmp_path).run(["store", "saliency"])
    assert [p.skipped for p in again] == [True, True]
    assert "independent" not in capsys.readouterr().out
    prepare.Preparer("tiny", model, audited, root=tmp_path / "other").run(["store", "saliency"])
    assert "independent" not in capsys.readouterr().out
