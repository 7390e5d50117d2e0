"""Engines for the one database that holds schedules, run history and the leader lock.

SQLite (the default) gets WAL journaling with `synchronous=NORMAL`: a killed process loses no
committed transaction, and readers never block the writer. PostgreSQL is used through psycopg 3.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.engine.url import URL
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

SQLITE_BUSY_TIMEOUT_SECONDS = 30


def normalize_url(url: str) -> URL:
    """Parse `url`; a bare `postgresql://` URL selects psycopg 3, the driver this package ships."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    if not is_sqlite(url) or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def redact(url: str | URL) -> str:
    """The URL with its password hidden, fit for logs."""
    try:
        return normalize_url(str(url) if isinstance(url, URL) else url).render_as_string(
            hide_password=True
        )
    except Exception:  # an unparseable URL may still hold a secret
        return re.sub(r"//[^@/]*@", "//***@", str(url))


def create_database_engine(url: str, **options: Any) -> Engine:
    """An engine for `url`, creating the SQLite file's directory when needed."""
    parsed = normalize_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        options.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_SECONDS)
    else:
        options.setdefault("pool_pre_ping", True)
    engine = create_engine(parsed, **options)
    if is_sqlite(parsed):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.close()


class BatchStatement:
    """An INSERT or UPDATE compiled once for a dialect and run as one driver-level executemany.

    For the few statements written thousands of times a second: SQLAlchemy's per-row parameter
    handling costs more than the database's own write. Only the type conversions the dialect
    needs (SQLite's datetimes and booleans) are kept.
    """

    def __init__(
        self, statement: ClauseElement, dialect: Dialect, column_keys: Sequence[str] = ()
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) or None)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self._positional = bool(compiled.positional)
        self._names = list(compiled.positiontup or []) if self._positional else list(compiled.binds)
        self._processors: list[tuple[str, Callable[[Any], Any]]] = []
        for name in self._names:
            processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors.append((name, processor))

    def execute(self, connection: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        parameters = [self._parameters(row) for row in rows]
        if parameters:
            connection.exec_driver_sql(self.sql, parameters)

    def _parameters(self, row: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = {name: row[name] for name in self._names}
        for name, processor in self._processors:
            values[name] = processor(values[name])
        return tuple(values.values()) if self._positional else values
