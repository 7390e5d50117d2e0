"""One run of a job, end to end: gates, slot, attempts, retries, history and logs.

Everything here runs on the service's asyncio loop. APScheduler decides *when* a job is due;
this module decides whether and how the run happens, and hands each attempt's body to an
`ExecutionBackend` (a worker process, or this loop) to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog

from .backends import ExecutionBackend
from .base import JobContext
from .dependencies import disabled_dependencies, disabled_dependency_reason
from .job_config import ResolvedJob
from .job_state import JobStates
from .job_types import JobType
from .logs import bind_run, unbind_run
from .params import encode_params
from .quarantine import Quarantine
from .records import (
    CANCELLED_BY_OPERATOR,
    BodyResult,
    Outcome,
    RunInProgress,
    RunRecord,
    RunSummary,
    SkipReason,
    StartRefusal,
    Trigger,
    new_run_id,
    summarize_error,
    utcnow,
)
from .skip_summary import SkipCoalescer
from .slots import PrioritySlots

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_RETRY_DELAY_SECONDS = 3600.0
RETRY_JITTER = 0.25


class HistorySink(Protocol):
    async def started(self, record: RunRecord) -> StartRefusal | None:
        """Record the attempt as running; return once the record is safe (see DurableStarts),
        or why it was refused (the attempt must not start)."""

    def finished(self, record: RunRecord) -> None: ...
    def recorded(self, record: RunRecord) -> None: ...


class RunObserver(Protocol):
    """What the coordinator reports as runs happen (the metrics implement it)."""

    def skipped(self, job_type: str, reason: SkipReason) -> None: ...
    def attempt_started(
        self, job_type: str, lag_seconds: float | None, retry_waited_seconds: float | None
    ) -> None:
        """`lag_seconds`: a first attempt's start minus its scheduled time; a retry's is
        None, and `retry_waited_seconds` the time since the attempt before it ended."""

    def attempt_finished(self, record: RunRecord) -> None: ...
    def attempt_skipped(self, job_type: str, reason: SkipReason) -> None: ...
    def retrying(self, job_type: str) -> None: ...
    def run_finished(self, job_type: str, outcome: str, dead_letter: bool) -> None:
        """A run ended (its last attempt did), with this final outcome."""


class NoObserver:
    def skipped(self, job_type: str, reason: SkipReason) -> None:
        pass

    def attempt_started(
        self, job_type: str, lag_seconds: float | None, retry_waited_seconds: float | None
    ) -> None:
        pass

    def run_finished(self, job_type: str, outcome: str, dead_letter: bool) -> None:
        pass

    def attempt_finished(self, record: RunRecord) -> None:
        pass

    def attempt_skipped(self, job_type: str, reason: SkipReason) -> None:
        pass

    def retrying(self, job_type: str) -> None:
        pass


class NoHistory:
    """For one-off runs outside the service (`scheduler run-job`): records nothing."""

    async def started(self, record: RunRecord) -> StartRefusal | None:
        return None

    def finished(self, record: RunRecord) -> None:
        pass

    def recorded(self, record: RunRecord) -> None:
        pass


def always_open() -> StartRefusal | None:
    return None


class _NotStarted(Exception):
    """The attempt was refused and nothing is recorded: this instance's leadership term has
    ended (the slot is its successor's), or a delayed run could not start (it stays pending,
    or its row is left for recovery)."""

    def __init__(self, why: str, refusal: StartRefusal | str) -> None:
        super().__init__(why)
        self.why = why
        self.refusal = refusal


NOT_LEADER_TEXT = "not started: this instance's leadership term ended (another instance leads)"


@dataclass(eq=False)
class _LiveRun:
    """A run between its first attempt's start and its end: what `cancel` needs."""

    run_id: str
    job_type: str
    trigger: str
    attempt: int = 0
    started_at: datetime | None = None  # of the latest attempt; None until the first starts
    first_started_at: datetime | None = None  # of the first attempt run here
    previous_end: datetime | None = None  # when the attempt before the latest one ended
    executing: bool = False  # an attempt's body is with the backend now
    cancelled: bool = False  # an operator asked
    #: Done when cancelled: wakes a wait for a retry or for a slot.
    wake: asyncio.Future[None] | None = None
    #: Told the run's final outcome (see `wait_ended`).
    waiters: list[asyncio.Future[str]] = field(default_factory=list)


