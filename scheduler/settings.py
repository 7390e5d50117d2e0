"""Service-wide settings, from `SCHEDULER_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError
from .event_loop import EventLoopChoice
from .suggestions import did_you_mean

ENV_PREFIX = "SCHEDULER_"
DEFAULT_DATABASE_URL = "sqlite:///data/scheduler.db"
DEFAULT_HTTP_PORT = 9480
DEFAULT_WORKER_HTTP_PORT = 9481


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
]
ExecutionMode = Literal["process", "inline", "celery"]
LogFormat = Annotated[Literal["json", "console"], BeforeValidator(_lower)]


class ServiceSettings(BaseSettings):
    """Settings of the service as a whole; each reads `SCHEDULER_<NAME>` from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
    )

    #: The folder whose `*.py` files are discovered as task files.
    tasks_dir: Path = Path("tasks")
    #: An optional TOML file with per-job overrides in `[jobs.<job_type>]` tables.
    config_file: Path | None = None
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"

    #: SQLAlchemy URL of the database holding schedules and run history.
    database_url: str = DEFAULT_DATABASE_URL
    #: How many runs may execute at once across all jobs; beyond it, runs wait by priority.
    max_workers: PositiveInt = 16
    #: Where task code runs: "process" (supervised worker processes; the scheduler process runs
    #: no task code), "inline" (on the scheduler's own event loop: trusted, light jobs only) or
    #: "celery" (on `scheduler worker` processes, on any number of machines, through a broker).
    execution: Annotated[ExecutionMode, BeforeValidator(_lower)] = "process"
    #: The Celery broker (Redis: `redis://host:6379/0`); required with SCHEDULER_EXECUTION=celery.
    celery_broker_url: str | None = Field(default=None, validate_default=True)
    #: Where Celery workers store results (Redis); default: the broker URL.
    celery_result_backend: str | None = None
    #: The Celery queue the scheduler sends attempts to and `scheduler worker` consumes.
    celery_queue: str = Field(default="taskwarden", min_length=1)
    #: A worker refreshes the lease of each attempt it runs; one not refreshed for this long
    #: means its worker was lost (the attempt is `crashed`).
    celery_lease_seconds: PositiveFloat = 5.0
    #: An attempt no Celery worker has started this long after it was sent fails (retryable:
    #: its body never ran) instead of waiting for a worker forever.
    celery_start_timeout_seconds: PositiveFloat = 60.0
    #: The broker redelivers a message not acknowledged this long after delivery (its worker was
    #: lost); it must exceed every job's timeout plus the kill grace.
    celery_visibility_timeout_seconds: PositiveFloat = 3600.0
    #: Where `scheduler worker` serves its own /metrics and /healthz.
    worker_http_port: int = Field(default=DEFAULT_WORKER_HTTP_PORT, ge=1, le=65535)
    #: Worker processes in process mode; each runs many runs at once on its own event loop.
    workers: PositiveInt = Field(default_factory=lambda: os.cpu_count() or 1)
    #: A run still going this long after its timeout (it ignored its cancellation, or blocks
    #: its worker's event loop) is killed with its worker process, and recorded `timeout`.
    kill_grace_seconds: PositiveFloat = 5.0
    #: A worker whose resident memory passes this is recycled once its runs have finished.
    worker_max_memory_mb: PositiveInt = 1024
    #: A worker whose resident memory passes this is killed at once (its runs: `crashed`).
    #: Default: twice SCHEDULER_WORKER_MAX_MEMORY_MB.
    worker_kill_memory_mb: PositiveInt | None = None
    #: A worker's event loop that does not answer for this long is reported blocked (log,
    #: metrics, /api/workers), naming the run and the line it is stuck on.
    watchdog_seconds: PositiveFloat = 1.0
    #: A job whose runs end their worker process this many times in a row is quarantined.
    quarantine_after: PositiveInt = 3
    #: Watch the tasks folder (and the config file) and apply changes while running: a file
    #: added, changed or removed is discovered and reconciled within about a second.
    reload: bool = False
    #: How long one task file may take to import at discovery before it is given up on.
    discovery_timeout_seconds: PositiveFloat = 10.0
    #: A run that could not start within this many seconds of its time is skipped as missed.
    misfire_grace_seconds: PositiveInt = 60
    #: Collapse several missed runs of a job into one (order-preserving jobs never coalesce).
    coalesce: bool = True
    #: A job skipped at `max_concurrent` (overload) gets one history row and one warning line
    #: per this many seconds: the first skip in full, the rest counted and summarised in one
    #: row when the window closes (the metric counts every skip). 0: a row and a line each.
    skip_summary_seconds: NonNegativeFloat = 60.0
    #: On SIGTERM/SIGINT, how long running jobs may finish before they are cancelled.
    shutdown_grace_seconds: NonNegativeFloat = 30.0
    #: Run-history rows older than this are deleted.
    history_retention_days: PositiveFloat = 30.0
    #: How often the service checks its database, its scheduler thread and its leadership.
    heartbeat_seconds: PositiveFloat = 2.0
    #: A leader silent this long (paused, frozen, cut off from the database) is taken over by a
    #: standby; a leader that could not renew for half of it stops starting runs. At least three
    #: heartbeats.
    lease_seconds: PositiveFloat = 10.0
    #: New jobs' first runs are spread over this many seconds (by a stable hash of the job
    #: type), so jobs registered together do not all fall due at once. 0: all at once.
    first_run_spread_seconds: NonNegativeFloat = 1.0
    #: How long a standby waits between attempts to become the active instance.
    standby_poll_seconds: PositiveFloat = 2.0
    #: Where /metrics, /healthz, /readyz and the API listen. 0.0.0.0 to listen on all interfaces.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=DEFAULT_HTTP_PORT, ge=1, le=65535)
    #: Bearer token for the write endpoints (run now, pause, resume); unset disables them.
    admin_token: SecretStr | None = None
    #: The asyncio event loop: uvloop (faster per run) or the standard library's; "auto" is
    #: uvloop where it is installed.
    event_loop: Annotated[EventLoopChoice, BeforeValidator(_lower)] = "auto"

    @field_validator("lease_seconds")
    @classmethod
    def _lease_spans_heartbeats(cls, value: float, info: ValidationInfo) -> float:
        heartbeat = info.data.get("heartbeat_seconds")
        if heartbeat is not None and value < 3 * heartbeat:
            raise ValueError(
                f"must be at least 3 heartbeats (SCHEDULER_HEARTBEAT_SECONDS={heartbeat:g})"
            )
        return value

    @field_validator("celery_broker_url")
    @classmethod
    def _broker_for_celery(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("execution") == "celery" and not value:
            raise ValueError("is required with SCHEDULER_EXECUTION=celery (redis://host:6379/0)")
        return value

    @property
    def celery_results_url(self) -> str | None:
        return self.celery_result_backend or self.celery_broker_url

    @property
    def worker_kill_memory_bytes(self) -> int:
        limit = self.worker_kill_memory_mb or 2 * self.worker_max_memory_mb
        return max(limit, self.worker_max_memory_mb) * 1024 * 1024


def load_settings(**overrides: Any) -> ServiceSettings:
    """Settings from the environment, with `overrides` (command-line flags) taking precedence.

    Raises ConfigurationError listing every bad value with its variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return ServiceSettings(**given)
    except ValidationError as error:
        environ = {name.upper(): value for name, value in os.environ.items()}
        problems = []
        for detail in error.errors(include_url=False):
            name = ENV_PREFIX + "_".join(str(part) for part in detail["loc"]).upper()
            value = environ.get(name, detail["input"])  # as the operator wrote it
            problems.append(f"{name}={value!r}: {detail['msg']}")
        raise ConfigurationError(problems) from None


def unknown_service_variables(environ: Mapping[str, str]) -> list[str]:
    """Warnings for `SCHEDULER_*` variables that name no setting (typos)."""
    known = [ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields]
    return [
        f"environment variable {name} is not a scheduler setting{did_you_mean(name.upper(), known)}"
        for name in sorted(environ)
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    ]
