"""The multiply-add count the expected run times start from (how close the estimates come to
measured runs is in bench/estimates.py), the durations' wording, the hosted caps (enforced in core, saying what to lower), and the probe
activations' disk limit and reuse."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.methods import LinearProbes
from core.methods.intersectional.features import (
    PROBES_DIR,
    feature_bytes,
    feature_dims,
    reduced_activations,
)
from core.models.torchscript import ScriptedModel
from core.services import estimates
from core.services.estimates import (
    HostedLimit,
    ModelCost,
    check_disk,
    check_image_run,
    check_probe_request,
    check_saliency_request,
    duration,
    model_cost,
    on_this_server,
)
from core.services.prepare import ProbeRun, check_hosted_probes
from core.store.build import build_store
from tests.support import digits_dataset, make_tiny_cnn, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def dataset():
    return digits_dataset(240)


@pytest.fixture(scope="module")
def store(tmp_path_factory, model, dataset):
    return build_store("estimates", model, dataset, None, batch_size=64, root=tmp_path_factory.mktemp("s"))


def test_multiply_adds_are_counted_exactly_also_through_torchscript(model):
    # conv1 8x16x16 outputs x 27, conv2 16x8x8 x 72, conv3 16x8x8 x 144, fc1 12 x 16, head 10 x 12
    expected = 8 * 16 * 16 * 27 + 16 * 8 * 8 * 72 + 16 * 8 * 8 * 144 + 12 * 16 + 10 * 12
    assert model_cost(model) == ModelCost(macs=expected)
    scripted = dataclasses.replace(model, module=ScriptedModel(torch.jit.script(make_tiny_cnn())))
    assert model_cost(scripted) == ModelCost(macs=expected, scripted=True)


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (0.2, 4.4, 44, 360, 5400, 9000)] == ["1 s", "4 s", "40 s", "6 min", "1.5 h", "2.5 h"]
    assert on_this_server(360) == "about 6 min on this server"


def test_hosted_caps_refuse_with_what_to_lower():
    check_probe_request(layers=5, seeds=5, epochs=50, per_group=128)  # the page's defaults pass
    with pytest.raises(HostedLimit, match=r"lower the seeds \(20; at most 5\), epochs \(500; at most 100\)"):
        check_probe_request(layers=5, seeds=20, epochs=500, per_group=128)
    check_saliency_request(k=100, images=200)
    with pytest.raises(HostedLimit, match=r"at 100 filters \(k = 101\): use k of at most 100"):
        check_saliency_request(k=101)
    with pytest.raises(HostedLimit, match=r"caps visitors' runs at 200 images \(5,000 asked\): use at most 200\."):
        check_image_run(5000, 1.0, "Turning filters off")
    with pytest.raises(HostedLimit, match=r"would take about 20 min on this server; .* Use at most 50 images\."):
        check_image_run(100, 1200.0, "Turning filters off")
    with pytest.raises(HostedLimit, match="would write 335 MB"):
        check_disk(335 * 10**6, 0, "Their activations", "Use fewer layers.")
    with pytest.raises(HostedLimit, match="is used up"):
        check_disk(10**6, estimates.HOSTED_VISITOR_DISK_BYTES, "Their activations", "Use fewer layers.")


def test_a_probe_run_past_a_cap_is_refused_in_core(store):
    """The Intersectional page's widgets stop at the caps, but core refuses too: a visitor's
    20 seeds x 500 epochs (about 2 h on the demo) or 335 MB of new activations."""
    probes = LinearProbes(epochs=500, n_seeds=20)
    with pytest.raises(HostedLimit, match="seeds"):
        check_hosted_probes(store, ProbeRun(seconds=1.0, new_bytes=0), ["block1"], probes)
    with pytest.raises(HostedLimit, match=r"would take about 20 min on this server; .* \(e\.g\. 25 epochs\)"):
        check_hosted_probes(store, ProbeRun(seconds=1200.0, new_bytes=0), ["block1"], LinearProbes(epochs=50))
    with pytest.raises(HostedLimit, match="would write 335 MB"):
        check_hosted_probes(store, ProbeRun(seconds=1.0, new_bytes=335 * 10**6), ["block1"], LinearProbes())


def test_activations_past_the_byte_limit_are_refused_and_nothing_is_written(model, dataset, store):
    rows = np.arange(0, 240, 3)
    widths = feature_dims(model, ["input", "block1", "embedding"])
    assert widths == {"input": 192, "block1": 512, "embedding": 12}
    needed = feature_bytes(len(rows), widths)
    assert needed == 4 * len(rows) * (192 + 512)  # the embedding is read from the store
    before = sorted((store.path / PROBES_DIR).glob("*")) if (store.path / PROBES_DIR).exists() else []
    with pytest.raises(HostedLimit, match="would write"):
        reduced_activations(store, model, dataset, rows, ["input", "block1", "embedding"], max_new_bytes=needed - 1)
    after = sorted((store.path / PROBES_DIR).glob("*")) if (store.path / PROBES_DIR).exists() else []
    assert after == before
    out = reduced_activations(store, model, dataset, rows, ["input", "block1", "embedding"], max_new_bytes=needed)
    assert out["block1"].shape == (len(rows), 512)


def test_fewer_layers_reuse_the_activations_saved_for_more(model, dataset, store, monkeypatch):
    rows = np.arange(1, 240, 4)
    full = reduced_activations(store, model, dataset, rows, ["input", "block1", "block3"])
    folders = sorted((store.path / PROBES_DIR).iterdir())
    monkeypatch.setattr("core.methods.intersectional.features._build", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rebuilt")))
    part = reduced_activations(store, model, dataset, rows, ["block3", "embedding"], max_new_bytes=0)
    np.testing.assert_array_equal(part["block3"], full["block3"])
    assert sorted((store.path / PROBES_DIR).iterdir()) == folders
