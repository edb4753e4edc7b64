"""Issue 22 on the pages: the Subgroups scorecard measured on whole subgroups, a wrapped model's
conv blocks on Subgroups, Spotlight's default S on 200 images (and the warning below it), and
tables without "None" or "nan"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from core.methods import UDIS, UDIS_THRESHOLD
from core.scoring.scorecard import domino_scorecard
from core.store.read import Store, open_store
from core.ui import cache
from tests.app.conftest import REPO, write_workspaces
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_spotlight_page import open_spotlight, run_spotlights
from tests.app.test_subgroups_page import buttons, open_subgroups, under_count
from tests.support import TinyCNN

SLICE = "slice_errors"
WRAPPED = ('{ kind = "entrypoint", entrypoint = "tests.app.test_byo_pages:make_wrapped_tiny", input_size = 16, '
           "mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }")


class Wrapped(nn.Module):
    """The tiny CNN inside a user's wrapper, behind a normalising layer in an nn.Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Identity(), TinyCNN())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_wrapped_tiny() -> nn.Module:
    torch.manual_seed(0)
    return Wrapped()


def frames(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


def printed(frame: pd.DataFrame) -> set[str]:
    """Every cell as text, the way a reader would see None or NaN."""
    return {str(v) for v in frame.to_numpy().ravel()}


@pytest.fixture
def errors_as_slice(monkeypatch):
    """Ground truth on the tiny workspace: the slice is every misclassified image."""
    real = cache.meta_for

    def with_slice(store):
        meta = real(store)
        return meta.assign(**{SLICE: ~meta["correct"].to_numpy(dtype=bool)})

    monkeypatch.setattr(cache, "meta_for", with_slice)
    monkeypatch.setattr(Store, "slice_columns", property(lambda self: [SLICE]))


def test_subgroup_scorecard_ranks_whole_subgroups(app, errors_as_slice, tmp_path):
    at = open_subgroups(build_tiny(app))
    at.segmented_control(key="subgroups.threshold_choice").set_value("0.66 (UDIS code)").run()
    no_exception(at)
    assert under_count(at)[0] >= 1
    card = next(f for f in frames(at) if "P@100" in f.columns)
    # the same run by hand: UDIS at the page's defaults, each under-performing subgroup ranked by loss
    store = open_store(next((tmp_path / "cache").rglob("manifest.json")).parent)
    meta = store.meta()
    fitted = UDIS().fit(store.representation("embedding"), meta["correct"].to_numpy())
    ids = [int(g) for g in fitted.under_performing(UDIS_THRESHOLD)["subgroup"]]
    members = [fitted.rows(g) for g in ids]
    truth = ~meta["correct"].to_numpy(dtype=bool)[:, None]
    losses = meta["loss"].to_numpy()
    rankings = [rows[np.argsort(-losses[rows], kind="stable")] for rows in members]  # all of each, highest loss first
    expected = domino_scorecard(truth, rankings, ["errors"], [f"#{g}" for g in ids], members=members).iloc[0]
    assert expected["P@25"] > 0.4  # a subgroup of more than 10 errors: a top-10 ranking could not reach this
    row = card.iloc[0]
    assert row["best group"] == expected["best group"]
    for column in ("P@10", "P@25", "P@100"):
        assert row[column] == pytest.approx(expected[column])
    assert float(str(row["AUROC"])) == pytest.approx(expected["AUROC"], abs=0.005)  # shown with 2 decimals
    assert float(str(row["recall"]).rstrip("%")) == pytest.approx(100 * expected["recall"], abs=0.05)
    for frame in frames(at):
        assert not printed(frame) & {"None", "nan", "NaN"}


def test_spotlight_default_size_scales_with_the_data(app, errors_as_slice):
    at = open_spotlight(build_tiny(app))
    assert at.number_input(key="spotlight.size").value == 12.5  # 25 of 200 images, not 2% = 4
    assert any("12.5% = 25 of 200 images" in c.value and "at least 25 images" in c.value for c in at.caption)
    run_spotlights(at, 2)
    assert not at.warning and not at.error
    summary = frames(at)[0]
    assert summary["effective size"].min() >= 25 - 1e-3
    scorecard = next(f for f in frames(at) if "P@10" in f.columns and "recall" in f.columns)
    assert str(scorecard["recall"].iloc[0]) not in ("None", "nan")  # recall of each spotlight's top S
    for frame in frames(at):
        assert not printed(frame) & {"None", "nan", "NaN"}
    run_spotlights(at, 2, size=2.0)  # the paper's 2%: 4 images
    warning = next(w.value for w in at.warning if "S = 4 images" in w.value)
    assert "Raise Size S to at least 12.5% (25 images)" in warning


def test_wrapped_model_has_its_conv_blocks_on_subgroups(tmp_path, tiny_files, monkeypatch):
    extra = f'\n[workspace.wrapped]\nmodel = {WRAPPED}\ndataset = {{ kind = "csv", csv = "{tiny_files / "manifest.csv"}" }}\n'
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    at = open_subgroups(build_tiny(AppTest.from_file(str(REPO / "app.py"), default_timeout=240), "wrapped"))
    at.segmented_control(key="subgroups.threshold_choice").set_value("0.66 (UDIS code)").run()
    no_exception(at)
    assert not any("no convolutional layers" in i.value for i in at.info)
    assert buttons(at, prefix="neuron:")  # the neuron panel, over the wrapped blocks
    assert any(b.key.startswith("neuron:net.1.block") for b in buttons(at, prefix="neuron:"))
    assert np.isfinite(under_count(at)[1])
