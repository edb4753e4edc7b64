"""A first-come, first-served queue for heavy runs shared by every visitor of one server.

A heavy run (a spotlight search, a clustering, concept patches, Grad-CAM, a UMAP map)
takes a slot; at most ``slots`` run at once and the rest wait in arrival order. Each
session may hold at most ``per_session`` places (running or waiting), so one visitor who
keeps asking cannot push the others back: they are served in turn.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator

from core.errors import BiasLensError

DEFAULT_MAX_WAIT_S = 900.0


class QueueBusy(BiasLensError):
    """A session asked for more runs than its share, or waited longer than the queue allows."""


def default_slots() -> int:
    """``$BIASLENS_RUN_SLOTS`` if set, else half the CPU cores (at least 1)."""
    raw = os.environ.get("BIASLENS_RUN_SLOTS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, (os.cpu_count() or 2) // 2)


class RunQueue:
    """At most ``slots`` runs at once, served in arrival order, ``per_session`` places a session."""

    def __init__(self, slots: int, per_session: int = 1, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        if slots < 1 or per_session < 1:
            raise ValueError("slots and per_session must be at least 1")  # programming error: default_slots() >= 1
        self.slots = slots
        self.per_session = per_session
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._running = 0
        self._held: Counter[str] = Counter()
        self.peak_running = 0  # the most runs ever at once: never above ``slots`` (bench/load.py checks)

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.contextmanager
    def run(
        self, session: str, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.5
    ) -> Iterator[None]:
        """Hold a slot for the ``with`` block; wait for it in turn.

        ``on_wait(ahead)`` is called about every ``poll_s`` seconds while waiting, with the
        number of runs queued ahead; it may raise to give up (the place is released).
        Raises QueueBusy when the session already holds its share or the wait is too long.
        """
        ticket = object()
        with self._cond:
            if self._held[session] >= self.per_session:
                raise QueueBusy(
                    "You already have a run in progress on this server. Wait for it to finish, "
                    "then try again."
                )
            self._held[session] += 1
            self._waiting.append(ticket)
        started = False
        deadline = time.monotonic() + self.max_wait_s
        try:
            while True:
                with self._cond:
                    if self._waiting[0] is ticket and self._running < self.slots:
                        self._waiting.popleft()
                        self._running += 1
                        self.peak_running = max(self.peak_running, self._running)
                        started = True
                        self._cond.notify_all()
                        break
                    ahead = self._waiting.index(ticket) + self._running - self.slots + 1
                    if time.monotonic() > deadline:
                        raise QueueBusy(
                            f"The server is busy ({self._running} run(s) going, {ahead} ahead of "
                            "yours). Try again in a few minutes."
                        )
                    self._cond.wait(poll_s)
                if on_wait is not None:
                    on_wait(max(ahead, 1))
            yield
        finally:
            with self._cond:
                if started:
                    self._running -= 1
                else:
                    self._waiting.remove(ticket)
                self._held[session] -= 1
                if not self._held[session]:
                    del self._held[session]
                self._cond.notify_all()
