"""A method's list by evidence (issue 24): significant failures first by excess errors,
near-duplicates last, q-values over the run's whole family; hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from core.scoring.significance import evidence_order, excess_errors


def correct_with(n: int, wrong: list[np.ndarray]) -> np.ndarray:
    correct = np.ones(n, dtype=bool)
    for rows in wrong:
        correct[rows] = False
    return correct


def test_excess_errors_by_hand():
    tests = pd.DataFrame({"n": [10, 100], "accuracy": [0.0, 0.6], "rest accuracy": [0.9, 0.95]})
    assert excess_errors(tests) == pytest.approx([9.0, 35.0])  # 10 x 0.9; 100 x 0.35


def test_a_large_moderate_failure_outranks_a_small_total_one():
    # 1,000 images; group A: 20 images all wrong; group B: 200 images, 100 wrong; group C: 50 images, none wrong
    a, b, c = np.arange(0, 20), np.arange(100, 300), np.arange(500, 550)
    correct = correct_with(1000, [a, b[:100]])
    order = evidence_order(correct, [a, c, b], ["A", "C", "B"])
    assert list(order["group"]) == ["B", "A", "C"]  # B explains ~90 excess errors, A 20, C none (and is not failing)
    assert list(order["position"]) == [2, 0, 1]
    assert order.loc[0, "excess errors"] == pytest.approx(200 * (780 / 800 - 0.5))  # rest: 800 images, 20 wrong
    assert order["significant"].tolist()[:2] == [True, True]
    assert order.loc[2, "gap"] > 0 and order.loc[2, "excess errors"] < 0  # C is better than the rest: never a failure


def test_a_near_duplicate_is_listed_last_and_marked():
    a = np.arange(0, 40)
    a_again = np.arange(5, 45)  # Jaccard 35 / 45 = 0.78 with A
    b = np.arange(200, 230)
    correct = correct_with(1000, [np.arange(0, 45), b[:20]])
    order = evidence_order(correct, [a, a_again, b], ["A", "A again", "B"])
    assert list(order["group"]) == ["A", "B", "A again"]
    assert list(order["same as"]) == ["", "", "A"]


def test_half_overlap_is_not_a_duplicate():
    a, b = np.arange(0, 40), np.arange(20, 80)  # Jaccard 20 / 80 = 0.25
    correct = correct_with(1000, [np.arange(0, 80)])
    order = evidence_order(correct, [a, b], ["A", "B"])
    assert list(order["same as"]) == ["", ""]


def test_the_family_enters_the_q_values():
    rng = np.random.default_rng(0)
    correct = rng.random(2000) < 0.8
    weak = np.flatnonzero(~correct)[:6]  # 6 errors among 6 images: p ~ 1e-4 alone
    weak = np.concatenate([weak, np.flatnonzero(correct)[:2]])
    alone = evidence_order(correct, [weak], ["weak"])
    family = [rng.choice(2000, 50, replace=False) for _ in range(300)]
    with_family = evidence_order(correct, [weak], ["weak"], family=family)
    assert with_family.loc[0, "q"] > alone.loc[0, "q"]  # 300 more tests: BH raises the q-value


def test_empty_and_bad_inputs():
    assert evidence_order(np.ones(10, dtype=bool), [], []).empty
    with pytest.raises(InputError):
        evidence_order(np.ones(10, dtype=bool), [np.arange(3)], ["a", "b"])
