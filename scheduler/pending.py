"""Delayed runs: an operator's "run this job at 14:00, with these params", stored until then.

Each is a row of `scheduler_pending_runs`, written (and cancelled) only while this instance's
leadership term is current, checked in the same transaction (`Fence`). The active instance
keeps a timer per row (`DelayedRuns`, on its event loop; a new term loads them all, so a
restart or a takeover keeps them). When one falls due it is started with trigger `manual`, its
`at` as scheduled time and its params; the transaction that writes its first history row (the
`running` row, or the skip) deletes its pending row, and a start whose pending row is gone is
refused (`HistoryWriter.claim_pending`). So a crash before that commit leaves the row pending
(it runs at the next start), and one after it leaves a `running` row that recovery closes as
`interrupted` and runs again if the job is idempotent: no delayed run is lost, and none starts
twice from its pending row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine, delete, select

from .coordinator import RunCoordinator
from .errors import StaleLeadershipError
from .history import HistoryWriter, utc
from .job_config import ResolvedJob
from .leadership import Fence
from .params import decode_params, encode_params
from .records import RunSummary, SkipReason, StartRefusal, Trigger, new_run_id, utcnow
from .tables import pending_runs

log = structlog.get_logger(__name__)

#: A timer wakes at least this often to look at the wall clock again (a long `call_later`
#: runs on the monotonic clock, which may drift from the wall clock over days).
MAX_TIMER_SECONDS = 3600.0
#: A delayed run refused for want of a lease is tried again this much later.
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class PendingRun:
    run_id: str
    job_type: str
    run_at: datetime
    params: Mapping[str, Any]
    created_at: datetime


class PendingStore:
    """The table, through blocking calls (run them in a thread)."""

    def __init__(self, engine: Engine, fence: Fence | None = None) -> None:
        self._engine = engine
        self._fence = fence

    def add(self, job_type: str, run_at: datetime, params: Mapping[str, Any]) -> PendingRun:
        """Store a delayed run, fenced: `StaleLeadershipError` if this instance does not lead."""
        run = PendingRun(new_run_id(), job_type, run_at, dict(params), utcnow())
        with self._engine.begin() as connection:
            self._check(connection)
            connection.execute(
                pending_runs.insert().values(
                    run_id=run.run_id,
                    job_type=job_type,
                    run_at=run_at,
                    params=encode_params(params) if params else None,
                    created_at=run.created_at,
                )
            )
        return run

    def cancel(self, run_id: str) -> bool:
        """Delete a pending run, fenced; whether it was there."""
        with self._engine.begin() as connection:
            self._check(connection)
            deleted = connection.execute(
                delete(pending_runs).where(pending_runs.c.run_id == run_id)
            )
            return bool(deleted.rowcount)

    def load(self) -> list[PendingRun]:
        """Every pending run, soonest first."""
        query = select(pending_runs).order_by(pending_runs.c.run_at, pending_runs.c.run_id)
        with self._engine.connect() as connection:
            return [
                PendingRun(
                    row.run_id,
                    row.job_type,
                    utc(row.run_at) or utcnow(),
                    decode_params(row.params),
                    utc(row.created_at) or utcnow(),
                )
                for row in connection.execute(query)
            ]

    def _check(self, connection: Any) -> None:
        if self._fence is None:
            raise StaleLeadershipError("this instance does not lead")
        self._fence.check(connection)


class AlreadyStarted(Exception):
    """The delayed run fell due and started (or was skipped) already: it cannot be cancelled."""


class DelayedRuns:
    """The active instance's timers of the pending runs, on its event loop."""

    def __init__(
        self,
        store: PendingStore,
        coordinator: RunCoordinator,
        writer: HistoryWriter,
        jobs: Mapping[str, ResolvedJob],
        not_loaded: Callable[[str], str | None],
    ) -> None:
        self._store = store
        self._coordinator = coordinator
        self._writer = writer
        self._jobs = jobs
        self._not_loaded = not_loaded
        self._armed: dict[str, tuple[PendingRun, asyncio.TimerHandle]] = {}
        self._fired: set[str] = set()  # run ids started (or skipped) during this term
        self._closed = False

    @property
    def armed(self) -> int:
        return len(self._armed)

    async def load(self) -> int:
        """Arm every stored pending run (those whose time passed fall due at once)."""
        runs = await asyncio.to_thread(self._store.load)
        for run in runs:
            self._arm(run)
        if runs:
            overdue = sum(1 for run in runs if run.run_at <= utcnow())
            log.info("delayed runs loaded", pending=len(runs), overdue=overdue)
        return len(runs)

    async def add(self, job_type: str, run_at: datetime, params: Mapping[str, Any]) -> PendingRun:
        """Store, then arm, a delayed run (`StaleLeadershipError` if this instance lost its
        term meanwhile)."""
        run = await asyncio.to_thread(self._store.add, job_type, run_at, params)
        log.info(
            "run scheduled by an operator",
            job_type=job_type,
            run_id=run.run_id,
            at=run_at.isoformat(),
        )
        if not self._closed:
            self._arm(run)
        return run

    async def cancel(self, run_id: str) -> PendingRun | None:
        """Cancel a pending run: the run cancelled, None if there is no such pending run;
        `AlreadyStarted` if it fell due already."""
        armed = self._armed.pop(run_id, None)
        if armed is None:
            if run_id in self._fired:
                raise AlreadyStarted(f"run {run_id} fell due and started already")
            return None
        run, handle = armed
        handle.cancel()
        try:
            found = await asyncio.to_thread(self._store.cancel, run_id)
        except BaseException:
            if not self._closed:  # it stays pending: its timer too
                self._arm(run)
            raise
        if found:
            log.info("scheduled run cancelled by an operator", job_type=run.job_type, run_id=run_id)
        return run if found else None

    def close(self) -> None:
        """Stop every timer (a stop, a demotion): the rows stay for the next term."""
        self._closed = True
        for _, handle in self._armed.values():
            handle.cancel()
        self._armed.clear()

    def _arm(self, run: PendingRun, at_least: float = 0.0) -> None:
        delay = max((run.run_at - utcnow()).total_seconds(), at_least)
        loop = asyncio.get_running_loop()
        handle = loop.call_later(min(delay, MAX_TIMER_SECONDS), self._wake, run.run_id)
        self._armed[run.run_id] = (run, handle)

    def _wake(self, run_id: str) -> None:
        armed = self._armed.get(run_id)
        if armed is None or self._closed:
            return
        run = armed[0]
        if run.run_at > utcnow():  # a long delay's intermediate wakeup, or an early one
            self._arm(run)
            return
        del self._armed[run_id]
        self._fired.add(run_id)
        self._writer.claim_pending(run_id)  # its first history row consumes its pending row
        self._due(run)

    def _due(self, run: PendingRun) -> None:
        job = self._jobs.get(run.job_type)
        coordinator = self._coordinator
        if job is None:
            why = self._not_loaded(run.job_type) or (
                f"job {run.job_type!r} is not declared by any task file any more"
            )
            coordinator.skip(
                run.job_type, SkipReason.NOT_LOADED, why, run.run_at, run.run_id, Trigger.MANUAL
            )
            return
        grace = job.config.misfire_grace_seconds
        late = (utcnow() - run.run_at).total_seconds()
        if grace is not None and late > grace:
            why = f"started {late:.1f}s late, past the job's {grace}s misfire grace"
            coordinator.skip(
                run.job_type, SkipReason.MISFIRE, why, run.run_at, run.run_id, Trigger.MANUAL
            )
            return
        started = coordinator.start_delayed(run.job_type, run.run_id, run.run_at, run.params)
        if isinstance(started, asyncio.Task):
            started.add_done_callback(lambda task: self._ended(run, task))

    def _ended(self, run: PendingRun, task: asyncio.Task[RunSummary]) -> None:
        """A start refused for want of a lease (its row still pending): try again shortly."""
        if self._closed or task.cancelled():
            return
        with contextlib.suppress(Exception):
            if task.result().refused == StartRefusal.LEASE_EXPIRED:
                self._fired.discard(run.run_id)
                self._arm(run, at_least=RETRY_SECONDS)
