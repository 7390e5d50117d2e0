"""The active role: what an instance holds while it leads, built whole when leadership is won.

`ActiveRole.take` closes out runs a dead process left `running`, seeds job states and crash
streaks from the run history, starts the execution backend (worker processes by default),
reconciles the job store with the catalog and lets APScheduler run. Nothing here is ever
half-built: a standby simply has no `ActiveRole`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from sqlalchemy import Engine

from .backends import ExecutionBackend, InlineBackend
from .catalog import JobCatalog
from .coordinator import RunCoordinator, RunObserver
from .handoff import LoopExecutor
from .history import INTERRUPTED_BY_CRASH, DurableStarts, HistoryWriter, RunHistory
from .job_state import JobStates
from .jobstore import GroupedSQLAlchemyJobStore
from .leadership import Leadership
from .params import decode_params
from .pending import DelayedRuns, PendingStore
from .quarantine import Quarantine
from .reconcile import desired_job, first_run_time, reconcile
from .records import Outcome, RunRecord, SkipReason, StartRefusal, Trigger, utcnow
from .schedules import stored_schedule
from .settings import ServiceSettings
from .skip_summary import SkipCoalescer
from .slots import PrioritySlots
from .wakeup import FencedScheduler
from .worker_pool import PoolObserver, PoolOptions, ProcessBackend

log = structlog.get_logger(__name__)

#: The cyclic collector's thresholds once the service runs (Python's default: 700, 10, 10).
#: Every run allocates a few dozen objects (its task, coroutines, record, futures), so at
#: thousands of runs a second the default collects the young generation hundreds of times a
#: second, walking every run in flight, and the whole heap several times a second: 16 % of
#: the GIL's time at 4,600 no-op jobs a second (py-spy --native). With these, lag p99 at 4,800
#: jobs a second went from 119-419 ms to 37-68 ms, two runs each (bench.dispatch's service run).
GC_THRESHOLDS = (10_000, 10, 10)


class Observer(RunObserver, PoolObserver, Protocol):
    """What the metrics implement: runs and workers."""

    def interrupted_found(self, job_type: str, rerun: bool) -> None: ...


class ActiveRole:
    def __init__(
        self,
        *,
        scheduler: Any,
        store: GroupedSQLAlchemyJobStore,
        coordinator: RunCoordinator,
        states: JobStates,
        backend: ExecutionBackend,
        quarantine: Quarantine,
        not_loaded: dict[str, str],
        history: RunHistory,
        delayed: DelayedRuns,
        not_loaded_intervals: dict[str, float | None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.store = store
        self.coordinator = coordinator
        self.states = states
        self.backend = backend
        self.quarantine = quarantine
        #: Stored jobs whose task file failed to import, with why.
        self.not_loaded = not_loaded
        #: Their stored intervals, where the stored trigger tells (for their metrics).
        self.not_loaded_intervals = not_loaded_intervals or {}
        self._history = history
        #: The timers of the delayed runs (`scheduler_pending_runs`).
        self.delayed = delayed

    @classmethod
    async def take(
        cls,
        settings: ServiceSettings,
        catalog: JobCatalog,
        engine: Engine,
        writer: HistoryWriter,
        observer: Observer,
        instance: str,
        leadership: Leadership,
    ) -> ActiveRole:
        """Build the role for a term just won: every win recovers what the last term left."""
        loop = asyncio.get_running_loop()
        history = RunHistory(engine)
        interrupted = await asyncio.to_thread(
            history.mark_interrupted, utcnow(), INTERRUPTED_BY_CRASH
        )
        summaries = await asyncio.to_thread(history.summaries)
        states = JobStates(summaries)
        quarantine, unquarantined = await _quarantine(settings, catalog, history, loop)
        backend = _backend(settings, catalog, observer)
        await backend.start()
        backend.orphaned([(r.run_id, r.attempt, r.job_type) for r in interrupted])
        coordinator = RunCoordinator(
            catalog.jobs,
            history=DurableStarts(writer, loop),
            states=states,
            slots=PrioritySlots(settings.max_workers),
            backend=backend,
            instance=instance,
            not_loaded=_failed_files(catalog),
            observer=observer,
            quarantine=quarantine,
            gate=functools.partial(_gate, leadership),
            skips=SkipCoalescer(settings.skip_summary_seconds),
        )
        store = GroupedSQLAlchemyJobStore(engine, leadership.fence)
        scheduler = _scheduler(store, coordinator, loop)
        await asyncio.to_thread(scheduler.start, paused=True)
        not_loaded, added = await asyncio.to_thread(_reconcile, scheduler, store, settings, catalog)
        intervals = await asyncio.to_thread(_stored_intervals, scheduler, not_loaded)
        for job_type in quarantine.quarantined:
            if job_type in store.next_run_times:
                await asyncio.to_thread(scheduler.pause_job, job_type)
        for job_type in unquarantined:  # its quarantine had paused it in the store
            if job_type in store.next_run_times:
                await asyncio.to_thread(scheduler.resume_job, job_type)

        def unschedule(job_type: str, _why: str) -> None:
            if job_type in store.next_run_times:
                loop.run_in_executor(None, scheduler.pause_job, job_type)

        quarantine.add_listener(unschedule)
        paused = (job for job, next_run in store.next_run_times.items() if next_run is None)
        coordinator.paused.update(paused)
        # Everything built so far (the catalog, thousands of stored jobs, the libraries) lives
        # as long as the process: out of the cyclic collector's sight, a full collection no
        # longer walks it and stalls the loop for as long. See GC_THRESHOLDS too.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        _rebase_first_runs(store, added, settings.first_run_spread_seconds)
        scheduler.resume()
        # Rows a previous term queued are committed (or refused) before the pending runs are
        # read: a delayed run whose start was on its way is not armed again.
        await asyncio.to_thread(writer.flush, 10.0)
        delayed = DelayedRuns(
            PendingStore(engine, leadership.fence),
            coordinator,
            writer,
            catalog.jobs,
            not_loaded.get,
        )
        role = cls(
            scheduler=scheduler,
            store=store,
            coordinator=coordinator,
            states=states,
            backend=backend,
            quarantine=quarantine,
            not_loaded=not_loaded,
            history=history,
            delayed=delayed,
            not_loaded_intervals=intervals,
        )
        rerun = role.rerun_interrupted(interrupted, catalog)
        for record in interrupted:  # those cut off at a shutdown were counted by that process
            if record.outcome == Outcome.RUNNING:
                observer.interrupted_found(record.job_type, record.run_id in rerun)
        await delayed.load()
        return role

    async def reload(self, settings: ServiceSettings, catalog: JobCatalog) -> None:
        """Run `catalog` from now on (the task files changed): new workers get the new code
        first, then the coordinator the new jobs, then the store is reconciled; what did not
        change keeps its next run time. A job whose file changed leaves its quarantine."""
        self.backend.reload(_worker_files(catalog), catalog.jobs)
        self.coordinator.set_jobs(catalog.jobs, _failed_files(catalog))
        self.not_loaded, _ = await asyncio.to_thread(
            _reconcile, self.scheduler, self.store, settings, catalog
        )
        self.not_loaded_intervals = await asyncio.to_thread(
            _stored_intervals, self.scheduler, self.not_loaded
        )
        if self.quarantine.quarantined:
            stored = await asyncio.to_thread(self._history.quarantines)
            for job_type in list(self.quarantine.quarantined):
                digest = stored.get(job_type, (None, "", None))[1]
                if job_type in catalog.jobs and digest != task_file_digest(catalog, job_type):
                    await self._lift_quarantine(job_type)

    async def _lift_quarantine(self, job_type: str) -> None:
        log.info("quarantine lifted: the task file changed", job_type=job_type)
        self.quarantine.lift(job_type)
        await asyncio.to_thread(self._history.lift_quarantine, job_type, utcnow())
        if job_type in self.store.next_run_times:
            await asyncio.to_thread(self.scheduler.resume_job, job_type)
            self.coordinator.paused.discard(job_type)

    def rerun_interrupted(self, interrupted: list[RunRecord], catalog: JobCatalog) -> set[str]:
        """Close out runs a dead process left behind, and those cut off at a shutdown; run the
        idempotent ones again. Returns the run ids run again."""
        seen: set[str] = set()
        for record in interrupted:
            job = catalog.jobs.get(record.job_type)
            rerun = job is not None and job.config.idempotent and record.run_id not in seen
            rerun = rerun and self.quarantine.reason(record.job_type) is None
            log.warning(
                "run was interrupted by a stopped process"
                if record.outcome == Outcome.RUNNING
                else "run was cut off at the last shutdown",
                job_type=record.job_type,
                run_id=record.run_id,
                attempt=record.attempt,
                rerun=rerun,
            )
            if rerun:
                seen.add(record.run_id)
                self.coordinator.spawn(
                    record.job_type,
                    scheduled_time=record.scheduled_at,
                    trigger=Trigger.RECOVERY,
                    params=decode_params(record.params),
                )
        return seen

    def next_runs(self) -> dict[str, datetime | None]:
        return dict(self.store.next_run_times)


def _backend(
    settings: ServiceSettings, catalog: JobCatalog, observer: Observer
) -> ExecutionBackend:
    if settings.execution == "inline":
        return InlineBackend(settings.kill_grace_seconds)
    if settings.execution == "celery":  # imported here: celery is an optional extra
        from .celery_app import CeleryOptions
        from .celery_backend import CeleryBackend

        return CeleryBackend(CeleryOptions.from_settings(settings), catalog.jobs)
    options = PoolOptions(
        workers=settings.workers,
        tasks_dir=catalog.discovery.tasks_dir,
        task_files=_worker_files(catalog),
        kill_grace_seconds=settings.kill_grace_seconds,
        max_memory_bytes=settings.worker_max_memory_mb * 1024 * 1024,
        kill_memory_bytes=settings.worker_kill_memory_bytes,
        watchdog_seconds=settings.watchdog_seconds,
        log_level=settings.log_level,
        log_format=settings.log_format,
        event_loop=settings.event_loop,
    )
    return ProcessBackend(options, catalog.jobs, observer)


def _worker_files(catalog: JobCatalog) -> tuple[str, ...]:
    """The task files a worker imports: those that declared jobs and imported cleanly."""
    failed = set(_failed_files(catalog))
    return tuple(sorted({p.name for p in catalog.discovery.job_files.values()} - failed))


def _failed_files(catalog: JobCatalog) -> dict[str, str]:
    return {failure.path.name: failure.error for failure in catalog.failures}


def task_file_digest(catalog: JobCatalog, job_type: str) -> str:
    path = catalog.source_file(job_type)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else ""
    except OSError:
        return ""


async def _quarantine(
    settings: ServiceSettings,
    catalog: JobCatalog,
    history: RunHistory,
    loop: asyncio.AbstractEventLoop,
) -> tuple[Quarantine, list[str]]:
    """Quarantines as stored, streaks from the history; and the job types whose quarantine
    was lifted now because their task file changed."""
    stored = await asyncio.to_thread(history.quarantines)
    quarantined: dict[str, str] = {}
    lifted: dict[str, datetime] = {}
    changed: list[str] = []
    now = utcnow()
    for job_type, (reason, digest, lifted_at) in stored.items():
        if reason is not None and digest != task_file_digest(catalog, job_type):
            log.info("quarantine lifted: the task file changed", job_type=job_type)
            await asyncio.to_thread(history.lift_quarantine, job_type, now)
            lifted[job_type] = now
            changed.append(job_type)
        elif reason is not None:
            quarantined[job_type] = reason
        elif lifted_at is not None:
            lifted[job_type] = lifted_at
    # In process mode no task can end the scheduler: a run it cut off is an operator's kill.
    inline = settings.execution == "inline"
    streaks = await asyncio.to_thread(
        functools.partial(history.crash_streaks, lifted, scheduler_deaths=inline)
    )

    def persist(job_type: str, why: str) -> None:
        digest = task_file_digest(catalog, job_type)
        loop.run_in_executor(None, history.set_quarantine, job_type, why, digest, utcnow())

    quarantine = Quarantine(settings.quarantine_after, streaks=streaks, quarantined=quarantined)
    quarantine.add_listener(persist)
    for job_type, streak in streaks.items():  # e.g. runs cut off by a scheduler killed thrice
        if streak >= quarantine.after and job_type not in quarantined:
            why = f"its last {streak} attempts ended the process running them"
            if not inline:
                why = f"its last {streak} attempts ended their worker process"
            quarantine.quarantined_now(job_type, why)
    return quarantine, changed


def _gate(leadership: Leadership) -> StartRefusal | None:
    """Whether a run may start: the term is current and its lease recently renewed."""
    if leadership.fence.epoch is None:
        return StartRefusal.NOT_LEADER
    return None if leadership.lease_valid() else StartRefusal.LEASE_EXPIRED


def _scheduler(
    store: GroupedSQLAlchemyJobStore, coordinator: RunCoordinator, loop: asyncio.AbstractEventLoop
) -> Any:
    scheduler = FencedScheduler(
        jobstores={"default": store},
        executors={"default": LoopExecutor(loop, coordinator)},
        timezone=UTC,
        jobstore_retry_interval=1,
    )

    def on_max_instances(event: Any) -> None:
        for run_time in event.scheduled_run_times:
            coordinator.skip_overloaded(
                event.job_id,
                SkipReason.MAX_INSTANCES,
                "the job's previous runs are still going (max_concurrent reached)",
                run_time,
            )

    scheduler.add_listener(on_max_instances, EVENT_JOB_MAX_INSTANCES)
    return scheduler


def _stored_intervals(scheduler: Any, job_types: Iterable[str]) -> dict[str, float | None]:
    """The interval each stored job follows, by its trigger (None: a trigger we never build)."""
    intervals: dict[str, float | None] = {}
    for job_type in job_types:
        job = scheduler.get_job(job_type)
        schedule = stored_schedule(job.trigger) if job is not None else None
        intervals[job_type] = schedule.period_seconds if schedule is not None else None
    return intervals


def _reconcile(
    scheduler: Any, store: GroupedSQLAlchemyJobStore, settings: ServiceSettings, catalog: JobCatalog
) -> tuple[dict[str, str], list[str]]:
    """Reconcile the job store with the catalog; the stored jobs kept though not loaded, and
    the jobs added."""
    desired, disabled = {}, []
    for job_type, job in catalog.jobs.items():
        if not job.config.enabled:
            disabled.append(job_type)
            continue
        source = catalog.source_file(job_type)
        desired[job_type] = desired_job(
            job,
            source.name if source else "",
            coalesce=settings.coalesce,
            misfire_grace_seconds=settings.misfire_grace_seconds,
        )
    failed_files = _failed_files(catalog)
    with store.adding_in_bulk():
        report = reconcile(
            scheduler,
            desired,
            disabled=disabled,
            failed_files=failed_files,
            tasks_dir=catalog.discovery.tasks_dir,
            first_run_spread_seconds=settings.first_run_spread_seconds,
        )
    not_loaded = {
        job_type: f"its task file {task_file} failed to import: {failed_files[task_file]}"
        for job_type, task_file in report.kept_not_loaded.items()
    }
    return not_loaded, report.added


def _rebase_first_runs(
    store: GroupedSQLAlchemyJobStore, added: Iterable[str], spread_seconds: float
) -> None:
    """Place the first runs of the jobs just added after now, as reconcile placed them after
    its own start: the term's start-up (thousands of jobs to add, workers to start) would
    otherwise make each first run late, counted as a missed run, and hand them all over in
    one wakeup."""
    now = datetime.now(UTC)
    for job_type in added:
        job = store.lookup_job(job_type)
        if job is None or job.next_run_time is None or job.next_run_time >= now:
            continue
        interval = getattr(job.trigger, "interval_length", None)
        if interval is None:  # a cron job's first run is when its expression matches
            continue
        job.next_run_time = first_run_time(job_type, interval, now, spread_seconds)
        store.move_job(job)
