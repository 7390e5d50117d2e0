"""The grouped job store, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, event, text

from scheduler.database import create_database_engine
from scheduler.executor import JOB_FUNCTION
from scheduler.jobstore import JOBS_TABLE, GroupedSQLAlchemyJobStore


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[GroupedSQLAlchemyJobStore]:
    store = GroupedSQLAlchemyJobStore(engine, retry_seconds=0.5)
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=UTC)
    scheduler.start(paused=True)
    now = datetime.now(UTC)
    for n in range(50):
        scheduler.add_job(
            JOB_FUNCTION,
            trigger=IntervalTrigger(seconds=1, timezone=UTC),
            id=f"job_{n}",
            args=(f"job_{n}",),
            next_run_time=now,
        )
    yield store
    scheduler.shutdown(wait=False)


def statements(engine: Engine) -> list[tuple[str, bool]]:
    seen: list[tuple[str, bool]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(_c: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, many: bool) -> None:
        seen.append((statement.split()[0].upper(), many))

    return seen


def test_a_wakeups_updates_are_written_together(
    store: GroupedSQLAlchemyJobStore, engine: Engine
) -> None:
    seen = statements(engine)
    due = store.get_due_jobs(datetime.now(UTC))
    assert len(due) == 50
    seen.clear()
    later = datetime.now(UTC) + timedelta(hours=1)
    for job in due:
        job._modify(next_run_time=later)
        store.update_job(job)
    assert seen == [] and store.pending == 50  # nothing written yet
    assert store.get_next_run_time() == later
    updates = [s for s in seen if s[0] == "UPDATE"]
    if engine.dialect.name == "sqlite":  # statements of 32 + 16 + 2 rows: one step each
        assert updates == [("UPDATE", False)] * 3
    else:  # one pipelined executemany
        assert updates == [("UPDATE", True)]
    assert store.pending == 0
    assert store.get_due_jobs(datetime.now(UTC)) == []


def test_reads_see_buffered_updates(store: GroupedSQLAlchemyJobStore) -> None:
    (job, *_) = store.get_due_jobs(datetime.now(UTC))
    later = datetime.now(UTC) + timedelta(hours=1)
    job._modify(next_run_time=later)
    store.update_job(job)
    assert store.lookup_job(job.id).next_run_time == later
    assert job.id not in {j.id for j in store.get_due_jobs(datetime.now(UTC))}


def test_an_unreachable_database_neither_raises_nor_loses_updates(
    store: GroupedSQLAlchemyJobStore, engine: Engine
) -> None:
    (job, *_) = store.get_due_jobs(datetime.now(UTC))
    later = datetime.now(UTC) + timedelta(hours=1)
    job._modify(next_run_time=later)
    store.update_job(job)
    with engine.begin() as connection:  # the table goes away, as with a lost database
        connection.execute(text(f"ALTER TABLE {JOBS_TABLE} RENAME TO away"))
    retry_at = store.get_next_run_time()  # APScheduler's loop would die if this raised
    assert retry_at is not None and retry_at < datetime.now(UTC) + timedelta(seconds=1)
    assert not store.healthy and store.pending == 1
    with pytest.raises(Exception, match="scheduler_jobs"):
        store.get_due_jobs(datetime.now(UTC))  # APScheduler handles this one itself
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE away RENAME TO {JOBS_TABLE}"))
    store.get_next_run_time()
    assert store.healthy and store.pending == 0
    assert store.lookup_job(job.id).next_run_time == later
