"""When a job runs: every N seconds, or when a cron expression matches in a time zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger

from .cron import CrontabTrigger, longest_gap


@dataclass(frozen=True, slots=True)
class IntervalSchedule:
    seconds: float

    @property
    def period_seconds(self) -> float:
        return self.seconds

    def trigger(self) -> IntervalTrigger:
        return IntervalTrigger(seconds=self.seconds, timezone=UTC)

    def __str__(self) -> str:
        return f"every {self.seconds:g}s"


@dataclass(frozen=True, slots=True)
class CronSchedule:
    expression: str
    timezone: str = "UTC"

    @property
    def period_seconds(self) -> float:
        """The longest time between two runs: how long the job may be silent and still be on
        schedule."""
        return longest_gap(self.expression, self.timezone)

    def trigger(self) -> CrontabTrigger:
        return CrontabTrigger(self.expression, self.timezone)

    def __str__(self) -> str:
        return f"cron {self.expression} ({self.timezone})"


Schedule = IntervalSchedule | CronSchedule


def stored_schedule(trigger: Any) -> Schedule | None:
    """The schedule a stored job's trigger follows; None for a trigger this service never
    builds."""
    if isinstance(trigger, CrontabTrigger):
        return CronSchedule(trigger.expression, trigger.zone_name)
    if isinstance(trigger, IntervalTrigger):
        return IntervalSchedule(trigger.interval_length)
    return None
