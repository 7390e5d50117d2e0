"""The grouped job store, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.executors.base import BaseExecutor
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, event, text

from scheduler.active import _rebase_first_runs
from scheduler.database import create_database_engine
from scheduler.executor import JOB_FUNCTION
from scheduler.history import migrate
from scheduler.jobstore import DueIndex, GroupedSQLAlchemyJobStore
from scheduler.leadership import sole_term
from scheduler.tables import JOBS_TABLE
from scheduler.wakeup import FencedScheduler

from .support import wait_until


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[GroupedSQLAlchemyJobStore]:
    store = GroupedSQLAlchemyJobStore(engine, sole_term(engine, "test"), retry_seconds=0.5)
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
        if "scheduler_leadership" not in statement:  # the fence's check, one per transaction
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
    assert updates == [("UPDATE", False)]  # all 50 rows in one JSON parameter
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
    wake_at = store.get_next_run_time()  # APScheduler's loop would die if this raised
    assert wake_at is not None and wake_at < datetime.now(UTC) + timedelta(seconds=1)
    assert not store.healthy and store.pending == 1
    # The jobs keep running meanwhile, from memory.
    assert len(store.get_due_jobs(datetime.now(UTC))) == 49
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE away RENAME TO {JOBS_TABLE}"))
    wait_until(lambda: store.get_next_run_time() is not None and store.pending == 0)
    assert store.healthy
    assert store.lookup_job(job.id).next_run_time == later
    assert stored_next_run_time(engine, job.id) == later.timestamp()


def test_writes_are_grouped_over_a_burst_of_wakeups(
    engine: Engine, store: GroupedSQLAlchemyJobStore
) -> None:
    store.get_next_run_time()  # writes nothing: nothing is buffered
    seen = statements(engine)
    store._flush_seconds = 0.5
    due = store.get_due_jobs(datetime.now(UTC))
    later = datetime.now(UTC) + timedelta(hours=1)
    for job in due[:10]:  # the first wakeup: written at its end
        job._modify(next_run_time=later)
        store.update_job(job)
    store.get_next_run_time()
    assert [s for s in seen if s[0] == "UPDATE"] and store.pending == 0
    seen.clear()
    for job in due[10:]:  # the next ones, within flush_seconds: buffered, and a wakeup asked
        job._modify(next_run_time=later)
        store.update_job(job)
        wake_at = store.get_next_run_time()
        assert wake_at is not None and wake_at <= datetime.now(UTC) + timedelta(seconds=0.5)
    assert seen == [] and store.pending == 40
    wait_until(lambda: store.get_next_run_time() == later and store.pending == 0)
    assert [s for s in seen if s[0] == "UPDATE"]
    assert {stored_next_run_time(engine, job.id) for job in due} == {later.timestamp()}


def test_a_new_instance_reads_what_the_last_one_wrote(
    engine: Engine, store: GroupedSQLAlchemyJobStore
) -> None:
    due = store.get_due_jobs(datetime.now(UTC))
    later = datetime.now(UTC) + timedelta(hours=1)
    for job in due[:49]:
        job._modify(next_run_time=later)
        store.update_job(job)
    store.flush()
    successor = GroupedSQLAlchemyJobStore(engine, sole_term(engine, "successor"))
    successor.start(store._scheduler, "default")
    assert [job.id for job in successor.get_due_jobs(datetime.now(UTC))] == [due[49].id]
    assert successor.get_next_run_time() == due[49].next_run_time


def test_the_due_index_orders_moves_and_forgets_jobs() -> None:
    index = DueIndex()
    index.set("a", 30.0)
    index.set("b", 10.0)
    index.set("c", 20.0)
    assert index.due(5.0) == [] and index.next_time() == 10.0
    assert index.due(25.0) == ["b", "c"]
    assert index.due(25.0) == ["b", "c"]  # due until moved
    index.set("b", 40.0)
    index.set("c", None)  # paused
    assert index.due(35.0) == ["a"] and index.next_time() == 30.0
    index.set("a", 5.0)  # moved earlier
    index.set("a", 5.0)
    assert index.due(35.0) == ["a"] and len(index) == 2
    index.set("a", None)
    assert index.next_time() == 40.0 and index.due(100.0) == ["b"]


def stored_next_run_time(engine: Engine, job_id: str) -> float:
    with engine.connect() as connection:
        value = connection.execute(
            text(f"SELECT next_run_time FROM {JOBS_TABLE} WHERE id = :id"), {"id": job_id}
        ).scalar_one()
    return float(value)


class Recording(BaseExecutor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.submitted: list[str] = []

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        self.submitted.append(job.id)


@pytest.mark.parametrize("scheduler_class", [BackgroundScheduler, FencedScheduler])
def test_a_stopping_scheduler_hands_over_no_due_job(
    engine: Engine, scheduler_class: type[Any]
) -> None:
    """APScheduler 3 processes due jobs once more after `shutdown()`, a paused scheduler
    included; the service's scheduler does not (a stopping or demoted instance runs nothing)."""
    executor = Recording()
    store = GroupedSQLAlchemyJobStore(engine, sole_term(engine, "test"))
    scheduler = scheduler_class(
        jobstores={"default": store}, executors={"default": executor}, timezone=UTC
    )
    scheduler.start(paused=True)
    scheduler.add_job(
        JOB_FUNCTION,
        trigger=IntervalTrigger(seconds=1, timezone=UTC),
        id="due",
        args=("due",),
        next_run_time=datetime.now(UTC) - timedelta(seconds=1),
    )
    scheduler.shutdown(wait=True)
    assert executor.submitted == ([] if scheduler_class is FencedScheduler else ["due"])


