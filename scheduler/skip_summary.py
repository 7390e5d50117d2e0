"""Skips under overload, summarised: a job at `max_concurrent` is skipped at every due time,
and a history row plus a warning line for each costs the loop about as much as a run would,
which turns overload into collapse. The first skip of a job in a window is recorded in full;
the next ones in that window are only counted (the metric still counts each), and are written
as one row per job when the window closes. The log says it once per reason: the first such skip
of any job in a window is logged in full, and one line per reason sums up the window's rows (a
line per job was still 10,000 lines a minute with 10,000 jobs overloaded)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .records import SkipReason


@dataclass(frozen=True)
class CoalescedSkips:
    """The skips of one job for one reason that a window only counted."""

    job_type: str
    reason: SkipReason
    count: int
    #: The scheduled times of the first and the last of them.
    first: datetime | None
    last: datetime | None


@dataclass
class _Window:
    opened_at: float
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None


class SkipCoalescer:
    """Per (job, reason) windows of `window_seconds`. Thread-safe: APScheduler's thread reports
    `max_instances` skips, the loop flushes."""

    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_seconds = window_seconds
        self._clock = clock
        self._windows: dict[tuple[str, SkipReason], _Window] = {}
        self._announced: dict[SkipReason, float] = {}  # reason -> when last logged in full
        self._lock = threading.Lock()

    def announce(self, reason: SkipReason) -> bool:
        """True: log this skip in full, the first for `reason` in a window (of any job)."""
        if self._window_seconds <= 0:
            return True
        now = self._clock()
        with self._lock:
            last = self._announced.get(reason)
            if last is not None and now - last < self._window_seconds:
                return False
            self._announced[reason] = now
            return True

    def admit(self, job_type: str, reason: SkipReason, scheduled: datetime | None) -> bool:
        """True: record this skip in full (it opens a window). False: it was counted."""
        if self._window_seconds <= 0:
            return True
        key, now = (job_type, reason), self._clock()
        with self._lock:
            window = self._windows.get(key)
            expired = window is not None and now - window.opened_at >= self._window_seconds
            if window is None or (expired and window.count == 0):
                self._windows[key] = _Window(now)
                return True
            # (a window closed but not flushed yet takes this one too: the next flush has it)
            window.count += 1
            window.first = window.first or scheduled
            window.last = scheduled or window.last
            return False

    def due(self, *, everything: bool = False) -> list[CoalescedSkips]:
        """The counted skips of every window that has closed (`everything`: of all windows,
        at a stop), and forget those windows."""
        now, closed = self._clock(), []
        with self._lock:
            for key, window in list(self._windows.items()):
                if everything or now - window.opened_at >= self._window_seconds:
                    del self._windows[key]
                    if window.count:
                        closed.append(CoalescedSkips(*key, window.count, window.first, window.last))
        return closed
