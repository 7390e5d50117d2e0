"""The always-on service: leadership, recovery, reconcile, the APScheduler thread, heartbeat and
a graceful stop. `SchedulerService.run()` is what `scheduler run` calls."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, text

from .catalog import JobCatalog
from .database import create_database_engine, redact
from .execution import RunCoordinator
from .executor import LoopExecutor
from .history import DurableStarts, HistoryWriter, RunHistory, migrate
from .http import HttpServer, create_app
from .job_state import JobStates
from .jobstore import GroupedSQLAlchemyJobStore
from .leadership import LeaderLock, leader_lock_for
from .metrics import SchedulerMetrics, ServiceStatus
from .operations import ServiceOperations
from .outcomes import SkipReason, Trigger
from .reconcile import desired_job, reconcile
from .settings import ServiceSettings
from .status import Health, service_status
from .workers import PriorityWorkerPool

log = structlog.get_logger(__name__)

T = TypeVar("T")

INTERRUPTED_BY_CRASH = "the scheduler process stopped during this run (killed or crashed)"
PRUNE_EVERY_SECONDS = 3600.0
LOOP_LAG_PROBE_SECONDS = 0.25
#: The cyclic collector's thresholds once the service runs (Python's default: 700, 10, 10).
#: Every run allocates a few dozen objects (its task, coroutines, record, futures), so at
#: thousands of runs a second the default collects the young generation hundreds of times a
#: second, walking every run in flight, and the whole heap several times a second: 16 % of
#: the GIL's time at 4,600 no-op jobs a second (py-spy --native). With these, lag p99 at 4,800
#: jobs a second went from 119-419 ms to 37-68 ms, two runs each (bench.dispatch's service run).
GC_THRESHOLDS = (10_000, 10, 10)


class SchedulerService:
    def __init__(self, settings: ServiceSettings, catalog: JobCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.health = Health()
        self._stop = asyncio.Event()
        self._engine: Engine | None = None
        self._history_writer: HistoryWriter | None = None
        self._lock: LeaderLock | None = None
        self._scheduler: Any = None
        self._coordinator: RunCoordinator | None = None
        self._store: GroupedSQLAlchemyJobStore | None = None
        self._states: JobStates | None = None
        self._not_loaded: dict[str, str] = {}
        self._last_prune = 0.0
        self.metrics = SchedulerMetrics(self._status)
        self.metrics.initialise(catalog.jobs)

    # Read by the HTTP API (operations.py) and the metrics.
    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def states(self) -> JobStates | None:
        return self._states

    @property
    def scheduler(self) -> Any:
        return self._scheduler

    @property
    def coordinator(self) -> RunCoordinator | None:
        return self._coordinator

    @property
    def not_loaded(self) -> dict[str, str]:
        """Stored jobs whose task file failed to import, with why."""
        return self._not_loaded

    def _status(self) -> ServiceStatus:
        return service_status(self.health, self.catalog, self._states, self.next_runs())

    def next_runs(self) -> dict[str, datetime | None]:
        return dict(self._store.next_run_times) if self._store is not None else {}

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `request_stop`), then stop gracefully."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        self._lock = leader_lock_for(self.settings.database_url)
        log.info(
            "scheduler starting",
            instance=self.instance,
            database=redact(self.settings.database_url),
            jobs=list(self.catalog.jobs),
            failed_task_files=[str(f.path) for f in self.catalog.failures],
            event_loop=type(loop).__module__.split(".")[0],  # uvloop or asyncio
        )
        app = create_app(ServiceOperations(self))
        http = HttpServer(app, self.settings.http_host, self.settings.http_port)
        await http.start()
        log.info("http listening", host=self.settings.http_host, port=self.settings.http_port)
        probe = asyncio.create_task(self._probe_loop_lag(), name="loop-lag")
        try:
            self._engine = create_database_engine(self.settings.database_url)
            if await self._until_database_ready():
                self._history_writer = HistoryWriter(self._engine)
                await self._supervise()
        finally:
            await self._shutdown()
            probe.cancel()
            await http.stop()

    def _on_signal(self, signum: int) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        self._stop.set()

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` unless a stop is requested first; True if it was."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _until_database_ready(self) -> bool:
        """Migrate the database, retrying while it is unreachable. False if stopped first."""
        assert self._engine is not None
        delay, reported = 0.5, False
        while True:
            try:
                await asyncio.to_thread(migrate, self._engine)
            except Exception as error:
                if not reported:
                    log.error("database unavailable; retrying", error=str(error))
                    reported = True
                if await self._sleep(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            self.health.database_ok = True
            return True

    async def _supervise(self) -> None:
        """The heartbeat: keep or take leadership, watch the database, prune history."""
        assert self._lock is not None
        standby_logged = False
        while not self._stop.is_set():
            if not self.health.leader:
                if await asyncio.to_thread(self._lock.try_acquire):
                    await self._lead()
                    standby_logged = False
                elif not standby_logged:
                    log.info("standby: another instance is active", lock=self._lock.description)
                    standby_logged = True
            elif not await asyncio.to_thread(self._lock.is_held):
                self._lose_leadership()
            await self._check_database()
            self._beat()
            if self.health.leader and time.monotonic() - self._last_prune > PRUNE_EVERY_SECONDS:
                await self._prune_history()
            interval = self.settings.heartbeat_seconds
            if not self.health.leader:
                interval = self.settings.standby_poll_seconds
            await self._sleep(interval)

    def _beat(self) -> None:
        health = self.health
        health.heartbeat_at = time.time()
        health.scheduler_alive = self._scheduler_thread_alive()
        health.job_store_ok = self._store.healthy if self._store is not None else True
        writer = self._history_writer
        health.history_ok = writer.healthy if writer is not None else True

    async def _probe_loop_lag(self) -> None:
        """How late the loop wakes a timer: a loop busy with blocking work shows here."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LOOP_LAG_PROBE_SECONDS)
            lag = loop.time() - started - LOOP_LAG_PROBE_SECONDS
            self.health.event_loop_lag_seconds = max(lag, 0.0)

    async def _lead(self) -> None:
        """Become the active instance: recover, reconcile, then let the scheduler run."""
        assert self._engine is not None and self._history_writer is not None
        self.health.leader = True
        if self._scheduler is not None:  # leadership regained after an outage
            log.info("leadership regained; resuming")
            if self._store is not None:  # another instance may have led meanwhile
                self._store.forget_loaded_jobs()
            self._scheduler.resume()
            return
        log.info("active: this instance runs the jobs", instance=self.instance)
        history = RunHistory(self._engine)
        summaries = await asyncio.to_thread(history.summaries)
        self._states = JobStates(summaries)
        self._coordinator = RunCoordinator(
            self.catalog.jobs,
            history=DurableStarts(self._history_writer, asyncio.get_running_loop()),
            states=self._states,
            workers=PriorityWorkerPool(self.settings.max_workers),
            instance=self.instance,
            not_loaded={f.path.name: f.error for f in self.catalog.failures},
            observer=self.metrics,
        )
        self._scheduler = self._build_scheduler(self._coordinator)
        await asyncio.to_thread(self._scheduler.start, paused=True)
        interrupted = await asyncio.to_thread(
            history.mark_interrupted, datetime.now(UTC), INTERRUPTED_BY_CRASH
        )
        await asyncio.to_thread(self._reconcile)
        self._coordinator.paused.update(j for j, t in self.next_runs().items() if t is None)
        # Everything built so far (the catalog, thousands of stored jobs, the libraries) lives
        # as long as the process: out of the cyclic collector's sight, a full collection no
        # longer walks it and stalls the loop for as long. And every run allocates a few dozen
        # objects: see GC_THRESHOLDS.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self._scheduler.resume()
        self._rerun_interrupted(interrupted)

    def _build_scheduler(self, coordinator: RunCoordinator) -> Any:
        assert self._engine is not None
        self._store = GroupedSQLAlchemyJobStore(self._engine)
        scheduler = BackgroundScheduler(
            jobstores={"default": self._store},
            executors={"default": LoopExecutor(asyncio.get_running_loop(), coordinator)},
            timezone=UTC,
            jobstore_retry_interval=1,
        )

        def on_max_instances(event: Any) -> None:
            for run_time in event.scheduled_run_times:
                coordinator.skip(
                    event.job_id,
                    SkipReason.MAX_INSTANCES,
                    "the job's previous runs are still going (max_concurrent reached)",
                    run_time,
                )

        scheduler.add_listener(on_max_instances, EVENT_JOB_MAX_INSTANCES)
        return scheduler

    def _reconcile(self) -> None:
        settings, catalog = self.settings, self.catalog
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
        failed_files = {f.path.name: f.error for f in catalog.failures}
        report = reconcile(
            self._scheduler,
            desired,
            disabled=disabled,
            failed_files=failed_files,
            tasks_dir=catalog.discovery.tasks_dir,
            first_run_spread_seconds=settings.first_run_spread_seconds,
        )
        self._not_loaded = {
            job_type: f"its task file {task_file} failed to import: {failed_files[task_file]}"
            for job_type, task_file in report.kept_not_loaded.items()
        }

    def _rerun_interrupted(self, interrupted: list[Any]) -> None:
        """Close out runs a dead process left behind; run the idempotent ones again."""
        assert self._coordinator is not None
        seen: set[str] = set()
        for record in interrupted:
            job = self.catalog.jobs.get(record.job_type)
            rerun = job is not None and job.config.idempotent and record.run_id not in seen
            log.warning(
                "run was interrupted by a stopped process",
                job_type=record.job_type,
                run_id=record.run_id,
                attempt=record.attempt,
                rerun=rerun,
            )
            if rerun:
                seen.add(record.run_id)
                self._coordinator.spawn(
                    record.job_type, scheduled_time=record.scheduled_at, trigger=Trigger.RECOVERY
                )

    def _lose_leadership(self) -> None:
        log.error("leadership lost (its database connection broke); pausing until regained")
        self.health.leader = False
        if self._scheduler is not None:
            self._scheduler.pause()

    async def _check_database(self) -> None:
        assert self._engine is not None
        ok = await _quietly(self._ping)
        if ok != self.health.database_ok:
            if ok:
                log.info("database reachable again")
            else:
                log.error("database unreachable", database=redact(self.settings.database_url))
        self.health.database_ok = bool(ok)

    def _ping(self) -> bool:
        assert self._engine is not None
        with self._engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    def _scheduler_thread_alive(self) -> bool:
        thread = getattr(self._scheduler, "_thread", None)
        return bool(thread is not None and thread.is_alive())

    async def _prune_history(self) -> None:
        assert self._engine is not None
        self._last_prune = time.monotonic()
        before = datetime.now(UTC) - timedelta(days=self.settings.history_retention_days)
        deleted = await _quietly(lambda: RunHistory(self._engine).prune(before))  # type: ignore[arg-type]
        if deleted:
            log.info("run history pruned", rows=deleted, before=before.isoformat())

    async def _shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            await asyncio.to_thread(self._scheduler.shutdown, wait=False)
        if self._coordinator is not None:
            active = self._coordinator.active_runs
            if active:
                log.info(
                    "waiting for running jobs",
                    runs=active,
                    grace_seconds=self.settings.shutdown_grace_seconds,
                )
            cancelled = await self._coordinator.drain(self.settings.shutdown_grace_seconds)
            if cancelled:
                log.warning("runs cancelled at shutdown; recorded as interrupted", runs=cancelled)
        if self._history_writer is not None:
            await asyncio.to_thread(self._history_writer.close)
        if self._lock is not None:
            await asyncio.to_thread(self._lock.release)
        if self._engine is not None:
            self._engine.dispose()
        log.info("scheduler stopped")


async def _quietly(call: Callable[[], T]) -> T | None:
    """Run blocking `call` in a thread; None if it raised (the caller reports the state)."""
    try:
        return await asyncio.to_thread(call)
    except Exception:
        return None
