"""Run history: one row per attempt of every run, in the scheduler's database.

It is the audit log, the dead-letter list and the basis of crash recovery: a row is written as
`running` when an attempt starts and completed when it ends, so after a crash the rows still
`running` are exactly the attempts that were in flight. Writes go through `HistoryWriter`, one
thread that commits whatever accumulated while its previous commit ran (group commit without
added latency; the asyncio loop never blocks on the database), each row upserted whole, so a
start and an end that fall in one batch are one row written once. `DurableStarts` lets a run wait
until its `running` row is committed before its body executes, so a kill -9 at any moment leaves
no run that did work without a row to say so; while the database is unreachable runs do not wait
(their rows stay queued in memory until it is back), so an outage does not stop the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import operator
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    func,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from .database import BatchStatement
from .errors import StaleLeadershipError
from .leadership import Fence
from .records import (
    ERROR_SUMMARY_LIMIT,
    FINISHED,
    NOT_EXECUTING_MARK,
    Outcome,
    RunRecord,
    StartRefusal,
    clean_text,
)
from .tables import leadership, pending_runs, quarantines, runs

log = structlog.get_logger(__name__)

#: A write that has waited this long is a stall (reported once, and runs stop waiting for it).
STALL_SECONDS = 5.0
#: The error text of attempts closed at start-up because the process running them died.
INTERRUPTED_BY_CRASH = "the scheduler process stopped during this run (killed or crashed)"
#: How the hard timeout's record begins (worker_pool): such an attempt killed its worker.
KILLED_AT_TIMEOUT_MARK = "%its worker was killed"


def migrate(engine: Engine) -> None:
    """Create or upgrade the scheduler's tables to the newest revision (Alembic)."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every datetime stored here is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


_RECORD_FIELDS = frozenset(f.name for f in fields(RunRecord))


def record_from_row(row: Any) -> RunRecord:
    values = {k: v for k, v in row._mapping.items() if k in _RECORD_FIELDS}
    for key in ("scheduled_at", "started_at", "finished_at"):
        values[key] = utc(values[key])
    return RunRecord(**values)


_FINAL_FIELDS = ("finished_at", "outcome", "skip_reason", "error", "items_succeeded",
                 "items_failed", "dead_letter", "traceback")  # fmt: skip


