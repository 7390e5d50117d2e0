"""APScheduler's SQLAlchemy job store, with the writes of one wakeup grouped and errors contained.

APScheduler reads the due jobs and the next wakeup from the table, and commits one UPDATE per
due job, on every wakeup; with thousands of jobs those queries and commits, not the scheduling
logic, bound a persistent scheduler. The active instance is the store's only writer, so here:

- the jobs it loaded stay in memory, with a `DueIndex` of their next run times: finding the
  due jobs and the next wakeup reads no table (it is loaded once, when the instance becomes
  active);
- `update_job` only buffers; the buffer is written in one transaction at the end of a wakeup,
  at most once per `flush_seconds` (a burst of wakeups shares one commit). The window this
  opens is `flush_seconds`: a kill inside it leaves the older next run time in the table, so
  the job runs once more after a restart, never less;
- when a wakeup only moved a job's next run time, only that column is written; the state is
  rewritten when anything else changed (the stored state's own next run time is then stale, so
  loading takes the column's).

A job's state is stored as validated JSON (job_codec.py), never as a pickle: a row must not be
able to run code. A row that cannot be read is set aside (moved to `scheduler_jobs_set_aside`
with the reason, never deleted) and the job is rebuilt from its task file. Every write is fenced
(leadership.Fence): a leader whose term has ended writes nothing.

APScheduler 3 also lets an exception from `update_job` or `get_next_run_time` escape its loop
and kill the scheduler thread (a silent stall while the database is away). Neither raises here:
a failed write stays buffered and is retried every `retry_seconds`, while the jobs keep running
from memory.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.util import datetime_to_utc_timestamp, utc_timestamp_to_datetime
from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    delete,
    select,
)
from sqlalchemy.exc import IntegrityError

from . import job_codec
from .database import BatchStatement
from .errors import StoredJobError
from .leadership import Fence
from .records import utcnow
from .tables import JOBS_TABLE, set_aside_jobs

log = structlog.get_logger(__name__)

FLUSH_SECONDS = 0.1


class DueIndex:
    """Job ids ordered by next run time (UTC timestamps), for "what is due" and "what next".

    A heap with lazy deletion: moving or removing a job leaves its old entry behind, dropped
    when it reaches the top (an interval job's old entry is older than its new one, so it does
    so by the job's next run).
    """

    def __init__(self) -> None:
        self._times: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._times)

    def set(self, job_id: str, timestamp: float | None) -> None:
        """Record the job's next run time; None (paused, finished) takes it out."""
        if timestamp is None:
            self._times.pop(job_id, None)
        elif self._times.get(job_id) != timestamp:
            self._times[job_id] = timestamp
            heapq.heappush(self._heap, (timestamp, job_id))

    def clear(self) -> None:
        self._times.clear()
        self._heap.clear()

    def replace(self, times: Iterable[tuple[str, float | None]]) -> None:
        """Index exactly these (job id, next run time) pairs."""
        self.clear()
        for job_id, timestamp in times:
            self.set(job_id, timestamp)

    def due(self, now: float) -> list[str]:
        """The ids due at `now`, earliest first. They stay in the index until moved."""
        due: list[str] = []
        entries: list[tuple[float, str]] = []
        heap, times = self._heap, self._times
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if times.get(entry[1]) == entry[0] and (not entries or entries[-1] != entry):
                due.append(entry[1])
                entries.append(entry)
        for entry in entries:
            heapq.heappush(heap, entry)
        return due

    def next_time(self) -> float | None:
        heap, times = self._heap, self._times
        while heap and times.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


class GroupedSQLAlchemyJobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    def __init__(
        self,
        engine: Engine,
        fence: Fence,
        *,
        retry_seconds: float = 1.0,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        super().__init__(engine=engine, tablename=JOBS_TABLE)
        self._fence = fence
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_inserts: dict[str, dict[str, Any]] = {}  # job id -> row (adding in bulk)
        self._bulk = False
        self._pending_times: dict[str, tuple[str, float]] = {}  # job id -> (id, next time)
        self._cache: dict[str, Any] = {}  # job id -> Job, as last written or read
        self._written_state: dict[str, dict[str, Any]] = {}  # job id -> state sans next run time
        self._due = DueIndex()
        self._indexed = False  # the index holds every stored job
        self._pending_lock = threading.RLock()
        self._retry_seconds = retry_seconds
        self._flush_seconds = flush_seconds
        self._next_flush = 0.0  # time.monotonic() of the earliest next flush
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
        name = quote(table.name)
        self._update_times = BatchStatement(
            f"UPDATE {name} SET next_run_time = v.column2 "
            f"FROM ({{rows}}) AS v WHERE {name}.id = v.column1",
            [table.c.id.type, table.c.next_run_time.type],
            engine.dialect,
        )

    def update_job(self, job: Any) -> None:
        state = job.__getstate__()
        del state["next_run_time"]
        next_time = datetime_to_utc_timestamp(job.next_run_time)
        self.next_run_times[job.id] = job.next_run_time
        self._cache[job.id] = job
        self._due.set(job.id, next_time)
        with self._pending_lock:
            if state == self._written_state.get(job.id) and job.id not in self._pending:
                self._pending_times[job.id] = (job.id, next_time)
                return
            self._pending_times.pop(job.id, None)
            self._pending[job.id] = {
                "job_id": job.id,
                "next_time": next_time,
                "state": job_codec.encode(job.__getstate__()),
            }
            self._written_state[job.id] = state

    def move_job(self, job: Any) -> None:
        """`update_job` for a job whose next run time is all that changed (a wakeup moved
        it): nothing else is compared or encoded."""
        next_time = datetime_to_utc_timestamp(job.next_run_time)
        self.next_run_times[job.id] = job.next_run_time
        self._cache[job.id] = job
        self._due.set(job.id, next_time)
        with self._pending_lock:
            pending = self._pending.get(job.id)
            if pending is not None:  # its whole state is on its way: with the new time
                pending["next_time"] = next_time
            else:
                self._pending_times[job.id] = (job.id, next_time)

    def flush(self) -> None:
        """Write every buffered insert and update in one transaction (inserts first: a job
        added in bulk may have run, and moved, before its row was written); on failure they
        stay buffered."""
        with self._pending_lock:
            if not self.pending:
                return
            self._next_flush = time.monotonic() + self._retry_seconds  # if this one fails
            try:
                with self.engine.begin() as connection:
                    self._fence.check(connection)
                    if self._pending_inserts:
                        inserts = list(self._pending_inserts.values())
                        connection.execute(self.jobs_t.insert(), inserts)
                    if self._pending:  # rare: a job's settings changed
                        connection.execute(self._update, list(self._pending.values()))
                    self._update_times.execute(connection, list(self._pending_times.values()))
            except IntegrityError:  # only the inserts can conflict: drop them, not the rest
                ids = sorted(self._pending_inserts)
                self._pending_inserts.clear()
                raise ConflictingIdError(", ".join(ids)) from None
            self._pending_inserts.clear()
            self._pending.clear()
            self._pending_times.clear()
            self._next_flush = time.monotonic() + self._flush_seconds
        self._healthy_again()

    @property
    def pending(self) -> int:
        return len(self._pending_inserts) + len(self._pending) + len(self._pending_times)

    @contextlib.contextmanager
    def adding_in_bulk(self) -> Iterator[None]:
        """Jobs added inside are inserted in one transaction when it ends (or with an earlier
        flush), not one each: a commit per job made adding 10,000 jobs take seconds. They are
        scheduled (indexed, cached) at once, as any added job."""
        self._bulk = True
        try:
            yield
        finally:
            self._bulk = False
            self.flush()

    def get_next_run_time(self) -> datetime | None:
        """The earliest next run time; the buffer is written first if its time has come."""
        try:
            self._load_index()
            if self.pending and time.monotonic() >= self._next_flush:
                self.flush()
        except Exception as error:
            self._unhealthy(error)
        if not self._indexed:
            return datetime.now(UTC) + timedelta(seconds=self._retry_seconds)
        wakeups = [t for t in (self._due.next_time(), self._flush_time()) if t is not None]
        return utc_timestamp_to_datetime(min(wakeups)) if wakeups else None

    def get_due_jobs(self, now: datetime) -> list[Any]:
        try:
            self._load_index()
            due = self._due.due(datetime_to_utc_timestamp(now))
            missing = [job_id for job_id in due if job_id not in self._cache]
            if missing:
                self._load(self.jobs_t.c.id.in_(missing))
        except Exception as error:
            self._unhealthy(error)
            raise
        return [self._cache[job_id] for job_id in due if job_id in self._cache]

    def _flush_time(self) -> float | None:
        """When the buffer is due to be written (a UTC timestamp), if anything is buffered."""
        if not self.pending:
            return None
        return time.time() + max(self._next_flush - time.monotonic(), 0.0)

    def _load_index(self) -> None:
        """Index every stored job's next run time, once (after a flush: the table is then
        current)."""
        if self._indexed:
            return
        self.flush()
        table = self.jobs_t
        with self.engine.begin() as connection:
            rows = connection.execute(select(table.c.id, table.c.next_run_time)).all()
        self._due.replace(rows)
        self._indexed = True
        self._healthy_again()

    def _load(self, *conditions: Any) -> list[Any]:
        """Jobs from the table, with the next run time of the column (the stored state's may be
        stale), cached. A row that cannot be read is set aside."""
        table = self.jobs_t
        query = select(table.c.id, table.c.next_run_time, table.c.job_state).order_by(
            table.c.next_run_time
        )
        if conditions:
            query = query.where(and_(*conditions))
        jobs = []
        with self.engine.begin() as connection:
            rows = connection.execute(query).all()
        unreadable: list[tuple[str, float | None, bytes, str]] = []
        for job_id, next_time, state in rows:
            try:
                job = self._job_from_row(job_id, state)
            except StoredJobError as error:  # APScheduler would delete it; we keep the row
                unreadable.append((job_id, next_time, state, str(error)))
                continue
            job.next_run_time = utc_timestamp_to_datetime(next_time)
            written = job.__getstate__()
            del written["next_run_time"]
            self._written_state[job_id] = written
            self._cache[job_id] = job
            jobs.append(job)
        if unreadable:
            self._set_aside(unreadable)
        return jobs

    def _job_from_row(self, job_id: str, data: bytes) -> Any:
        state = job_codec.decode(bytes(data), job_id)
        state["jobstore"] = self
        job = Job.__new__(Job)
        job.__setstate__(state)
        job._scheduler = self._scheduler
        job._jobstore_alias = self._alias
        return job

    def _reconstitute_job(self, job_state: bytes) -> Any:
        raise StoredJobError("rows are read by _job_from_row, which knows their id")

    def _set_aside(self, rows: list[tuple[str, float | None, bytes, str]]) -> None:
        """Move unreadable rows out of the store, kept with why: the job is then rebuilt from
        its task file, and the row stays for an operator to inspect."""
        now = utcnow()
        with self.engine.begin() as connection:
            self._fence.check(connection)
            for job_id, next_time, state, reason in rows:
                connection.execute(
                    set_aside_jobs.insert().values(
                        job_id=job_id,
                        next_run_time=None if next_time is None else repr(next_time),
                        job_state=bytes(state),
                        reason=reason,
                        set_aside_at=now,
                    )
                )
                connection.execute(delete(self.jobs_t).where(self.jobs_t.c.id == job_id))
        for job_id, _, _, reason in rows:
            self._due.set(job_id, None)
            self.next_run_times.pop(job_id, None)
            log.error(
                "stored job set aside: it cannot be read; it is rebuilt from its task file",
                job_id=job_id,
                reason=reason,
                table=set_aside_jobs.name,
            )

    def forget_loaded_jobs(self) -> None:
        """Drop the in-memory jobs: after another instance may have written the store."""
        with self._pending_lock:
            self._cache.clear()
            self._written_state.clear()
            self._due.clear()
            self._indexed = False

    def lookup_job(self, job_id: str) -> Any:
        if job_id in self._cache:
            return self._cache[job_id]
        self.flush()
        found = self._load(self.jobs_t.c.id == job_id)
        return found[0] if found else None

    def get_all_jobs(self) -> list[Any]:
        self.flush()
        jobs = self._load()
        self._fix_paused_jobs_sorting(jobs)
        self.next_run_times = {job.id: job.next_run_time for job in jobs}
        self._due.replace((job.id, datetime_to_utc_timestamp(job.next_run_time)) for job in jobs)
        self._indexed = True
        return jobs

    def add_job(self, job: Any) -> None:
        row = {
            "id": job.id,
            "next_run_time": datetime_to_utc_timestamp(job.next_run_time),
            "job_state": job_codec.encode(job.__getstate__()),
        }
        if self._bulk:
            with self._pending_lock:
                if job.id in self._pending_inserts or job.id in self._cache:
                    raise ConflictingIdError(job.id)
                self._pending_inserts[job.id] = row
        else:
            self.flush()
            with self.engine.begin() as connection:
                self._fence.check(connection)
                try:
                    connection.execute(self.jobs_t.insert().values(**row))
                except IntegrityError:
                    raise ConflictingIdError(job.id) from None
        self.next_run_times[job.id] = job.next_run_time
        self._cache[job.id] = job
        self._due.set(job.id, datetime_to_utc_timestamp(job.next_run_time))
        written = job.__getstate__()
        del written["next_run_time"]
        self._written_state[job.id] = written

    def remove_job(self, job_id: str) -> None:
        with self._pending_lock:
            self._pending.pop(job_id, None)
            self._pending_times.pop(job_id, None)
            unwritten = self._pending_inserts.pop(job_id, None) is not None
        if not unwritten:
            with self.engine.begin() as connection:
                self._fence.check(connection)
                deleted = connection.execute(delete(self.jobs_t).where(self.jobs_t.c.id == job_id))
            if deleted.rowcount == 0:
                raise JobLookupError(job_id)
        self.next_run_times.pop(job_id, None)
        self._cache.pop(job_id, None)
        self._written_state.pop(job_id, None)
        self._due.set(job_id, None)

    def remove_all_jobs(self) -> None:
        with self._pending_lock:
            self._pending_inserts.clear()
            self._pending.clear()
            self._pending_times.clear()
        with self.engine.begin() as connection:
            self._fence.check(connection)
            connection.execute(delete(self.jobs_t))
        self.next_run_times.clear()
        self._cache.clear()
        self._written_state.clear()
        self._due.clear()

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
