"""What the service says about itself: health, each job's state, the scrape-time gauges."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .catalog import JobCatalog
from .dependencies import disabled_dependency_reason
from .job_config import ResolvedJob
from .job_state import JobStates
from .metrics import JobStatus, ServiceStatus
from .records import utcnow
from .views import JobSettings, JobView, Override


@dataclass
class Health:
    """Facts the heartbeat keeps current."""

    leader: bool = False
    database_ok: bool = False
    #: The last heartbeat (time.time()); 0 until the first, once the database is ready.
    heartbeat_at: float = 0.0
    started_at: float = field(default_factory=time.time)
    scheduler_alive: bool = False
    job_store_ok: bool = True
    history_ok: bool = True
    event_loop_lag_seconds: float = 0.0
    #: Since when (time.time()) no worker process has been ready, in process mode; None while
    #: one is (or in inline mode).
    no_worker_since: float | None = None
    #: While the leader's lease is not renewed (no runs start), for how long it has not been.
    lease_unrenewed_seconds: float | None = None
    #: The leadership term held (0 on a standby), and run-history rows dropped so far.
    epoch: int = 0
    history_rows_dropped: int = 0
    #: Run-history rows submitted and not yet committed, at the last heartbeat.
    history_queued: int = 0


#: How long the active instance may go without a ready worker (a restart takes well under 1 s).
NO_WORKER_GRACE_SECONDS = 10.0


def health_problems(
    health: Health, heartbeat_seconds: float, now: float | None = None
) -> list[str]:
    """Why the service is unhealthy; empty when it is healthy."""
    now = time.time() if now is None else now
    problems = []
    stale_after = max(3 * heartbeat_seconds, 10.0)
    age = now - health.heartbeat_at
    if health.heartbeat_at and age > stale_after:
        problems.append(f"heartbeat is {age:.0f}s old (stale after {stale_after:g}s)")
    elif not health.heartbeat_at and now - health.started_at > stale_after:
        problems.append(
            f"no heartbeat yet, {now - health.started_at:.0f}s after the start (the heartbeat "
            "begins once the database is ready)"
        )
    if not health.database_ok:
        problems.append("database unreachable")
    if health.leader and not health.scheduler_alive:
        problems.append("scheduler thread is not running")
    if not health.job_store_ok:
        problems.append("job store unreachable")
    if not health.history_ok:
        problems.append("run history writes are failing or stalled")
    unrenewed = health.lease_unrenewed_seconds
    if health.leader and unrenewed is not None:
        problems.append(f"leadership lease not renewed for {unrenewed:.0f}s: no runs start")
    since = health.no_worker_since
    if health.leader and since is not None and now - since > NO_WORKER_GRACE_SECONDS:
        problems.append(f"no worker process has been ready for {now - since:.0f}s")
    return problems


def job_state(
    job_type: str,
    catalog: JobCatalog,
    states: JobStates | None,
    next_runs: Mapping[str, datetime | None],
    not_loaded: Mapping[str, str],
    quarantined: Mapping[str, str] | None = None,
) -> tuple[str, str | None]:
    """(state, why): scheduled, paused, quarantined (with why), disabled, blocked (with why: a
    disabled dependency, or the latest run's skip), not_loaded (with why), or unscheduled (on a
    standby)."""
    job = catalog.jobs.get(job_type)
    if job is None:
        return "not_loaded", not_loaded.get(job_type, "its task file failed to import")
    if not job.config.enabled:
        return "disabled", None
    if quarantined and job_type in quarantined:
        return "quarantined", quarantined[job_type]
    if job_type in next_runs and next_runs[job_type] is None:
        return "paused", None
    waiting = catalog.waiting_on_disabled.get(job_type)
    if waiting is not None:
        return "blocked", disabled_dependency_reason(waiting)
    blocked = states.get(job_type).blocked_by if states is not None else None
    if blocked is not None:
        return "blocked", f"{blocked.reason}: {blocked.why}"
    return ("scheduled" if job_type in next_runs else "unscheduled"), None


def jobs_overview(
    catalog: JobCatalog,
    states: JobStates | None,
    next_runs: Mapping[str, datetime | None],
    not_loaded: Mapping[str, str],
    quarantined: Mapping[str, str] | None = None,
) -> list[JobView]:
    """Each job for /api/jobs, `list --json` and the status page: effective configuration
    and where it came from, state, next run and latest outcome.

    `not_loaded` maps the stored jobs whose task file failed to import to why.
    """
    overview = []
    for job_type in [*catalog.jobs, *(j for j in not_loaded if j not in catalog.jobs)]:
        job = catalog.jobs.get(job_type)
        state, why = job_state(job_type, catalog, states, next_runs, not_loaded, quarantined)
        js = states.get(job_type) if states is not None else None
        overview.append(
            JobView(
                job_type=job_type,
                name=job.metadata.name if job else job_type,
                description=job.metadata.description if job else None,
                task_class=job.metadata.qualified_class_name if job else None,
                source=str(job.metadata.source) if job else None,
                state=state,
                state_reason=why,
                schedule=str(job.config.schedule) if job else None,
                config=JobSettings.of(job.config) if job else None,
                overrides=_overrides(job),
                requirements=list(job.metadata.requirements) if job else [],
                dependencies=list(job.metadata.dependencies) if job else [],
                params_schema=_schema(job),
                next_run_time=next_runs.get(job_type),
                running=js.running if js else 0,
                last_outcome=js.last_outcome if js else None,
                last_finished_at=js.last_finished_at if js else None,
                last_error=js.last_error if js else None,
                last_success_at=js.last_success_at if js else None,
            )
        )
    return overview


def _overrides(job: ResolvedJob | None) -> dict[str, Override]:
    origins = job.origins if job else {}
    return {
        option: Override(source=origin.kind, where=origin.where, value=origin.raw)
        for option, origin in origins.items()
    }


def _schema(job: ResolvedJob | None) -> Any:
    """The JSON schema of the job's params model (None: it takes any JSON object)."""
    schema = job.metadata.params_schema if job else None
    return json.loads(schema) if schema else None


