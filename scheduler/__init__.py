"""A persistent job scheduler service: drop a `@job` task file into `tasks/` and it runs.

The public API: everything a task file or an embedding program needs.
"""

from __future__ import annotations

from .base import BaseTask, JobContext, RunnerResult
from .catalog import JobCatalog, load_catalog
from .decorators import job
from .discovery import DiscoveryFailure, DiscoveryReport, discover
from .errors import (
    ConfigurationError,
    DiscoveryError,
    DuplicateJobError,
    JobDefinitionError,
    NonRetryableError,
    SchedulerError,
    UnknownJobTypeAttributeError,
    UnknownJobTypeError,
)
from .job_config import ResolvedJob, ValueOrigin, resolve_job_configs
from .job_types import JobType
from .metadata import JobMetadata, SourceLocation
from .options import JobConfig, JobPriority
from .records import Outcome, RunSummary, SkipReason, Trigger
from .registry import JobRegistry
from .requirements import RequirementRegistry, RequirementUnavailable, env_requirement, requirement
from .settings import ServiceSettings, load_settings

__all__ = [
    "BaseTask",
    "ConfigurationError",
    "DiscoveryError",
    "DiscoveryFailure",
    "DiscoveryReport",
    "DuplicateJobError",
    "JobCatalog",
    "JobConfig",
    "JobContext",
    "JobDefinitionError",
    "JobMetadata",
    "JobPriority",
    "JobRegistry",
    "JobType",
    "NonRetryableError",
    "Outcome",
    "RequirementRegistry",
    "RequirementUnavailable",
    "ResolvedJob",
    "RunSummary",
    "RunnerResult",
    "SchedulerError",
    "ServiceSettings",
    "SkipReason",
    "SourceLocation",
    "Trigger",
    "UnknownJobTypeAttributeError",
    "UnknownJobTypeError",
    "ValueOrigin",
    "discover",
    "env_requirement",
    "job",
    "load_catalog",
    "load_settings",
    "requirement",
    "resolve_job_configs",
]