def test_jobs_added_in_bulk_are_inserted_in_one_statement(engine: Engine) -> None:
    store = GroupedSQLAlchemyJobStore(engine, sole_term(engine, "test"), retry_seconds=0.5)
    scheduler = FencedScheduler(jobstores={"default": store}, timezone=UTC)  # runs nothing
    scheduler.start(paused=True)
    seen = statements(engine)
    now = datetime.now(UTC)
    try:
        with store.adding_in_bulk():
            for n in range(200):
                scheduler.add_job(
                    JOB_FUNCTION,
                    trigger=IntervalTrigger(seconds=1, timezone=UTC),
                    id=f"bulk_{n}",
                    args=(f"bulk_{n}",),
                    next_run_time=now,
                )
            assert [s for s in seen if s[0] == "INSERT"] == []  # buffered, yet scheduled:
            assert len(store.get_due_jobs(now)) == 200
            moved = store.lookup_job("bulk_0")
            moved._modify(next_run_time=now + timedelta(hours=1))
            store.update_job(moved)  # a job that ran before its row was written
            scheduler.remove_job("bulk_1")  # and one removed before it
            with pytest.raises(ConflictingIdError):
                scheduler.add_job(JOB_FUNCTION, "interval", seconds=1, id="bulk_2", args=("x",))
        assert [s for s in seen if s[0] == "INSERT"] == [("INSERT", True)]
    finally:
        scheduler.shutdown(wait=False)
    reread = GroupedSQLAlchemyJobStore(engine, sole_term(engine, "other"))
    stored = {job.id: job.next_run_time for job in reread.get_all_jobs()}
    assert len(stored) == 199 and "bulk_1" not in stored
    assert stored["bulk_0"] == now + timedelta(hours=1)
    assert stored["bulk_5"] == now


def test_a_new_jobs_first_run_late_from_start_up_is_placed_after_now(engine: Engine) -> None:
    store = GroupedSQLAlchemyJobStore(engine, sole_term(engine, "test"))
    scheduler = FencedScheduler(jobstores={"default": store}, timezone=UTC)
    scheduler.start(paused=True)
    long_ago = datetime.now(UTC) - timedelta(seconds=30)
    for job_id in ("late", "kept"):
        scheduler.add_job(
            JOB_FUNCTION,
            trigger=IntervalTrigger(seconds=10, timezone=UTC),
            id=job_id,
            args=(job_id,),
            next_run_time=long_ago,
        )
    try:
        before = datetime.now(UTC)
        _rebase_first_runs(store, ["late"], spread_seconds=5)
        late = store.lookup_job("late").next_run_time
        assert before <= late <= datetime.now(UTC) + timedelta(seconds=5)
        assert store.lookup_job("kept").next_run_time == long_ago  # not one just added
    finally:
        scheduler.shutdown(wait=False)
