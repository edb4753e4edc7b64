"""One record per method (core.methods.records): the app's registries are built from the records,
so a new method's record alone puts it in the state keys, the subset origins, the score
command, the workshop's steps and the UI bench; the runs layer fits it on a store, scoped and
mapped back to store rows."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator

from core.data.sources import ArrayDataset
from core.methods.records import (
    MethodRecord,
    WorkshopStep,
    method_records,
    record_for,
    register_method,
    unregister_method,
)
from core.services import runs, score, subsets
from core.store.build import build_store
from core.ui import keys, workshop
from tests.support import digits_arrays, tiny_model

REPO = Path(__file__).resolve().parents[2]


class HighestLoss(BaseEstimator):
    """A stand-in method: one group, the ``top`` images of highest loss."""

    def __init__(self, top: int = 10) -> None:
        self.top = top

    def fit(self, X: np.ndarray, losses: np.ndarray) -> HighestLoss:
        self.order_ = np.argsort(-np.asarray(losses), kind="stable")
        return self


def on_rows(fitted: HighestLoss, rows: np.ndarray, n: int) -> HighestLoss:
    fitted.order_ = np.asarray(rows)[fitted.order_]
    return fitted


FAKE = MethodRecord(
    name="highest", title="Highest loss", page="pages/highest.py", icon=":material/star:", origin="highest",
    estimator=HighestLoss, defaults=lambda n: HighestLoss(top=max(10, n // 20)), target="loss", on_rows=on_rows,
    groups=lambda fitted, meta: (["highest"], [fitted.order_], [fitted.order_[: fitted.top]]),
    steps=(WorkshopStep("highest", "Read the highest losses", "Open Highest loss.", "pages/highest.py", 5),),
)


@pytest.fixture
def fake() -> Iterator[MethodRecord]:
    register_method(FAKE)
    yield FAKE
    unregister_method(FAKE.name)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    images, labels, attributes = digits_arrays(240)
    truth = pd.DataFrame({"slice_odd": labels % 2 == 1})
    dataset = ArrayDataset(images, labels, [str(d) for d in range(10)], attributes=attributes, ground_truth=truth, name="gt")
    return build_store("gt", tiny_model(), dataset, [], root=tmp_path_factory.mktemp("s"))


def test_every_method_page_has_a_record_in_navigation_order():
    assert [r.name for r in method_records()] == ["spotlight", "subgroups", "saliency", "intersectional", "activis"]
    for record in method_records():
        assert (REPO / record.page).exists(), record.page
    assert subsets.origins() == ("cohort", "finding", "comparison", "spotlight", "subgroup", "saliency", "activis", "class", "manual")
    assert score.method_names() == ("spotlight", "udis")
    assert [s.key for s in workshop.steps()] == ["overview", "spotlight-run", "spotlight-lift", "cohort", "grad-cam", "check"]


def test_a_fake_method_record_appears_in_every_registry(fake):
    assert keys.state_key("highest", "run") == "highest.run"
    assert "highest" in keys.pages()
    assert "highest" in subsets.origins()
    assert "highest" in score.method_names()
    assert [s.key for s in workshop.steps()][-2:] == ["highest", "check"]  # ordered among the others
    sys.path.insert(0, str(REPO / "bench"))
    try:
        bench_ui = importlib.reload(importlib.import_module("ui"))
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert bench_ui.PAGES[-1] == "Highest loss"
    unregister_method("highest")
    assert "highest" not in keys.pages() and "highest" not in subsets.origins()
    with pytest.raises(ValueError, match="Unknown page"):
        keys.state_key("highest", "run")


def test_a_fake_method_is_scored_and_fitted_by_the_runs_layer(fake, store):
    result = score.score_store(store, ["highest"])
    row = result["table"].set_index("method").loc["highest"]
    losses, odd = store.meta()["loss"].to_numpy(), store.meta()["slice_odd"].to_numpy()
    top10 = np.argsort(-losses, kind="stable")[:10]
    assert row["P@10"] == pytest.approx(odd[top10].mean())  # the run's own ranking, scored
    assert record_for(HighestLoss()) is fake
    scope = np.arange(0, store.n, 3)
    fitted = runs.fit_on_store(HighestLoss(), store, scope=scope)
    assert set(fitted.order_) == set(scope)  # mapped back to store rows
    assert fitted.order_[0] == scope[np.argmax(losses[scope])]
    with pytest.raises(TypeError, match="no held-out check"):
        runs.held_out_on_store(HighestLoss(), store)


def test_every_method_has_what_adding_a_method_page_lists():
    """The README's "Adding a method page" steps, checked for every registered method: its
    package with a record, its estimators exported, its view, its page, its AppTest and its
    Chromium click flow."""
    import core.methods

    exported = {getattr(core.methods, name) for name in core.methods.__all__}
    for record in method_records():
        package = REPO / "core" / "methods" / record.name
        assert (package / "__init__.py").exists() and (package / "record.py").exists(), record.name
        assert record.estimator is None or record.estimator in exported, record.name
        assert (REPO / "core" / "ui" / f"{record.name}_view.py").exists(), record.name
        assert (REPO / record.page).exists(), record.page
        assert (REPO / "tests" / "app" / f"test_{record.name}_page.py").exists(), record.name
        assert (REPO / "tests" / "e2e" / f"test_{record.name}_e2e.py").exists(), record.name
    readme = (REPO / "README.md").read_text()
    steps = readme[readme.index("**Adding a method page"):].split("\n\n")[0]
    for step in ("core/methods/<name>/", "record.py", "core/ui/<name>_view.py", "pages/<name>.py",
                 "tests/app/test_<name>_page.py", "tests/e2e/test_<name>_e2e.py"):
        assert step in steps, step
