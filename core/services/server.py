"""State every visitor of one server shares, in plain Python objects of this process.

Nothing here lives in Streamlit's caches: a browser can send Streamlit's clear-cache message,
which empties ``st.cache_data`` and ``st.cache_resource`` for the whole server, and that must
neither reveal a hidden ground truth nor reset the run queue. The state is:

- ``WorkshopState``: workshop mode as the instructor switched it, the reveal, the reset count,
  and a version that changes on every change (open pages poll it to follow a reveal);
- ``Visitors``: each visitor's own work (saved subsets, workshop steps), keyed by a random
  visitor key the app keeps in the page's URL, so a reload finds it again;
- ``PassphraseThrottle``: failed instructor passphrases, limited per visitor and per server;
- the run queues (``heavy`` and ``light`` lanes, core/services/runqueue.py), ``ModelCopies`` (the light
  lane's private copies of each model) and ``ResultSlots``, the shared results of runs.

A server restart forgets all of it (the ground truth is hidden again), which fails closed.
``SERVER`` is the one instance; tests call ``SERVER.reset()`` between cases.
"""

from __future__ import annotations

import gc
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.services.runqueue import RunQueue, default_slots

VISITOR_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_VISITORS = 2000  # records kept; the least recently seen goes first
MAX_RESULTS = 256  # heavy-run results kept in memory; the least recently used goes first
MAX_COPIED_MODELS = 4  # workspaces whose private model copies are kept (as the app keeps 4 models)
T = TypeVar("T")


# --------------------------------------------------------------------------- workshop


@dataclass
class WorkshopSnapshot:
    """One consistent reading of the workshop state."""

    override: bool | None
    revealed: bool
    epoch: int
    clear_subsets: bool
    version: int

    def mode(self, settings: bool) -> bool:
        """Workshop mode: the instructor's switch when set, else the settings file's."""
        return bool(settings if self.override is None else self.override)


class WorkshopState:
    """Workshop mode, reveal and reset for the whole server; only the instructor's panel
    changes it. ``version`` increases with every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._override: bool | None = None
        self._revealed = False
        self._epoch = 0
        self._clear_subsets = False
        self._version = 0

    def snapshot(self) -> WorkshopSnapshot:
        with self._lock:
            return WorkshopSnapshot(self._override, self._revealed, self._epoch, self._clear_subsets, self._version)

    def set_mode(self, on: bool) -> None:
        """The instructor's "Workshop mode (everyone)" switch."""
        with self._lock:
            self._override = bool(on)
            self._version += 1

    def set_revealed(self, revealed: bool) -> None:
        with self._lock:
            self._revealed = bool(revealed)
            self._version += 1

    def reset(self, settings: bool, clear_subsets: bool) -> None:
        """Hide the ground truth and start every student afresh. The mode stays what it is
        now (the switch is pinned to it), so a reset can never turn the mode off and with it
        reveal the slices, whatever the settings file says."""
        with self._lock:
            self._override = bool(settings if self._override is None else self._override)
            self._revealed = False
            self._epoch += 1
            self._clear_subsets = bool(clear_subsets)
            self._version += 1


# --------------------------------------------------------------------------- visitors


@dataclass
class VisitorRecord:
    """One visitor's work on this server: ``data`` holds their saved subsets (the mapping
    core.services.subsets.SessionStorage writes into) and ``steps`` the workshop steps they did."""

    data: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, bool] = field(default_factory=dict)
    epoch: int = 0
    seen: float = field(default_factory=time.time)


def new_visitor_key() -> str:
    """A random visitor key (128 bits): not guessable, so one student never opens another's work."""
    return secrets.token_urlsafe(16)


