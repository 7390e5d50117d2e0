"""The always-on process: HTTP, the database, leadership, the heartbeat and a stop that always
ends. `SchedulerService.run()` is what `scheduler run` calls; while this instance leads, an
`ActiveRole` (active.py) holds the schedule and the runs.

Leadership is a fenced term (leadership.py). Each win builds a fresh `ActiveRole`, so every win
recovers what the last term left; a leader whose term ends (a refused write, a renewal that finds
another epoch) is demoted at once: it starts no run, lets its runs in progress finish and goes
back to standby. A leader that cannot renew its lease pauses its schedule until it can.

Stopping: SIGTERM or SIGINT stops scheduling, lets runs finish for
`SCHEDULER_SHUTDOWN_GRACE_SECONDS`, then ends the rest (recorded `interrupted`; idempotent
ones run again at the next start); a second signal skips the wait. Whatever the tasks do, the
process exits within the grace plus 2 s: a timer thread ends it if the loop itself is stuck
(possible only in inline mode). SIGHUP reloads the task files (reload.py), as a change seen by
the watcher does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import TypeVar

import structlog
from sqlalchemy import Engine, text

from .active import ActiveRole
from .catalog import JobCatalog, reload_catalog, requirement_warning
from .database import create_database_engine, is_sqlite, normalize_url, redact
from .errors import SchedulerError
from .history import HistoryWriter, RunHistory, migrate
from .http import HttpServer, create_app
from .leadership import Leadership, leader_lock_for
from .limits import raise_open_file_limit
from .metrics import SchedulerMetrics, ServiceStatus
from .operations import ServiceOperations
from .records import ClusterStatus, WorkerStatus, utcnow
from .reload import TaskFolderWatcher
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
        self.engine = _main_engine(settings)
        self.leadership = Leadership(
            leader_lock_for(settings.database_url),
            _lease_engine(settings),
            self.instance,
            settings.lease_seconds,
        )
        self.metrics = SchedulerMetrics(
            self._status, self._workers, lambda: self.health.leader, self._cluster
        )
        self.metrics.initialise(catalog.jobs)
        #: Set while this instance leads (None on a standby).
        self.role: ActiveRole | None = None
        self._stop = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._wake = asyncio.Event()  # the heartbeat's early wakeup: a term just ended
        self._lease_paused = False
        self._first_signal_at: float | None = None
        self._last_prune = 0.0
        #: Held while the catalog changes hands: a reload and a leadership win never interleave.
        self._catalog_lock = asyncio.Lock()
        self._chores: set[asyncio.Future[None]] = set()  # held: the loop keeps only weak refs

    def _status(self) -> ServiceStatus:
        role = self.role
        states = role.states if role else None
        quarantined = role.quarantine.quarantined if role else {}
        return service_status(
            self.health, self.catalog, states, self.next_runs(), quarantined,
            not_loaded=role.not_loaded_intervals if role else None,
            oldest_runs=role.coordinator.oldest_runs() if role else None,
        )  # fmt: skip

    def _workers(self) -> list[WorkerStatus]:
        return self.role.backend.statuses() if self.role else []

    def _cluster(self) -> ClusterStatus | None:
        return self.role.backend.cluster() if self.role else None

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
            open_files_limit=raise_open_file_limit(),
        )
        app = create_app(ServiceOperations(self))
        http = HttpServer(app, self.settings.http_host, self.settings.http_port)
        await http.start()
        log.info("http listening", host=self.settings.http_host, port=self.settings.http_port)
        probe = asyncio.create_task(self._probe_loop_lag(), name="loop-lag")
        requirements = asyncio.create_task(self._warn_of_blocked_jobs(), name="requirements")
        watcher = TaskFolderWatcher(self.settings.tasks_dir, self.settings.config_file, self.reload)
        watching = (
            asyncio.create_task(watcher.run(), name="reload") if self.settings.reload else None
        )
        writer: HistoryWriter | None = None
        self.leadership.fence.add_listener(functools.partial(self._term_ended, loop))
        try:
            if await self._until_database_ready():
                writer = HistoryWriter(self.engine, self.leadership.fence)
                await self._supervise(writer)
        finally:
            watcher.stop()
            if watching is not None:
                await asyncio.wait({watching}, timeout=2)
            await self._shutdown(writer)
            probe.cancel()
            requirements.cancel()
            await http.stop()

    async def reload(self, changed: list[str]) -> None:
        """Discover the tasks folder again and run what it holds now: new jobs are added,
        changed ones updated, removed ones unscheduled; the others keep their next run times.
        A file that fails to import keeps its jobs' stored schedules (their runs are skipped
        until it imports again). A change the service could not start with is refused whole.
        Never raises: whatever goes wrong is logged, and the service goes on."""
        try:
            await self._reload(changed)
        except Exception as error:
            log.error(
                "reloading the task files failed; the jobs stay as they were",
                error=f"{type(error).__name__}: {error}",
                changed=changed,
            )

    async def _reload(self, changed: list[str]) -> None:
        async with self._catalog_lock:
            started = time.perf_counter()
            try:
                catalog = await reload_catalog(self.settings, os.environ)
            except SchedulerError as error:
                log.error("task files not reloaded; the jobs stay as they were", error=str(error))
                return
            if catalog.problems:
                log.error(
                    "task files not reloaded: the configuration would be invalid; the jobs stay "
                    "as they were until it is fixed",
                    problems=list(catalog.problems),
                    changed=changed,
                )
                return
            old, self.catalog = self.catalog, catalog
            self.metrics.initialise(catalog.jobs)
            role = self.role
            if role is not None:
                try:
                    await role.reload(self.settings, catalog)
                except Exception as error:  # the database went away mid-reconcile, say
                    log.error(
                        "task files reloaded, but the job store could not be brought in line "
                        "with them; the next change, a SIGHUP or a restart tries again",
                        error=f"{type(error).__name__}: {error}",
                    )
            failed = {failure.path for failure in catalog.failures}
            gone = [job_type for job_type in old.jobs if job_type not in catalog.jobs]
            log.info(
                "task files reloaded",
                changed=changed,
                added=sorted(catalog.jobs.keys() - old.jobs.keys()),
                removed=sorted(jt for jt in gone if old.source_file(jt) not in failed),
                not_loaded=sorted(jt for jt in gone if old.source_file(jt) in failed),
                failed_task_files=[str(path) for path in sorted(failed)],
                seconds=round(time.perf_counter() - started, 3),
            )
        new = catalog.jobs.keys() - old.jobs.keys()
        if any(catalog.jobs[job_type].metadata.requirements for job_type in new):
            await self._warn_of_blocked_jobs(only=new)

    async def _warn_of_blocked_jobs(self, only: Collection[str] | None = None) -> None:
        """Say at start-up which jobs will not run for want of a requirement (the seed example's
        `requires_twitter=True` with nothing providing "twitter"): their runs are otherwise only
        skipped, one history row at a time. In the background, as the providers may be slow
        (in process mode they are asked in a child process)."""
        try:
            blocked = await self.catalog.blocked_by_requirements()
        except Exception as error:  # a probe that hangs or dies must not stop the service
            log.warning("requirement providers could not be asked at start-up", error=str(error))
            return
        for job_type, reasons in blocked.items():
            if only is not None and job_type not in only:
                continue
            for why in reasons:
                log.warning(requirement_warning(job_type, why), job_type=job_type)

    def _term_ended(self, loop: asyncio.AbstractEventLoop, _epoch: int) -> None:
        """From any thread: wake the heartbeat, which demotes this instance."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to demote
            loop.call_soon_threadsafe(self._wake.set)

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
        log.info("SIGHUP: reloading the task files")
        reload = asyncio.ensure_future(self.reload(["SIGHUP"]))
        self._chores.add(reload)
        reload.add_done_callback(self._chores.discard)

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` unless a stop is requested first; True if it was."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _pause_between_beats(self, seconds: float) -> None:
        """Wait for the next heartbeat; a stop or the end of the term wakes it early."""
        stop, wake = (
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._wake.wait()),
        )
        await asyncio.wait({stop, wake}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        wake.cancel()
        self._wake.clear()

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
        """The heartbeat: take, renew or give up leadership, watch the database, prune."""
        leadership = self.leadership
        standby_logged = False
        while not self._stop.is_set():
            if self.role is None:
                if await asyncio.to_thread(leadership.try_take):
                    await self._lead(writer)
                    standby_logged = False
                elif not standby_logged:
                    log.info("standby: another instance is active", lock=leadership.description)
                    standby_logged = True
            elif not await asyncio.to_thread(leadership.renew):
                await self._demote()
            else:
                self._check_lease()
            await self._check_database()
            writer.check_stall()
            self._beat(writer)
            if self.role and time.monotonic() - self._last_prune > PRUNE_EVERY_SECONDS:
                await self._prune_history()
            interval = self.settings.heartbeat_seconds
            if self.role is None:
                interval = self.settings.standby_poll_seconds
            await self._pause_between_beats(interval)

    def _check_lease(self) -> None:
        """Pause the schedule while the lease is not renewed; resume once it is."""
        role, leadership = self.role, self.leadership
        valid = leadership.lease_valid()
        self.health.lease_unrenewed_seconds = None if valid else leadership.unrenewed_seconds()
        if role is None or valid == (not self._lease_paused):
            return
        if valid:
            log.info("lease renewed again: resuming the schedule")
            role.scheduler.resume()
        else:
            log.error(
                "lease not renewed (database unreachable or locked): no runs start until it is",
                unrenewed_seconds=round(leadership.unrenewed_seconds(), 1),
                lease_seconds=leadership.lease_seconds,
            )
            role.scheduler.pause()
        self._lease_paused = not valid

    def _beat(self, writer: HistoryWriter) -> None:
        if self.role is not None:
            self.role.coordinator.flush_skips()
        health = self.health
        health.heartbeat_at = time.time()
        health.scheduler_alive = self._scheduler_thread_alive()
        health.job_store_ok = self.role.store.healthy if self.role is not None else True
        health.history_ok = writer.healthy
        health.history_rows_dropped = writer.dropped
        health.history_queued = writer.queued
        health.epoch = self.leadership.fence.epoch or 0
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
        self._lease_paused = False
        async with self._catalog_lock:
            self.role = await ActiveRole.take(
                self.settings,
                self.catalog,
                self.engine,
                writer,
                self.metrics,
                self.instance,
                self.leadership,
            )
        self.health.leader = True
        # Once the role is whole: the API's actions work from this line on.
        log.info(
            "active: this instance runs the jobs",
            instance=self.instance,
            epoch=self.leadership.fence.epoch,
        )

    async def _demote(self) -> None:
        """The term ended: start nothing more, let the runs in progress finish, stand by."""
        role, self.role = self.role, None
        self.health.leader = False
        if role is None:
            return
        log.error("demoted: another instance leads now; this one stands by")
        await self._stop_role(role)
        await asyncio.to_thread(self.leadership.resign)

    async def _stop_role(self, role: ActiveRole) -> None:
        """Stop scheduling, drain the runs (a second signal cuts the wait), stop the workers."""
        role.delayed.close()  # the pending runs stay stored for the next term
        role.coordinator.close()
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
        role, self.role = self.role, None
        if role is not None:
            await self._stop_role(role)
        if writer is not None:
            await asyncio.to_thread(writer.close)
            if role is not None and role.coordinator.cut_off:
                cut_off = role.coordinator.cut_off
                history = RunHistory(self.engine)
                if await _quietly(lambda: history.mark_for_rerun(cut_off)) is None:
                    log.error("runs cut off at shutdown could not be flagged to run again")
        await asyncio.to_thread(self.leadership.close)
        self.engine.dispose()
        log.info("scheduler stopped")


def _main_engine(settings: ServiceSettings) -> Engine:
    """The engine of the run history and the job store. On PostgreSQL, the server ends a
    session left idle inside a transaction for half the lease: a leader paused in the middle of
    a fenced write holds the leadership row's lock, and would otherwise hold back its successor
    for as long as it stays paused. (On SQLite no server can do that: see the README.)"""
    if is_sqlite(normalize_url(settings.database_url)):
        return create_database_engine(settings.database_url)
    idle_ms = int(settings.lease_seconds / 2 * 1000)
    options = f"-c idle_in_transaction_session_timeout={idle_ms}"
    return create_database_engine(settings.database_url, connect_args={"options": options})


def _lease_engine(settings: ServiceSettings) -> Engine:
    """The leadership table's own engine: a renewal waits a quarter of the lease at most (on
    SQLite the history's writes may wait 30 s for a lock; a renewal must not)."""
    wait = settings.lease_seconds / 4
    if is_sqlite(normalize_url(settings.database_url)):
        return create_database_engine(settings.database_url, busy_timeout_seconds=wait)
    timeout_ms = int(wait * 1000)
    connect_args = {
        "connect_timeout": max(1, int(wait)),
        "options": f"-c statement_timeout={timeout_ms}",
    }
    return create_database_engine(settings.database_url, connect_args=connect_args)


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
