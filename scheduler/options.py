"""The options of a job, their defaults and their validation: one pydantic model, `JobConfig`.

The same model validates the decorator's values (strictly: Python code should pass real types)
and the merged configuration from files and the environment (leniently: those are text).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Final

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)


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
    "priority",
    "max_retries",
    "retry_delay_seconds",
    "timeout_seconds",
    "max_concurrent",
    "batch_size",
)


class JobConfig(BaseModel):
    """The effective options of one job. Defaults here are the decorator's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    interval_seconds: PositiveFloat = 60.0
    priority: Priority = JobPriority.NORMAL
    max_retries: NonNegativeInt = 3
    retry_delay_seconds: NonNegativeFloat = 30.0
    timeout_seconds: PositiveFloat = 300.0
    max_concurrent: PositiveInt = 1
    batch_size: PositiveInt = 10
    preserve_order: bool = False
    idempotent: bool = True

    @model_validator(mode="after")
    def _order_preserving_jobs_run_one_at_a_time(self) -> JobConfig:
        if self.preserve_order and self.max_concurrent > 1:
            raise ValueError(
                "preserve_order=True needs max_concurrent=1 (runs of an order-preserving job "
                f"never overlap), got max_concurrent={self.max_concurrent}"
            )
        return self


#: Every option name `@job` accepts besides the job type and `requires_<name>`.
DECORATOR_OPTIONS: Final = ("name", "description", "dependencies", *JobConfig.model_fields)