class Visitors:
    """Visitor records by key, at most ``limit`` (the least recently seen is forgotten first)."""

    def __init__(self, limit: int = MAX_VISITORS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._records: OrderedDict[str, VisitorRecord] = OrderedDict()

    def get(self, key: str) -> VisitorRecord:
        """The record of ``key`` (made when new). ValueError for a malformed key."""
        if not VISITOR_KEY.match(key or ""):
            raise ValueError("malformed visitor key")  # programming error: visitor_key() checks the URL's
        with self._lock:
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = VisitorRecord()
                while len(self._records) > self.limit:
                    self._records.popitem(last=False)
            else:
                self._records.move_to_end(key)
            record.seen = time.time()
            return record

    def __len__(self) -> int:
        return len(self._records)

    def reset(self, clear_subsets: bool) -> None:
        """The workshop's Reset: every visitor's steps go (and their subsets, when asked)."""
        with self._lock:
            for record in self._records.values():
                record.steps.clear()
                if clear_subsets:
                    for key in [k for k in record.data if str(k).startswith("subsets:")]:
                        del record.data[key]


# --------------------------------------------------------------------------- passphrase


class PassphraseThrottle:
    """Failed passphrase attempts: after ``free`` failures a visitor waits ``base_s`` seconds,
    doubling with each further failure up to ``max_wait_s``; the whole server accepts at most
    ``server_limit`` failures per ``window_s`` (guesses spread over many sessions), after which
    every attempt waits for the window to move on."""

    def __init__(self, free: int = 3, base_s: float = 2.0, max_wait_s: float = 300.0,
                 server_limit: int = 20, window_s: float = 60.0) -> None:
        self.free, self.base_s, self.max_wait_s = free, base_s, max_wait_s
        self.server_limit, self.window_s = server_limit, window_s
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # visitor -> (count, last failure)
        self._recent: deque[float] = deque()

    def wait_s(self, visitor: str, now: float | None = None) -> float:
        """Seconds before ``visitor`` may try again (0 when they may try now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._recent and now - self._recent[0] >= self.window_s:
                self._recent.popleft()
            server = self._recent[0] + self.window_s - now if len(self._recent) >= self.server_limit else 0.0
            count, last = self._failures.get(visitor, (0, 0.0))
            own = 0.0
            if count >= self.free:
                own = last + min(self.max_wait_s, self.base_s * 2 ** (count - self.free)) - now
            return max(0.0, server, own)

    def failed(self, visitor: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            count, _ = self._failures.pop(visitor, (0, 0.0))
            self._failures[visitor] = (count + 1, now)
            while len(self._failures) > MAX_VISITORS:
                self._failures.popitem(last=False)
            self._recent.append(now)

    def succeeded(self, visitor: str) -> None:
        with self._lock:
            self._failures.pop(visitor, None)


# --------------------------------------------------------------------------- heavy-run results


class ResultSlots:
    """One holder per (kind of run, store, inputs), shared by sessions: ``{"lock": Lock}`` and,
    once computed, ``"result"``. At most ``limit`` are kept (least recently used goes first;
    a holder in use stays valid for whoever holds it)."""

    def __init__(self, limit: int = MAX_RESULTS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._slots: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()

    def slot(self, kind: str, fingerprint: str, key: str) -> dict[str, Any]:
        ident = (kind, fingerprint, key)
        with self._lock:
            holder = self._slots.get(ident)
            if holder is None:
                holder = self._slots[ident] = {"lock": threading.Lock()}
                while len(self._slots) > self.limit:
                    self._slots.popitem(last=False)
            else:
                self._slots.move_to_end(ident)
            return holder


# --------------------------------------------------------------------------- private model copies


class ModelCopies:
    """Private copies of each workspace's model, one per run that executes it.

    Runs change the model they run while they go (Filter saliency swaps its weights through
    ``torch.func.functional_call``, which other threads then see as batched tensors; captum,
    the store build and the probes hook its modules), so no two runs may share one, and the
    app's shared model is only read (its layers and filter shapes), never run. Each run
    borrows a copy loaded afresh by ``make`` (never copied from another that may be running).
    At most ``per_model`` copies of one model exist, each lent to one run at a time; copies of
    at most ``models`` workspaces are kept (least recently used first).
    """

    def __init__(self, per_model: int, models: int = MAX_COPIED_MODELS) -> None:
        self.per_model, self.models = per_model, models
        self._ready = threading.Condition()
        self._free: OrderedDict[str, list[Any]] = OrderedDict()
        self._made: dict[str, int] = {}

    @contextmanager
    def borrow(self, key: str, make: Callable[[], T]) -> Iterator[T]:
        """A copy of model ``key`` for this run alone (made by ``make`` when none is free)."""
        copy = self._take(key)
        if copy is None:
            try:
                copy = make()
            except BaseException:
                with self._ready:
                    self._made[key] -= 1
                    self._ready.notify_all()
                raise
        try:
            yield copy
        finally:
            with self._ready:
                self._free[key].append(copy)  # kept: a model with lent copies is never dropped
                self._ready.notify_all()

    def _take(self, key: str) -> Any | None:
        """A free copy, or None after reserving the right to make one (waits when all are lent)."""
        with self._ready:
            while True:
                free = self._free.setdefault(key, [])
                self._free.move_to_end(key)
                self._drop_idle(keep=key)
                if free:
                    return free.pop()
                if self._made.get(key, 0) < self.per_model:
                    self._made[key] = self._made.get(key, 0) + 1
                    return None
                self._ready.wait()

    def _drop_idle(self, keep: str) -> None:
        """Forget the least recently used models beyond ``models`` that have no copy lent."""
        for key in list(self._free):
            if len(self._free) <= self.models:
                return
            if key != keep and self._made.get(key, 0) == len(self._free[key]):
                del self._free[key]
                self._made.pop(key, None)

    def made(self, key: str) -> int:
        """How many copies of ``key`` exist (lent or free)."""
        with self._ready:
            return self._made.get(key, 0)


# --------------------------------------------------------------------------- the server


def light_slots() -> int:
    """Light runs (one image's Grad-CAM, details): as many at once as the CPU has cores, at least 2."""
    return max(2, os.cpu_count() or 2)


class ServerState:
    """Everything visitors of this server share (see the module's docstring)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A fresh state, as after a restart (tests use it between cases)."""
        self.workshop = WorkshopState()
        self.visitors = Visitors()
        self.throttle = PassphraseThrottle()
        self.heavy = RunQueue(default_slots())
        self.light = RunQueue(light_slots(), per_session=2)
        self.copies = ModelCopies(self.light.slots + self.heavy.slots)  # every running run its own
        self.results = ResultSlots()


SERVER = ServerState()
_stats_writer: threading.Thread | None = None
_frozen = False


def freeze_imports() -> None:
    """Move every object alive now (the imported libraries: torch, sklearn, altair, about
    600,000 objects) out of the garbage collector's reach, once per process. A full
    collection then scans only what the sessions made: it took 0.27 s on an idle 2-core
    machine and paused the server up to 2 s under bench/load.py's classroom (14 full
    collections, 16.7 s in all); after the freeze it takes milliseconds."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def stats() -> dict[str, int]:
    """What bench/load.py reads of a running server: each lane's slots and the most runs it
    ever ran at once (a heavy peak above its slots means the queue was bypassed)."""
    return {
        "heavy_slots": SERVER.heavy.slots, "heavy_peak": SERVER.heavy.peak_running,
        "light_slots": SERVER.light.slots, "light_peak": SERVER.light.peak_running, "visitors": len(SERVER.visitors),
    }


def start_stats_writer(every_s: float = 0.5) -> None:
    """When ``$BIASLENS_STATS_FILE`` names a file, keep ``stats()`` in it as JSON (replaced
    atomically every ``every_s`` seconds) for a benchmark to read. Once per process."""
    global _stats_writer
    path = os.environ.get("BIASLENS_STATS_FILE", "").strip()
    if not path or _stats_writer is not None:
        return

    def write() -> None:
        while True:
            temporary = f"{path}.tmp"
            try:
                with open(temporary, "w") as out:
                    json.dump(stats(), out)
                os.replace(temporary, path)
            except OSError:
                pass  # a figure for a benchmark: never worth stopping the server for
            time.sleep(every_s)

    _stats_writer = threading.Thread(target=write, name="biaslens-stats", daemon=True)
    _stats_writer.start()


def clicks_traced() -> bool:
    """Whether ``$BIASLENS_CLICK_LOG`` names a file (bench/load.py's class sets it)."""
    return bool(os.environ.get("BIASLENS_CLICK_LOG", "").strip())


def trace_click(event: str, **fields: Any) -> None:
    """Append one line of JSON to ``$BIASLENS_CLICK_LOG`` when it is set (bench/load.py's class
    sets it: which visitor reruns reached the server, which callbacks ran); else nothing."""
    if clicks_traced():
        path = os.environ["BIASLENS_CLICK_LOG"].strip()
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"t": round(time.time(), 3), "event": event, **fields}, default=str) + "\n")
