"""The options of a job, their defaults and their validation: one pydantic model, `JobConfig`.

The same model validates the decorator's values (strictly: Python code should pass real types)
and the merged configuration from files and the environment (leniently: those are text).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from . import cron
from .schedules import CronSchedule, IntervalSchedule, Schedule

#: The shortest interval a job may have: shorter ones only burn a core on scheduling.
MIN_INTERVAL_SECONDS: Final = 0.1
DEFAULT_INTERVAL_SECONDS: Final = 60.0


class JobPriority(IntEnum):
    """Which waiting run gets the next free worker: CRITICAL first, LOW last."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


def _priority_from_text(value: object) -> object:
    """Accept a priority's name in any case ("high") or its number as text ("3")."""
    if isinstance(value, str):
        text = value.strip()
        if text.upper() in JobPriority.__members__:
            return JobPriority[text.upper()]
        if text.isdigit():
            return int(text)
    return value


Priority = Annotated[JobPriority, BeforeValidator(_priority_from_text)]

#: Options an operator may override per job, by environment variable or config file.
OVERRIDABLE_OPTIONS: Final = (
    "enabled",
    "interval_seconds",
    "cron",
    "timezone",
    "priority",
    "max_retries",
    "retry_delay_seconds",
    "timeout_seconds",
    "max_concurrent",
    "batch_size",
    "preserve_order",
    "idempotent",
    "misfire_grace_seconds",
    "coalesce",
)
#: The options that say when a job runs: a layer that sets one of them replaces the other's.
SCHEDULE_OPTIONS: Final = ("interval_seconds", "cron")


class JobConfig(BaseModel):
    """The effective options of one job. Defaults here are the decorator's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    #: Exactly one of `interval_seconds` and `cron`; with neither, every 60 s.
    interval_seconds: Annotated[float, Field(ge=MIN_INTERVAL_SECONDS)] | None = None
    cron: str | None = None
    #: The IANA time zone a cron schedule is read in; None is UTC.
    timezone: str | None = None
    priority: Priority = JobPriority.NORMAL
    max_retries: NonNegativeInt = 3
    retry_delay_seconds: NonNegativeFloat = 30.0
    timeout_seconds: PositiveFloat = 300.0
    max_concurrent: PositiveInt = 1
    batch_size: PositiveInt = 10
    preserve_order: bool = False
    idempotent: bool = True
    #: How late a run may start and still run (None: `SCHEDULER_MISFIRE_GRACE_SECONDS`).
    misfire_grace_seconds: PositiveInt | None = None
    #: Whether several missed runs collapse into one (None: `SCHEDULER_COALESCE`).
    coalesce: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _every_minute_unless_told(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("interval_seconds") is None:
            if values.get("cron") is None:
                return {**values, "interval_seconds": DEFAULT_INTERVAL_SECONDS}
        return values

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return None if value is None else cron.normalize(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            cron.zone(value)
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> JobConfig:
        if self.cron is not None and self.interval_seconds is not None:
            raise ValueError(
                f"set either interval_seconds ({self.interval_seconds:g}) or cron "
                f"({self.cron!r}), not both"
            )
        if self.timezone is not None and self.cron is None:
            raise ValueError(
                f"timezone={self.timezone!r} applies to cron schedules only; this job runs every "
                f"{self.interval_seconds:g}s"
            )
        return self

    @property
    def schedule(self) -> Schedule:
        """When the job runs; `str()` of it says so in words (`every 120s`)."""
        if self.cron is not None:
            return CronSchedule(self.cron, self.timezone or "UTC")
        return IntervalSchedule(self.interval_seconds or DEFAULT_INTERVAL_SECONDS)

    @model_validator(mode="after")
    def _order_preserving_jobs_run_one_at_a_time(self) -> JobConfig:
        if self.preserve_order and self.max_concurrent > 1:
            raise ValueError(
                "preserve_order=True needs max_concurrent=1 (runs of an order-preserving job "
                f"never overlap), got max_concurrent={self.max_concurrent}"
            )
        return self


#: Every option name `@job` accepts besides the job type and `requires_<name>`.
DECORATOR_OPTIONS: Final = (
    "name",
    "description",
    "dependencies",
    "params",
    *JobConfig.model_fields,
)
