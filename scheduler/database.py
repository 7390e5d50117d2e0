"""Engines for the one database that holds schedules, run history and the leader lock.

SQLite (the default) gets WAL journaling with `synchronous=NORMAL`: a killed process loses no
committed transaction, and readers never block the writer. PostgreSQL is used through psycopg 3.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, DateTime, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.engine.url import URL
from sqlalchemy.types import TypeEngine

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


class ValuesStatement:
    """A write of many rows at once: a statement whose VALUES list is filled per batch.

    For the writes that happen thousands of times a second. On SQLite the rows go into the
    VALUES list of one statement per chunk, not through `executemany`: Python's sqlite3 driver
    gives up the GIL around every row's step, and while another thread of the process computes,
    getting it back costs up to a thread switch interval each time (measured: 0.8 µs a row
    alone, over 400 µs a row beside one busy thread). On PostgreSQL it is one row per statement
    through psycopg's `executemany`, which pipelines them; a statement of thousands of
    placeholders would be parsed in Python every time. `sql` holds `{values}` where the rows
    go; rows are tuples in the order of `columns`, and only the type conversions the dialect
    needs (SQLite's datetimes) are applied.
    """

    def __init__(
        self,
        sql: str,
        columns: Sequence[TypeEngine[Any]],
        dialect: Dialect,
        max_rows: int = 512,  # 512 x 14 parameters: within SQLite's limit
    ) -> None:
        self.sql = sql
        self._conversions = [
            (index, processor)
            for index, type_ in enumerate(columns)
            if (processor := _bind_processor(type_, dialect)) is not None
        ]
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._width = len(columns)
        self._row = "(" + ", ".join([mark] * self._width) + ")"
        self._max_rows = max_rows
        self._multi_row = dialect.name == "sqlite"

    def execute(self, connection: Connection, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if not self._multi_row:
            single_row = self.sql.format(values=self._row)
            connection.exec_driver_sql(single_row, [self._flattened((row,)) for row in rows])
            return
        start = 0
        while start < len(rows):
            # Chunks of 2^k rows: a handful of distinct statements, so SQLite's statement
            # cache hits.
            size = min(self._max_rows, 1 << ((len(rows) - start).bit_length() - 1))
            chunk, start = rows[start : start + size], start + size
            values = ", ".join([self._row] * len(chunk))
            connection.exec_driver_sql(self.sql.format(values=values), self._flattened(chunk))

    def _flattened(self, rows: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
        """The parameters of `rows` in one flat tuple, converted by column."""
        flat = list(itertools.chain.from_iterable(rows))
        for index, processor in self._conversions:
            flat[index :: self._width] = map(processor, flat[index :: self._width])
        return tuple(flat)


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
