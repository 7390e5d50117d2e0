"""A persistent job scheduler service: drop a `@job` task file into `tasks/` and it runs.

The public API: everything a task file or an embedding program needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import BaseTask, JobContext, RunnerResult
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
    UnknownJobTypeNameError,
)
from .job_types import JobType
from .metadata import JobMetadata, SourceLocation
from .options import JobConfig, JobPriority
from .records import Outcome, RunSummary, SkipReason, Trigger
from .registry import JobRegistry
from .requirements import RequirementRegistry, RequirementUnavailable, env_requirement, requirement

if TYPE_CHECKING:
    from .catalog import JobCatalog, load_catalog
    from .job_config import ResolvedJob, ValueOrigin, resolve_job_configs
    from .settings import ServiceSettings, load_settings

#: Loaded on first use: task files (and the worker processes that import them) need none of
#: these, and pydantic-settings alone is a few MB in every worker.
_LAZY = {
    "JobCatalog": "catalog",
    "load_catalog": "catalog",
    "ResolvedJob": "job_config",
    "ValueOrigin": "job_config",
    "resolve_job_configs": "job_config",
    "ServiceSettings": "settings",
    "load_settings": "settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
    "UnknownJobTypeNameError",
    "ValueOrigin",
    "discover",
    "env_requirement",
    "job",
    "load_catalog",
    "load_settings",
    "requirement",
    "resolve_job_configs",
]
