"""APScheduler's SQLAlchemy job store, with the writes of one wakeup grouped and errors contained.

APScheduler commits one UPDATE per due job; that commit, not the scheduling logic, bounds a
persistent scheduler. Here `update_job` only buffers, and the buffer is written in one
transaction before any read and at the end of each wakeup (`get_next_run_time`). The window this
opens is one wakeup: a crash inside it leaves the old next run time, so the job runs once more
after a restart.

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
from apscheduler.util import datetime_to_utc_timestamp
from sqlalchemy import Engine, bindparam

log = structlog.get_logger(__name__)

JOBS_TABLE = "scheduler_jobs"


class GroupedSQLAlchemyJobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    def __init__(self, engine: Engine, *, retry_seconds: float = 1.0) -> None:
        super().__init__(engine=engine, tablename=JOBS_TABLE)
        self._pending: dict[str, dict[str, Any]] = {}
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

    def update_job(self, job: Any) -> None:
        state = pickle.dumps(job.__getstate__(), self.pickle_protocol)
        self.next_run_times[job.id] = job.next_run_time
        with self._pending_lock:
            self._pending[job.id] = {
                "job_id": job.id,
                "next_time": datetime_to_utc_timestamp(job.next_run_time),
                "state": state,
            }

    def flush(self) -> None:
        """Write every buffered update in one transaction; on failure they stay buffered."""
        with self._pending_lock:
            if not self._pending:
                return
            with self.engine.begin() as connection:
                connection.execute(self._update, list(self._pending.values()))
            self._pending.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)

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
            jobs: list[Any] = super().get_due_jobs(now)
        except Exception as error:
            self._unhealthy(error)
            raise
        self._healthy_again()
        return jobs

    def lookup_job(self, job_id: str) -> Any:
        self.flush()
        return super().lookup_job(job_id)

    def get_all_jobs(self) -> list[Any]:
        self.flush()
        jobs: list[Any] = super().get_all_jobs()
        self.next_run_times = {job.id: job.next_run_time for job in jobs}
        return jobs

    def add_job(self, job: Any) -> None:
        self.flush()
        super().add_job(job)
        self.next_run_times[job.id] = job.next_run_time

    def remove_job(self, job_id: str) -> None:
        with self._pending_lock:
            self._pending.pop(job_id, None)
        super().remove_job(job_id)
        self.next_run_times.pop(job_id, None)

    def remove_all_jobs(self) -> None:
        with self._pending_lock:
            self._pending.clear()
        super().remove_all_jobs()
        self.next_run_times.clear()

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
