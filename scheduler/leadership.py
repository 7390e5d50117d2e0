"""One active scheduler per database: the others wait as standbys and take over.

Leadership is a *term* with an epoch that only grows, held in the one-row table
`scheduler_leadership`. Winning a term increments the epoch (compare-and-set, so two instances
cannot win the same one); every write only the leader may make (a run's `running` row, the
job store) checks in its own transaction that the epoch is still its own (`Fence`), so a leader
whose term has ended, say after a SIGSTOP, cannot start a run even for a moment: its first
refused write demotes it.

A term is won in one of two ways:

- **The lock.** SQLite: an exclusive lock on a file beside the database (released by the OS when
  the holder dies); PostgreSQL: a session advisory lock on a dedicated connection (it lives as
  long as that connection). Winning the lock from a leader that held it means that leader is
  dead or cut off: the term is taken at once (a kill -9 fails over within a standby poll).
- **The lease.** The leader renews the term every heartbeat (`beat` grows). A standby that sees
  neither the epoch nor the beat change for `lease_seconds` of its own clock takes the term
  over though the lock is still held: a leader that is paused, frozen or cut off from the
  database can block failover for no longer than that. No clocks are compared between hosts.

A leader that could not renew for half the lease stops starting runs (`lease_valid`) until it
renews again: by the time a standby may take over, it has stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import filelock
import structlog
from sqlalchemy import (
    Connection,
    Engine,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from .database import create_database_engine, normalize_url, redact, sqlite_path
from .errors import ConfigurationError, StaleLeadershipError
from .records import utcnow
from .tables import leadership

log = structlog.get_logger(__name__)

ROW = 1

#: The advisory lock key: "taskward" in ASCII, as a signed 64-bit integer.
ADVISORY_LOCK_KEY = int.from_bytes(b"taskward", "big", signed=True)


class LeaderLock(Protocol):
    description: str

    def try_acquire(self) -> bool: ...
    def is_held(self) -> bool: ...
    def release(self) -> None: ...


class FileLeaderLock:
    def __init__(self, path: Path) -> None:
        self.description = f"file lock {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not thread-local: the service acquires and checks it from different worker threads.
        self._lock = filelock.FileLock(path, is_singleton=False, thread_local=False)

    def try_acquire(self) -> bool:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        return True

    def is_held(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)


class PostgresLeaderLock:
    def __init__(self, url: str) -> None:
        self.description = f"advisory lock {ADVISORY_LOCK_KEY} on {redact(url)}"
        self._engine = create_database_engine(
            url,
            poolclass=NullPool,
            connect_args={"connect_timeout": 5, "keepalives_idle": 5, "keepalives_interval": 2,
                          "keepalives_count": 2},
        )  # fmt: skip
        self._connection: Connection | None = None

    def try_acquire(self) -> bool:
        try:
            if self._connection is None:
                self._connection = self._engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                )
            query = text("SELECT pg_try_advisory_lock(:key)")
            return bool(self._connection.execute(query, {"key": ADVISORY_LOCK_KEY}).scalar())
        except SQLAlchemyError:
            self._discard()
            return False

    def is_held(self) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            self._discard()
            return False
        return True

    def release(self) -> None:
        if self._connection is not None:
            try:
                query = text("SELECT pg_advisory_unlock(:key)")
                self._connection.execute(query, {"key": ADVISORY_LOCK_KEY})
            except SQLAlchemyError:
                pass
        self._discard()
        self._engine.dispose()

    def _discard(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except SQLAlchemyError:
                pass
        self._connection = None


def leader_lock_for(database_url: str) -> LeaderLock:
    url = normalize_url(database_url)
    path = sqlite_path(url)
    if path is not None:
        return FileLeaderLock(path.with_name(path.name + ".lock"))
    if url.get_backend_name() == "postgresql":
        return PostgresLeaderLock(database_url)
    raise ConfigurationError(
        [
            f"SCHEDULER_DATABASE_URL={redact(url)!r}: the service needs a SQLite database file "
            "or a PostgreSQL server (schedules must outlive the process)"
        ]
    )


class Fence:
    """This instance's current term (None while it does not lead), checked inside a write's
    own transaction. A refused check ends the term here at once and tells the listeners; a
    check that passes renews the term's lease too (`on_renewed`): under load on SQLite the
    history writer holds the one write lock nearly all the time, and a renewal of its own would
    starve behind it."""

    def __init__(
        self, on_renewed: Callable[[], None] = lambda: None, renew_every: float = 1.0
    ) -> None:
        self._on_renewed = on_renewed
        self._renew_every = renew_every
        self._checked_at = 0.0  # time.monotonic() of the last check that passed
        self._epoch: int | None = None
        self._listeners: list[Callable[[int], None]] = []
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(stale_epoch)` (from the thread that found out) when a term ends."""
        self._listeners.append(listener)

    def begin(self, epoch: int) -> None:
        self._epoch = epoch

    def end(self) -> None:
        self._epoch = None

    def check(self, connection: Connection) -> None:
        """Raise `StaleLeadershipError` unless this instance's term is the current one. A write
        of the leadership row (its beat): it takes the row's lock, so a takeover cannot commit
        between this check and the caller's commit, and it shows standbys the leader is alive."""
        epoch = self._epoch
        if epoch is None:
            raise StaleLeadershipError("this instance does not lead")
        result = connection.execute(
            update(leadership)
            .where(leadership.c.id == ROW, leadership.c.epoch == epoch)
            .values(beat=leadership.c.beat + 1)
        )
        if result.rowcount != 1:
            self.stale(epoch)
            raise StaleLeadershipError(f"leadership term {epoch} has ended: another instance leads")
        self._checked_at = time.monotonic()
        self._on_renewed()

    def check_due(self) -> bool:
        """Whether a write should `check` (and so renew the lease) rather than only guard its
        statement with the epoch: at most every `renew_every` seconds."""
        return time.monotonic() - self._checked_at >= self._renew_every

    def stale(self, epoch: int) -> None:
        with self._lock:
            if self._epoch != epoch:
                return
            self._epoch = None
        log.error("leadership term ended: another instance took over", epoch=epoch)
        for listener in self._listeners:
            listener(epoch)