class HistoryWriter:
    """Writes run records from any thread, in order, batching whatever is waiting.

    Every write gets a ticket (1, 2, ...); tickets are committed in order, so "ticket n is
    written" is `written >= n`. Listeners hear of every commit and of every failed one.

    A `running` row (an attempt about to start) is inserted only while this instance's
    leadership term is current, checked in the same transaction (`Fence`), and only if its slot
    has no first attempt yet (a unique index): a refused start is reported by `refusal`, and
    its attempt does not run. Rows are written as a batch; a batch the database refuses for its
    content (not for an outage) is written row by row, and a row that still fails is logged and
    counted (`dropped`), never retried forever.
    """

    def __init__(
        self,
        engine: Engine,
        fence: Fence,
        *,
        max_batch: int = 1000,
        retry_seconds: float = 0.5,
        stall_seconds: float = STALL_SECONDS,
    ):
        self._engine = engine
        self._fence = fence
        self._max_batch = max_batch
        self._retry_seconds = retry_seconds
        self._stall_seconds = stall_seconds
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._progress = threading.Condition()
        self._submitted = 0
        self._written = 0
        self._refused: dict[int, StartRefusal] = {}
        self._listeners: list[Callable[[], None]] = []
        self._stopping = threading.Event()
        self._healthy = True
        self._busy_since: float | None = None  # time.monotonic() the current write began
        self._stall_reported = False
        #: Rows the database refused even alone (logged each).
        self.dropped = 0
        #: Run ids of delayed runs due now: the transaction that writes a run's first row
        #: (its start, or its skip) deletes its row of `scheduler_pending_runs`, or refuses it.
        self._claims: set[str] = set()
        self._upsert = _upsert_statement(engine)
        self._guarded_upsert = _upsert_statement(engine, guarded=True)
        self._insert_starts = _insert_starts_statement(engine)
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False while writes are failing (the database is unreachable) or stalled (a write
        has waited longer than `stall_seconds`, e.g. on a SQLite file another process locks),
        or if the writer thread is gone."""
        return self._healthy and not self.stalled and self._thread.is_alive()

    @property
    def stalled(self) -> bool:
        busy_since = self._busy_since
        return busy_since is not None and time.monotonic() - busy_since > self._stall_seconds

    def check_stall(self) -> None:
        """Report a stalled write once (called by the heartbeat), and let waiting runs go."""
        if self.stalled and not self._stall_reported:
            self._stall_reported = True
            busy_since = self._busy_since or time.monotonic()
            log.error(
                "run history write stalled: the database does not answer (locked by another "
                "process, or overloaded)",
                waiting_seconds=round(time.monotonic() - busy_since, 1),
                queued=self._submitted - self._written,
            )
            self._notify()

    @property
    def queued(self) -> int:
        """Rows submitted and not yet committed (or refused)."""
        return self._submitted - self._written

    @property
    def written(self) -> int:
        """The highest ticket committed so far."""
        return self._written

    def refusal(self, ticket: int) -> StartRefusal | None:
        """Why the `running` row of `ticket` was refused, once it is written (asked once)."""
        return self._refused.pop(ticket, None)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the writer thread) after each commit and each failed attempt."""
        self._listeners.append(listener)

    def claim_pending(self, run_id: str) -> None:
        """The next first row (attempt 1) of `run_id` consumes its pending row, in the same
        transaction: a start whose pending row is gone is refused (`NOT_PENDING`)."""
        self._claims.add(run_id)

    def claims(self, run_id: str) -> bool:
        return run_id in self._claims

    def write(self, record: RunRecord) -> int:
        """Store the record as it is now (a later write of the same attempt replaces it);
        its ticket."""
        row = _row_of(record)
        error = record.error  # clean already, unless a caller built it by hand
        if error is not None and (
            len(error) > ERROR_SUMMARY_LIMIT or not error.isascii() or "\x00" in error
        ):
            row = (*row[:_ERROR], clean_text(error), *row[_ERROR + 1 :])
        with self._progress:  # the ticket and the queue position must agree
            self._submitted += 1
            ticket = self._submitted
            self._queue.put(row)
        return ticket

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed; False on timeout."""
        with self._progress:
            target = self._submitted
            return self._progress.wait_for(lambda: self._written >= target, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued (within `timeout`) and stop the thread."""
        flushed = self.flush(timeout)
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=1.0)
        return flushed

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._busy_since = time.monotonic()
            try:
                refused = self._write_until_done(batch)
            except Exception:  # a bug of ours, not an outage: never the end of the writer
                log.exception("run history batch failed; writing its rows one by one")
                refused = self._write_one_by_one(batch)
            self._busy_since = None
            if self._claims:  # written (or refused) once: later rows of these runs claim nothing
                self._claims.difference_update(row[0] for row in batch if row[1] == 1)
            if self._stall_reported:
                log.info("run history writes flow again")
                self._stall_reported = False
            with self._progress:
                first_ticket = self._written + 1
                for index, why in refused.items():
                    self._refused[first_ticket + index] = why
                self._written += len(batch)
                self._progress.notify_all()
            self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("run history listener failed")

    def _write_until_done(self, batch: list[tuple[Any, ...]]) -> dict[int, StartRefusal]:
        """Write the batch, retrying while the database is unreachable; the refused starts,
        by their index in the batch."""
        delay = self._retry_seconds
        careful = False
        while True:
            try:
                with self._engine.begin() as connection:
                    refused = self._write(connection, batch, careful=careful)
            except IntegrityError:
                if careful:  # each kind on its own did not help: a row's own content
                    return self._write_one_by_one(batch)
                careful = True  # a slot already taken, most likely
                continue
            except (OperationalError, InterfaceError) as error:  # an outage: wait and retry
                if self._healthy:
                    log.warning("run history write failed; retrying", error=str(error))
                    self._healthy = False
                    self._notify()  # runs waiting for their row go ahead meanwhile
                if self._stopping.wait(delay):
                    log.error("run history not written at shutdown", rows=len(batch))
                    return {}
                delay = min(delay * 2, 5.0)
                continue
            except SQLAlchemyError as error:  # the content: no retry of the batch can help
                log.warning("run history batch refused; writing it row by row", error=str(error))
                return self._write_one_by_one(batch)
            if not self._healthy:
                log.info("run history writes recovered")
            self._healthy = True
            return refused

    def _write(
        self, connection: Connection, batch: list[tuple[Any, ...]], *, careful: bool = False
    ) -> dict[int, StartRefusal]:
        """Write the batch; the refused starts by index. Usually one statement, guarded by the
        epoch (on SQLite every statement costs the writer a GIL hand-over beside a busy loop);
        `careful`, or when that statement did not write every row, each kind on its own."""
        # A row is upserted whole; a later state of the same attempt replaces an earlier one
        # (PostgreSQL refuses to touch a row twice in one statement), so a start and an end in
        # one batch (runs that did not wait for their row, in an outage) are written as the end.
        latest = list({row[:2]: index for index, row in enumerate(batch)}.values())
        claimed: dict[int, StartRefusal] = {}
        if self._claims:
            latest, claimed = self._claim(connection, batch, latest)
        return {**self._write_latest(connection, batch, latest, careful), **claimed}

    def _claim(
        self, connection: Connection, batch: list[tuple[Any, ...]], latest: list[int]
    ) -> tuple[list[int], dict[int, StartRefusal]]:
        """Delete the pending rows of the delayed runs whose first row this batch holds; the
        rows left to write, and the refused starts (their pending row is gone, or this
        instance's term ended: the run is not started, and left to whoever has it)."""
        claims = [i for i in latest if batch[i][1] == 1 and batch[i][0] in self._claims]
        if not claims:
            return latest, {}
        why = StartRefusal.NOT_PENDING
        try:
            self._fence.check(connection)
        except StaleLeadershipError:
            gone, why = set(claims), StartRefusal.NOT_LEADER
        else:
            ids = sorted({batch[i][0] for i in claims})
            deleted = set(
                connection.execute(
                    delete(pending_runs)
                    .where(pending_runs.c.run_id.in_(ids))
                    .returning(pending_runs.c.run_id)
                ).scalars()
            )
            gone = {i for i in claims if batch[i][0] not in deleted}
        refused = {i: why for i in gone if batch[i][_OUTCOME] == Outcome.RUNNING}
        return [i for i in latest if i not in gone], refused

    def _write_latest(
        self,
        connection: Connection,
        batch: list[tuple[Any, ...]],
        latest: list[int],
        careful: bool,
    ) -> dict[int, StartRefusal]:
        epoch = self._fence.epoch
        if careful or epoch is None:
            return self._write_carefully(connection, batch, latest)
        try:
            if self._fence.check_due():  # it renews the lease, and takes the row's lock
                self._fence.check(connection)
            rows = [batch[i] for i in latest]
            # A slot taken raises IntegrityError: the batch is then written carefully.
            if self._guarded_upsert.execute(connection, rows, epoch) == len(rows):
                return {}
        except StaleLeadershipError:
            pass
        return self._write_carefully(connection, batch, latest)

    def _write_carefully(
        self, connection: Connection, batch: list[tuple[Any, ...]], latest: list[int]
    ) -> dict[int, StartRefusal]:
        """Each kind of row on its own: starts one by one refused if their slot is taken, all
        of them and the skips if the term has ended; the endings written whatever happens."""
        starts: list[int] = []  # fenced, each refused if its slot has a first attempt
        skips: list[int] = []  # fenced: a term's successor records what it did not run
        ends: list[tuple[Any, ...]] = []  # not fenced: what happened is recorded whoever leads
        for index in latest:
            outcome = batch[index][_OUTCOME]
            if outcome == Outcome.RUNNING:
                starts.append(index)
            elif outcome == Outcome.SKIPPED:
                skips.append(index)
            else:
                ends.append(batch[index])
        refused: dict[int, StartRefusal] = {}
        if starts or skips:
            try:
                self._fence.check(connection)
            except StaleLeadershipError:
                refused = dict.fromkeys(starts, StartRefusal.NOT_LEADER)
                if skips:
                    log.info("skips not recorded: this instance's term has ended", rows=len(skips))
                skips = []
            else:
                rows = [batch[i] for i in starts]
                if self._insert_starts.execute(connection, rows) < len(rows):
                    inserted = _present(connection, [row[:2] for row in rows])
                    refused = {
                        i: StartRefusal.SLOT_TAKEN for i in starts if batch[i][:2] not in inserted
                    }
        self._upsert.execute(connection, [*ends, *(batch[i] for i in skips)])
        return refused

    def _write_one_by_one(self, batch: list[tuple[Any, ...]]) -> dict[int, StartRefusal]:
        """Each row in a transaction of its own: a row that still fails is logged, counted and
        dropped, so that it cannot hold back the others (a start dropped so is refused)."""
        refused: dict[int, StartRefusal] = {}
        for index, row in enumerate(batch):
            try:
                with self._engine.begin() as connection:
                    for why in self._write(connection, [row], careful=True).values():
                        refused[index] = why
            except Exception as error:
                self.dropped += 1
                if row[_OUTCOME] == Outcome.RUNNING:
                    refused[index] = StartRefusal.SLOT_TAKEN
                log.error(
                    "run history row dropped: it cannot be written",
                    run_id=str(row[0]),
                    attempt=str(row[1]),
                    error=clean_text(f"{type(error).__name__}: {error}"),
                )
        return refused