def service_status(
    health: Health,
    catalog: JobCatalog,
    states: JobStates | None,
    next_runs: Mapping[str, datetime | None],
    quarantined: Mapping[str, str] | None = None,
    *,
    not_loaded: Mapping[str, float | None] | None = None,
    oldest_runs: Mapping[str, datetime] | None = None,
) -> ServiceStatus:
    """`not_loaded` maps each stored job whose task file failed to import to its stored
    interval, if known; `oldest_runs` each job with runs in progress to the first attempt's
    start of its oldest."""
    quarantined, oldest_runs = quarantined or {}, oldest_runs or {}
    now = utcnow()
    known = {jt: job.config.schedule.period_seconds for jt, job in catalog.jobs.items()}
    failed = {jt: i for jt, i in (not_loaded or {}).items() if jt not in catalog.jobs}
    jobs = tuple(
        JobStatus(
            job_type=job_type,
            interval_seconds=interval,
            # Kept in the store means enabled when its file last imported: as far as known.
            enabled=catalog.jobs[job_type].config.enabled if job_type in known else True,
            last_success=states.get(job_type).last_success_at if states else None,
            next_run=next_runs.get(job_type),
            quarantined=job_type in quarantined,
            paused=job_type in next_runs
            and next_runs[job_type] is None
            and job_type not in quarantined,
            loaded=job_type in known,
            oldest_run_age_seconds=_age(oldest_runs.get(job_type), now),
        )
        for job_type, interval in {**known, **failed}.items()
    )
    return ServiceStatus(
        heartbeat_timestamp=health.heartbeat_at,
        is_leader=health.leader,
        discovery_errors=len(catalog.failures),
        event_loop_lag_seconds=health.event_loop_lag_seconds,
        jobs=jobs,
        leadership_epoch=health.epoch if health.leader else 0,
        history_rows_dropped=health.history_rows_dropped,
        database_up=health.database_ok,
        jobstore_up=health.job_store_ok and health.database_ok,
        history_writer_up=health.history_ok,
        history_queue=health.history_queued,
    )


def _age(since: datetime | None, now: datetime) -> float:
    return max((now - since).total_seconds(), 0.0) if since is not None else 0.0
