"""The run-history table and its writer, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from scheduler.database import create_database_engine
from scheduler.history import DurableStarts, HistoryWriter, RunHistory, migrate
from scheduler.leadership import Fence, sole_term
from scheduler.records import (
    ERROR_SUMMARY_LIMIT,
    RunRecord,
    StartRefusal,
    new_run_id,
    summarize_error,
)
from scheduler.tables import VERSION_TABLE, metadata, runs
from tests.support import wait_until


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def record(job_type: str = "job", **fields: object) -> RunRecord:
    values: dict[str, object] = {
        "run_id": uuid.uuid4().hex,
        "attempt": 1,
        "job_type": job_type,
        "trigger": "schedule",
        "started_at": datetime.now(UTC),
        "instance": "test:1",
    }
    values.update(fields)
    return RunRecord(**values)  # type: ignore[arg-type]


def test_migrations_match_the_table_the_code_uses(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(context, metadata)
    assert diff == []
    migrate(engine)  # idempotent


def test_writer_inserts_then_completes_rows_in_order(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    # More rows than one batch holds (1,000), starts and ends of a row in one batch or not.
    rows = [record(scheduled_at=datetime.now(UTC)) for _ in range(1199)]
    rows.append(record(scheduled_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))  # no fraction
    for row in rows:
        writer.write(row)
    for row in rows:
        row.outcome, row.finished_at, row.items_succeeded = "success", datetime.now(UTC), 3
        writer.write(row)
    writer.write(record("other", outcome="skipped", skip_reason="dependency", error="why"))
    assert writer.close()
    history = RunHistory(engine)
    stored = history.recent("job", limit=2000)
    assert len(stored) == 1200
    assert {r.outcome for r in stored} == {"success"}
    assert all(r.items_succeeded == 3 and r.finished_at is not None for r in stored)
    assert stored[0].started_at.tzinfo is not None
    by_id = {r.run_id: r for r in stored}
    assert all(by_id[row.run_id] == row for row in rows)  # every value, to the microsecond
    (skipped,) = history.recent("other")
    assert (skipped.skip_reason, skipped.error) == ("dependency", "why")


def test_writes_from_many_threads_all_land(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))

    def burst() -> None:
        for _ in range(100):
            writer.write(record(outcome="skipped"))

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(timeout=30)
    assert RunHistory(engine).count() == 400
    writer.close()


def test_summaries_give_latest_outcome_and_latest_success(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    for job_type, outcome, minute in [
        ("a", "success", 1),
        ("a", "failure", 2),
        ("a", "skipped", 3),
        ("b", "success", 1),
        ("c", "timeout", 1),
    ]:
        at = t0 + timedelta(minutes=minute)
        writer.write(record(job_type, outcome=outcome, started_at=at, finished_at=at))
    writer.close()
    summaries = RunHistory(engine).summaries()
    assert summaries["a"].last_outcome == "failure"
    assert summaries["a"].last_success_at == t0 + timedelta(minutes=1)
    assert summaries["b"].last_outcome == "success"
    assert summaries["c"].last_success_at is None


def test_mark_interrupted_and_prune(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    old = record("old", started_at=datetime.now(UTC) - timedelta(days=40), outcome="success")
    writer.write(old)
    writer.write(record("inflight"))
    writer.close()
    history = RunHistory(engine)
    (closed,) = history.mark_interrupted(datetime.now(UTC), "process died")
    assert closed.job_type == "inflight"
    (row,) = history.recent("inflight")
    assert (row.outcome, row.error) == ("interrupted", "process died")
    assert history.mark_interrupted(datetime.now(UTC), "again") == []
    assert history.prune(datetime.now(UTC) - timedelta(days=30)) == 1
    assert history.recent("old") == []


def test_writer_keeps_its_batch_while_the_database_is_away(tmp_path: object) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path}/h.db")
    writer = HistoryWriter(engine, Fence(), retry_seconds=0.05)
    writer.write(record(outcome="success"))  # no table yet: the write fails and is retried
    assert not writer.flush(timeout=0.5)
    assert not writer.healthy
    migrate(engine)
    assert writer.flush(timeout=10)
    assert writer.healthy
    assert RunHistory(engine).count() == 1
    writer.close()
    engine.dispose()


async def test_a_durable_start_returns_once_its_row_is_committed(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    starts = DurableStarts(writer, asyncio.get_running_loop())
    rows = [record(f"job{n}") for n in range(20)]
    for row in rows:
        await starts.started(row)
        # Read on another connection: the row is there before the run's body would execute.
        (stored,) = RunHistory(engine).recent(row.job_type)
        assert (stored.run_id, stored.outcome) == (row.run_id, "running")
    # The end of the attempt carries when its body started (after that commit).
    body_started = datetime.now(UTC) + timedelta(seconds=1)
    rows[0].started_at, rows[0].outcome, rows[0].finished_at = body_started, "success", body_started
    starts.finished(rows[0])
    assert await asyncio.to_thread(writer.flush, 10)
    (stored,) = RunHistory(engine).recent(rows[0].job_type)
    assert (stored.outcome, stored.started_at) == ("success", body_started)
    concurrent = [record("burst") for _ in range(200)]
    await asyncio.wait_for(asyncio.gather(*(starts.started(r) for r in concurrent)), 30)
    assert RunHistory(engine).count(["burst"]) == 200
    writer.close()


async def test_durable_starts_do_not_wait_while_the_database_is_away(tmp_path: object) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path}/h.db")
    fence = Fence()
    fence.begin(1)
    writer = HistoryWriter(engine, fence, retry_seconds=0.05)
    starts = DurableStarts(writer, asyncio.get_running_loop())
    # No table yet: the first start waits only until the write fails, later ones not at all.
    await asyncio.wait_for(starts.started(record()), 10)
    assert not writer.healthy
    await asyncio.wait_for(starts.started(record()), 0.5)
    migrate(engine)  # the database is back: the queued rows land
    fence.begin(sole_term(engine, "test").epoch or 0)
    assert await asyncio.to_thread(writer.flush, 10)
    assert RunHistory(engine).count() == 2
    writer.close()
    engine.dispose()


def test_runs_table_has_the_audit_columns() -> None:
    assert {c.name for c in runs.columns} >= {
        "job_type", "run_id", "scheduled_at", "started_at", "finished_at", "attempt",
        "outcome", "error", "items_succeeded", "items_failed", "dead_letter",
    }  # fmt: skip


def test_run_ids_are_uuid7s_in_time_order() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    ids = [new_run_id() for _ in range(2000)]
    parsed = [uuid.UUID(run_id) for run_id in ids]
    assert all(len(run_id) == 32 and run_id == run_id.lower() for run_id in ids)
    assert {(u.version, u.variant) for u in parsed} == {(7, uuid.RFC_4122)}
    assert len(set(ids)) == len(ids)
    milliseconds = [u.int >> 80 for u in parsed]
    assert milliseconds == sorted(milliseconds)  # the index on them grows at one end
    first = datetime.fromtimestamp(milliseconds[0] / 1000, UTC)
    assert before <= first <= datetime.now(UTC)


def test_an_error_text_with_a_nul_character_is_stored(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    error = summarize_error(ValueError("bad\x00byte"))
    writer.write(record(outcome="failure", finished_at=datetime.now(UTC), error=error))
    assert writer.flush(timeout=10) and writer.healthy  # PostgreSQL refuses NUL in text
    writer.close()
    (stored,) = RunHistory(engine).recent()
    assert stored.error == "ValueError: bad\\x00byte"


def test_a_row_that_breaks_the_writer_is_dropped_and_the_writer_lives_on(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    good = [record() for _ in range(5)]
    broken = record(started_at="not a datetime")  # the statement's conversion raises on it
    for row in [*good[:2], broken, *good[2:]]:
        writer.write(row)
    assert writer.flush(10)
    after = record()
    writer.write(after)
    assert writer.close()
    stored = {r.run_id for r in RunHistory(engine).recent("job", limit=100)}
    assert stored == {r.run_id for r in [*good, after]}
    assert broken.run_id not in stored


def test_the_writer_is_unhealthy_once_its_thread_is_gone(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    assert writer.healthy
    writer.close()
    assert not writer.healthy


def started(writer: HistoryWriter, row: RunRecord) -> StartRefusal | None:
    ticket = writer.write(row)
    assert writer.flush(10)
    return writer.refusal(ticket)


def test_a_slots_second_first_attempt_is_refused(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    slot = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert started(writer, record(scheduled_at=slot)) is None
    assert started(writer, record(scheduled_at=slot)) == StartRefusal.SLOT_TAKEN
    # Not slots: a retry, a manual or a recovery run of that time, another job's slot.
    assert started(writer, record(scheduled_at=slot, attempt=2)) is None
    assert started(writer, record(scheduled_at=slot, trigger="recovery")) is None
    assert started(writer, record("other", scheduled_at=slot)) is None
    # The refused attempt is recorded as a skip of the same slot.
    writer.write(record(scheduled_at=slot, outcome="skipped", skip_reason="already_run"))
    assert writer.close()
    outcomes = sorted(r.outcome for r in RunHistory(engine).recent("job", limit=10))
    assert outcomes == ["running", "running", "running", "skipped"]


def test_a_stale_term_starts_nothing_but_its_endings_are_kept(engine: Engine) -> None:
    old = sole_term(engine, "old")
    writer = HistoryWriter(engine, old)
    running = record()
    assert started(writer, running) is None
    sole_term(engine, "successor")  # another instance takes over
    ended: list[int] = []
    old.add_listener(ended.append)
    assert started(writer, record()) == StartRefusal.NOT_LEADER
    assert old.epoch is None and len(ended) == 1
    finished = record(run_id=running.run_id, outcome="success", finished_at=datetime.now(UTC))
    writer.write(finished)
    writer.write(record(outcome="skipped", skip_reason="missed"))  # the successor's to record
    assert writer.close()
    (stored,) = RunHistory(engine).recent("job")
    assert (stored.run_id, stored.outcome) == (running.run_id, "success")


def test_text_the_databases_refuse_is_cleaned_and_cut(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    surrogate = "cannot open " + os.fsdecode(b"caf\xe9.csv")
    for error in (surrogate, "x" * 10_000_000, "nul\x00"):
        writer.write(record(outcome="failure", finished_at=datetime.now(UTC), error=error))
    assert writer.flush(10) and writer.healthy
    writer.close()
    errors = [r.error or "" for r in RunHistory(engine).recent("job")]
    assert errors[2] == "cannot open caf\\udce9.csv"
    assert len(errors[1]) == ERROR_SUMMARY_LIMIT and errors[1].endswith("…")
    assert errors[0] == "nul\\x00"


def test_a_batch_refused_for_one_row_is_written_row_by_row(engine: Engine) -> None:
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    slot = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    first = record(scheduled_at=slot)
    assert started(writer, first) is None
    # An ending for the same slot under another run id: the unique index refuses that row.
    clash = record(scheduled_at=slot, outcome="success", finished_at=datetime.now(UTC))
    good = [record() for _ in range(3)]
    for row in [good[0], clash, *good[1:]]:
        writer.write(row)
    assert writer.close()
    stored = {r.run_id for r in RunHistory(engine).recent("job", limit=100)}
    assert stored == {r.run_id for r in [first, *good]}
    assert writer.dropped == 1


def test_a_stalled_write_is_reported_and_lets_waiting_runs_go(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path}/h.db")
    migrate(engine)
    writer = HistoryWriter(engine, sole_term(engine, "test"), stall_seconds=0.3)
    locker = sqlite3.connect(str(tmp_path / "h.db"), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        writer.write(record())
        wait_until(lambda: writer.stalled, timeout=10, what="the write to stall")
        assert not writer.healthy
        woken: list[bool] = []
        writer.add_listener(lambda: woken.append(True))
        writer.check_stall()
        assert woken
    finally:
        locker.close()
    assert writer.flush(35) and writer.healthy
    writer.close()
    engine.dispose()
