"""What the HTTP API reads from, and asks of, a running service (the `ServiceView` of http.py):
health, job states, workers, run history, and the operator's run now / pause / resume /
cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from .active import ActiveRole
from .catalog import JobCatalog
from .errors import (
    AmbiguousRunError,
    NotActiveError,
    ParamsRejected,
    ParamsUnverifiable,
    RunAlreadyStartedError,
    RunNotInProgressError,
    StaleLeadershipError,
    UnknownJobTypeError,
    UnknownRunError,
)
from .history import RunHistory
from .masking import mask_secrets
from .metrics import SchedulerMetrics
from .pending import AlreadyStarted, PendingRun, PendingStore
from .records import (
    Outcome,
    RunCancellation,
    RunInProgress,
    RunRecord,
    RunSummary,
    WorkerStatus,
    utcnow,
)
from .settings import ServiceSettings
from .status import Health, health_problems, jobs_overview
from .stored_jobs import StoredJobs, read_stored_jobs
from .views import JobHistory, JobView, RunView

log = structlog.get_logger(__name__)

#: The shortest prefix of a run id an operator may name a run by.
MIN_RUN_ID_PREFIX = 8
#: How long a cancel waits for its run to end, beyond the kill grace (the supervisor looks four
#: times a second, and the worker's replacement starts meanwhile).
CANCEL_WAIT_MARGIN_SECONDS = 2.0
#: How long a standby reuses what it read of the stored jobs.
STORED_JOBS_TTL = 2.0
#: How many of its latest skips and dead letters a job's page shows.
JOB_PAGE_SKIPS = 20
JOB_PAGE_DEAD_LETTERS = 20

T = TypeVar("T")


class ServiceState(Protocol):
    """The parts of the running service the operations read (service.SchedulerService)."""

    settings: ServiceSettings
    catalog: JobCatalog
    health: Health
    metrics: SchedulerMetrics
    engine: Engine
    role: ActiveRole | None

    def next_runs(self) -> dict[str, datetime | None]: ...


class ServiceOperations:
    def __init__(self, service: ServiceState) -> None:
        self._service = service
        self._last_failures: list[RunRecord] = []
        self._stored, self._stored_at, self._stored_ok = StoredJobs(), -STORED_JOBS_TTL, True
        self._last_dead_letters: list[RunRecord] = []

    @property
    def metrics_registry(self) -> CollectorRegistry:
        return self._service.metrics.registry

    @property
    def is_leader(self) -> bool:
        return self._service.health.leader

    @property
    def admin_token(self) -> str | None:
        token = self._service.settings.admin_token
        return token.get_secret_value() if token is not None else None

    def health_problems(self) -> list[str]:
        service = self._service
        return health_problems(service.health, service.settings.heartbeat_seconds)

    def jobs_overview(self) -> list[JobView]:
        service, role = self._service, self._service.role
        if role is None:  # a standby holds no schedule: it shows what the leader stored
            stored = self._stored_jobs()
            return jobs_overview(
                service.catalog, stored.states, stored.next_runs, {}, stored.quarantined
            )
        return jobs_overview(
            service.catalog,
            role.states,
            service.next_runs(),
            role.not_loaded,
            role.quarantine.quarantined,
        )

    def _stored_jobs(self) -> StoredJobs:
        """The database's view of the jobs, read at most every STORED_JOBS_TTL seconds (a
        page refresh, a scrape and the API share one read); the last one during an outage."""
        now = time.monotonic()
        if now - self._stored_at >= STORED_JOBS_TTL:
            try:
                self._stored, self._stored_ok = read_stored_jobs(self._service.engine), True
            except Exception as error:
                if self._stored_ok:  # once per outage, not at every refresh
                    log.warning("stored jobs cannot be read", error=mask_secrets(str(error)))
                self._stored_ok = False
            self._stored_at = now
        return self._stored

    def workers(self) -> list[WorkerStatus]:
        role = self._service.role
        return role.backend.statuses() if role else []

    def runs(self, job_type: str | None, limit: int, offset: int) -> list[RunRecord]:
        if job_type is not None:
            self._known(job_type)
        return RunHistory(self._service.engine).recent(job_type, limit=limit, offset=offset)

    def recent_failures(self, limit: int = 10) -> tuple[list[RunRecord], str | None]:
        """The latest failed attempts, and None; or, while the history cannot be read (a
        database outage), the last ones read and why (the status page must still answer)."""
        failed = [str(Outcome.FAILURE), str(Outcome.TIMEOUT), str(Outcome.CRASHED)]
        history = RunHistory(self._service.engine)
        records, error = _read(lambda: history.recent(limit=limit, outcomes=failed), None)
        if records is None:
            return self._last_failures, error
        self._last_failures = records
        return records, None

    def dead_letters(
        self, limit: int = 10, *, last_read: bool = False
    ) -> tuple[list[RunRecord], str | None]:
        """The latest runs that failed after their last retry, like `recent_failures` (the
        last ones read, and why, while the history cannot be read). `last_read`: the last ones
        read, without asking the database (which just failed another read)."""
        if last_read:
            return self._last_dead_letters, None
        history = RunHistory(self._service.engine)
        records, error = _read(lambda: history.recent(limit=limit, dead_letter_only=True), None)
        if records is None:
            return self._last_dead_letters, error
        self._last_dead_letters = records
        return records, None

    def job_history(self, job_type: str, limit: int = 50) -> JobHistory:
        """The job's latest attempts, skips and dead letters, for its status page."""
        self._known(job_type)
        history = RunHistory(self._service.engine)

        def read() -> JobHistory:
            skipped = [str(Outcome.SKIPPED)]
            return JobHistory(
                runs=_views(history.recent(job_type, limit=limit)),
                skips=_views(history.recent(job_type, limit=JOB_PAGE_SKIPS, outcomes=skipped)),
                dead_letters=_views(
                    history.recent(job_type, limit=JOB_PAGE_DEAD_LETTERS, dead_letter_only=True)
                ),
            )

        found, error = _read(read, None)
        return found or JobHistory(runs=[], error=error)

    def run_attempts(self, run_id: str) -> tuple[list[RunView], str | None]:
        """Every attempt of the run `run_id` (its whole id), first first; empty if the history
        has none, and why while it cannot be read."""
        history = RunHistory(self._service.engine)
        none: list[RunRecord] = []
        records, error = _read(lambda: history.attempts(run_id), none)
        return _views(records), error

    def task_file_failures(self) -> list[tuple[str, str]]:
        """(path, error) of each task file that failed to import, at start-up or reload."""
        return [(str(f.path), mask_secrets(f.error)) for f in self._service.catalog.failures]

    async def run_now(
        self, job_type: str, params: Mapping[str, Any] | None = None
    ) -> RunSummary | str:
        """An operator's "run now" (see RunCoordinator.run_now), with its params checked."""
        self._known(job_type)
        role = self._active()
        await self._check_params(role, job_type, params or {})
        log.info("run requested by an operator", job_type=job_type)
        return await role.coordinator.run_now(job_type, params=params)

    async def schedule_run(
        self, job_type: str, at: datetime, params: Mapping[str, Any] | None = None
    ) -> PendingRun:
        """An operator's delayed run: stored, then run at `at` by whichever instance leads."""
        self._known(job_type)
        role = self._active()
        await self._check_params(role, job_type, params or {})
        try:
            return await role.delayed.add(job_type, at, params or {})
        except StaleLeadershipError:
            raise NotActiveError("this instance's leadership term just ended; retry") from None

    def scheduled_runs(self) -> list[PendingRun]:
        """The delayed runs still pending, soonest first (read from the database: a standby
        answers too)."""
        return PendingStore(self._service.engine).load()

    async def cancel_scheduled(self, run_id: str) -> PendingRun:
        role = self._active()
        try:
            run = await role.delayed.cancel(run_id)
        except AlreadyStarted as error:
            raise RunAlreadyStartedError(f"{error}: too late to cancel it") from None
        except StaleLeadershipError:
            raise NotActiveError("this instance's leadership term just ended; retry") from None
        if run is None:
            raise UnknownRunError(f"no scheduled run {run_id!r} is pending")
        return run

    async def _check_params(
        self, role: ActiveRole, job_type: str, params: Mapping[str, Any]
    ) -> None:
        """Ask where the task code is (a worker) whether the params validate against the
        job's model; a job without one takes any JSON object."""
        job = self._service.catalog.jobs.get(job_type)
        if job is None or job.metadata.params_model is None:
            return
        try:
            problem = await role.backend.validate_params(job, params)
        except TimeoutError as error:
            why = f"the params of {job_type!r} could not be validated: no worker answered"
            raise ParamsUnverifiable(f"{why} ({error or 'timed out'}); retry shortly") from None
        if problem is not None:
            raise ParamsRejected(problem.model, problem.errors, problem.text)

    def runs_in_progress(self) -> list[RunInProgress]:
        """Runs with an attempt executing or waiting to retry (none on a standby)."""
        role = self._service.role
        if not self._service.health.leader or role is None:
            return []
        return role.coordinator.in_progress()

    async def cancel_run(self, run_id: str) -> RunCancellation:
        """Cancel the run in progress whose id is, or starts with, `run_id` (at least 8
        characters); wait a little for it to end."""
        role = self._active()
        prefix = run_id.strip().lower()
        if len(prefix) < MIN_RUN_ID_PREFIX:
            raise RunNotInProgressError(
                f"give at least {MIN_RUN_ID_PREFIX} characters of the run id, not {run_id!r}"
            )
        matches = [run for run in role.coordinator.in_progress() if run.run_id.startswith(prefix)]
        if not matches:
            raise RunNotInProgressError(f"no run in progress has an id starting with {run_id!r}")
        if len(matches) > 1:
            ids = ", ".join(run.run_id for run in matches)
            raise AmbiguousRunError(f"{run_id!r} matches {len(matches)} runs in progress: {ids}")
        (cancelled,) = await self._cancel(role, matches)
        return cancelled

    async def cancel_job(self, job_type: str) -> list[RunCancellation]:
        """Cancel every run of `job_type` in progress (none: an empty list)."""
        self._known(job_type)
        role = self._active()
        matches = [run for run in role.coordinator.in_progress() if run.job_type == job_type]
        return await self._cancel(role, matches)

    async def _cancel(self, role: ActiveRole, runs: list[RunInProgress]) -> list[RunCancellation]:
        coordinator = role.coordinator
        cancelled = [run for run in runs if coordinator.cancel(run.run_id)]
        for run in cancelled:
            log.info("run cancellation requested by an operator", job_type=run.job_type,
                     run_id=run.run_id, attempt=run.attempt)  # fmt: skip
        wait = self._service.settings.kill_grace_seconds + CANCEL_WAIT_MARGIN_SECONDS
        ended = await coordinator.wait_ended([run.run_id for run in cancelled], wait)
        return [RunCancellation(run, ended.get(run.run_id)) for run in cancelled]

    async def pause(self, job_type: str) -> None:
        """Stop scheduling `job_type` until resumed; the pause is stored and survives restarts."""
        await self._set_paused(job_type, paused=True)

    async def resume(self, job_type: str) -> None:
        """Schedule `job_type` again: after a pause, or a quarantine."""
        await self._set_paused(job_type, paused=False)

    async def _set_paused(self, job_type: str, *, paused: bool) -> None:
        role = self._active()
        self._scheduled(job_type)
        change = role.scheduler.pause_job if paused else role.scheduler.resume_job
        await asyncio.to_thread(change, job_type)
        if paused:
            role.coordinator.paused.add(job_type)
        else:
            role.coordinator.paused.discard(job_type)
            if role.quarantine.lift(job_type):
                history = RunHistory(self._service.engine)
                await asyncio.to_thread(history.lift_quarantine, job_type, utcnow())
                log.info("quarantine lifted by an operator", job_type=job_type)
        log.info(f"job {'paused' if paused else 'resumed'} by an operator", job_type=job_type)

    def _known(self, job_type: str) -> None:
        service = self._service
        if job_type not in service.catalog.jobs and job_type not in service.next_runs():
            known = ", ".join(service.catalog.jobs) or "(none)"
            raise UnknownJobTypeError(f"no job {job_type!r}; known job types: {known}")

    def _scheduled(self, job_type: str) -> None:
        self._known(job_type)
        if job_type not in self._service.next_runs():
            raise UnknownJobTypeError(f"job {job_type!r} is not scheduled (it is disabled)")

    def _active(self) -> ActiveRole:
        role = self._service.role
        if not self._service.health.leader or role is None:
            raise NotActiveError("this instance is a standby; ask the active instance")
        return role


def _read(read: Callable[[], T], fallback: T) -> tuple[T, str | None]:
    """What `read` returns and None; or, if it raised (the history cannot be read: a database
    outage), `fallback` and why, masked (a page must still answer, and say why it is short)."""
    try:
        return read(), None
    except Exception as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        return fallback, mask_secrets(first)


def _views(records: list[RunRecord]) -> list[RunView]:
    return [RunView.of(record) for record in records]
