"""What the service shows of jobs and runs: one set of typed models for the JSON API, the
command line's `--json` and the status page, so the three cannot disagree on a name or a
state. Value types only (they build from records and options, nothing above them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .options import JobConfig
from .params import decode_params
from .records import RunRecord, RunSummary

#: scheduled: has a next run; paused: an operator paused it; quarantined: its runs keep
#: ending their worker; disabled: `enabled=False`; blocked: a disabled dependency, or its
#: latest run was skipped for a dependency or requirement; not_loaded: stored but its task
#: file does not import; unscheduled: not in the job store (yet, or seen from a standby).
JobStateName = Literal[
    "scheduled", "paused", "quarantined", "disabled", "blocked", "not_loaded", "unscheduled"
]
OutcomeName = Literal[
    "running", "success", "failure", "timeout", "skipped", "interrupted", "crashed", "cancelled"
]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobSettings(_View):
    """A job's effective options (decorator, then config file, then environment)."""

    enabled: bool
    interval_seconds: float | None
    cron: str | None
    timezone: str | None
    priority: Literal["LOW", "NORMAL", "HIGH", "CRITICAL"]
    max_retries: int
    retry_delay_seconds: float
    timeout_seconds: float
    max_concurrent: int
    batch_size: int
    preserve_order: bool
    idempotent: bool
    misfire_grace_seconds: int | None
    coalesce: bool | None

    @classmethod
    def of(cls, config: JobConfig) -> JobSettings:
        return cls.model_validate({**config.model_dump(), "priority": config.priority.name})


class Override(_View):
    """Where an option's effective value came from, when not from the decorator."""

    source: Literal["environment", "config file"]
    #: The variable's name, or `<file> [jobs.<job>] <key>`.
    where: str
    value: Any


class JobView(_View):
    job_type: str
    name: str
    description: str | None
    #: The task class (`module.Class`) and where it is defined; None when not loaded.
    task_class: str | None
    source: str | None
    state: JobStateName
    state_reason: str | None
    schedule: str | None
    config: JobSettings | None
    overrides: dict[str, Override]
    requirements: list[str]
    dependencies: list[str]
    #: The JSON schema of the job's params model (None: it takes any JSON object).
    params_schema: dict[str, Any] | None
    next_run_time: datetime | None
    #: Attempts executing now (0 where unknown: a standby, the command line).
    running: int
    last_outcome: OutcomeName | None
    last_finished_at: datetime | None
    last_error: str | None
    last_success_at: datetime | None


class RunView(_View):
    """One attempt of a run, as the history has it."""

    run_id: str
    job_type: str
    attempt: int
    trigger: str
    scheduled_at: datetime | None
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    outcome: OutcomeName
    skip_reason: str | None
    error: str | None
    items_succeeded: int
    items_failed: int
    dead_letter: bool
    instance: str
    params: dict[str, Any] | None
    #: Where a failed attempt raised: the traceback, masked and without frame locals.
    traceback: str | None

    @classmethod
    def of(cls, record: RunRecord) -> RunView:
        return cls(
            run_id=record.run_id,
            job_type=record.job_type,
            attempt=record.attempt,
            trigger=record.trigger,
            scheduled_at=record.scheduled_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            duration_seconds=record.duration_seconds,
            outcome=record.outcome,
            skip_reason=record.skip_reason,
            error=record.error,
            items_succeeded=record.items_succeeded,
            items_failed=record.items_failed,
            dead_letter=record.dead_letter,
            instance=record.instance,
            params=decode_params(record.params) if record.params else None,
            traceback=record.traceback,
        )


class RunOutcome(_View):
    """What happened to a run an operator started: `started` (it goes on) or how it ended,
    after how many attempts."""

    job_type: str
    run_id: str
    status: Literal["started"] | OutcomeName
    skip_reason: str | None = None
    error: str | None = None
    attempts: int = 0
    items_succeeded: int = 0
    items_failed: int = 0

    @classmethod
    def of(cls, summary: RunSummary) -> RunOutcome:
        return cls(
            job_type=summary.job_type,
            run_id=summary.run_id,
            status=summary.outcome,
            skip_reason=summary.skip_reason,
            error=summary.error,
            attempts=summary.attempts,
            items_succeeded=summary.items_succeeded,
            items_failed=summary.items_failed,
        )


class JobHistory(_View):
    """What the run history holds of one job, for its status page, newest first: its latest
    attempts, skips and dead letters; `error`: why the history could not be read just now
    (the lists are empty then)."""

    runs: list[RunView]
    skips: list[RunView] = []
    dead_letters: list[RunView] = []
    error: str | None = None


class HealthReport(_View):
    """`/healthz`: `unhealthy` (503) with the problems, else `ok` or `degraded` (200) with
    what is wrong that a restart would not fix (task files that fail to import)."""

    status: Literal["ok", "degraded", "unhealthy"]
    problems: list[str]
    warnings: list[str]


class TaskFileFailure(_View):
    path: str
    error: str


class CatalogView(_View):
    """`scheduler list --json`: the jobs as /api/jobs shows them, and what discovery found."""

    tasks_dir: str
    jobs: list[JobView]
    failures: list[TaskFileFailure]
    problems: list[str]
    warnings: list[str]


class CheckReport(_View):
    """`scheduler check --json`: whether the task files and configuration are valid."""

    ok: bool
    tasks_dir: str
    jobs: list[str]
    failures: list[TaskFileFailure]
    problems: list[str]
    warnings: list[str]
    #: Jobs held back by an unavailable requirement (a warning: it may become available).
    blocked: dict[str, list[str]]