class DurableStarts:
    """The asyncio loop's side of a `HistoryWriter`, for the run coordinator.

    `started` returns once the attempt's `running` row is committed, or at once while writes
    are failing, with the refusal if the row was refused. The writer wakes the loop once per
    commit, not once per run.
    """

    def __init__(self, writer: HistoryWriter, loop: asyncio.AbstractEventLoop) -> None:
        self._writer = writer
        self._loop = loop
        #: (ticket, durable: wait for the commit even while writes fail, future), by ticket
        self._waiting: list[tuple[int, bool, asyncio.Future[None]]] = []
        writer.add_listener(self._wake)

    async def started(self, record: RunRecord) -> StartRefusal | None:
        """None once the row is committed (or at once while writes fail, except for a
        delayed run's start, which must consume its pending row first); else why the
        history refused it, and the attempt must not start."""
        durable = record.attempt == 1 and self._writer.claims(record.run_id)
        ticket = self._writer.write(record)
        if self._writer.written < ticket and (durable or self._writer.healthy):
            future = self._loop.create_future()
            heapq.heappush(self._waiting, (ticket, durable, future))
            await future
        return self._writer.refusal(ticket)

    def finished(self, record: RunRecord) -> None:
        self._writer.write(record)

    def recorded(self, record: RunRecord) -> None:
        self._writer.write(record)

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        written, healthy = self._writer.written, self._writer.healthy
        durable: list[tuple[int, bool, asyncio.Future[None]]] = []
        while self._waiting and (not healthy or self._waiting[0][0] <= written):
            entry = heapq.heappop(self._waiting)
            ticket, must_commit, future = entry
            if must_commit and ticket > written:
                durable.append(entry)  # not written yet: it waits on
            elif not future.done():  # a run cancelled while it waited
                future.set_result(None)
        for entry in durable:
            heapq.heappush(self._waiting, entry)


