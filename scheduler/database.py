"""Engines for the one database that holds schedules, run history and the leader lock.

SQLite (the default) gets WAL journaling with `synchronous=NORMAL`: a killed process loses no
committed transaction, and readers never block the writer. PostgreSQL is used through psycopg 3.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, DateTime, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.engine.url import URL
from sqlalchemy.types import TypeEngine

from .errors import ConfigurationError

SQLITE_BUSY_TIMEOUT_SECONDS = 30
#: UPDATE ... FROM (3.33), ON CONFLICT DO NOTHING without a target (3.35) and the JSON
#: functions, which the batch writes use
SQLITE_MINIMUM = (3, 35, 0)


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


def create_database_engine(
    url: str, *, busy_timeout_seconds: float = SQLITE_BUSY_TIMEOUT_SECONDS, **options: Any
) -> Engine:
    """An engine for `url`, creating the SQLite file's directory when needed. On SQLite a
    write waits up to `busy_timeout_seconds` for another writer."""
    parsed = normalize_url(url)
    if is_sqlite(parsed) and (problem := sqlite_problem()) is not None:
        raise ConfigurationError([problem])
    path = sqlite_path(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        options.setdefault("connect_args", {}).setdefault("timeout", busy_timeout_seconds)
    else:
        options.setdefault("pool_pre_ping", True)
    engine = create_engine(parsed, **options)
    if is_sqlite(parsed):
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, busy_timeout_seconds))
    return engine


def sqlite_problem(
    version: tuple[int, int, int] = sqlite3.sqlite_version_info, json: bool | None = None
) -> str | None:
    """Why the SQLite library Python links cannot hold the scheduler's database, if it cannot."""
    json = _linked_sqlite_has_json() if json is None else json
    if version >= SQLITE_MINIMUM and json:
        return None
    found = ".".join(map(str, version)) + ("" if json else " without its JSON functions")
    needed = ".".join(map(str, SQLITE_MINIMUM))
    return (
        f"SCHEDULER_DATABASE_URL: this Python's sqlite3 module links SQLite {found}; the "
        f"scheduler needs {needed} or newer with JSON functions (a newer Python build, or "
        "PostgreSQL)"
    )


@functools.cache
def _linked_sqlite_has_json() -> bool:
    with contextlib.closing(sqlite3.connect(":memory:")) as connection:
        try:
            connection.execute("SELECT json_extract('[1]', '$[0]')")
        except sqlite3.OperationalError:
            return False
    return True


def _sqlite_pragmas(busy_timeout_seconds: float, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
    cursor.close()


class BatchStatement:
    """A write of many rows at once: one statement per batch, the batch one JSON parameter.

    For the writes that happen thousands of times a second. `sql` holds `{rows}` where a row
    source goes, whose columns are named column1, column2, ... (usable as `INSERT ... {rows}`
    or `FROM ({rows}) AS v`); rows are tuples in the order of `columns`. `{param}` marks where
    each further parameter of `execute` goes, after the rows.

    The rows are bound as one JSON array and unpacked by the database (`json_each` on SQLite,
    `json_array_elements` with a cast per column on PostgreSQL): one constant statement,
    prepared once, stepped once. A driver call per row costs Python time on the writer's
    thread, and on SQLite worse: Python's sqlite3 gives up the GIL around every step, and while
    the loop thread computes, taking it back costs up to a switch interval (5 ms), so what a
    batch costs beside a busy loop is its number of steps (measured: a batch of 50 rows 35 ms as
    chunked VALUES lists, 18 ms as JSON). On PostgreSQL it replaced psycopg's pipelined
    `executemany` of a statement per row: lag p99 at 5,000 jobs went from 146-334 ms to
    34-42 ms in three interleaved pairs.
    """

    def __init__(self, sql: str, columns: Sequence[TypeEngine[Any]], dialect: Dialect) -> None:
        self._conversions = [
            (index, processor)
            for index, type_ in enumerate(columns)
            if (processor := _json_processor(type_, dialect)) is not None
        ]
        if dialect.name == "sqlite":
            # WHERE: SQLite's parser needs it between `INSERT ... SELECT` and `ON CONFLICT`
            unpacked = ", ".join(
                f"json_extract(value, '$[{i}]') AS column{i + 1}" for i in range(len(columns))
            )
            self.sql = sql.format(rows=f"SELECT {unpacked} FROM json_each(?) WHERE true", param="?")
        else:
            compile_type = dialect.type_compiler_instance.process
            unpacked = ", ".join(
                f"CAST(value ->> {i} AS {compile_type(type_)}) AS column{i + 1}"
                for i, type_ in enumerate(columns)
            )
            self.sql = sql.format(
                rows=f"SELECT {unpacked} FROM json_array_elements(%s::json) AS batch(value)",
                param="%s",
            )

    def execute(self, connection: Connection, rows: Sequence[Sequence[Any]], *params: Any) -> int:
        """Run the statement over `rows`; how many rows it changed.

        No RETURNING: on SQLite each returned row is a step of its own, and a step gives up the
        GIL, which a busy loop thread then holds for up to a switch interval."""
        if not rows:
            return 0
        rows_json = _json_array(self._converted(rows))
        return int(connection.exec_driver_sql(self.sql, (rows_json, *params)).rowcount)

    def _converted(self, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        """`rows` with the dialect's conversions applied, a column at a time."""
        if not self._conversions:
            return rows
        columns: list[Iterable[Any]] = list(zip(*rows, strict=True))
        for index, processor in self._conversions:
            columns[index] = map(processor, columns[index])
        return list(zip(*columns, strict=True))


_json_array = json.JSONEncoder(check_circular=False, allow_nan=False).encode


def _json_processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """The conversion of a value of `type_` into what the dialect parses back from JSON."""
    if dialect.name == "sqlite":
        return _bind_processor(type_, dialect)
    return _isoformat if isinstance(type_, DateTime) else None


def _isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """The dialect's conversion of a parameter of `type_`, or an equivalent faster one.

    SQLite stores datetimes as text, which SQLAlchemy formats in Python with a %-format per
    value; `isoformat` writes the same text in C (checked here against SQLAlchemy's own)."""
    processor = type_.dialect_impl(dialect).bind_processor(dialect)
    if processor is None or dialect.name != "sqlite" or not isinstance(type_, DateTime):
        return processor
    samples = (
        datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC),
        datetime(2001, 2, 3, 4, 5, 6),
        datetime(5, 6, 7, 8, 9, 10, 11, tzinfo=timezone(timedelta(hours=-3))),
    )
    if any(_sqlite_datetime(sample) != processor(sample) for sample in samples):
        return processor
    return _sqlite_datetime


def _sqlite_datetime(value: datetime | None) -> str | None:
    # "YYYY-MM-DD HH:MM:SS.ffffff", then the offset of an aware value, which SQLAlchemy drops
    return None if value is None else value.isoformat(" ", "microseconds")[:26]
