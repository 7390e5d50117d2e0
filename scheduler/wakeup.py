"""The scheduler thread's wakeup: hand the due jobs to the executor and move them on.

APScheduler 3's `_process_jobs` is written for any number of stores and executors: per due job
it looks its executor up, computes the run times twice, revalidates the job's attributes in
`Job._modify`, builds a submission event nobody here listens to, and logs a warning line for
each run skipped at `max_instances` (under overload, one a run: the coordinator records and
summarises those skips itself). At thousands of runs a second that was a third of the GIL.
This one wakeup does the same for the service's one store and one executor, and writes only a
moved job's next run time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from threading import TIMEOUT_MAX
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING

log = structlog.get_logger(__name__)

STORE = "default"
EXECUTOR = "default"


class FencedScheduler(BackgroundScheduler):  # type: ignore[misc]
    """APScheduler's background scheduler with the service's wakeup (see the module), which
    processes due jobs only while running.

    APScheduler 3 processes the due jobs once more after `shutdown()` (its loop checks the state
    only after the wakeup's processing), and that round would run slots a stopping or demoted
    instance must not run, and move their next run times past them."""

    def _process_jobs(self) -> float | None:
        if self.state != STATE_RUNNING:
            return None
        store = self._jobstores[STORE]
        executor = self._executors[EXECUTOR]
        now = datetime.now(UTC)
        skipped: list[JobSubmissionEvent] = []
        with self._jobstores_lock:
            try:
                due = store.get_due_jobs(now)
            except Exception as error:  # the store keeps its jobs; it is read again soon
                log.warning("due jobs could not be read from the job store", error=str(error))
                due = []
                retry: datetime | None = now + timedelta(seconds=self.jobstore_retry_interval)
            else:
                retry = None
            for job in due:
                skip = self._hand_over(job, now, store, executor)
                if skip is not None:
                    skipped.append(skip)
            wakeups = [t for t in (store.get_next_run_time(), retry) if t is not None]
        for event in skipped:
            self._dispatch_event(event)
        if not wakeups or self.state != STATE_RUNNING:
            return None
        return float(min(max(min(wakeups).timestamp() - time.time(), 0.0), TIMEOUT_MAX))

    def _hand_over(
        self, job: Any, now: datetime, store: Any, executor: Any
    ) -> JobSubmissionEvent | None:
        """Submit the job's due run times and move it on; the event of a skip at
        `max_instances`, if it was at it."""
        run_times, next_run = _due_times(job, now)
        if not run_times:
            return None
        if job.coalesce:
            run_times = run_times[-1:]
        skip = None
        try:
            executor.submit_job(job, run_times)
        except MaxInstancesReachedError:
            skip = JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, job.id, STORE, run_times)
        except Exception:
            log.exception("due job not handed over", job_type=job.id)
        if next_run is None:
            self.remove_job(job.id, STORE)
        else:
            job.next_run_time = next_run
            store.move_job(job)
        return skip


def _due_times(job: Any, now: datetime) -> tuple[list[datetime], datetime | None]:
    """The job's run times due by `now`, and the first one after (None: it has no more)."""
    times: list[datetime] = []
    next_run: datetime | None = job.next_run_time
    while next_run is not None and next_run <= now:
        times.append(next_run)
        next_run = job.trigger.get_next_fire_time(next_run, now)
    return times, next_run
