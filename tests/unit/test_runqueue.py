"""The heavy-run queue: arrival order, a share per session, giving up releases the place."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import redact_paths
from core.services.runqueue import QueueBusy, RunQueue


def _start_in_thread(queue: RunQueue, session: str, log: list[str], hold: threading.Event) -> threading.Thread:
    def work() -> None:
        with queue.run(session, poll_s=0.01):
            log.append(session)
            hold.wait(5)

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_runs_start_in_arrival_order_one_slot():
    queue = RunQueue(slots=1)
    log: list[str] = []
    gates = {s: threading.Event() for s in "ABCD"}
    threads = []
    for s in "ABCD":
        threads.append(_start_in_thread(queue, s, log, gates[s]))
        _wait_until(lambda s=s: s in log or queue.waiting >= "ABCD".index(s))
    assert log == ["A"] and queue.waiting == 3 and queue.running == 1
    for s in "ABCD":
        gates[s].set()
        _wait_until(lambda s=s: log[-1] != s or s == "D")
    for t in threads:
        t.join(5)
    assert log == ["A", "B", "C", "D"]
    assert queue.running == 0 and queue.waiting == 0


def test_two_slots_run_together():
    queue = RunQueue(slots=2)
    log: list[str] = []
    hold = threading.Event()
    threads = [_start_in_thread(queue, s, log, hold) for s in "AB"]
    _wait_until(lambda: len(log) == 2)
    assert queue.running == 2
    hold.set()
    for t in threads:
        t.join(5)


def test_a_session_holds_one_place_at_most():
    queue = RunQueue(slots=2, per_session=1)
    with queue.run("A"), pytest.raises(QueueBusy, match="already have a run"), queue.run("A"):
        pass
    with queue.run("A"):  # released afterwards
        assert queue.running == 1


def test_a_greedy_session_cannot_starve_another():
    """A asks again as soon as each run ends; B, who waits, is served before A's next run."""
    queue = RunQueue(slots=1)
    order: list[str] = []
    first = threading.Event()

    def greedy() -> None:
        for _ in range(3):
            with queue.run("A", poll_s=0.01):
                order.append("A")
                first.set()
                time.sleep(0.05)

    a = threading.Thread(target=greedy)
    a.start()
    first.wait(5)

    def patient() -> None:
        with queue.run("B", poll_s=0.01):
            order.append("B")

    b = threading.Thread(target=patient)
    b.start()
    a.join(5)
    b.join(5)
    assert order.index("B") == 1  # right after A's first run


def test_giving_up_while_waiting_releases_the_place():
    queue = RunQueue(slots=1)

    class Left(Exception):
        pass

    def leave(_ahead: int) -> None:
        raise Left

    with queue.run("A"):
        with pytest.raises(Left), queue.run("B", on_wait=leave, poll_s=0.01):
            pass
        assert queue.waiting == 0
    with queue.run("B"):  # B's share is free again
        assert queue.running == 1


def test_waiting_too_long_is_a_clear_error():
    queue = RunQueue(slots=1, max_wait_s=0.05)
    seen: list[int] = []
    with queue.run("A"), pytest.raises(QueueBusy, match="busy"), queue.run("B", on_wait=seen.append, poll_s=0.01):
        pass
    assert seen and all(a == 1 for a in seen)  # one run ahead of B


def test_invalid_sizes():
    with pytest.raises(ValueError):
        RunQueue(slots=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Image folder '/srv/data/images' does not exist.", "Image folder '…/images' does not exist."),
        ("/tmp/x/ws.toml: [workspace.w] bad", "…/ws.toml: [workspace.w] bad"),
        ("the store at /root/cache/stores/demo-1 lacks x.npy", "the store at …/demo-1 lacks x.npy"),
        ("see http://example.com/a/b", "see http://example.com/a/b"),
        ("3/4 of images, and/or labels", "3/4 of images, and/or labels"),
    ],
)
def test_redact_paths(text, expected):
    assert redact_paths(text) == expected
