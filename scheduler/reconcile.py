"""Bring the stored schedule in line with the discovered jobs, without resetting what is kept.

`add_job(..., replace_existing=True)` at every start would reset each next run time to
now + interval, so a job on a 1 h interval restarted every 50 min would never run. Instead:
add what is new, change only what changed, and remove only what is really gone.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from .executor import JOB_FUNCTION
from .job_config import ResolvedJob
from .schedules import IntervalSchedule, Schedule, stored_schedule

log = structlog.get_logger(__name__)

#: An order-preserving job queues its due runs instead of skipping them; this bounds the queue.
ORDERED_RUNS_QUEUE_LIMIT = 100
#: By default new jobs start within this many seconds (or their interval, if shorter), each at
#: its own stable offset, so jobs registered together do not all fall due in the same instant.
FIRST_RUN_SPREAD_SECONDS = 1.0


@dataclass(frozen=True)
class DesiredJob:
    """How one job should look in the job store."""

    job_type: str
    name: str
    schedule: Schedule
    max_instances: int
    coalesce: bool
    misfire_grace_time: int | None
    task_file: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"task_file": self.task_file}

    def attributes(self) -> dict[str, Any]:
        """The stored attributes that `modify_job` can update in place."""
        return {
            "name": self.name,
            "func": JOB_FUNCTION,
            "args": (self.job_type,),
            "kwargs": self.kwargs,
            "max_instances": self.max_instances,
            "coalesce": self.coalesce,
            "misfire_grace_time": self.misfire_grace_time,
        }


@dataclass
class ReconcileReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)
    removed: dict[str, str] = field(default_factory=dict)
    kept_not_loaded: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)


def desired_job(
    job: ResolvedJob, task_file: str, *, coalesce: bool, misfire_grace_seconds: int
) -> DesiredJob:
    """The stored form of `job`; `coalesce` and `misfire_grace_seconds` are the service's
    defaults, for jobs that do not set their own."""
    config = job.config
    ordered = config.preserve_order
    if config.coalesce is not None:
        coalesce = config.coalesce
    if config.misfire_grace_seconds is not None:
        misfire_grace_seconds = config.misfire_grace_seconds
    return DesiredJob(
        job_type=job.job_type,
        name=job.metadata.name,
        schedule=config.schedule,
        max_instances=ORDERED_RUNS_QUEUE_LIMIT if ordered else config.max_concurrent,
        coalesce=False if ordered else coalesce,
        misfire_grace_time=None if ordered else misfire_grace_seconds,
        task_file=task_file,
    )


def first_run_time(
    job_type: str,
    interval_seconds: float,
    now: datetime,
    spread_seconds: float = FIRST_RUN_SPREAD_SECONDS,
) -> datetime:
    fraction = zlib.crc32(job_type.encode()) / 2**32
    spread = min(interval_seconds, spread_seconds)
    return now + timedelta(seconds=fraction * spread)


def reconcile(
    scheduler: Any,
    desired: Mapping[str, DesiredJob],
    *,
    disabled: Iterable[str],
    failed_files: Mapping[str, str],
    tasks_dir: Path,
    now: datetime | None = None,
    first_run_spread_seconds: float = FIRST_RUN_SPREAD_SECONDS,
) -> ReconcileReport:
    """Reconcile `scheduler`'s job store with `desired` (enabled jobs, by job type).

    `failed_files` maps the name of each task file that failed to import to its error: stored
    jobs from those files are kept (their schedule survives a bad deploy).
    """
    now = now or datetime.now(UTC)
    report = ReconcileReport()
    stored = {job.id: job for job in scheduler.get_jobs()}
    for job_type, want in desired.items():
        job = stored.get(job_type)
        if job is None:
            first: dict[str, datetime] = {}  # a cron job first runs when its expression matches
            if isinstance(want.schedule, IntervalSchedule):
                seconds = want.schedule.seconds
                first["next_run_time"] = first_run_time(
                    job_type, seconds, now, first_run_spread_seconds
                )
            scheduler.add_job(
                JOB_FUNCTION,
                trigger=want.schedule.trigger(),
                id=job_type,
                **first,
                **{k: v for k, v in want.attributes().items() if k != "func"},
            )
            report.added.append(job_type)
            log.info("job added", job_type=job_type, schedule=str(want.schedule))
        else:
            _update(scheduler, job, want, report)
    disabled = set(disabled)
    for job_type in stored.keys() - desired.keys():
        _remove_unless_kept(scheduler, stored[job_type], disabled, failed_files, tasks_dir, report)
    return report


def _update(scheduler: Any, job: Any, want: DesiredJob, report: ReconcileReport) -> None:
    """Change what differs, keeping the stored next run time unless the schedule changed."""
    job_type = want.job_type
    paused = job.next_run_time is None  # before the changes: they update `job` in place
    changes = {k: v for k, v in want.attributes().items() if _stored(job, k) != v}
    if changes:
        scheduler.modify_job(job_type, **changes)
        report.changed.append(job_type)
        log.info("job updated", job_type=job_type, changed=sorted(changes))
    stored = stored_schedule(job.trigger)
    if not _same(stored, want.schedule):
        # A new trigger whole: nothing of the old schedule's state (its start, its zone) stays.
        scheduler.reschedule_job(job_type, trigger=want.schedule.trigger())
        if paused:  # rescheduling would resume an operator's pause
            scheduler.pause_job(job_type)
        report.rescheduled.append(job_type)
        log.info(
            "job schedule changed",
            job_type=job_type,
            old_schedule=str(stored),
            schedule=str(want.schedule),
        )
    elif not changes:
        report.unchanged.append(job_type)


def _remove_unless_kept(
    scheduler: Any,
    job: Any,
    disabled: set[str],
    failed_files: Mapping[str, str],
    tasks_dir: Path,
    report: ReconcileReport,
) -> None:
    job_type, task_file = job.id, job.kwargs.get("task_file")
    if task_file in failed_files:
        report.kept_not_loaded[job_type] = task_file
        log.warning(
            "job kept, but its task file failed to import; its runs are skipped",
            job_type=job_type,
            task_file=task_file,
            error=failed_files[task_file],
        )
        return
    if job_type in disabled:
        reason = "disabled"
    elif task_file and not (tasks_dir / task_file).exists():
        reason = f"task file {task_file} was deleted"
    else:
        reason = f"no longer declared in {task_file or 'any task file'}"
    scheduler.remove_job(job_type)
    report.removed[job_type] = reason
    log.info("job removed", job_type=job_type, reason=reason)


def _same(stored: Schedule | None, wanted: Schedule) -> bool:
    if isinstance(stored, IntervalSchedule) and isinstance(wanted, IntervalSchedule):
        return abs(stored.seconds - wanted.seconds) <= 1e-6
    return stored == wanted


def _stored(job: Any, attribute: str) -> Any:
    if attribute == "func":
        return job.func_ref
    value = getattr(job, attribute)
    return tuple(value) if attribute == "args" else value