#: How many job types a summed-up skip line names (the rows name every one).
SUMMARY_EXAMPLES = 10


def retry_delay(base: float, retry: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `retry` (1, 2, ...): exponential from `base`, plus jitter."""
    delay = min(base * 2.0 ** (retry - 1), MAX_RETRY_DELAY_SECONDS)
    return delay + delay * RETRY_JITTER * rng()


class RunCoordinator:
    """Runs jobs of the catalog on the current event loop, one `run` per scheduled run."""

    def __init__(
        self,
        jobs: Mapping[str, ResolvedJob],
        *,
        history: HistorySink,
        states: JobStates,
        slots: PrioritySlots,
        backend: ExecutionBackend,
        instance: str,
        quarantine: Quarantine | None = None,
        not_loaded: Mapping[str, str] | None = None,
        check_dependencies: bool = True,
        observer: RunObserver | None = None,
        gate: Callable[[], StartRefusal | None] = always_open,
        skips: SkipCoalescer | None = None,
    ) -> None:
        self._history = history
        self._skips = skips or SkipCoalescer(0)  # none: every skip is recorded in full
        self._states = states
        self._slots = slots
        self._backend = backend
        self._quarantine = quarantine or Quarantine()
        self._instance = instance
        self._check_dependencies = check_dependencies
        self._observer = observer or NoObserver()
        self._order_locks: dict[str, asyncio.Lock] = {}
        self.set_jobs(jobs, not_loaded or {})
        self._gate = gate  # whether this instance may start runs now (its leadership term)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._closed = False
        #: Job types an operator paused: runs already handed over are skipped as `paused`.
        self.paused: set[str] = set()
        #: Attempts of idempotent jobs cut off by `drain`: the next start runs them again.
        self.cut_off: list[tuple[str, int]] = []
        #: Run ids of delayed runs started from `scheduler_pending_runs` and not yet ended.
        self._delayed: set[str] = set()
        #: Runs whose first attempt has started and that have not ended: run id -> its state.
        self._live: dict[str, _LiveRun] = {}

    def set_jobs(self, jobs: Mapping[str, ResolvedJob], not_loaded: Mapping[str, str]) -> None:
        """Run `jobs` from now on (a reload of the task files); `not_loaded` maps each task file
        that failed to import to why. Runs in progress keep the configuration they started with;
        an order-preserving job keeps its lock, so its queued runs stay in order."""
        self._jobs = jobs
        #: Jobs that wait on a disabled job: their dependency's old success must not let them run.
        self._waits_on_disabled = {
            job_type: disabled_dependency_reason(path)
            for job_type, path in disabled_dependencies(jobs).items()
        }
        self._not_loaded = dict(not_loaded)  # task file name -> why it failed to import
        self._order_locks = {
            job_type: self._order_locks.get(job_type) or asyncio.Lock()
            for job_type, job in jobs.items()
            if job.config.preserve_order
        }

    def close(self) -> None:
        """Start no more attempts (at a stop or a demotion); those in progress go on."""
        self._closed = True

    @property
    def active_runs(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

    def in_progress(self) -> list[RunInProgress]:
        """Runs an operator may cancel: an attempt executing, or waiting to retry."""
        runs = []
        for live in list(self._live.values()):
            if live.started_at is None:
                continue
            state = "cancelling" if live.cancelled else "running" if live.executing else "retrying"
            pid = self._backend.worker_pid(live.run_id) if live.executing else None
            runs.append(
                RunInProgress(
                    run_id=live.run_id,
                    job_type=live.job_type,
                    attempt=live.attempt,
                    started_at=live.started_at,
                    trigger=live.trigger,
                    state=state,
                    worker_pid=pid,
                )
            )
        return runs

    def oldest_runs(self) -> dict[str, datetime]:
        """Each job type with runs in progress: when the oldest one's first attempt started."""
        oldest: dict[str, datetime] = {}
        for live in list(self._live.values()):
            started, current = live.first_started_at, oldest.get(live.job_type)
            if started is not None and (current is None or started < current):
                oldest[live.job_type] = started
        return oldest

    def cancel(self, run_id: str) -> bool:
        """An operator cancels `run_id`: its attempt in progress is cancelled (the backend stops
        its body, or kills its worker past the kill grace) and recorded `cancelled`; a run
        waiting to retry ends `cancelled` without its next attempt. Never retried. False if
        the run is not in progress here."""
        live = self._live.get(run_id)
        if live is None or live.started_at is None:
            return False
        if not live.cancelled:
            live.cancelled = True
            log.warning(
                "run cancelled by an operator",
                job_type=live.job_type,
                run_id=run_id,
                attempt=live.attempt,
                executing=live.executing,
            )
        if live.executing:
            self._backend.cancel(run_id)
        elif live.wake is not None and not live.wake.done():
            live.wake.set_result(None)
        return True

    async def wait_ended(self, run_ids: Sequence[str], timeout: float) -> dict[str, str]:
        """The final outcome of each of `run_ids` that ends within `timeout` (a run no longer
        in progress is left out: it ended before)."""
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[str]] = {}
        for run_id in run_ids:
            live = self._live.get(run_id)
            if live is not None:
                future = futures[run_id] = loop.create_future()
                live.waiters.append(future)
        if futures:
            await asyncio.wait(futures.values(), timeout=timeout)
        return {run_id: f.result() for run_id, f in futures.items() if f.done()}

    def start_due(
        self,
        job_type: str,
        run_times: Sequence[datetime],
        misfire_grace_seconds: float | None,
        task_file: str | None = None,
    ) -> asyncio.Task[None]:
        """Start, as a task `drain` waits for, the scheduled times APScheduler handed over.

        An order-preserving job holds its order lock across all of them: a later submission
        must not slip in between the run times of an earlier one.
        """
        run = self._run_times(job_type, run_times, misfire_grace_seconds, task_file)
        lock = self._order_locks.get(job_type)
        task = asyncio.get_running_loop().create_task(run if lock is None else _holding(lock, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_times(
        self,
        job_type: str,
        run_times: Sequence[datetime],
        misfire_grace_seconds: float | None,
        task_file: str | None,
    ) -> None:
        for run_time in run_times:
            late = (utcnow() - run_time).total_seconds()
            if misfire_grace_seconds is not None and late > misfire_grace_seconds:
                why = f"started {late:.1f}s late, past the {misfire_grace_seconds:g}s grace"
                self.skip_overloaded(job_type, SkipReason.MISFIRE, why, run_time)
                continue
            if job_type in self.paused:  # paused after this run was handed over
                self.skip(job_type, SkipReason.PAUSED, "the job is paused", run_time)
                continue
            await self._run(job_type, run_time, Trigger.SCHEDULE, task_file)

    async def run(
        self,
        job_type: str,
        *,
        scheduled_time: datetime | None = None,
        trigger: Trigger = Trigger.SCHEDULE,
        task_file: str | None = None,
        run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> RunSummary:
        """One run of `job_type`, with every gate, its timeout and its retries."""
        async with self._tracked(), self._in_order(job_type):
            return await self._run(job_type, scheduled_time, trigger, task_file, run_id, params)

    async def run_now(
        self,
        job_type: str,
        wait_seconds: float = 5.0,
        params: Mapping[str, Any] | None = None,
    ) -> RunSummary | str:
        """An operator's "run now": the run's summary if it ended (or was skipped) within
        `wait_seconds`, else its run id (it goes on in the background)."""
        run_id = new_run_id()
        busy = self._at_max_concurrent(job_type, run_id, None)
        if busy is not None:
            return busy
        run = self.spawn(job_type, trigger=Trigger.MANUAL, run_id=run_id, params=params)
        await asyncio.wait({run}, timeout=wait_seconds)
        return run.result() if run.done() else run_id

    def start_delayed(
        self, job_type: str, run_id: str, run_at: datetime, params: Mapping[str, Any]
    ) -> asyncio.Task[RunSummary] | RunSummary:
        """Start a delayed run that fell due (its pending row is consumed by its first history
        row, see `HistoryWriter.claim_pending`): the running task, or the skip if the job is
        at `max_concurrent`. A start refused for want of leadership, or at a stop, records
        nothing: the run stays pending."""
        busy = self._at_max_concurrent(job_type, run_id, run_at)
        if busy is not None:
            return busy
        self._delayed.add(run_id)
        task = self.spawn(
            job_type, scheduled_time=run_at, trigger=Trigger.MANUAL, run_id=run_id, params=params
        )
        task.add_done_callback(lambda _: self._delayed.discard(run_id))
        return task

    def _at_max_concurrent(
        self, job_type: str, run_id: str, scheduled_time: datetime | None
    ) -> RunSummary | None:
        """The skip of a manual run that finds its job at `max_concurrent`, else None."""
        job = self._jobs.get(job_type)
        if job is None or self._states.get(job_type).running < job.config.max_concurrent:
            return None
        why = f"{job.config.max_concurrent} run(s) already in progress (max_concurrent)"
        return self.skip(
            job_type, SkipReason.MAX_INSTANCES, why, scheduled_time, run_id, Trigger.MANUAL
        )

    def _in_order(self, job_type: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """The job's order lock if it preserves order (asyncio.Lock is first-come, first-served)."""
        return self._order_locks.get(job_type) or contextlib.nullcontext()

    async def _run(
        self,
        job_type: str,
        scheduled_time: datetime | None,
        trigger: Trigger,
        task_file: str | None,
        run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> RunSummary:
        run_id = run_id or new_run_id()
        token = bind_run(job_type, run_id)  # the run's log lines carry it, the task's own too
        try:
            job = self._jobs.get(job_type)
            if job is None:
                why = self._not_loaded_reason(job_type, task_file)
                return self.skip(
                    job_type, SkipReason.NOT_LOADED, why, scheduled_time, run_id, trigger
                )
            return await self._gated(job, run_id, scheduled_time, trigger, params or {})
        finally:
            unbind_run(token)

    def spawn(
        self,
        job_type: str,
        *,
        scheduled_time: datetime | None = None,
        trigger: Trigger = Trigger.MANUAL,
        run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> asyncio.Task[RunSummary]:
        """Start a run in the background; `drain` waits for it like for any other."""
        run = self.run(
            job_type, scheduled_time=scheduled_time, trigger=trigger, run_id=run_id, params=params
        )
        task = asyncio.create_task(run, name=f"run:{job_type}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def missed(self, job_type: str, count: int, first: datetime, latest: datetime) -> None:
        """Record slots that passed unrun (an outage, a lock, a pause), as one row."""
        why = (
            f"{count} scheduled run(s) from {first.isoformat()} until {latest.isoformat()} did "
            "not happen: the scheduler could not run them then (stopped, paused, or its "
            "database unreachable or locked); only the one due at the latest time runs"
        )
        # At info: under overload every coalesced wakeup has some, and a warning line each
        # costs the loop as much as a run; the row and the metric say it all the same.
        self.skip(job_type, SkipReason.MISSED, why, first, quiet=True)

    def skip(
        self,
        job_type: str,
        reason: SkipReason,
        why: str,
        scheduled_time: datetime | None = None,
        run_id: str | None = None,
        trigger: Trigger = Trigger.SCHEDULE,
        *,
        quiet: bool = False,
    ) -> RunSummary:
        """Record a run that did not happen, and why (logged at info if `quiet`). Safe to call
        from any thread."""
        now = utcnow()
        record = RunRecord(
            run_id=run_id or new_run_id(),
            attempt=1,
            job_type=job_type,
            trigger=trigger,
            started_at=now,
            finished_at=now,
            scheduled_at=scheduled_time,
            instance=self._instance,
            outcome=Outcome.SKIPPED,
            skip_reason=reason,
            error=summarize_error(why),
        )
        self._history.recorded(record)
        self._states.skipped(job_type, reason, why, now)
        self._observer.skipped(job_type, reason)
        emit = log.info if quiet else log.warning
        emit("run skipped", job_type=job_type, run_id=record.run_id, reason=reason, why=why)
        return RunSummary(record.run_id, job_type, Outcome.SKIPPED, 0, reason, why)

    def skip_overloaded(
        self, job_type: str, reason: SkipReason, why: str, scheduled_time: datetime
    ) -> None:
        """A scheduled run skipped because the service is behind (`max_instances`,
        `misfire`): recorded like any skip if it is the job's first for `reason` in the
        summary window, else only counted (see skip_summary). Under overload this runs for
        most due jobs, so the counted path builds nothing. Safe to call from any thread."""
        if self._skips.admit(job_type, reason, scheduled_time):
            quiet = not self._skips.announce(reason)
            self.skip(job_type, reason, why, scheduled_time, quiet=quiet)
            return
        self._states.skipped(job_type, reason, why, utcnow())
        self._observer.skipped(job_type, reason)

    def flush_skips(self, *, everything: bool = False) -> None:
        """Write the skips the summary windows only counted, one row (and one line at info)
        per job and reason, for the windows that closed (`everything`: all of them, at a
        stop), and one warning line per reason that sums them up."""
        closed = self._skips.due(everything=everything)
        for skips in closed:
            span = f"from {_iso(skips.first)} until {_iso(skips.last)}"
            why = (
                f"{skips.count} more run(s) due {span} were skipped for the same reason "
                f"({skips.reason}); summarised in one row"
            )
            now = utcnow()
            record = RunRecord(
                run_id=new_run_id(),
                attempt=1,
                job_type=skips.job_type,
                trigger=Trigger.SCHEDULE,
                started_at=now,
                finished_at=now,
                scheduled_at=skips.first,
                instance=self._instance,
                outcome=Outcome.SKIPPED,
                skip_reason=skips.reason,
                error=why,
            )
            self._history.recorded(record)
            log.info(
                "runs skipped",
                job_type=skips.job_type,
                reason=skips.reason,
                count=skips.count,
                first_scheduled=_iso(skips.first),
                last_scheduled=_iso(skips.last),
            )
        for reason in sorted({skips.reason for skips in closed}):
            of_reason = [skips for skips in closed if skips.reason == reason]
            log.warning(
                "runs skipped, summed up",
                reason=reason,
                jobs=len(of_reason),
                count=sum(skips.count for skips in of_reason),
                job_types=sorted(skips.job_type for skips in of_reason)[:SUMMARY_EXAMPLES],
            )

    async def drain(self, grace_seconds: float) -> int:
        """Let running runs finish for up to `grace_seconds`, then cancel the rest (recorded as
        interrupted). Runs waiting to retry end at once: their last attempt is recorded, and
        a retry would outlive the process. Returns how many had to be cancelled."""
        self._stopping.set()
        self._closed = True
        pending = {task for task in self._tasks if not task.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        self.flush_skips(everything=True)
        return len(pending)

    @contextlib.asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        added = task is not None and task not in self._tasks
        if added and task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if added and task is not None:
                self._tasks.discard(task)

    def _not_loaded_reason(self, job_type: str, task_file: str | None) -> str:
        if task_file and task_file in self._not_loaded:
            return f"its task file {task_file} failed to import: {self._not_loaded[task_file]}"
        where = f"task file {task_file}" if task_file else "any task file"
        return f"job {job_type!r} is not declared by {where} any more"

    async def _gated(
        self,
        job: ResolvedJob,
        run_id: str,
        scheduled_time: datetime | None,
        trigger: Trigger,
        params: Mapping[str, Any],
    ) -> RunSummary:
        job_type = job.job_type
        quarantined = self._quarantine.reason(job_type)
        if quarantined is not None:
            return self.skip(
                job_type, SkipReason.QUARANTINED, quarantined, scheduled_time, run_id, trigger
            )
        if self._check_dependencies:
            blocker = self._waits_on_disabled.get(job_type) or self._states.dependency_blocker(
                job.metadata.dependencies
            )
            if blocker is not None:
                return self.skip(
                    job_type, SkipReason.DEPENDENCY, blocker, scheduled_time, run_id, trigger
                )
        self._states.started(job_type)
        outcome = Outcome.INTERRUPTED
        last_error: str | None = "cancelled: the scheduler was shutting down"
        try:
            summary = await self._attempts(job, run_id, scheduled_time, trigger, params)
            outcome, last_error = summary.outcome, summary.error
            return summary
        except _NotStarted as refused:
            outcome = Outcome.SKIPPED
            log.warning("run not started", why=refused.why)
            return RunSummary(
                run_id, job_type, Outcome.SKIPPED, 0, None, refused.why, refused=refused.refusal
            )
        finally:
            if outcome == Outcome.SKIPPED:
                self._states.not_started(job_type)
            else:
                self._states.finished(job_type, outcome, utcnow(), last_error)

    async def _attempts(
        self,
        job: ResolvedJob,
        run_id: str,
        scheduled_time: datetime | None,
        trigger: Trigger,
        params: Mapping[str, Any],
    ) -> RunSummary:
        live = _LiveRun(run_id, job.job_type, trigger)
        final_outcome: str = Outcome.INTERRUPTED
        try:
            summary = await self._attempts_of(job, live, scheduled_time, trigger, params)
            final_outcome = summary.outcome
            return summary
        finally:
            if self._live.get(run_id) is live:
                del self._live[run_id]
            for waiter in live.waiters:
                if not waiter.done():
                    waiter.set_result(str(final_outcome))

    async def _attempts_of(
        self,
        job: ResolvedJob,
        live: _LiveRun,
        scheduled_time: datetime | None,
        trigger: Trigger,
        params: Mapping[str, Any],
    ) -> RunSummary:
        config, run_id = job.config, live.run_id
        attempt = 0
        while True:
            attempt += 1
            context = JobContext(
                JobType(job.job_type), config, run_id, attempt, scheduled_time, params=params
            )
            outcome = await self._attempt(job, context, trigger, live)
            if outcome is None:  # cancelled while waiting for a slot for this attempt
                return self._cancelled_between(live, context, trigger)
            record, retryable, at_once = outcome
            if record.outcome == Outcome.SKIPPED:  # a requirement, checked where the body runs
                reason = SkipReason(str(record.skip_reason))
                return self._skipped_attempt(record, reason)
            final = record.outcome == Outcome.SUCCESS or not retryable or live.cancelled
            final = final or attempt > config.max_retries
            record.dead_letter = final and record.outcome not in (
                Outcome.SUCCESS,
                Outcome.CANCELLED,
            )
            self._history.finished(record)
            _log_end(record)
            live.previous_end = record.finished_at
            if final:
                self._observer.run_finished(job.job_type, record.outcome, record.dead_letter)
                return RunSummary(
                    run_id,
                    job.job_type,
                    Outcome(record.outcome),
                    attempt,
                    None,
                    record.error,
                    record.items_succeeded,
                    record.items_failed,
                )
            # A run whose worker died under another run's fault is re-run without a backoff.
            delay = 0.0 if at_once else retry_delay(config.retry_delay_seconds, attempt)
            self._observer.retrying(job.job_type)
            log.info("run will be retried", attempt=attempt, retry_in_seconds=round(delay, 3))
            if await self._stopped_within(delay, live):
                log.warning("retry dropped: the scheduler is stopping", attempt=attempt)
                self._observer.run_finished(job.job_type, record.outcome, False)
                return RunSummary(
                    run_id, job.job_type, Outcome(record.outcome), attempt, None, record.error
                )
            if live.cancelled:
                next_context = JobContext(
                    JobType(job.job_type), config, run_id, attempt + 1, scheduled_time
                )
                return self._cancelled_between(live, next_context, trigger)

    def _cancelled_between(
        self, live: _LiveRun, context: JobContext, trigger: Trigger
    ) -> RunSummary:
        """A run cancelled between two attempts: the attempt that did not start is its row."""
        now = utcnow()
        record = RunRecord(
            run_id=live.run_id,
            attempt=context.attempt,
            job_type=live.job_type,
            trigger=trigger,
            started_at=now,
            finished_at=now,
            scheduled_at=context.scheduled_time,
            instance=self._instance,
            outcome=Outcome.CANCELLED,
            error=f"{CANCELLED_BY_OPERATOR} while it waited to retry: attempt "
            f"{context.attempt} did not start",
        )
        self._history.recorded(record)
        _log_end(record)
        self._observer.run_finished(live.job_type, Outcome.CANCELLED, False)
        return RunSummary(
            live.run_id, live.job_type, Outcome.CANCELLED, context.attempt - 1, None, record.error
        )

    def _refusal(self) -> StartRefusal | str | None:
        """Why no attempt may start now, if none may."""
        if self._closed:
            return "stopping"
        return self._gate()

    def _refused(self, record: RunRecord, refusal: StartRefusal | str) -> RunRecord:
        """An attempt the history or the gate refused: the record of a skip, or `_NotStarted`
        (a leader whose term ended records nothing: the slot is its successor's; nor does a
        delayed run, which stays pending for the next term, or whose committed row is left for
        recovery)."""
        if refusal == StartRefusal.NOT_LEADER:
            raise _NotStarted(NOT_LEADER_TEXT, refusal)
        if record.run_id in self._delayed:
            raise _NotStarted(f"delayed run not started: {_refusal_text(refusal)}", refusal)
        record.finished_at = utcnow()
        record.outcome = Outcome.SKIPPED
        slot = refusal == StartRefusal.SLOT_TAKEN
        record.skip_reason = SkipReason.ALREADY_RUN if slot else SkipReason.MISSED
        record.error = _refusal_text(refusal)
        return record

    async def _stopped_within(self, seconds: float, live: _LiveRun) -> bool:
        """Sleep `seconds` (a retry's delay) unless the coordinator is drained first (True), or
        an operator cancels the run (False, with `live.cancelled`)."""
        if live.cancelled:
            return False
        loop = asyncio.get_running_loop()
        live.wake = wake = loop.create_future()
        stopping = loop.create_task(self._stopping.wait())
        try:
            await asyncio.wait(
                {stopping, wake}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
            live.wake = None
        return self._stopping.is_set() and not live.cancelled

    def _skipped_attempt(self, record: RunRecord, reason: SkipReason) -> RunSummary:
        """An attempt whose body did not start after all: its `running` row becomes the skip."""
        why = record.error or str(reason)
        self._history.finished(record)
        self._states.skipped(record.job_type, reason, why, record.started_at)
        self._observer.skipped(record.job_type, reason)
        log.warning("run skipped", reason=reason, why=why)
        return RunSummary(record.run_id, record.job_type, Outcome.SKIPPED, 0, reason, why)

    async def _attempt(
        self, job: ResolvedJob, context: JobContext, trigger: Trigger, live: _LiveRun
    ) -> tuple[RunRecord, bool, bool] | None:
        """One attempt: its record, whether a retry may follow, and whether at once (see
        `_attempt_in_slot`); None if an operator cancelled the run meanwhile.

        A first attempt's `running` row is committed before it waits for a slot: a slot bounds
        bodies executing, and held through the commit (a few ms, batched) it would cap the rate
        at max_workers per commit. A run that then waits for a slot has its row, so a process
        that dies meanwhile leaves it to recovery rather than losing it without a trace. A
        retry (rare, and cancellable while it waits) takes its slot first."""
        config = job.config
        token = bind_run(job.job_type, context.run_id, context.attempt)
        try:
            record = self._record(job, context, trigger)
            if live.started_at is None:  # a first attempt: not cancellable before it starts
                refusal = await self._durable_start(record)
                if refusal is not None:
                    return self._refused(record, refusal), False, False
                try:
                    await self._slots.acquire(config.priority)
                except asyncio.CancelledError:
                    self._interrupted(job, record)
                    raise
            elif not await self._acquire_unless_cancelled(config.priority, live):
                return None
            else:
                refusal = await self._durable_start(record)
                if refusal is not None:
                    self._slots.release()
                    return self._refused(record, refusal), False, False
            try:
                refusal = self._refusal()  # the wait for a slot may have outlived the term
                if refusal is not None:
                    return self._refused(record, refusal), False, False
                return await self._attempt_in_slot(job, context, trigger, live, record)
            finally:
                self._slots.release()
        finally:
            unbind_run(token)

    def _record(self, job: ResolvedJob, context: JobContext, trigger: Trigger) -> RunRecord:
        return RunRecord(
            run_id=context.run_id,
            attempt=context.attempt,
            job_type=job.job_type,
            trigger=trigger,
            started_at=utcnow(),
            scheduled_at=context.scheduled_time,
            instance=self._instance,
            params=encode_params(context.params) if context.params else None,
        )

    async def _durable_start(self, record: RunRecord) -> StartRefusal | str | None:
        """No work untraced: None once the attempt's `running` row is committed, else why it
        must not start."""
        refusal = self._refusal() or await self._history.started(record)
        return refusal or self._refusal()  # the wait for the row may have outlived the term

    def _interrupted(self, job: ResolvedJob, record: RunRecord) -> None:
        """The attempt was cut off by a stop (its row is committed): recorded `interrupted`,
        and an idempotent job's run is run again at the next start."""
        record.outcome = Outcome.INTERRUPTED
        record.error = "cancelled: the scheduler was shutting down"
        if job.config.idempotent and self._stopping.is_set():
            record.error += "; it runs again at the next start"
            self.cut_off.append((record.run_id, record.attempt))
        record.finished_at = utcnow()
        self._observer.attempt_finished(record)
        self._observer.run_finished(job.job_type, record.outcome, False)
        self._history.finished(record)
        _log_end(record)

    async def _acquire_unless_cancelled(self, priority: int, live: _LiveRun) -> bool:
        """A slot for a retry, unless the run is cancelled first (False: no slot taken)."""
        if live.cancelled:
            return False
        loop = asyncio.get_running_loop()
        live.wake = wake = loop.create_future()
        acquire = loop.create_task(self._slots.acquire(priority))
        taken = False
        try:
            await asyncio.wait({acquire, wake}, return_when=asyncio.FIRST_COMPLETED)
            taken = acquire.done() and not live.cancelled
        finally:
            live.wake = None
            if not taken:  # cancelled, or drained: a slot it got after all goes back
                acquire.cancel()
                acquire.add_done_callback(self._give_back)
        return taken

    def _give_back(self, acquire: asyncio.Task[None]) -> None:
        if not acquire.cancelled() and acquire.exception() is None:
            self._slots.release()

    async def _attempt_in_slot(
        self,
        job: ResolvedJob,
        context: JobContext,
        trigger: Trigger,
        live: _LiveRun,
        record: RunRecord,
    ) -> tuple[RunRecord, bool, bool]:
        record.started_at = utcnow()  # the body starts now: lag and duration count from here
        if context.attempt == 1:
            lag = _lag_seconds(record)
            log.info("run started", trigger=trigger, lag_seconds=lag)
            self._observer.attempt_started(job.job_type, lag, None)
        else:  # a retry: how late the slot is says nothing of the scheduler, its wait does
            waited = _seconds_since(live.previous_end, record.started_at)
            log.info("run started", trigger=trigger, retry_waited_seconds=waited)
            self._observer.attempt_started(job.job_type, None, waited)
        live.attempt, live.started_at = context.attempt, record.started_at
        live.first_started_at = live.first_started_at or record.started_at
        self._live[live.run_id] = live
        live.executing = True
        try:
            if live.cancelled:  # cancelled while its row was being written
                result = BodyResult(Outcome.CANCELLED, CANCELLED_BY_OPERATOR, retryable=False)
            else:
                result = await self._backend.execute(job, context)
        except asyncio.CancelledError:
            self._interrupted(job, record)
            raise
        finally:
            live.executing = False
        record.finished_at = utcnow()
        record.outcome, record.error = result.outcome, result.error
        record.traceback = result.traceback
        if result.outcome == Outcome.SKIPPED:
            record.skip_reason = result.skip_reason
            self._observer.attempt_skipped(job.job_type, SkipReason(str(result.skip_reason)))
            return record, False, False
        record.items_succeeded, record.items_failed = result.items_succeeded, result.items_failed
        self._observer.attempt_finished(record)
        if result.outcome != Outcome.CANCELLED:  # neutral: an operator's doing, not the job's
            self._quarantine.attempt_ended(job.job_type, result)
        bystander = result.outcome == Outcome.CRASHED and not result.killed_worker
        return record, _retryable(result, job.config.idempotent), bystander


def _refusal_text(refusal: StartRefusal | str) -> str:
    texts: dict[StartRefusal | str, str] = {
        StartRefusal.SLOT_TAKEN: "this scheduled slot's first attempt is already in the run "
        "history (the slot was handed over again, e.g. after a restart): it is not run twice",
        StartRefusal.LEASE_EXPIRED: "not started: the leadership lease could not be renewed "
        "(database unreachable or locked)",
        StartRefusal.NOT_PENDING: "not started: it is no longer pending (cancelled, or started "
        "already)",
    }
    return texts.get(refusal, "not started: the scheduler is stopping")


def _retryable(result: BodyResult, idempotent: bool) -> bool:
    if result.outcome == Outcome.SUCCESS or not result.retryable:
        return False
    # A timed-out or crashed attempt may have done part of its work.
    return idempotent or result.outcome not in (Outcome.TIMEOUT, Outcome.CRASHED)


async def _holding(lock: asyncio.Lock, coroutine: Awaitable[T]) -> T:
    async with lock:
        return await coroutine


def _seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 6)


def _lag_seconds(record: RunRecord) -> float | None:
    if record.scheduled_at is None:
        return None
    return round((record.started_at - record.scheduled_at).total_seconds(), 6)


def _log_end(record: RunRecord) -> None:
    emit = log.info if record.outcome == Outcome.SUCCESS else log.warning
    emit(
        "run finished",
        attempt=record.attempt,
        outcome=record.outcome,
        duration_seconds=record.duration_seconds,
        items_succeeded=record.items_succeeded,
        items_failed=record.items_failed,
        error=record.error,
        dead_letter=record.dead_letter,
    )


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else "?"
