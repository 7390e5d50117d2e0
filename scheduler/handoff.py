"""The hand-off from APScheduler's thread to the service's asyncio loop."""

from __future__ import annotations

import asyncio
import collections
import functools
import threading
from datetime import datetime
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.base import BaseExecutor

from .coordinator import RunCoordinator


class LoopExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs each due job as a coroutine on the service's event loop.

    APScheduler's own `max_instances` accounting still applies: a run counts as an instance from
    submission until its coroutine ends, retries included.

    Submissions are handed over in batches: one `call_soon_threadsafe` wakes the loop for all
    that queued meanwhile. One per job would write to the loop's self-pipe per job, and every
    such system call gives up the GIL, which a busy loop thread then holds for a whole switch
    interval: a few hundred submissions a second at most.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, coordinator: RunCoordinator) -> None:
        super().__init__()
        self._loop = loop
        self._coordinator = coordinator
        self._queue: collections.deque[tuple[Any, list[datetime], int, Any]] = collections.deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        # Coalescing hands over only the latest of the slots that passed; count the others
        # (the job's next run time is still the earliest of them here), for the history.
        missed = 0
        if run_times[0] != job.next_run_time:
            missed = len(job._get_run_times(run_times[-1])) - len(run_times)
        self._queue.append((job, run_times, missed, job.next_run_time))
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._start_queued)

    def _start_queued(self) -> None:
        """On the loop: start a run task for every queued submission."""
        with self._wake_lock:
            self._wake_pending = False  # before draining: a later submission wakes us again
        while self._queue:
            job, run_times, missed, first = self._queue.popleft()
            if missed > 0:
                self._coordinator.missed(job.id, missed, first, run_times[-1])
            task = self._coordinator.start_due(
                job.id, run_times, job.misfire_grace_time, job.kwargs.get("task_file")
            )
            task.add_done_callback(
                functools.partial(self._finished, job.id, job._jobstore_alias, run_times)
            )

    def _finished(
        self, job_id: str, jobstore: str, run_times: list[datetime], task: asyncio.Task[None]
    ) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._run_job_error(job_id, error, error.__traceback__)
            return
        events = [JobExecutionEvent(EVENT_JOB_EXECUTED, job_id, jobstore, t) for t in run_times]
        self._run_job_success(job_id, events)
