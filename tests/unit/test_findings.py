"""Findings (core/services/findings.py): pooling, merging, testing and ranking on store-like cases
whose correctness the test controls, so a planted failure must come first."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core.errors import BiasLensError
from core.scoring.significance import group_tests
from core.services import findings as F
from core.services.findings import NO_FAILURE, _Candidate, _ranked, find_failures

CLASSES = ["Sandal", "Sneaker", "Coat", "Shirt"]


class FakeStore:
    """What find_failures reads of a store: meta, the embedding, logits and the attribute names."""

    def __init__(self, meta: pd.DataFrame, x: np.ndarray, logits: np.ndarray, attributes: list[str]) -> None:
        self._meta, self._x, self._logits = meta, x, logits
        self.attribute_columns = attributes
        self.slice_columns = [c for c in meta.columns if c.startswith("slice_")]
        self.n = len(meta)

    def meta(self) -> pd.DataFrame:
        return self._meta.copy()

    def representation(self, name: str) -> np.ndarray:
        return self._x

    def logits(self) -> np.ndarray:
        return self._logits


def planted(n: int = 400, seed: int = 0, fail: float = 0.2, base: float = 0.95, plant: bool = True) -> FakeStore:
    """n images of 4 classes with a 'marker' and a 'tint'; the square-marked Sandals (and only
    they, when ``plant``) fail at ``fail``, the rest at ``base``; they also sit apart in the embedding."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n)
    marker = rng.choice(["none", "square"], n, p=[0.8, 0.2])
    tint = rng.choice(["red", "blue", "grey"], n)
    group = (label == 0) & (marker == "square") if plant else np.zeros(n, dtype=bool)
    correct = rng.random(n) < np.where(group, fail, base)
    pred = np.where(correct, label, (label + rng.integers(1, 4, n)) % 4)  # errors spread over the other classes
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[group, 0] += 4
    x[:, 1] += label
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), pred] += 5
    loss = np.where(correct, rng.random(n) * 0.3, 1 + rng.random(n))
    meta = pd.DataFrame({"row": np.arange(n), "id": [f"img-{i}" for i in range(n)], "label": np.array(CLASSES)[label],
                         "label_idx": label, "pred": np.array(CLASSES)[pred], "pred_idx": pred, "correct": correct,
                         "loss": loss, "marker": marker, "tint": tint, "slice_marked": group})
    return FakeStore(meta, x, logits, ["marker", "tint"])


@pytest.fixture(scope="module")
def report():
    return find_failures(planted(), seed=0)


def test_a_planted_failure_comes_first_with_its_description(report):
    store = planted()
    truth = store.meta()["slice_marked"].to_numpy()
    first = report.findings[0]
    assert first.rank == 1 and first.significant and first.held_out_gap > 0.4
    assert truth[first.rows[:10]].mean() >= 0.8  # its P@10
    assert "label = Sandal" in first.description and "marker = square" in first.description
    assert first.description_precision > 0.8 and first.description_recall > 0.8
    assert "slice_marked" not in " ".join(f.description for f in report.findings)  # ground truth is never an attribute
    assert set(F.SOURCES) - {"saliency"} >= set(m for f in report.findings for m in f.methods)
    assert report.candidates >= len(report.findings) and not report.errors
    assert [f.rank for f in report.findings] == list(range(1, len(report.findings) + 1))
    assert any("held-out" in note or "half" in note for note in report.notes)


def test_to_json_fields_and_row_order(report):
    out = report.to_json()
    assert set(out) == {"findings", "errors", "notes", "candidates"}
    first = out["findings"][0]
    assert set(first) == {"rank", "methods", "size", "accuracy", "q", "held_out_gap", "description", "rows"}
    assert first["rows"] == [int(r) for r in report.findings[0].rows] and all(isinstance(r, int) for r in first["rows"])
    assert first["size"] == len(first["rows"])
    import json

    json.dumps(out)  # JSON-ready
    assert "| 1 |" in report.to_markdown() and "description" in report.to_text()


