"""One active scheduler per database: the others wait as standbys and take over.

SQLite: an exclusive lock on a file beside the database (released by the OS when the holder
dies). PostgreSQL: a session advisory lock held on a dedicated connection; the lock lives exactly
as long as that connection, so losing the connection is losing the lock, and `is_held` checks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import filelock
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from .database import create_database_engine, normalize_url, redact, sqlite_path
from .errors import ConfigurationError

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
