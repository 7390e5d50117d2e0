"""The catalog of jobs a service would run: discovery, configuration and validation in one pass."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from .dependencies import dependency_cycles, unknown_dependencies
from .discovery import DiscoveryFailure, DiscoveryReport, discover
from .isolated_discovery import discover_isolated, probe_requirements
from .job_config import ResolvedJob, resolve_job_configs
from .registry import JobRegistry
from .requirements import unavailable_requirements
from .settings import ServiceSettings, unknown_service_variables

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class JobCatalog:
    """Discovered jobs with their effective configuration, and everything found wrong."""

    discovery: DiscoveryReport
    jobs: dict[str, ResolvedJob]
    #: Configuration problems: the service refuses to start while there is any.
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    #: The task files were imported in child processes (this process holds metadata only).
    isolated: bool = False
    #: Per task file import deadline, for the isolated requirement probe.
    timeout_seconds: float = 10.0

    @property
    def failures(self) -> tuple[DiscoveryFailure, ...]:
        return self.discovery.failures

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failures

    def source_file(self, job_type: str) -> Path | None:
        return self.discovery.job_files.get(job_type)

    async def blocked_by_requirements(self) -> dict[str, list[str]]:
        """Job type -> why each of its unavailable requirements is unavailable (asks providers)."""
        names = sorted({name for job in self.jobs.values() for name in job.metadata.requirements})
        if not names:
            return {}
        if self.isolated:
            tasks_dir, timeout = self.discovery.tasks_dir, self.timeout_seconds
            reasons = await asyncio.to_thread(probe_requirements, tasks_dir, names, timeout)
        else:
            reasons = await unavailable_requirements(names)
        blocked = {}
        for job_type, job in self.jobs.items():
            why = [reasons[name] for name in job.metadata.requirements if name in reasons]
            if why:
                blocked[job_type] = why
        return blocked


def load_catalog(
    settings: ServiceSettings, environ: Mapping[str, str], *, isolated: bool | None = None
) -> JobCatalog:
    """Discover the tasks folder and resolve every job's configuration against `environ`.

    `isolated` (the default in process mode) imports the task files in child processes, so a
    file that hangs, exits or crashes at import costs only its own jobs.
    """
    if isolated is None:
        isolated = settings.execution == "process"
    if isolated:
        report = discover_isolated(settings.tasks_dir, settings.discovery_timeout_seconds).report
        _log_discovery(report)
    else:
        report = discover(settings.tasks_dir)
    jobs = JobRegistry.list_jobs()
    resolved = resolve_job_configs(jobs, environ, settings.config_file)
    failed = [str(failure.path) for failure in report.failures]
    unknown = unknown_dependencies(jobs, failed)
    # A dependency declared in a file that failed to import is that file's problem, reported
    # with it; the jobs that depend on it are skipped at run time, not refused at start.
    problems = [*resolved.problems, *([] if failed else unknown), *dependency_cycles(jobs)]
    warnings = [
        *unknown_service_variables(environ),
        *resolved.warnings,
        *(unknown if failed else []),
    ]
    for warning in warnings:
        log.warning(warning)
    return JobCatalog(
        report,
        resolved.jobs,
        tuple(problems),
        tuple(warnings),
        isolated=isolated,
        timeout_seconds=settings.discovery_timeout_seconds,
    )


def _log_discovery(report: DiscoveryReport) -> None:
    for failure in report.failures:
        log.error("task file failed to import", path=str(failure.path), error=failure.error)
        if failure.traceback:
            log.debug("task file traceback", path=str(failure.path), traceback=failure.traceback)
    log.info(
        "discovery finished",
        tasks_dir=str(report.tasks_dir),
        files=len(report.modules) + len(report.failures),
        jobs=list(report.job_types),
        failed_files=[str(f.path) for f in report.failures],
        seconds=round(report.seconds, 4),
        isolated=True,
    )
