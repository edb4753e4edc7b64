"""Cohort filters that allocate without bound or never check for an interrupt: each is
stopped with a CohortError within its time limit, and neither the app's process nor the
query process grows by more than the memory cap. One such filter held 2.4 GB and ran 35 s
past the 10 s limit."""

import re
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import core.services.cohorts
from core.services.cohorts import QUERY_SECONDS, CohortError, CohortView

REPORTED = "length(array_to_string(range(0, 80000000), ',')) > 0"
CAP_MB = getattr(core.services.cohorts, "QUERY_MEMORY_MB", 512)
SLACK_MB = 64  # allocator rounding and the answer's own bytes

BOMBS = [
    "length(repeat('x', 1000000000)) > 0",  # one huge string
    "length(lpad(label, 2000000000, 'y')) > 0",  # seconds of work inside one call, no interrupt check
    "length(printf('%0999999999d', row)) > 0",  # a width as big as memory
    "list_contains(range(0, 1000000000), row)",  # a list in the WHERE clause
    "len(list_transform(range(30000), lambda a: range(30000))) > 0",  # lists of lists
    "length(" + "replace(" * 11 + "'aaaaaaaa'" + ", 'a', 'aaaaaaaa')" * 11 + ") > 0",  # 8^12 bytes from a short text
    "regexp_matches(repeat('ab', 400000000), '(a|b)*c')",  # a regular expression over a huge string
    "len(string_split(repeat('a,', 300000000), ',')) > 0",
    "list_reduce(range(20000000), lambda a, b: a + b) > 0",  # little memory, long past any limit in one call
]
STALL = BOMBS[-1]
REFUSED = [
    "string_agg(label, ',') IS NOT NULL",  # aggregates never run
    "row IN (SELECT a.row FROM meta a, meta b, meta c)",  # nor joins (subqueries)
    "EXISTS (SELECT * FROM range(1000000000))",
]


@pytest.fixture
def view():
    n = 1_000
    return CohortView(pd.DataFrame({"row": np.arange(n), "label": [f"c{i % 7}" for i in range(n)]}))


def _mb(pid: int | str, field: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1)) / 1024


def _reset_peak(pid: int | str) -> float:
    """Reset a process's peak RSS (VmHWM) to its RSS now, which it returns, in MB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _mb(pid, "VmRSS")


def _workers(view: CohortView) -> list[int]:
    return [w.pid for w in getattr(view, "_idle", [])]


def _stopped_within_limits(view: CohortView, where: str, seconds: float) -> None:
    assert view.rows("label = 'c3' AND row < 20") == [3, 10, 17]  # warm: a query process is ready
    before = {pid: _reset_peak(pid) for pid in _workers(view)}
    app_before = _reset_peak("self")
    began = time.monotonic()
    with pytest.raises(CohortError, match="memory|stopped after"):
        view.rows(where)
    assert time.monotonic() - began < seconds + 15  # stopped at its limit (unbounded, these run 35 s or more), with room for a loaded machine
    assert _mb("self", "VmHWM") - app_before < CAP_MB  # the app's process did not run it
    for pid, rss in before.items():
        if Path(f"/proc/{pid}").exists():  # a process killed at its time limit is gone
            assert _mb(pid, "VmHWM") - rss < CAP_MB + SLACK_MB
    assert view.rows("label = 'c3' AND row < 20") == [3, 10, 17]  # and the view still answers


def test_the_reported_filter_is_stopped_within_its_limits(view):
    _stopped_within_limits(view, REPORTED, QUERY_SECONDS)


@pytest.mark.parametrize("where", BOMBS)
def test_allocation_bombs_are_stopped_within_their_limits(view, where, monkeypatch):
    monkeypatch.setattr(core.services.cohorts, "QUERY_SECONDS", 3.0)
    _stopped_within_limits(view, where, 3.0)


@pytest.mark.parametrize("where", REFUSED)
def test_aggregates_and_joins_are_refused_before_running(view, where):
    began = time.monotonic()
    with pytest.raises(CohortError):
        view.rows(where)
    assert time.monotonic() - began < 10  # refused before running (run, they take far longer), with room for a loaded machine


def test_a_stalled_filter_does_not_hold_other_visitors(view, monkeypatch):
    """While one visitor's filter runs to its limit, another's ordinary filter is answered."""
    monkeypatch.setattr(core.services.cohorts, "QUERY_SECONDS", 8.0)
    view.rows("row < 1")
    stalled = threading.Thread(target=lambda: pytest.raises(CohortError, view.rows, STALL))
    began = time.monotonic()
    stalled.start()
    time.sleep(0.3)
    assert view.rows("label = 'c1' AND row < 10") == [1, 8]
    assert stalled.is_alive()  # answered by a second query process while the stalled one still runs
    stalled.join()
    assert time.monotonic() - began < 8.0 + 10  # and the stalled one was stopped at its limit