_ROW_FIELDS = tuple(f.name for f in fields(RunRecord) if f.name != "id")
assert _ROW_FIELDS[:2] == ("run_id", "attempt")
_OUTCOME = _ROW_FIELDS.index("outcome")
_ERROR = _ROW_FIELDS.index("error")
#: A record's values as a tuple in one C call, for the row written.
_row_of = operator.attrgetter(*_ROW_FIELDS)


def _insert_starts_statement(engine: Engine) -> BatchStatement:
    """Insert `running` rows, skipping any a unique index refuses (a slot already run)."""
    quote = engine.dialect.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in _ROW_FIELDS)
    sql = f"INSERT INTO {quote(runs.name)} ({columns}) {{rows}} ON CONFLICT DO NOTHING"
    return BatchStatement(sql, [runs.c[name].type for name in _ROW_FIELDS], engine.dialect)


def _present(connection: Connection, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Which of these (run id, attempt) the table holds (after an insert that skipped some)."""
    query = select(runs.c.run_id, runs.c.attempt).where(
        runs.c.run_id.in_(sorted({run_id for run_id, _ in keys}))
    )
    present = {(run_id, attempt) for run_id, attempt in connection.execute(query)}
    return present & set(keys)


def _upsert_statement(engine: Engine, *, guarded: bool = False) -> BatchStatement:
    """Insert rows, or complete those already there: a start, an end, or both at once.
    `guarded`: only if the epoch given (the one parameter) is still the current term's."""
    quote = engine.dialect.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in _ROW_FIELDS)
    # started_at too: the `running` row is written before the run's body starts (DurableStarts);
    # the finished record carries the moment it did.
    completed = ", ".join(
        f"{quote(name)} = excluded.{quote(name)}" for name in ("started_at", *_FINAL_FIELDS)
    )
    source = "{rows}"
    if guarded:
        term = f"SELECT 1 FROM {quote(leadership.name)} WHERE id = 1 AND epoch = {{param}}"
        source = f"SELECT * FROM ({{rows}}) AS v WHERE EXISTS ({term})"
    sql = (
        f"INSERT INTO {quote(runs.name)} ({columns}) {source} "
        f"ON CONFLICT ({quote('run_id')}, {quote('attempt')}) DO UPDATE SET {completed}"
    )
    return BatchStatement(sql, [runs.c[name].type for name in _ROW_FIELDS], engine.dialect)


