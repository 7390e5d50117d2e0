"""What the HTTP API reads from, and asks of, a running service (the `ServiceView` of http.py):
health, job states, run history, and the operator's run now / pause / resume."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry

from .errors import NotActiveError, UnknownJobTypeError
from .execution import RunCoordinator, RunSummary
from .history import RunHistory, RunRecord
from .outcomes import Outcome
from .status import health_problems, jobs_overview

if TYPE_CHECKING:
    from .service import SchedulerService

log = structlog.get_logger(__name__)


class ServiceOperations:
    def __init__(self, service: SchedulerService) -> None:
        self._service = service

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

    def jobs_overview(self) -> list[dict[str, Any]]:
        service = self._service
        return jobs_overview(
            service.catalog, service.states, service.next_runs(), service.not_loaded
        )

    def runs(self, job_type: str | None, limit: int, offset: int) -> list[RunRecord]:
        if job_type is not None:
            self._known(job_type)
        engine = self._service.engine
        return RunHistory(engine).recent(job_type, limit=limit, offset=offset) if engine else []

    def recent_failures(self, limit: int = 10) -> list[RunRecord]:
        engine = self._service.engine
        if engine is None:
            return []
        failed = [str(Outcome.FAILURE), str(Outcome.TIMEOUT)]
        return RunHistory(engine).recent(limit=limit, outcomes=failed)

    async def run_now(self, job_type: str) -> RunSummary | str:
        """An operator's "run now" (see RunCoordinator.run_now)."""
        self._known(job_type)
        coordinator = self._active_coordinator()
        log.info("run requested by an operator", job_type=job_type)
        return await coordinator.run_now(job_type)

    async def pause(self, job_type: str) -> None:
        """Stop scheduling `job_type` until resumed; the pause is stored and survives restarts."""
        await self._set_paused(job_type, paused=True)

    async def resume(self, job_type: str) -> None:
        await self._set_paused(job_type, paused=False)

    async def _set_paused(self, job_type: str, *, paused: bool) -> None:
        coordinator = self._active_coordinator()
        self._scheduled(job_type)
        scheduler = self._service.scheduler
        change = scheduler.pause_job if paused else scheduler.resume_job
        await asyncio.to_thread(change, job_type)
        if paused:
            coordinator.paused.add(job_type)
        else:
            coordinator.paused.discard(job_type)
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

    def _active_coordinator(self) -> RunCoordinator:
        coordinator = self._service.coordinator
        if not self._service.health.leader or coordinator is None:
            raise NotActiveError("this instance is a standby; ask the active instance")
        return coordinator
