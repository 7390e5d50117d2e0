"""The vocabulary of runs, at the bottom of the import graph: how a run ended, why one was
skipped, what started it, and the record of one attempt as it is stored. It imports nothing
of the scheduler's but masking.py (every stored text is masked), so every layer (the worker
processes included) can use it."""

from __future__ import annotations

import random
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from .masking import mask_secrets

ERROR_SUMMARY_LIMIT = 2000
#: A stored traceback keeps its last this many characters (where the error was raised).
TRACEBACK_LIMIT = 8000
#: Ends the error of a `crashed` attempt whose body was not executing when its worker died:
#: another run's doing (it does not count toward quarantine).
NOT_EXECUTING_MARK = "(this run was not executing)"


class Outcome(StrEnum):
    RUNNING = "running"  # the row of a run still in progress (or of one whose process died)
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    #: Cut short by the scheduler: cancelled at shutdown, or left `running` by a scheduler
    #: process that died (closed at the next start).
    INTERRUPTED = "interrupted"
    #: The worker process executing the attempt died (an exit, a signal, a segfault, the OOM
    #: killer) or was killed by its supervisor (a memory limit, another run's hard timeout).
    CRASHED = "crashed"
    #: Cancelled by an operator (the API, `scheduler cancel`, the status page). Final: never
    #: retried, not a dead letter, and neutral for quarantine (it neither counts toward a crash
    #: streak nor resets one).
    CANCELLED = "cancelled"


#: Outcomes that end a run that actually started.
FINISHED = (
    Outcome.SUCCESS,
    Outcome.FAILURE,
    Outcome.TIMEOUT,
    Outcome.INTERRUPTED,
    Outcome.CRASHED,
    Outcome.CANCELLED,
)
#: The error text of an attempt an operator cancelled (more may follow: how it stopped).
CANCELLED_BY_OPERATOR = "cancelled by an operator"


class SkipReason(StrEnum):
    MAX_INSTANCES = "max_instances"
    MISFIRE = "misfire"
    DEPENDENCY = "dependency"
    REQUIREMENT = "requirement"
    NOT_LOADED = "not_loaded"
    PAUSED = "paused"
    QUARANTINED = "quarantined"
    #: The slot's first attempt is already in the history (a restart re-fired it).
    ALREADY_RUN = "already_run"
    #: Slots that passed while the scheduler could not run them (an outage, a lock, a pause):
    #: one row for all of them, its error saying how many.
    MISSED = "missed"


class StartRefusal(StrEnum):
    """Why the history refused an attempt's `running` row (the attempt then does not start)."""

    SLOT_TAKEN = "slot_taken"  # the slot's first attempt is already recorded
    NOT_LEADER = "not_leader"  # this instance's leadership term has ended
    LEASE_EXPIRED = "lease_expired"  # the leader could not renew its lease lately
    #: A delayed run's row in `scheduler_pending_runs` is gone (cancelled, or started already).
    NOT_PENDING = "not_pending"


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    RECOVERY = "recovery"


def utcnow() -> datetime:
    return datetime.now(UTC)


