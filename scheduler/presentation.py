"""Text and JSON renderings of jobs and runs, for the command line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from .catalog import JobCatalog
from .job_config import ResolvedJob
from .masking import mask_secrets
from .options import JobPriority
from .records import RunRecord
from .schedules import CronSchedule
from .views import CatalogView, CheckReport, JobView, RunView, TaskFileFailure

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


def first_cron_runs(
    jobs: Iterable[ResolvedJob], stored: Mapping[str, datetime | None], now: datetime | None = None
) -> dict[str, datetime]:
    """When each enabled cron job not stored yet first runs: its expression's next match."""
    now = now or datetime.now(UTC)
    first = {}
    for job in jobs:
        schedule = job.config.schedule
        if job.config.enabled and job.job_type not in stored and isinstance(schedule, CronSchedule):
            moment = schedule.trigger().get_next_fire_time(None, now)
            if moment is not None:
                first[job.job_type] = moment
    return first


def upcoming_runs(
    jobs: Iterable[ResolvedJob], stored: Mapping[str, datetime | None], now: datetime | None = None
) -> dict[str, str]:
    """When each enabled job runs next, in words: its stored next run time (UTC), `paused`,
    or for a job not stored yet, the next time its cron expression matches (`never` if none
    does) or `at start`."""
    jobs = list(jobs)
    first = first_cron_runs(jobs, stored, now)
    upcoming: dict[str, str] = {}
    for job in jobs:
        if not job.config.enabled:
            continue
        if job.job_type in stored:
            moment = stored[job.job_type]
            upcoming[job.job_type] = PAUSED if moment is None else _utc(moment)
        elif job.job_type in first:
            upcoming[job.job_type] = _utc(first[job.job_type])
        elif isinstance(job.config.schedule, CronSchedule):
            upcoming[job.job_type] = "never"
        else:
            upcoming[job.job_type] = AT_START
    return upcoming


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def jobs_table(
    jobs: Sequence[ResolvedJob], states: Mapping[str, str], next_runs: Mapping[str, str] = NONE
) -> str:
    header = ("JOB TYPE", "NAME", "STATUS", "SCHEDULE", "NEXT RUN (UTC)", "PRIORITY", "CONCURRENT",
              "RETRIES", "TIMEOUT", "BATCH", "REQUIRES", "DEPENDS ON")  # fmt: skip
    rows = [header]
    for job in jobs:
        c, m = job.config, job.metadata
        rows.append((
            job.job_type, m.name, states.get(job.job_type, "-"),
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


def catalog_as_json(catalog: JobCatalog, jobs: Sequence[JobView]) -> str:
    """`list --json`: the jobs as /api/jobs has them, and what discovery found."""
    document = CatalogView(
        tasks_dir=str(catalog.discovery.tasks_dir),
        jobs=list(jobs),
        failures=_failures(catalog),
        problems=[*catalog.problems, *catalog.never_run()],
        warnings=list(catalog.warnings),
    )
    return document.model_dump_json(indent=2)


def check_as_json(catalog: JobCatalog, blocked: Mapping[str, list[str]]) -> str:
    report = CheckReport(
        ok=catalog.ok,
        tasks_dir=str(catalog.discovery.tasks_dir),
        jobs=list(catalog.jobs),
        failures=_failures(catalog),
        problems=[*catalog.problems, *catalog.never_run()],
        warnings=list(catalog.warnings),
        blocked=dict(blocked),
    )
    return report.model_dump_json(indent=2)


def _failures(catalog: JobCatalog) -> list[TaskFileFailure]:
    return [
        TaskFileFailure(path=str(f.path), error=mask_secrets(f.error)) for f in catalog.failures
    ]


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


def runs_as_json(records: Sequence[RunRecord]) -> str:
    return json.dumps([RunView.of(r).model_dump(mode="json") for r in records], indent=2)
