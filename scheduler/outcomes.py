"""The vocabulary of runs: how a run ended, why a run was skipped, what started it."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    RUNNING = "running"  # the row of a run still in progress (or of one whose process died)
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"


#: Outcomes that end a run that actually started.
FINISHED = (Outcome.SUCCESS, Outcome.FAILURE, Outcome.TIMEOUT, Outcome.INTERRUPTED)


class SkipReason(StrEnum):
    MAX_INSTANCES = "max_instances"
    MISFIRE = "misfire"
    DEPENDENCY = "dependency"
    REQUIREMENT = "requirement"
    NOT_LOADED = "not_loaded"
    PAUSED = "paused"


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    RECOVERY = "recovery"