def _masks(n: int, *spans: tuple[int, int]) -> list[np.ndarray]:
    out = []
    for a, b in spans:
        m = np.zeros(n, dtype=bool)
        m[a:b] = True
        out.append(m)
    return out


def _candidates(masks: list[np.ndarray], sources: list[str]) -> list[_Candidate]:
    return [_Candidate(s, f"{s} {i}", m, np.flatnonzero(m), i) for i, (m, s) in enumerate(zip(masks, sources, strict=True))]


VALUES = pd.DataFrame({"label": ["a"] * 200, "pred": ["a"] * 200})


def test_merging_by_jaccard_keeps_the_best_ranked_rows():
    """Rows 0-39 and 60-89 wrong. A = 0..39 (excess 40 x 130/160 = 32.5), B = 0..59 (Jaccard
    40/60 >= 0.5: merged; excess 60 x (110/140 - 20/60) = 27.1, so A leads), C = 30..89
    (Jaccard with A 10/90, with B 30/90 < 0.5: its own finding)."""
    correct = np.ones(200, dtype=bool)
    correct[:40] = correct[60:90] = False
    a, b, c = _masks(200, (0, 40), (0, 60), (30, 90))
    found = _ranked(_candidates([b, a, c], ["udis", "spotlight", "sliceline"]), correct, np.zeros(200), None, VALUES,
                    ["label", "pred"], False)
    assert found[0].methods == ("spotlight", "udis") and found[0].names == ("spotlight 1", "udis 0")
    assert np.array_equal(found[0].rows, np.arange(40)) and found[0].size == 40
    assert found[0].excess_errors == pytest.approx(32.5)
    assert found[1].methods == ("sliceline",) and len(found) == 2


def test_ranking_significant_first_by_the_sure_gap_and_hand_checked_statistics():
    """Significant findings first, by how much worse they surely are (the near end of the 95%
    interval of the gap); excess errors n_g (acc_rest - acc_g), Fisher's p and BH's q over every
    pooled candidate by hand."""
    n = 1000
    correct = np.ones(n, dtype=bool)
    correct[0:30] = False  # G1 = 0..39: 30 of 40 wrong
    correct[100:150] = False  # G2 = 100..299: 50 of 200 wrong
    correct[[500, 600, 700]] = False  # scattered
    g1, g2, g3, g4 = _masks(n, (0, 40), (100, 300), (400, 1000), (300, 400))  # G3 holds 3 errors in 600; G4 none
    found = _ranked(_candidates([g3, g1, g2, g4], ["udis"] * 4), correct, np.zeros(n), None,
                    pd.DataFrame({"label": ["a"] * n, "pred": ["a"] * n}), ["label", "pred"], False)
    # G1 (75 points worse, surely more than 50) before G2 (22 points worse, more errors in all:
    # excess 200 x 0.22 = 44 against 40 x 0.70 = 28); G3, G4 better than the rest: no failure
    assert [f.names[0] for f in found] == ["udis 1", "udis 2"]
    assert found[0].excess_errors < found[1].excess_errors
    tests = group_tests(correct, [np.flatnonzero(m) for m in (g1, g2)])
    assert -tests["high"].iat[0] > -tests["high"].iat[1] > 0
    wrong = 83
    acc_rest1 = (n - 40 - (wrong - 30)) / (n - 40)
    assert found[0].excess_errors == pytest.approx(40 * (acc_rest1 - 10 / 40))
    assert found[0].accuracy == pytest.approx(0.25) and found[0].rest_accuracy == pytest.approx(acc_rest1)
    p = [stats.fisher_exact([[int(correct[m].sum()), int((~correct[m]).sum())],
                             [int(correct[~m].sum()), int((~correct[~m]).sum())]]).pvalue for m in (g3, g1, g2, g4)]
    q = stats.false_discovery_control(p, method="bh")  # over all four pooled, not the two shown
    assert found[1].p == pytest.approx(p[2]) and found[1].q == pytest.approx(q[2])
    assert found[0].q == pytest.approx(q[1])
    assert found[0].accuracy_low <= 0.25 <= found[0].accuracy_high


