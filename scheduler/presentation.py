"""Text and JSON renderings of jobs and runs, for the command line."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from .catalog import JobCatalog
from .job_config import ResolvedJob
from .options import JobPriority
from .params import decode_params
from .records import RunRecord
from .schedules import CronSchedule

#: A job not stored yet: an interval job first runs within a second of the service's start.
AT_START: Final = "at start"
PAUSED: Final = "paused"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def display(value: object) -> str:
    if isinstance(value, JobPriority):
        return value.name
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


NONE: Mapping[str, str] = {}


def upcoming_runs(
    jobs: Iterable[ResolvedJob], stored: Mapping[str, datetime | None], now: datetime | None = None
) -> dict[str, str]:
    """When each enabled job runs next, in words: its stored next run time (UTC), `paused`,
    or for a job not stored yet, the next time its cron expression matches or `at start`."""
    now = now or datetime.now(UTC)
    upcoming: dict[str, str] = {}
    for job in jobs:
        if not job.config.enabled:
            continue
        schedule = job.config.schedule
        if job.job_type in stored:
            moment = stored[job.job_type]
            upcoming[job.job_type] = PAUSED if moment is None else _utc(moment)
        elif isinstance(schedule, CronSchedule):
            moment = schedule.trigger().get_next_fire_time(None, now)
            upcoming[job.job_type] = _utc(moment) if moment else "never"
        else:
            upcoming[job.job_type] = AT_START
    return upcoming


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def job_status(
    job: ResolvedJob, blocked: Mapping[str, list[str]], quarantined: Mapping[str, str] = NONE
) -> str:
    if not job.config.enabled:
        return "disabled"
    if job.job_type in quarantined:
        return "quarantined"
    return "blocked" if job.job_type in blocked else "ready"


def jobs_table(
    jobs: Sequence[ResolvedJob],
    blocked: Mapping[str, list[str]],
    quarantined: Mapping[str, str] = NONE,
    next_runs: Mapping[str, str] = NONE,
) -> str:
    header = ("JOB TYPE", "NAME", "STATUS", "SCHEDULE", "NEXT RUN (UTC)", "PRIORITY", "CONCURRENT",
              "RETRIES", "TIMEOUT", "BATCH", "REQUIRES", "DEPENDS ON")  # fmt: skip
    rows = [header]
    for job in jobs:
        c, m = job.config, job.metadata
        rows.append((
            job.job_type, m.name, job_status(job, blocked, quarantined),
            str(c.schedule), next_runs.get(job.job_type, "-"),
            c.priority.name, str(c.max_concurrent),
            f"{c.max_retries} every {seconds(c.retry_delay_seconds)}",
            seconds(c.timeout_seconds), str(c.batch_size),
            ", ".join(m.requirements) or "-", ", ".join(m.dependencies) or "-",
        ))  # fmt: skip
    return table(rows)


def override_lines(jobs: Sequence[ResolvedJob]) -> list[str]:
    lines = [
        f"  {job.job_type}.{option} = {display(getattr(job.config, option))} from {origin}"
        for job in jobs
        for option, origin in job.origins.items()
    ]
    return ["", "Overridden values:", *lines] if lines else []


def blocked_lines(blocked: Mapping[str, list[str]]) -> list[str]:
    lines = [f"  {job_type}: {why}" for job_type, reasons in blocked.items() for why in reasons]
    return ["", "Blocked (not run until this is fixed):", *lines] if lines else []


def quarantine_lines(quarantined: Mapping[str, str]) -> list[str]:
    lines = [f"  {job_type}: {why}" for job_type, why in quarantined.items()]
    header = "Quarantined (not scheduled until resumed or its task file changes):"
    return ["", header, *lines] if lines else []


def job_as_json(
    job: ResolvedJob,
    blocked: Mapping[str, list[str]],
    quarantined: Mapping[str, str] = NONE,
    next_runs: Mapping[str, str] = NONE,
) -> dict[str, Any]:
    meta = job.metadata
    config = job.config.model_dump(mode="json")
    config["priority"] = job.config.priority.name
    return {
        "job_type": job.job_type,
        "name": meta.name,
        "description": meta.description,
        "task_class": meta.qualified_class_name,
        "source": str(meta.source),
        "status": job_status(job, blocked, quarantined),
        "schedule": str(job.config.schedule),
        "next_run": next_runs.get(job.job_type),
        "blocked_by": blocked.get(job.job_type, []),
        "quarantined": quarantined.get(job.job_type),
        "config": config,
        "requirements": list(meta.requirements),
        "dependencies": list(meta.dependencies),
        "overrides": {
            option: {"source": origin.kind, "where": origin.where, "value": origin.raw}
            for option, origin in job.origins.items()
        },
    }


def catalog_as_json(
    catalog: JobCatalog,
    blocked: Mapping[str, list[str]],
    quarantined: Mapping[str, str] = NONE,
    next_runs: Mapping[str, str] = NONE,
) -> dict[str, Any]:
    return {
        "tasks_dir": str(catalog.discovery.tasks_dir),
        "jobs": [
            job_as_json(job, blocked, quarantined, next_runs) for job in catalog.jobs.values()
        ],
        "failures": [{"path": str(f.path), "error": f.error} for f in catalog.failures],
        "problems": [*catalog.problems, *catalog.never_run()],
        "warnings": list(catalog.warnings),
    }


def runs_table(records: Sequence[RunRecord]) -> str:
    header = ("STARTED (UTC)", "JOB TYPE", "RUN", "ATTEMPT", "TRIGGER", "OUTCOME", "DURATION",
              "ITEMS OK/FAILED", "ERROR")  # fmt: skip
    rows = [header]
    for r in records:
        outcome = f"{r.outcome} ({r.skip_reason})" if r.skip_reason else r.outcome
        if r.dead_letter:
            outcome += " [dead letter]"
        duration = r.duration_seconds
        rows.append((
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.job_type, r.run_id, str(r.attempt),
            r.trigger, outcome, "-" if duration is None else f"{duration:.3f}s",
            f"{r.items_succeeded}/{r.items_failed}", (r.error or "").replace("\n", " ")[:80],
        ))  # fmt: skip
    return table(rows)


def run_as_json(record: RunRecord) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "job_type": record.job_type,
        "attempt": record.attempt,
        "trigger": record.trigger,
        "scheduled_at": _iso(record.scheduled_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "duration_seconds": record.duration_seconds,
        "outcome": record.outcome,
        "skip_reason": record.skip_reason,
        "error": record.error,
        "items_succeeded": record.items_succeeded,
        "items_failed": record.items_failed,
        "dead_letter": record.dead_letter,
        "instance": record.instance,
        "params": decode_params(record.params) if record.params else None,
    }


def _iso(moment: Any) -> str | None:
    return None if moment is None else str(moment.isoformat())
