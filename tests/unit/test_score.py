"""``python -m core score``'s core: every method and the baseline scored per planted slice on a
tiny store with ground truth, and the refusals (no ground truth, unknown method)."""

from __future__ import annotations

import pandas as pd
import pytest

from core.data.sources import ArrayDataset
from core.errors import DataError
from core.services.score import BASELINE, figures, score_store
from core.store.build import build_store
from tests.support import digits_arrays, tiny_model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    images, labels, attributes = digits_arrays(240)
    truth = pd.DataFrame({"slice_red_threes": (attributes["tint"] == "red").to_numpy() & (labels == 3),
                          "slice_odd": labels % 2 == 1})
    dataset = ArrayDataset(images, labels, [str(d) for d in range(10)], attributes=attributes, ground_truth=truth, name="gt")
    return build_store("gt", tiny_model(), dataset, [], root=tmp_path_factory.mktemp("s"))


@pytest.mark.slow
def test_every_method_and_the_baseline_are_scored_per_slice(store):
    result = score_store(store, ["spotlight", "udis"])
    table = result["table"]
    assert set(table["method"]) == {"spotlight", "udis", BASELINE}
    assert len(table) == 3 * 2 and set(table["slice"]) == {"red_threes", "odd"}
    for column in ("P@10", "P@25", "P@100", "AUROC"):
        assert table[column].dropna().between(0, 1).all()
    assert set(result["significance"]) == {"spotlight", "udis"}
    assert result["significance"]["spotlight"]["groups"] == 5
    out = figures(result)
    assert {"spotlight_odd_p10", "udis_red_threes_auroc", "baseline_odd_p100", "methods_beat_baseline"} <= set(out)
    # the count is checked against the table: a slice counts when some method's P@10 is >= 0.3 above the baseline's
    base = table[table["method"] == BASELINE].set_index("slice")["P@10"]
    best = table[table["method"] != BASELINE].groupby("slice")["P@10"].max()
    assert out["methods_beat_baseline"] == int((best - base >= 0.3 - 1e-9).sum())


def test_refusals(store, tmp_path):
    with pytest.raises(DataError, match="Unknown method"):
        score_store(store, ["spotlight", "magic"])
    images, labels, attributes = digits_arrays(40)
    plain = build_store("plain", tiny_model(), ArrayDataset(images, labels, [str(d) for d in range(10)]), [], root=tmp_path)
    with pytest.raises(DataError, match="no ground truth"):
        score_store(plain)


@pytest.mark.slow
def test_held_out_tables_per_method(store):
    from core.services.score import held_out_tables

    tables = held_out_tables(store, ["spotlight", "udis"])
    assert set(tables) == {"spotlight", "udis"}
    spot = tables["spotlight"]
    assert list(spot["group"]) == [f"Spotlight {i}" for i in range(1, 6)]
    assert (spot["discovery n"] >= 2).all() and spot["held-out n"].between(0, 120).all()  # S = 2% of a 120-image half
    with pytest.raises(DataError, match="Unknown method"):
        held_out_tables(store, ["magic"])


def test_held_out_needs_the_minimum_on_each_half():
    """Each half must hold what the method's search needs (20 images): 39 images are refused
    up front, naming 40, instead of failing inside the search with the half's count."""
    import numpy as np

    from core.methods import UDIS, Spotlight
    from core.methods.spotlight.record import spotlight_held_out
    from core.methods.subgroups.record import udis_held_out

    rng = np.random.default_rng(0)
    x, losses, correct = rng.normal(size=(39, 4)), rng.random(39), rng.random(39) < 0.7
    with pytest.raises(DataError, match="at least 40 images, and this set has 39"):
        spotlight_held_out(x, losses, correct, Spotlight())
    with pytest.raises(DataError, match="at least 40 images, and this set has 39"):
        udis_held_out(x, correct, UDIS(), 0.5)


def test_no_method_is_refused(store):
    with pytest.raises(DataError, match="No method given"):
        score_store(store, [])
