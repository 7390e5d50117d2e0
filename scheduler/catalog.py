"""The catalog of jobs a service would run: discovery, configuration and validation in one pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from .dependencies import dependency_problems
from .discovery import DiscoveryFailure, DiscoveryReport, discover
from .job_config import ResolvedJob, resolve_job_configs
from .registry import JobRegistry
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

    @property
    def failures(self) -> tuple[DiscoveryFailure, ...]:
        return self.discovery.failures

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failures

    def source_file(self, job_type: str) -> Path | None:
        return self.discovery.job_files.get(job_type)


def load_catalog(settings: ServiceSettings, environ: Mapping[str, str]) -> JobCatalog:
    """Discover the tasks folder and resolve every job's configuration against `environ`."""
    report = discover(settings.tasks_dir)
    jobs = JobRegistry.list_jobs()
    resolved = resolve_job_configs(jobs, environ, settings.config_file)
    failed = [str(failure.path) for failure in report.failures]
    problems = (*resolved.problems, *dependency_problems(jobs, failed))
    warnings = (*unknown_service_variables(environ), *resolved.warnings)
    for warning in warnings:
        log.warning(warning)
    return JobCatalog(report, resolved.jobs, problems, warnings)
