"""AppTest: a Spotlight run says its expected time from the data size before it starts,
and afterwards what it took beside what was expected (issues 21 and 22, item 3)."""

from __future__ import annotations

from typing import Any

from core.services.estimates import spotlight_seconds
from core.ui import cache
from tests.app.test_app import build_tiny
from tests.app.test_spotlight_page import open_spotlight, run_spotlights


def test_spotlight_run_states_its_expected_time(app, monkeypatch):
    asked: list[tuple[str, float | None]] = []
    real = cache.queued

    def recording(label: str, lane: str = cache.HEAVY, expected_s: float | None = None, ident: str = "") -> Any:
        asked.append((label, expected_s))  # what the notice shows while the run waits and runs
        return real(label, lane, expected_s, ident)

    monkeypatch.setattr(cache, "queued", recording)
    at = open_spotlight(build_tiny(app))
    run_spotlights(at, 2, steps=100, size=10.0)
    assert not at.error
    expected = dict(asked)["The spotlight search"]
    # from the data size before the run: 200 images of the tiny CNN's 12-d embedding
    assert expected == spotlight_seconds(200, 12, n_spotlights=2, steps=100, size=0.1)
    took = [c.value for c in at.caption if "The spotlight search took" in c.value]
    assert took and "was expected" in took[0] and "on this server" in took[0]
    # the held-out check says its own, from half the images
    [b for b in at.button if b.label == "Confirm on a held-out half"][0].click().run()
    assert dict(asked)["The held-out confirmation"] > 0
    assert any("The held-out confirmation took" in c.value and "was expected" in c.value for c in at.caption)