def test_a_narrow_failure_inside_a_wide_one_is_one_finding():
    """80% of the smaller group inside the larger: one finding (found wide and narrow), led by
    the sharper one."""
    n = 1000
    correct = np.ones(n, dtype=bool)
    correct[0:36] = False  # the slice 0..39: 36 of 40 wrong
    correct[200:210] = False
    narrow, wide = _masks(n, (0, 40), (0, 200))  # Jaccard 0.2, but all of the slice inside the wide group
    found = _ranked(_candidates([wide, narrow], ["sliceline", "udis"]), correct, np.zeros(n), None,
                    pd.DataFrame({"label": ["a"] * n, "pred": ["a"] * n}), ["label", "pred"], False)
    assert len(found) == 1 and found[0].size == 40 and set(found[0].methods) == {"sliceline", "udis"}


def test_a_failing_source_is_recorded_while_the_others_pool(monkeypatch):
    def broken(*args, **kwargs):
        raise BiasLensError("Spotlight cannot run here.")

    def crashing(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(F, "spotlight_candidates", broken)
    monkeypatch.setattr(F, "udis_candidates", crashing)
    seen = []
    out = find_failures(planted(), progress=lambda done, total, message: seen.append((done, total, message)))
    assert out.errors == {"spotlight": "Spotlight cannot run here.", "udis": "RuntimeError: boom"}
    assert out.findings and {"error clusters", "confusion", "sliceline"} >= set(out.findings[0].methods)
    assert seen[0][:2] == (0, 6) and seen[-1][:2] == (6, 6)


def test_without_attributes_no_sliceline(monkeypatch):
    monkeypatch.setattr(F, "sliceline_candidates", lambda *a, **k: pytest.fail("SliceLine ran without attributes"))
    out = find_failures(planted(), with_attributes=False)
    assert out.findings and all("sliceline" not in f.methods for f in out.findings)
    assert all("marker" not in f.description and "tint" not in f.description for f in out.findings)
    assert out.findings[0].description.startswith("mostly ")


def test_under_40_images_has_no_held_out_half(monkeypatch):
    out = find_failures(planted(n=39, fail=0.0, base=1.0))
    assert any("no held-out half" in note for note in out.notes)
    assert all(f.held_out_gap is None for f in out.findings)
    assert out.findings and out.findings[0].significant


def test_nothing_fails_gives_no_findings_and_a_note():
    out = find_failures(planted(plant=False, seed=3), seed=1)
    assert out.findings == () and any(NO_FAILURE in note for note in out.notes)
    assert out.to_json()["findings"] == []


def test_halves_match_split_half_and_describe():
    a, b = F.halves(100, seed=0)
    order = np.random.default_rng(0).permutation(100)
    assert np.array_equal(a, np.sort(order[:50])) and np.array_equal(b, np.sort(order[50:]))
    assert F.halves(39)[1] is None
    values = pd.DataFrame({"label": ["x", "x", "y", "y"], "marker": ["s", "n", "s", "s"]})
    text, p, r, rule = F.describe(np.array([True, False, False, False]), values, ["label", "marker"])
    assert rule == {"label": "x", "marker": "s"} and p == 1.0 and r == 1.0


def test_a_group_with_every_image_wrong_still_has_an_interval_worth_reading():
    """Wilson's interval, not a bootstrap's: 40 of 40 wrong reads 0% with 95% 0.0 – 8.8%, not 0.0 – 0.0%."""
    n = 1000
    correct = np.ones(n, dtype=bool)
    correct[:40] = False
    (group,) = _masks(n, (0, 40))
    (found,) = _ranked(_candidates([group], ["udis"]), correct, np.zeros(n), None,
                       pd.DataFrame({"label": ["a"] * n, "pred": ["a"] * n}), ["label", "pred"], False)
    assert found.accuracy == 0 and found.accuracy_low == 0
    assert found.accuracy_high == pytest.approx(0.0876, abs=1e-3)  # 1.96² / (40 + 1.96²)
