"""Cohort queries: filters work, DuckDB's message comes through, other statements are refused."""

import pandas as pd
import pytest

from core.cohorts import CohortError, CohortView


@pytest.fixture
def view():
    meta = pd.DataFrame(
        {
            "row": [0, 1, 2, 3],
            "label": ["Sneaker", "Sneaker", "Bag", "Bag"],
            "tint": ["red", "blue", "red", "red"],
            "correct": [False, True, True, False],
            "loss": [2.0, 0.1, 0.2, 3.0],
        }
    )
    return CohortView(meta)


def test_filter(view):
    assert view.rows("label = 'Sneaker' AND tint = 'red'") == [0]
    assert view.rows("NOT correct") == [0, 3]
    assert list(view.frame("loss > 1")["row"]) == [0, 3]


def test_bad_column_gives_duckdb_message(view):
    with pytest.raises(CohortError, match="labl"):
        view.rows("labl = 'Bag'")


def test_syntax_error(view):
    with pytest.raises(CohortError, match="(?i)syntax"):
        view.rows("label = ")


@pytest.mark.parametrize(
    "attack",
    [
        "true; DROP TABLE meta",
        "true) ; DROP TABLE meta; SELECT (1",
        "true) ; COPY meta TO 'x.csv'; SELECT (1",
    ],
)
def test_other_statements_refused(view, attack):
    with pytest.raises(CohortError):
        view.rows(attack)
    assert view.rows("true") == [0, 1, 2, 3]  # the table is intact


def test_no_file_access(view):
    with pytest.raises(CohortError, match="(?i)disabled|permission"):
        view.rows("row IN (SELECT 1 FROM read_csv('/etc/passwd'))")


def test_empty_expression(view):
    with pytest.raises(CohortError, match="filter"):
        view.rows("   ")