@dataclass(frozen=True)
class JobHistorySummary:
    """What the dependency gate needs to know about a job's past."""

    last_outcome: str | None
    last_success_at: datetime | None
    #: The latest finished run's error and end, so that a restart shows what it did before.
    last_error: str | None = None
    last_finished_at: datetime | None = None


class RunHistory:
    """Queries over the run history."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def recent(
        self,
        job_type: str | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        dead_letter_only: bool = False,
        outcomes: Sequence[str] | None = None,
    ) -> list[RunRecord]:
        """Newest first."""
        query = select(runs).order_by(runs.c.id.desc()).limit(limit).offset(offset)
        if job_type is not None:
            query = query.where(runs.c.job_type == job_type)
        if outcomes is not None:
            query = query.where(runs.c.outcome.in_(outcomes))
        if dead_letter_only:
            query = query.where(runs.c.dead_letter.is_(True))
        with self._engine.connect() as connection:
            return [record_from_row(row) for row in connection.execute(query)]

    def attempts(self, run_id: str) -> list[RunRecord]:
        """Every attempt of the run `run_id` (the whole id), first attempt first; empty if the
        history has none."""
        query = select(runs).where(runs.c.run_id == run_id).order_by(runs.c.attempt, runs.c.id)
        with self._engine.connect() as connection:
            return [record_from_row(row) for row in connection.execute(query)]

    def summaries(self) -> dict[str, JobHistorySummary]:
        """Each job's latest finished outcome and latest success."""
        finished = [str(outcome) for outcome in FINISHED]
        latest_ids = (
            select(func.max(runs.c.id))
            .where(runs.c.outcome.in_(finished))
            .group_by(runs.c.job_type)
            .scalar_subquery()
        )
        latest = select(runs.c.job_type, runs.c.outcome, runs.c.error, runs.c.finished_at).where(
            runs.c.id.in_(latest_ids)
        )
        successes = (
            select(runs.c.job_type, func.max(runs.c.finished_at))
            .where(runs.c.outcome == Outcome.SUCCESS)
            .group_by(runs.c.job_type)
        )
        with self._engine.connect() as connection:
            ends = {row[0]: (row[1], row[2], utc(row[3])) for row in connection.execute(latest)}
            success_at = {row[0]: utc(row[1]) for row in connection.execute(successes)}
        summaries = {}
        for job_type in ends.keys() | success_at.keys():
            outcome, error, finished_at = ends.get(job_type, (None, None, None))
            summaries[job_type] = JobHistorySummary(
                outcome, success_at.get(job_type), error, finished_at
            )
        return summaries

    def mark_interrupted(self, now: datetime, reason: str) -> list[RunRecord]:
        """Close every attempt left `running` by a process that is gone, and take the runs
        cut off at a shutdown that were left to run again (`mark_for_rerun`); return both."""
        pending = or_(runs.c.outcome == Outcome.RUNNING, runs.c.rerun_pending.is_(True))
        with self._engine.begin() as connection:
            rows = connection.execute(select(runs).where(pending).order_by(runs.c.id))
            records = [record_from_row(row) for row in rows]
            left_running = [r.id for r in records if r.outcome == Outcome.RUNNING]
            if left_running:
                connection.execute(
                    update(runs)
                    .where(runs.c.id.in_(left_running))
                    .values(outcome=Outcome.INTERRUPTED, finished_at=now, error=reason)
                )
            cut_off = [r.id for r in records if r.outcome != Outcome.RUNNING]
            if cut_off:
                connection.execute(
                    update(runs).where(runs.c.id.in_(cut_off)).values(rerun_pending=False)
                )
        return records

    def mark_for_rerun(self, attempts: Sequence[tuple[str, int]]) -> int:
        """Flag these attempts (run id, attempt), cut off at shutdown, for the next start;
        how many were found."""
        flagged = 0
        with self._engine.begin() as connection:
            for run_id, attempt in attempts:
                flagged += connection.execute(
                    update(runs)
                    .where(runs.c.run_id == run_id, runs.c.attempt == attempt)
                    .values(rerun_pending=True)
                ).rowcount
        return flagged

    def crash_streaks(
        self, since: dict[str, datetime], *, scheduler_deaths: bool = False
    ) -> dict[str, int]:
        """Each job's attempts that ended their process since its latest other ending (and
        since `since[job]`, when its quarantine was lifted): the quarantine's streaks.
        `scheduler_deaths`: runs cut off by a dead scheduler process count too (inline mode,
        where a task can end it)."""
        causes = [
            and_(
                runs.c.outcome == Outcome.CRASHED,
                runs.c.error.not_like(f"%{NOT_EXECUTING_MARK}"),
            ),
            and_(runs.c.outcome == Outcome.TIMEOUT, runs.c.error.like(KILLED_AT_TIMEOUT_MARK)),
        ]
        if scheduler_deaths:
            causes.append(
                and_(runs.c.outcome == Outcome.INTERRUPTED, runs.c.error == INTERRUPTED_BY_CRASH)
            )
        crashed = or_(*causes)
        # A cancelled attempt is an operator's doing: it neither counts nor resets a streak.
        started = [str(outcome) for outcome in FINISHED if outcome != Outcome.CANCELLED]
        clean = (
            select(runs.c.job_type, func.max(runs.c.id).label("last"))
            .where(runs.c.outcome.in_(started), not_(crashed))
            .group_by(runs.c.job_type)
            .subquery()
        )
        query = (
            select(runs.c.job_type, runs.c.started_at)
            .outerjoin(clean, clean.c.job_type == runs.c.job_type)
            .where(crashed, or_(clean.c.last.is_(None), runs.c.id > clean.c.last))
        )
        streaks: dict[str, int] = {}
        with self._engine.connect() as connection:
            for job_type, started_at in connection.execute(query):
                lifted = since.get(job_type)
                if lifted is None or utc(started_at) > lifted:  # type: ignore[operator]
                    streaks[job_type] = streaks.get(job_type, 0) + 1
        return streaks

    def quarantines(self) -> dict[str, tuple[str | None, str, datetime | None]]:
        """job type -> (reason while quarantined else None, task file digest, lifted at)."""
        with self._engine.connect() as connection:
            rows = connection.execute(select(quarantines))
            return {
                row.job_type: (
                    None if row.lifted_at is not None else row.reason,
                    row.task_file_digest,
                    utc(row.lifted_at),
                )
                for row in rows
            }

    def set_quarantine(self, job_type: str, reason: str, digest: str, now: datetime) -> None:
        with self._engine.begin() as connection:
            connection.execute(delete(quarantines).where(quarantines.c.job_type == job_type))
            connection.execute(
                quarantines.insert().values(
                    job_type=job_type, reason=reason, task_file_digest=digest, quarantined_at=now
                )
            )

    def lift_quarantine(self, job_type: str, now: datetime) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                update(quarantines)
                .where(quarantines.c.job_type == job_type, quarantines.c.lifted_at.is_(None))
                .values(lifted_at=now)
            )

    def prune(self, before: datetime) -> int:
        """Delete rows of runs that started before `before`; return how many."""
        with self._engine.begin() as connection:
            result = connection.execute(delete(runs).where(runs.c.started_at < before))
            return result.rowcount or 0

    def count(self, job_types: Sequence[str] | None = None) -> int:
        query = select(func.count()).select_from(runs)
        if job_types is not None:
            query = query.where(runs.c.job_type.in_(job_types))
        with self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())
