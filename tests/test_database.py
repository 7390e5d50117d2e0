"""Engines and the multi-row writes, against SQLAlchemy's own conversions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from scheduler.database import _bind_processor


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
    values += [value.replace(microsecond=0) for value in values[3:100]]
    assert [ours(value) for value in values] == [theirs(value) for value in values]
