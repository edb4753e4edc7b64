"""core/services/server.py: the state every visitor of a server shares, with known answers."""

from __future__ import annotations

import json
import threading
import time

import pytest

from core.services.server import (
    ModelCopies,
    PassphraseThrottle,
    ResultSlots,
    ServerState,
    Visitors,
    WorkshopState,
    new_visitor_key,
    start_stats_writer,
    stats,
)


def test_workshop_state_versions_every_change_and_reset_pins_the_mode():
    state = WorkshopState()
    first = state.snapshot()
    assert first.mode(settings=False) is False and first.mode(settings=True) is True and not first.revealed
    state.set_mode(True)
    state.set_revealed(True)
    now = state.snapshot()
    assert now.mode(settings=False) and now.revealed and now.version == first.version + 2
    state.reset(settings=False, clear_subsets=True)
    after = state.snapshot()
    # the file says off, the instructor had switched it on: Reset hides and keeps it on
    assert after.mode(settings=False) and not after.revealed and after.epoch == 1 and after.clear_subsets
    untouched = WorkshopState()
    untouched.reset(settings=True, clear_subsets=False)  # no switch: pinned to the file's value
    assert untouched.snapshot().mode(settings=False) and untouched.snapshot().override is True


def test_visitors_are_kept_by_key_bounded_and_reset():
    visitors = Visitors(limit=2)
    a, b, c = new_visitor_key(), new_visitor_key(), new_visitor_key()
    assert len({a, b, c}) == 3 and len(a) >= 16
    visitors.get(a).data["subsets:ws"] = {"x": 1}
    visitors.get(a).steps["ws:0"] = True
    assert visitors.get(a).data == {"subsets:ws": {"x": 1}}  # the same record again
    visitors.get(b)
    visitors.get(a)  # a seen last: b is the least recently seen
    visitors.get(c)
    assert len(visitors) == 2 and visitors.get(a).steps == {"ws:0": True}
    visitors.reset(clear_subsets=False)
    assert visitors.get(a).steps == {} and visitors.get(a).data == {"subsets:ws": {"x": 1}}
    visitors.reset(clear_subsets=True)
    assert visitors.get(a).data == {}
    for bad in ("", "short", "../../etc/passwd-xxxxxxxxxx", "a" * 65, "spaces are not ok here"):
        with pytest.raises(ValueError):
            visitors.get(bad)


def test_throttle_backs_off_per_visitor_and_forgives_a_success():
    throttle = PassphraseThrottle(free=2, base_s=2.0, max_wait_s=10.0, server_limit=100)
    for _ in range(2):
        assert throttle.wait_s("v", now=0.0) == 0
        throttle.failed("v", now=0.0)
    assert throttle.wait_s("v", now=0.0) == 2.0  # 2 s after the 2nd failure
    assert throttle.wait_s("v", now=2.0) == 0
    throttle.failed("v", now=2.0)
    assert throttle.wait_s("v", now=2.0) == 4.0  # doubling
    for _ in range(5):
        throttle.failed("v", now=2.0)
    assert throttle.wait_s("v", now=2.0) == 10.0  # capped
    assert throttle.wait_s("other", now=2.0) == 0  # per visitor
    throttle.succeeded("v")
    assert throttle.wait_s("v", now=2.0) == 0


def test_result_slots_keep_the_most_recent():
    slots = ResultSlots(limit=2)
    first = slots.slot("k", "fp", "1")
    first["result"] = 1
    assert slots.slot("k", "fp", "1") is first
    slots.slot("k", "fp", "2")
    slots.slot("k", "fp", "3")
    assert "result" not in slots.slot("k", "fp", "1")  # evicted, a new empty holder


def test_stats_file_for_the_benchmark(tmp_path, monkeypatch):
    path = tmp_path / "stats.json"
    monkeypatch.setenv("BIASLENS_STATS_FILE", str(path))
    start_stats_writer(every_s=0.05)
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    figures = json.loads(path.read_text())
    assert figures.keys() == stats().keys() and figures["heavy_peak"] <= figures["heavy_slots"]


def test_a_server_state_reset_is_a_fresh_server():
    server = ServerState()
    server.workshop.set_revealed(True)
    server.visitors.get(new_visitor_key())
    queue = server.heavy
    server.reset()
    assert not server.workshop.snapshot().revealed and len(server.visitors) == 0 and server.heavy is not queue
    assert server.light.slots >= 2


def test_model_copies_are_private_to_one_run_and_bounded():
    copies = ModelCopies(per_model=2, models=2)
    made: list[object] = []

    def make() -> object:
        made.append(object())
        return made[-1]

    with copies.borrow("a", make) as first, copies.borrow("a", make) as second:
        assert first is not second  # two runs at once never share a copy
    with copies.borrow("a", make) as again:
        assert again in (first, second)  # returned copies are lent again, not remade
    assert len(made) == 2 and copies.made("a") == 2

    taken = threading.Event()
    got: list[object] = []

    def third_run() -> None:
        with copies.borrow("a", make) as copy:
            got.append(copy)

    with copies.borrow("a", make), copies.borrow("a", make):
        waiter = threading.Thread(target=third_run)
        waiter.start()
        taken.wait(0.3)
        assert not got  # a third run waits for a copy instead of making a third
    waiter.join(5)
    assert got and len(made) == 2


def test_model_copies_forget_idle_models_and_recover_from_a_failed_load():
    copies = ModelCopies(per_model=1, models=1)

    def broken() -> object:
        raise RuntimeError("weights missing")

    with pytest.raises(RuntimeError), copies.borrow("a", broken):
        pass
    assert copies.made("a") == 0
    with copies.borrow("a", object) as kept, copies.borrow("b", object):
        assert copies.made("a") == 1  # lent: never dropped while in use
    with copies.borrow("c", object):
        pass
    assert copies.made("a") == 0 and copies.made("b") == 0 and copies.made("c") == 1
    assert kept is not None


def test_freeze_imports_takes_the_libraries_out_of_full_collections(monkeypatch):
    import gc

    import core.services.server as server

    monkeypatch.setattr(server, "_frozen", False)
    calls = []
    real = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: (calls.append(1), real()))
    try:
        server.freeze_imports()
        assert gc.get_freeze_count() > 10_000  # torch and the rest, imported by this test's module
        server.freeze_imports()
        assert len(calls) == 1  # once per process
    finally:
        gc.unfreeze()
