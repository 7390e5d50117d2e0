"""The catalog of jobs a service would run: discovery, configuration and validation in one pass."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from .dependencies import (
    dependency_cycles,
    disabled_dependencies,
    disabled_dependency_problem,
    disabled_dependency_reason,
    unknown_dependencies,
)
from .discovery import DiscoveryFailure, DiscoveryReport, discover, log_ignored
from .isolated_discovery import discover_isolated, probe_requirements, scan_isolated
from .job_config import ResolvedJob, resolve_job_configs
from .registry import JobRegistry
from .requirements import RequirementRegistry, unavailable_requirements
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
        """Whether `check` passes. A job that can never run fails it, though the service still
        starts (with a warning) so that the other jobs run."""
        return not self.problems and not self.failures and not self.never_run()

    @functools.cached_property
    def waiting_on_disabled(self) -> Mapping[str, tuple[str, ...]]:
        """Enabled jobs that never run because they depend on a disabled job -> the path to it.
        Computed once: the status asks for every job on every request."""
        return disabled_dependencies(self.jobs)

    def never_run(self) -> list[str]:
        """One line per job that never runs as configured (a disabled dependency)."""
        waiting = self.waiting_on_disabled.items()
        return [disabled_dependency_problem(job_type, path) for job_type, path in waiting]

    def blocked_by_dependencies(self) -> dict[str, list[str]]:
        """Job type -> why it is blocked by a disabled dependency (for its state)."""
        waiting = self.waiting_on_disabled.items()
        return {job_type: [disabled_dependency_reason(path)] for job_type, path in waiting}

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


def requirement_warning(job_type: str, why: str) -> str:
    """What `scheduler check` prints and the service logs at start-up for a job held back by an
    unavailable requirement: not an error, since the requirement may become available later."""
    return f"job {job_type!r} is blocked: {why}"


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
    return _resolve(report, settings, environ, isolated)


async def reload_catalog(settings: ServiceSettings, environ: Mapping[str, str]) -> JobCatalog:
    """`load_catalog` for a running service: the task files are imported in child processes
    off the loop, and the registry is swapped on the loop in one step (the loop reads it). In
    inline mode they are imported on the loop, as at start-up: that mode trusts its tasks.

    A catalog with problems (the service would refuse to start with it) is returned for its
    problems to be told, with the registries left as they were: the service keeps its jobs."""
    jobs, providers = JobRegistry.snapshot(), RequirementRegistry.list_providers()
    if settings.execution == "process":
        found = await asyncio.to_thread(
            scan_isolated, settings.tasks_dir, settings.discovery_timeout_seconds
        )
        found.register()
        _log_discovery(found.report)
        catalog = _resolve(found.report, settings, environ, isolated=True)
    else:
        catalog = load_catalog(settings, environ, isolated=False)
    if catalog.problems:
        JobRegistry.restore(jobs)
        RequirementRegistry.restore(providers)
    return catalog


def _resolve(
    report: DiscoveryReport, settings: ServiceSettings, environ: Mapping[str, str], isolated: bool
) -> JobCatalog:
    """The catalog of the jobs now registered, configured from `environ` and the config file."""
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
    catalog = JobCatalog(
        report,
        resolved.jobs,
        tuple(problems),
        tuple(warnings),
        isolated=isolated,
        timeout_seconds=settings.discovery_timeout_seconds,
    )
    for job_type, path in catalog.waiting_on_disabled.items():
        problem = disabled_dependency_problem(job_type, path)
        log.warning(problem, job_type=job_type, disabled_dependency=path[-1])
    return catalog


def _log_discovery(report: DiscoveryReport) -> None:
    log_ignored(report)
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
