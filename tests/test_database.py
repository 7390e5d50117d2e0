"""Engines and the multi-row writes, against SQLAlchemy's own conversions."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    insert,
    select,
)
from sqlalchemy.dialects import sqlite

from scheduler.database import (
    BatchStatement,
    _bind_processor,
    create_database_engine,
    sqlite_problem,
)

table = Table(
    "sample",
    MetaData(),
    Column("key", String(40), primary_key=True),
    Column("moment", DateTime(timezone=True), nullable=True),
    Column("number", Integer, nullable=True),
    Column("ratio", Float, nullable=True),
    Column("flag", Boolean, nullable=True),
    Column("note", Text, nullable=True),
)
NOTES = ["", "plain", 'quote " and \\ backslash', "new\nline\ttab", "ünïcødé ✓ 🎉", "x" * 5000]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    table.metadata.create_all(engine)
    yield engine
    engine.dispose()


def sample_rows(count: int, seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    rows = []
    for n in range(count):
        moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**14))
        rows.append((
            f"k{n:05d}",
            rng.choice([None, moment]),
            rng.choice([None, 0, -(2**31), 2**31 - 1, rng.randrange(-1000, 1000)]),
            rng.choice([None, 0.0, 1e300, -2.5e-300, rng.uniform(-1e9, 1e9), 1_796_000_000.123456]),
            rng.choice([None, True, False]),
            rng.choice([None, *NOTES]),
        ))  # fmt: skip
    return rows


def stored(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(select(table).order_by(table.c.key)).all()
    return [(key, in_utc(moment), *rest) for key, moment, *rest in rows]


def in_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive UTC, PostgreSQL the session's zone."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def as_dicts(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(table.c.keys(), row, strict=True)) for row in rows]


def test_a_batch_of_rows_is_stored_as_sqlalchemy_stores_it(engine: Engine) -> None:
    rows = sample_rows(300, seed=3)
    columns = [column.type for column in table.columns]
    names = ", ".join(column.name for column in table.columns)
    statement = BatchStatement(f"INSERT INTO sample ({names}) {{rows}}", columns, engine.dialect)
    steps: list[bool] = []
    event.listen(engine, "before_cursor_execute", lambda *args: steps.append(args[-1]))
    with engine.begin() as connection:
        statement.execute(connection, rows)
    assert steps == [False]  # one statement, not many
    ours = stored(engine)
    with engine.begin() as connection:
        connection.execute(table.delete())
        connection.execute(insert(table), as_dicts(rows))
    assert ours == stored(engine) == rows


def test_a_batch_updates_rows_through_a_join(engine: Engine) -> None:
    rows = sample_rows(50, seed=4)
    with engine.begin() as connection:
        connection.execute(insert(table), as_dicts(rows))
    statement = BatchStatement(
        "UPDATE sample SET ratio = v.column2, note = v.column3 "
        "FROM ({rows}) AS v WHERE sample.key = v.column1",
        [table.c.key.type, table.c.ratio.type, table.c.note.type],
        engine.dialect,
    )
    changes = [(row[0], float(n) / 7, f"changed {n}") for n, row in enumerate(rows[::2])]
    with engine.begin() as connection:
        statement.execute(connection, changes)
        statement.execute(connection, [])
    expected = {row[0]: row for row in rows}
    for key, ratio, note in changes:
        expected[key] = (*expected[key][:3], ratio, expected[key][4], note)
    assert stored(engine) == sorted(expected.values())


def test_sqlite_datetimes_are_written_as_sqlalchemy_writes_them() -> None:
    dialect = sqlite.dialect()
    ours = _bind_processor(DateTime(timezone=True), dialect)
    theirs = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None and theirs is not None and ours is not theirs  # the fast one
    rng = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None]
    values = [None, datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)]
    for _ in range(2000):
        moment = datetime(1, 1, 1) + timedelta(microseconds=rng.randrange(315_537_897_600_000_000))
        values.append(moment.replace(tzinfo=rng.choice(zones)))
    values += [value.replace(microsecond=0) for value in values[3:100] if value is not None]
    assert [ours(value) for value in values] == [theirs(value) for value in values]


def test_a_sqlite_too_old_for_the_batch_writes_is_refused_by_name() -> None:
    assert sqlite_problem() is None  # the SQLite this Python links (CI's too) is new enough
    old = sqlite_problem((3, 31, 1), json=True)
    assert old is not None and "SQLite 3.31.1" in old and "3.35.0 or newer" in old
    assert old.startswith("SCHEDULER_DATABASE_URL")
    without_json = sqlite_problem((3, 40, 1), json=False)
    assert without_json is not None and "3.40.1 without its JSON functions" in without_json