class Leadership:
    """Winning, renewing and giving up terms (blocking calls: run them in a thread)."""

    def __init__(
        self,
        lock: LeaderLock,
        engine: Engine,
        instance: str,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = lock
        self.fence = Fence(self._renewed, renew_every=lease_seconds / 10)
        self.lease_seconds = lease_seconds
        self._engine = engine
        self._instance = instance
        self._clock = clock
        self._holds_lock = False
        self._seen: tuple[int, int] | None = None  # (epoch, beat) a standby last saw change
        self._seen_at = clock()
        self._renewed_at = clock()  # the leader's last renewal that succeeded

    @property
    def description(self) -> str:
        return f"{self.lock.description}, lease {self.lease_seconds:g}s"

    def try_take(self) -> bool:
        """A standby's poll: True if this instance has just won a term."""
        got_lock = self.lock.try_acquire()
        try:
            with self._engine.begin() as connection:
                row = connection.execute(select(leadership).where(leadership.c.id == ROW)).one()
        except SQLAlchemyError:
            if got_lock:
                self.lock.release()
            return False
        now = self._clock()
        if (row.epoch, row.beat) != self._seen:
            self._seen, self._seen_at = (row.epoch, row.beat), now
        silent = now - self._seen_at
        expired = silent >= self.lease_seconds
        if got_lock and (row.holds_lock or expired or row.epoch == 0):
            return self._claim(row.epoch, holds_lock=True, why="lock")
        if got_lock:  # the leader took its term by lease and renews it: let it have the lock
            self.lock.release()
            return False
        if expired:
            log.warning(
                "leader silent for longer than its lease: taking over",
                holder=row.holder,
                epoch=row.epoch,
                silent_seconds=round(silent, 2),
            )
            return self._claim(row.epoch, holds_lock=False, why="lease")
        return False

    def _claim(self, seen_epoch: int, *, holds_lock: bool, why: str) -> bool:
        try:
            with self._engine.begin() as connection:
                won = connection.execute(
                    update(leadership)
                    .where(leadership.c.id == ROW, leadership.c.epoch == seen_epoch)
                    .values(
                        epoch=seen_epoch + 1,
                        beat=leadership.c.beat + 1,
                        holder=self._instance,
                        holds_lock=holds_lock,
                        renewed_at=utcnow(),
                    )
                ).rowcount
        except SQLAlchemyError:
            won = 0
        if won != 1:
            if holds_lock:
                self.lock.release()
            return False
        self._holds_lock = holds_lock
        self._renewed_at = self._clock()
        self.fence.begin(seen_epoch + 1)
        log.info("leadership term won", epoch=seen_epoch + 1, by=why)
        return True

    def _renewed(self) -> None:
        self._renewed_at = self._clock()

    def renew(self) -> bool:
        """The leader's heartbeat: False if its term has ended (another instance took over).
        A renewal the database did not take leaves the lease to run down (`lease_valid`); one
        is not tried while the fenced writes renew the term often enough."""
        epoch = self.fence.epoch
        if epoch is None:
            return False
        if self._holds_lock and not self.lock.is_held():
            log.warning("leader lock lost (its connection broke); the lease still holds")
            self._holds_lock = False
        elif not self._holds_lock:
            self._holds_lock = self.lock.try_acquire()
        if self._clock() - self._renewed_at < self.lease_seconds / 10:
            return True
        try:
            with self._engine.begin() as connection:
                renewed = connection.execute(
                    update(leadership)
                    .where(leadership.c.id == ROW, leadership.c.epoch == epoch)
                    .values(
                        beat=leadership.c.beat + 1,
                        holds_lock=self._holds_lock,
                        renewed_at=utcnow(),
                    )
                ).rowcount
        except SQLAlchemyError as error:
            log.debug("lease renewal failed", error=str(error))
            return True
        if renewed != 1:
            self.fence.stale(epoch)
            return False
        self._renewed_at = self._clock()
        return True

    def lease_valid(self) -> bool:
        """Whether the leader may start runs: it renewed within half the lease."""
        return self._clock() - self._renewed_at < self.lease_seconds / 2

    def unrenewed_seconds(self) -> float:
        return self._clock() - self._renewed_at

    def resign(self) -> None:
        """Give up the term and the lock (at demotion and at shutdown)."""
        self.fence.end()
        self._holds_lock = False
        self.lock.release()

    def close(self) -> None:
        self.resign()
        self._engine.dispose()


def sole_term(engine: Engine, instance: str) -> Fence:
    """A new term taken unconditionally, for a process that writes without a standby to race
    (benchmarks, tests, tools): any leader then running is fenced off."""
    with engine.begin() as connection:
        connection.execute(
            update(leadership)
            .where(leadership.c.id == ROW)
            .values(epoch=leadership.c.epoch + 1, holder=instance, renewed_at=utcnow())
        )
        epoch = connection.execute(select(leadership.c.epoch)).scalar_one()
    fence = Fence()
    fence.begin(int(epoch))
    return fence
