"""APScheduler's SQLAlchemy job store, with the writes of one wakeup grouped and errors contained.

APScheduler commits one UPDATE per due job; that commit, not the scheduling logic, bounds a
persistent scheduler. Here `update_job` only buffers, and the buffer is written in one
transaction before any read and at the end of each wakeup (`get_next_run_time`). The window this
opens is one wakeup: a crash inside it leaves the old next run time, so the job runs once more
after a restart.

Two more costs are avoided. The active instance is the store's only writer, so it keeps the
jobs it loaded in memory and reads only the due ids from the table, instead of unpickling
every due job on every wakeup. And when a wakeup only moved a job's next run time,
only that column is written; the pickled state is rewritten when anything else changed (the
stored state's own next run time is then stale, so loading takes the column's).

APScheduler 3 also lets an exception from `update_job` or `get_next_run_time` escape its loop
and kill the scheduler thread (a silent stall while the database is away). Neither raises here:
a failed write stays buffered and the scheduler is told to wake again shortly.
"""

from __future__ import annotations

import pickle
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.util import datetime_to_utc_timestamp, utc_timestamp_to_datetime
from sqlalchemy import Engine, Float, and_, bindparam, func, select

from .database import ValuesStatement, is_sqlite

log = structlog.get_logger(__name__)

JOBS_TABLE = "scheduler_jobs"
ID_SEPARATOR = ","  # job ids are job types, [a-z][a-z0-9_]*


class GroupedSQLAlchemyJobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    def __init__(self, engine: Engine, *, retry_seconds: float = 1.0) -> None:
        super().__init__(engine=engine, tablename=JOBS_TABLE)
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_times: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, Any] = {}  # job id -> Job, as last written or read
        self._written_state: dict[str, dict[str, Any]] = {}  # job id -> state sans next run time
        self._pending_lock = threading.RLock()
        self._retry_seconds = retry_seconds
        self.healthy = True
        #: Each stored job's next run time, kept as the store writes (read by status and metrics).
        self.next_run_times: dict[str, datetime | None] = {}
        table = self.jobs_t
        self._update = (
            table.update()
            .where(table.c.id == bindparam("job_id"))
            .values(next_run_time=bindparam("next_time"), job_state=bindparam("state"))
        )
        quote = engine.dialect.identifier_preparer.quote
        name, float_type = quote(table.name), engine.dialect.type_compiler_instance.process(Float())
        self._update_times = ValuesStatement(
            f"UPDATE {name} SET next_run_time = CAST(v.column2 AS {float_type}) "
            f"FROM (VALUES {{values}}) AS v WHERE {name}.id = v.column1",
            [("job_id", table.c.id.type), ("next_time", table.c.next_run_time.type)],
            engine.dialect,
        )

    def update_job(self, job: Any) -> None:
        state = job.__getstate__()
        del state["next_run_time"]
        next_time = datetime_to_utc_timestamp(job.next_run_time)
        self.next_run_times[job.id] = job.next_run_time
        self._cache[job.id] = job
        with self._pending_lock:
            if state == self._written_state.get(job.id) and job.id not in self._pending:
                self._pending_times[job.id] = {"job_id": job.id, "next_time": next_time}
                return
            self._pending_times.pop(job.id, None)
            self._pending[job.id] = {
                "job_id": job.id,
                "next_time": next_time,
                "state": pickle.dumps(job.__getstate__(), self.pickle_protocol),
            }
            self._written_state[job.id] = state

    def flush(self) -> None:
        """Write every buffered update in one transaction; on failure they stay buffered."""
        with self._pending_lock:
            if not self._pending and not self._pending_times:
                return
            with self.engine.begin() as connection:
                if self._pending:  # rare: a job's settings changed
                    connection.execute(self._update, list(self._pending.values()))
                self._update_times.execute(connection, list(self._pending_times.values()))
            self._pending.clear()
            self._pending_times.clear()

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._pending_times)

    def get_next_run_time(self) -> datetime | None:
        try:
            self.flush()
            next_time: datetime | None = super().get_next_run_time()
        except Exception as error:
            self._unhealthy(error)
            return datetime.now(UTC) + timedelta(seconds=self._retry_seconds)
        self._healthy_again()
        return next_time

    def get_due_jobs(self, now: datetime) -> list[Any]:
        try:
            self.flush()  # a stale next run time would make a job due twice
            jobs = self._due_from_cache(now)
        except Exception as error:
            self._unhealthy(error)
            raise
        self._healthy_again()
        return jobs

    def _due_from_cache(self, now: datetime) -> list[Any]:
        """Due jobs: ids from the table, Job objects from memory (loaded once if missing)."""
        due = self._due_ids(now)
        missing = [job_id for job_id in due if job_id not in self._cache]
        if missing:
            self._load(self.jobs_t.c.id.in_(missing))
        return [self._cache[job_id] for job_id in due if job_id in self._cache]

    def _due_ids(self, now: datetime) -> list[str]:
        table = self.jobs_t
        due = (
            select(table.c.id)
            .where(table.c.next_run_time <= datetime_to_utc_timestamp(now))
            .order_by(table.c.next_run_time)
        )
        with self.engine.begin() as connection:
            if not is_sqlite(self.engine.url):
                return list(connection.execute(due).scalars())
            # SQLite hands rows over one step each, and each step a GIL hand-off (see
            # ValuesStatement): thousands of due jobs come back as one joined value instead.
            joined = select(func.group_concat(due.subquery().c.id, ID_SEPARATOR))
            value = connection.execute(joined).scalar()
        return value.split(ID_SEPARATOR) if value else []

    def _load(self, *conditions: Any) -> list[Any]:
        """Jobs from the table, with the next run time of the column (the pickled one may be
        stale), cached. A job whose state cannot be loaded is reported and skipped."""
        table = self.jobs_t
        query = select(table.c.id, table.c.next_run_time, table.c.job_state).order_by(
            table.c.next_run_time
        )
        if conditions:
            query = query.where(and_(*conditions))
        jobs = []
        with self.engine.begin() as connection:
            rows = connection.execute(query).all()
        for job_id, next_time, state in rows:
            try:
                job = self._reconstitute_job(state)
            except Exception as error:  # APScheduler would delete it; we keep the row
                log.error("stored job cannot be loaded", job_id=job_id, error=str(error))
                continue
            job.next_run_time = utc_timestamp_to_datetime(next_time)
            written = job.__getstate__()
            del written["next_run_time"]
            self._written_state[job_id] = written
            self._cache[job_id] = job
            jobs.append(job)
        return jobs

    def forget_loaded_jobs(self) -> None:
        """Drop the in-memory jobs: after another instance may have written the store."""
        with self._pending_lock:
            self._cache.clear()
            self._written_state.clear()

    def lookup_job(self, job_id: str) -> Any:
        self.flush()
        if job_id in self._cache:
            return self._cache[job_id]
        found = self._load(self.jobs_t.c.id == job_id)
        return found[0] if found else None

    def get_all_jobs(self) -> list[Any]:
        self.flush()
        jobs = self._load()
        self._fix_paused_jobs_sorting(jobs)
        self.next_run_times = {job.id: job.next_run_time for job in jobs}
        return jobs

    def add_job(self, job: Any) -> None:
        self.flush()
        super().add_job(job)
        self.next_run_times[job.id] = job.next_run_time
        self._cache[job.id] = job
        written = job.__getstate__()
        del written["next_run_time"]
        self._written_state[job.id] = written

    def remove_job(self, job_id: str) -> None:
        with self._pending_lock:
            self._pending.pop(job_id, None)
            self._pending_times.pop(job_id, None)
        super().remove_job(job_id)
        self.next_run_times.pop(job_id, None)
        self._cache.pop(job_id, None)
        self._written_state.pop(job_id, None)

    def remove_all_jobs(self) -> None:
        with self._pending_lock:
            self._pending.clear()
            self._pending_times.clear()
        super().remove_all_jobs()
        self.next_run_times.clear()
        self._cache.clear()
        self._written_state.clear()

    def shutdown(self) -> None:
        try:
            self.flush()
        except Exception as error:
            log.error("job store updates lost at shutdown", error=str(error), jobs=self.pending)
        super().shutdown()

    def _unhealthy(self, error: Exception) -> None:
        if self.healthy:
            log.error("job store unreachable; retrying", error=str(error), pending=self.pending)
        self.healthy = False

    def _healthy_again(self) -> None:
        if not self.healthy:
            log.info("job store reachable again")
        self.healthy = True