def summarize_error(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
    return clean_text(text)


def traceback_text(error: BaseException) -> str:
    """The traceback as Python prints it, without frame locals (a local may hold a secret),
    masked, its last TRACEBACK_LIMIT characters (the frames nearest the raise)."""
    text = "".join(traceback.format_exception(error))
    if len(text) > TRACEBACK_LIMIT:
        text = "…" + text[-(TRACEBACK_LIMIT - 1) :]
    return clean_text(text, TRACEBACK_LIMIT)


def clean_text(text: str, limit: int = ERROR_SUMMARY_LIMIT) -> str:
    """`text` as both databases store it, cut to `limit` characters: secrets masked
    (masking.py), NUL escaped (PostgreSQL's text cannot hold it) and lone surrogates escaped (a
    file name decoded with `surrogateescape` has them; PostgreSQL refuses them and SQLite
    stores invalid UTF-8)."""
    text = mask_secrets(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def new_run_id() -> str:
    """A UUIDv7 (RFC 9562) in hex: the Unix time in milliseconds, then 74 random bits.

    Time-ordered, so the run history's unique index on it grows at one end and a batch of
    writes touches a page or two of it, where random ids touch a page per row (measured:
    a third less database time per row at 150,000 rows). The random bits come from
    `random`, not `os.urandom` as in uuid4(): that call releases the GIL, and under load getting
    it back costs a thread switch interval per run.
    """
    bits = _random.getrandbits(74)
    return f"{time.time_ns() // 1_000_000:012x}7{bits >> 62:03x}{_VARIANT | bits & _LOW_62:016x}"


_VARIANT = 0b10 << 62
_LOW_62 = (1 << 62) - 1
_random = random.Random()


@dataclass
class RunRecord:
    """One attempt of one run, as it is stored."""

    run_id: str
    attempt: int
    job_type: str
    trigger: str
    started_at: datetime
    instance: str
    scheduled_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str = Outcome.RUNNING
    skip_reason: str | None = None
    error: str | None = None
    items_succeeded: int = 0
    items_failed: int = 0
    dead_letter: bool = False
    #: The run's params as compact JSON (None: none given), so that a re-run gets them too.
    params: str | None = None
    #: A failed attempt's traceback (masked, no frame locals; see `traceback_text`).
    traceback: str | None = None
    id: int | None = field(default=None, compare=False)

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class RunSummary:
    """How a run ended, after all its attempts."""

    run_id: str
    job_type: str
    outcome: Outcome
    attempts: int = 0
    skip_reason: SkipReason | None = None
    error: str | None = None
    items_succeeded: int = 0
    items_failed: int = 0
    #: Why it never started and nothing was recorded (a `StartRefusal`, or "stopping").
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class BodyResult:
    """How one call of a task's body ended, wherever it ran (inline, or in a worker process)."""

    outcome: Outcome
    error: str | None = None
    items_succeeded: int = 0
    items_failed: int = 0
    #: False when trying again cannot help (NonRetryableError).
    retryable: bool = True
    #: Set when the body did not run because a requirement is unavailable (outcome SKIPPED).
    skip_reason: SkipReason | None = None
    #: The attempt ended its worker process (it died, or was killed because of this attempt):
    #: what counts toward quarantine.
    killed_worker: bool = False
    #: Where the body raised (see `traceback_text`), for a failure that raised.
    traceback: str | None = None

    def as_data(self) -> dict[str, object]:
        return {
            "outcome": str(self.outcome),
            "error": self.error,
            "tb": self.traceback,
            "ok": self.items_succeeded,
            "failed": self.items_failed,
            "retryable": self.retryable,
            "skip": None if self.skip_reason is None else str(self.skip_reason),
        }

    @classmethod
    def from_data(cls, data: dict[str, object]) -> BodyResult:
        skip = data.get("skip")
        return cls(
            outcome=Outcome(str(data["outcome"])),
            error=None if data.get("error") is None else str(data["error"]),
            items_succeeded=int(data.get("ok", 0)),  # type: ignore[call-overload]
            items_failed=int(data.get("failed", 0)),  # type: ignore[call-overload]
            retryable=bool(data.get("retryable", True)),
            skip_reason=None if skip is None else SkipReason(str(skip)),
            traceback=None if data.get("tb") is None else str(data["tb"]),
        )


@dataclass(frozen=True)
class RunInProgress:
    """A run with an attempt executing, or waiting between attempts (for its retry's delay,
    or for a slot), for /api/runs/in-progress and the status page."""

    run_id: str
    job_type: str
    attempt: int
    started_at: datetime
    trigger: str
    #: `running` (an attempt executes), `retrying` (waiting to retry) or `cancelling`.
    state: str
    #: The worker process executing the attempt, when known (never inline).
    worker_pid: int | None = None


@dataclass(frozen=True)
class RunCancellation:
    """What an operator's cancel did: the run as it was, and its final outcome if it ended
    while the request waited (None: it is still stopping)."""

    run: RunInProgress
    outcome: str | None


@dataclass(frozen=True)
class WorkerStatus:
    """One worker, for /api/workers, the metrics and the status page."""

    index: int
    pid: int
    state: str
    runs: int
    rss_bytes: int
    blocked_job: str | None
    blocked_seconds: float
    blocked_where: str | None


@dataclass(frozen=True)
class CeleryWorkerStatus:
    """One `scheduler worker` as its last heartbeat in the broker described it."""

    name: str
    concurrency: int
    busy: int

    @property
    def saturation(self) -> float:
        return self.busy / self.concurrency if self.concurrency else 0.0


@dataclass(frozen=True)
class ClusterStatus:
    """The Celery side, for the metrics: messages waiting and the live workers."""

    queue_depth: int
    workers: tuple[CeleryWorkerStatus, ...]
    #: False while the broker does not answer the scheduler.
    broker_up: bool = True
