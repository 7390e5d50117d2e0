"""The always-on process: HTTP, the database, leadership, the heartbeat and a stop that always
ends. `SchedulerService.run()` is what `scheduler run` calls; while this instance leads, an
`ActiveRole` (active.py) holds the schedule and the runs.

Stopping: SIGTERM or SIGINT stops scheduling, lets runs finish for
`SCHEDULER_SHUTDOWN_GRACE_SECONDS`, then ends the rest (recorded `interrupted`); a second
signal skips the wait. Whatever the tasks do, the process exits within the grace plus 2 s: a
timer thread ends it if the loop itself is stuck (possible only in inline mode). SIGHUP is
logged and ignored (it would otherwise end the process without a drain).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import structlog
from sqlalchemy import text

from .active import ActiveRole
from .catalog import JobCatalog
from .database import create_database_engine, redact
from .history import HistoryWriter, RunHistory, migrate
from .http import HttpServer, create_app
from .leadership import leader_lock_for
from .metrics import SchedulerMetrics, ServiceStatus
from .operations import ServiceOperations
from .records import WorkerStatus, utcnow
from .settings import ServiceSettings
from .status import Health, service_status

log = structlog.get_logger(__name__)

T = TypeVar("T")

PRUNE_EVERY_SECONDS = 3600.0
LOOP_LAG_PROBE_SECONDS = 0.25
#: Beyond the shutdown grace: time to end the workers, write the last rows and release the lock.
STOP_MARGIN_SECONDS = 2.0
#: Signals this close to the first are the same request (`timeout` and process-group kills
#: deliver one signal twice), not a second one.
SAME_SIGNAL_SECONDS = 0.5


class SchedulerService:
    def __init__(self, settings: ServiceSettings, catalog: JobCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.health = Health()
        self.engine = create_database_engine(settings.database_url)
        self.lock = leader_lock_for(settings.database_url)
        self.metrics = SchedulerMetrics(self._status, self._workers)
        self.metrics.initialise(catalog.jobs)
        #: Set while this instance leads (None on a standby).
        self.role: ActiveRole | None = None
        self._stop = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._first_signal_at: float | None = None
        self._last_prune = 0.0

    def _status(self) -> ServiceStatus:
        role = self.role
        states = role.states if role else None
        quarantined = role.quarantine.quarantined if role else {}
        return service_status(self.health, self.catalog, states, self.next_runs(), quarantined)

    def _workers(self) -> list[WorkerStatus]:
        return self.role.backend.statuses() if self.role else []

    def next_runs(self) -> dict[str, datetime | None]:
        return self.role.next_runs() if self.role else {}

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `request_stop`), then stop gracefully."""
        loop = asyncio.get_running_loop()
        # Plain handlers, not the loop's: they run even while task code blocks the loop (inline
        # mode), so the stop deadline always starts; the loop is told thread-safely.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, functools.partial(self._signalled, loop))
        log.info(
            "scheduler starting",
            instance=self.instance,
            database=redact(self.settings.database_url),
            jobs=list(self.catalog.jobs),
            failed_task_files=[str(f.path) for f in self.catalog.failures],
            event_loop=type(loop).__module__.split(".")[0],  # uvloop or asyncio
            execution=self.settings.execution,
            workers=self.settings.workers if self.settings.execution == "process" else 0,
        )
        app = create_app(ServiceOperations(self))
        http = HttpServer(app, self.settings.http_host, self.settings.http_port)
        await http.start()
        log.info("http listening", host=self.settings.http_host, port=self.settings.http_port)
        probe = asyncio.create_task(self._probe_loop_lag(), name="loop-lag")
        writer: HistoryWriter | None = None
        try:
            if await self._until_database_ready():
                writer = HistoryWriter(self.engine)
                await self._supervise(writer)
        finally:
            await self._shutdown(writer)
            probe.cancel()
            await http.stop()

    def _signalled(self, loop: asyncio.AbstractEventLoop, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            loop.call_soon_threadsafe(self._on_sighup)
            return
        now = time.monotonic()
        if self._first_signal_at is None:
            self._first_signal_at = now
            _exit_after(self.settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS)
        elif now - self._first_signal_at > SAME_SIGNAL_SECONDS:
            _exit_after(STOP_MARGIN_SECONDS)
        else:
            return
        loop.call_soon_threadsafe(self._on_signal, signum, now == self._first_signal_at)

    def _on_signal(self, signum: int, first: bool) -> None:
        name = signal.Signals(signum).name
        if first:
            grace = self.settings.shutdown_grace_seconds
            log.info("stop requested", signal=name, grace_seconds=grace)
        else:
            log.warning("second stop signal: stopping now", signal=name)
            self._stop_now.set()
        self._stop.set()

    def _on_sighup(self) -> None:
        log.info("SIGHUP ignored: restart the service to pick up changed task files")

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` unless a stop is requested first; True if it was."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _until_database_ready(self) -> bool:
        """Migrate the database, retrying while it is unreachable. False if stopped first."""
        delay, reported = 0.5, False
        while True:
            try:
                await asyncio.to_thread(migrate, self.engine)
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

    async def _supervise(self, writer: HistoryWriter) -> None:
        """The heartbeat: keep or take leadership, watch the database, prune history."""
        standby_logged = False
        leading = False
        while not self._stop.is_set():
            if not leading:
                if await asyncio.to_thread(self.lock.try_acquire):
                    await self._lead(writer)
                    leading, standby_logged = True, False
                elif not standby_logged:
                    log.info("standby: another instance is active", lock=self.lock.description)
                    standby_logged = True
            elif not await asyncio.to_thread(self.lock.is_held):
                self._lose_leadership()
                leading = False
            await self._check_database()
            self._beat(writer)
            if leading and time.monotonic() - self._last_prune > PRUNE_EVERY_SECONDS:
                await self._prune_history()
            interval = self.settings.heartbeat_seconds
            if not leading:
                interval = self.settings.standby_poll_seconds
            await self._sleep(interval)

    def _beat(self, writer: HistoryWriter) -> None:
        health = self.health
        health.heartbeat_at = time.time()
        health.scheduler_alive = self._scheduler_thread_alive()
        health.job_store_ok = self.role.store.healthy if self.role is not None else True
        health.history_ok = writer.healthy
        workers = self._workers()
        if self.settings.execution == "inline" or any(w.state == "ready" for w in workers):
            health.no_worker_since = None
        elif health.no_worker_since is None:
            health.no_worker_since = health.heartbeat_at

    async def _probe_loop_lag(self) -> None:
        """How late the loop wakes a timer: a loop busy with blocking work shows here."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LOOP_LAG_PROBE_SECONDS)
            lag = loop.time() - started - LOOP_LAG_PROBE_SECONDS
            self.health.event_loop_lag_seconds = max(lag, 0.0)

    async def _lead(self, writer: HistoryWriter) -> None:
        """Become the active instance: recover, reconcile, then let the scheduler run."""
        self.health.leader = True
        if self.role is not None:  # leadership regained after an outage
            log.info("leadership regained; resuming")
            self.role.store.forget_loaded_jobs()  # another instance may have led meanwhile
            self.role.scheduler.resume()
            return
        log.info("active: this instance runs the jobs", instance=self.instance)
        self.role = await ActiveRole.take(
            self.settings, self.catalog, self.engine, writer, self.metrics, self.instance
        )

    def _lose_leadership(self) -> None:
        log.error("leadership lost (its database connection broke); pausing until regained")
        self.health.leader = False
        if self.role is not None:
            self.role.scheduler.pause()

    async def _check_database(self) -> None:
        ok = await _quietly(self._ping)
        if ok != self.health.database_ok:
            if ok:
                log.info("database reachable again")
            else:
                log.error("database unreachable", database=redact(self.settings.database_url))
        self.health.database_ok = bool(ok)

    def _ping(self) -> bool:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    def _scheduler_thread_alive(self) -> bool:
        thread = getattr(self.role.scheduler, "_thread", None) if self.role else None
        return bool(thread is not None and thread.is_alive())

    async def _prune_history(self) -> None:
        self._last_prune = time.monotonic()
        before = utcnow() - timedelta(days=self.settings.history_retention_days)
        deleted = await _quietly(lambda: RunHistory(self.engine).prune(before))
        if deleted:
            log.info("run history pruned", rows=deleted, before=before.isoformat())

    async def _shutdown(self, writer: HistoryWriter | None) -> None:
        role = self.role
        if role is not None:
            if role.scheduler.running:
                await asyncio.to_thread(role.scheduler.shutdown, wait=False)
            active = role.coordinator.active_runs
            grace = self.settings.shutdown_grace_seconds
            if active:
                log.info("waiting for running jobs", runs=active, grace_seconds=grace)
            drain = asyncio.create_task(role.coordinator.drain(grace))
            stop_now = asyncio.create_task(self._stop_now.wait())
            await asyncio.wait({drain, stop_now}, return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():  # a second signal: cut the wait short
                cancelled = await role.coordinator.drain(0)
            else:
                cancelled = drain.result()
            stop_now.cancel()
            if cancelled:
                log.warning("runs cancelled at shutdown; recorded as interrupted", runs=cancelled)
            await role.backend.stop(0)
        if writer is not None:
            await asyncio.to_thread(writer.close)
        await asyncio.to_thread(self.lock.release)
        self.engine.dispose()
        log.info("scheduler stopped")


def _exit_after(seconds: float) -> None:
    """End the process `seconds` from now if it has not ended by then (a stuck task in inline
    mode can hold the loop; nothing else can stop the process then)."""

    def deadline() -> None:
        time.sleep(seconds)
        log.error("shutdown overran its grace; exiting now", seconds=seconds)
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=deadline, name="stop-deadline", daemon=True).start()


async def _quietly(call: Callable[[], T]) -> T | None:
    """Run blocking `call` in a thread; None if it raised (the caller reports the state)."""
    try:
        return await asyncio.to_thread(call)
    except Exception:
        return None
