"""The function every stored job references. It must never move: APScheduler deletes stored
jobs whose function it cannot import. Runs are handed to the service's coordinator by
`handoff.LoopExecutor`; nothing calls this function."""

from __future__ import annotations

from .errors import SchedulerError

JOB_FUNCTION = "scheduler.executor:scheduled_run"


def scheduled_run(job_type: str, task_file: str | None = None) -> None:
    raise SchedulerError(
        f"job {job_type!r} must be run by the scheduler service's executor, not called directly"
    )
