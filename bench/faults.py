"""Faults: seeded kill -9 / SIGSTOP loops against two service instances, and kill -9 loops
against raw APScheduler, same store kinds, same jobs, same seeded timing, in the same run.

N jobs on a 1 s interval, not idempotent, no retries; each body appends one line
`job slot pid wall-time` to a journal file outside the database (O_APPEND, one write), then
sleeps a random 0-0.3 s. Per cycle: wait a random 0.5-3 s (the seeded plan), then one fault.

Service (two instances, lease 3 s, heartbeat 0.5 s): kill -9 the leader; SIGSTOP the leader
until the other wins a term (or lease + 5 s), then SIGCONT; or kill -9 the standby. A killed
instance is restarted (after the failover), so that two always run. At the end both get
SIGTERM, and one instance runs once more so that its recovery closes the rows left `running`.

Raw APScheduler (3.11, SQLAlchemyJobStore, defaults as people set it up: coalesce, 1 s misfire
grace): ONE process, killed with kill -9 and restarted at every cycle. It has no leader
election: two processes on one job store each run the slots they find due, and many slots run
twice (5 jobs, 6 s of overlap: 14 of 39 slots).

Counts (a slot is a job and its scheduled time, compared to the microsecond):

- `runs`: journal lines, i.e. bodies that executed.
- `double`: slots whose body executed more than once (journal).
- `running`: history rows still `running` at the end (after the last recovery).
- `lost`: journal lines (a body executed) whose job and slot have no history row with a
  finished outcome (success, failure, timeout, interrupted, crashed): a run nobody can audit.
- `already_run`: rows skipped `already_run` (a re-fired slot the history refused).
- `missed`: rows skipped `missed`, and the slots they say passed unrun (raw: EVENT_JOB_MISSED).
- `failover`: fault to the successor's "leadership term won" (service, leader faults); and
  fault to the first body the successor (raw: the restarted process) executed.

The raw scheduler's bodies learn their scheduled time from an executor that hands each run
time to `run_job` on its own, in a thread-local (APScheduler passes no run time to a job).

BENCH_FAULT_STORES (sqlite,postgresql), BENCH_FAULT_JOBS (20), BENCH_FAULT_CYCLES (20),
BENCH_FAULT_SEED (13).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text

from bench import MEASURED_PYTHON
from bench.dispatch import REPO, _free_port, database

LEASE_SECONDS = 3.0
ACTIONS = ("kill leader", "stop leader", "kill standby")
WON = "leadership term won"
DEMOTED = "demoted: another instance leads now; this one stands by"
UP = ("active: this instance runs the jobs", "standby: another instance is active")
FINISHED = {"success", "failure", "timeout", "interrupted", "crashed"}

TASKS = """
import asyncio, os, random, time
from scheduler import BaseTask, JobContext, RunnerResult, job


class Journaled(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        slot = context.scheduled_time.isoformat() if context.scheduled_time else "-"
        with open(os.environ["BENCH_FAULT_JOURNAL"], "a") as journal:  # the service's pid
            journal.write(f"{{context.job_type}} {{slot}} {{os.getppid()}} {{time.time()}}\\n")
        await asyncio.sleep(random.random() * 0.3)
        return [RunnerResult(success=True)]


for n in range({count}):
    job(f"fault_{{n:03d}}", interval_seconds=1, idempotent=False, max_retries=0)(
        type(f"Fault{{n}}", (Journaled,), {{}})
    )
"""


@dataclass(frozen=True)
class Cycle:
    wait: float
    action: str


def plan(seed: int, cycles: int) -> list[Cycle]:
    """The seeded faults; every store and both systems follow the same waits."""
    rng = random.Random(seed)
    return [Cycle(rng.uniform(0.5, 3.0), rng.choice(ACTIONS)) for _ in range(cycles)]


@dataclass(frozen=True)
class Entry:
    job: str
    slot: int | None  # microseconds since the epoch; None for a run without a slot
    text: str
    pid: int
    at: float


def slot_key(value: datetime | str | None) -> int | None:
    """Exact, whatever the form: SQLite returns naive UTC; the journal has ISO with offset."""
    if value is None or value == "-":
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def read_journal(path: Path) -> list[Entry]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        job, slot, pid, at, *_ = line.split()
        entries.append(Entry(job, slot_key(slot), slot, int(pid), float(at)))
    return entries


def doubles(entries: Iterable[Entry]) -> dict[tuple[str, int], list[Entry]]:
    by_slot: dict[tuple[str, int], list[Entry]] = collections.defaultdict(list)
    for entry in entries:
        if entry.slot is not None:
            by_slot[entry.job, entry.slot].append(entry)
    return {key: runs for key, runs in by_slot.items() if len(runs) > 1}


@dataclass
class Fault:
    at: float
    action: str
    successor: int | None  # the pid that should run the jobs next
    won: float | None = None  # seconds to the successor's term win (service)
    by: str | None = None


@dataclass
class Tally:
    system: str
    cycles: int = 0
    seconds: float = 0.0  # the fault loop's wall time: how long `runs` were counted over
    runs: int = 0
    double: int = 0
    running: int | None = None
    lost: int | None = None
    already_run: int | None = None
    missed_rows: int | None = None
    missed_slots: int = 0
    faults: list[Fault] = field(default_factory=list)
    first_runs: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Instance:
    """One `python -m scheduler run`, its JSON log read incrementally."""

    def __init__(self, label: str, workdir: Path, env: dict[str, str]) -> None:
        self.label = label
        self.port = _free_port()  # a fresh port per start: the killed one's may linger
        self.log_path = workdir / f"{label}-{self.port}.log"
        self._records: list[dict[str, Any]] = []
        self._offset = 0
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [MEASURED_PYTHON, "-m", "scheduler", "run"], cwd=workdir, stdout=log,
                stderr=subprocess.STDOUT, env={**env, "SCHEDULER_HTTP_PORT": str(self.port)},
            )  # fmt: skip
        self.pid = self.process.pid
        self.name = f"{label}/{self.pid}"

    def records(self) -> list[dict[str, Any]]:
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            try:
                self._records.append(json.loads(line))
            except json.JSONDecodeError:
                self._records.append({"event": line, "timestamp": None})
        return self._records

    def find(self, events: tuple[str, ...], since: float = 0.0) -> dict[str, Any] | None:
        for record in self.records():
            if record.get("event") in events and _when(record) >= since:
                return record
        return None

    def wait_for(self, events: tuple[str, ...], since: float, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (found := self.find(events, since)) is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                return {}
            time.sleep(0.02)
        return found

    def is_leader(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)


def _when(record: dict[str, Any]) -> float:
    stamp = record.get("timestamp")
    return datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else 0.0


class Cluster:
    """Two instances on one database; every instance ever started is kept for the counts."""

    def __init__(self, url: str, workdir: Path, jobs: int, journal: Path) -> None:
        tasks = workdir / "tasks"
        tasks.mkdir()
        (tasks / "fault_jobs.py").write_text(textwrap.dedent(TASKS.format(count=jobs)))
        self.workdir = workdir
        self.url = url
        self.journal = journal
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        self.env.update(
            SCHEDULER_DATABASE_URL=url, SCHEDULER_TASKS_DIR=str(tasks),
            SCHEDULER_LOG_FORMAT="json", SCHEDULER_LOG_LEVEL="INFO",
            SCHEDULER_HEARTBEAT_SECONDS="0.5", SCHEDULER_STANDBY_POLL_SECONDS="0.5",
            SCHEDULER_LEASE_SECONDS=str(LEASE_SECONDS), SCHEDULER_SHUTDOWN_GRACE_SECONDS="1",
            SCHEDULER_WORKERS="2", BENCH_FAULT_JOURNAL=str(journal),
        )  # fmt: skip
        self.every: list[Instance] = []
        self.live: list[Instance] = []
        self.notes: list[str] = []

    def start(self, label: str) -> Instance:
        instance = Instance(label, self.workdir, self.env)
        self.every.append(instance)
        self.live.append(instance)
        if not instance.wait_for(UP, 0.0, 60):
            raise RuntimeError(f"{instance.name} did not start:\n{_tail(instance)}")
        return instance

    def replace(self, instance: Instance) -> Instance:
        """Kill (if it is not dead already) and start again: there are always two."""
        instance.signal(signal.SIGKILL)
        instance.process.wait(30)
        self.live.remove(instance)
        return self.start(instance.label)

    def leader(self, timeout: float) -> Instance | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for instance in self.live:
                if instance.process.poll() is not None:  # died on its own: note it, go on
                    self.notes.append(f"{instance.name} exited {instance.process.returncode}")
                    self.replace(instance)
                    break
                if instance.is_leader():
                    return instance
            time.sleep(0.05)
        return None

    def stop_all(self) -> None:
        for instance in self.live:
            instance.signal(signal.SIGCONT)
            instance.signal(signal.SIGTERM)
        for instance in self.live:
            try:
                instance.process.wait(60)
            except subprocess.TimeoutExpired:
                instance.signal(signal.SIGKILL)
                instance.process.wait(10)
        self.live = []


def _tail(instance: Instance, lines: int = 20) -> str:
    return "\n".join(instance.log_path.read_text(errors="replace").splitlines()[-lines:])


def run_service(url: str, jobs: int, cycles: list[Cycle], journal: Path) -> Tally:
    tally = Tally("service")
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(url, Path(tmp), jobs, journal)
        try:
            cluster.start("A")
            cluster.start("B")
            started = time.monotonic()
            for cycle in cycles:
                time.sleep(cycle.wait)
                _service_fault(cluster, cycle.action, tally)
                tally.cycles += 1
            tally.seconds = time.monotonic() - started
            cluster.stop_all()
            _final_recovery(cluster, journal, jobs)
        finally:
            cluster.stop_all()
        _count_service(url, journal, cluster, tally)
    tally.notes += cluster.notes
    return tally


def _service_fault(cluster: Cluster, action: str, tally: Tally) -> None:
    leader = cluster.leader(LEASE_SECONDS + 10)
    if leader is None:
        tally.notes.append(f"cycle {tally.cycles + 1}: no leader within {LEASE_SECONDS + 10:g} s")
        return
    (other,) = [i for i in cluster.live if i is not leader]
    if action == "kill standby":
        other.signal(signal.SIGKILL)
        tally.faults.append(Fault(time.time(), action, None))
        cluster.replace(other)
        return
    fault = Fault(time.time(), action, other.pid)
    leader.signal(signal.SIGKILL if action == "kill leader" else signal.SIGSTOP)
    won = other.wait_for((WON,), fault.at, LEASE_SECONDS + 5)
    if won:
        fault.won, fault.by = _when(won) - fault.at, str(won.get("by"))
    else:
        why = _stuck(cluster.url, other, fault.at)
        tally.notes.append(f"cycle {tally.cycles + 1} ({action}): {other.name} did not win{why}")
    tally.faults.append(fault)
    if action == "kill leader":
        cluster.replace(leader)
    else:
        leader.signal(signal.SIGCONT)
        if won and not leader.wait_for((DEMOTED,), fault.at, 15):
            tally.notes.append(f"cycle {tally.cycles + 1}: {leader.name} not demoted (SIGCONT)")
    # A cycle ends when runs go on again, as raw APScheduler's does (so the last one counts).
    if won and not _await_run(cluster.journal, other.pid, fault.at, 15):
        tally.notes.append(f"cycle {tally.cycles + 1}: {other.name} won but ran nothing in 15 s")


def _stuck(url: str, other: Instance, since: float) -> str:
    """Why a takeover did not happen: the successor's log since the fault, and on PostgreSQL
    every session of the database (a paused leader's open transaction shows idle in it)."""
    lines = [f"\n  log {other.name}: {json.dumps(r)[:300]}" for r in other.records()
             if _when(r) >= since - 1]  # fmt: skip
    if url.startswith("postgresql"):
        query = (
            "SELECT pid, state, wait_event_type, wait_event, pg_blocking_pids(pid), "
            "round(extract(epoch FROM now() - xact_start)::numeric, 2), left(query, 200) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                lines += [f"\n  pg session {tuple(row)}" for row in connection.execute(text(query))]
        finally:
            engine.dispose()
    return "".join(lines[-40:])


def _final_recovery(cluster: Cluster, journal: Path, jobs: int) -> None:
    """One instance once more: it wins a term, closes what is left `running`, runs a while."""
    last = cluster.start("R")
    if cluster.leader(60) is not last:
        raise RuntimeError(f"{last.name} did not lead:\n{_tail(last)}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(1 for e in read_journal(journal) if e.pid == last.pid) >= 2 * jobs:
            break
        time.sleep(0.2)
    cluster.stop_all()


def _history(url: str) -> list[dict[str, Any]]:
    from scheduler.tables import runs

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(select(runs))]
    finally:
        engine.dispose()


def _count_service(url: str, journal: Path, cluster: Cluster, tally: Tally) -> None:
    entries, rows = read_journal(journal), _history(url)
    finished = {
        (r["job_type"], slot_key(r["scheduled_at"])) for r in rows if r["outcome"] in FINISHED
    }
    lost = [e for e in entries if (e.job, e.slot) not in finished]
    twice = doubles(entries)
    tally.runs, tally.double, tally.lost = len(entries), len(twice), len(lost)
    tally.running = sum(1 for r in rows if r["outcome"] == "running")
    tally.already_run = sum(1 for r in rows if r["skip_reason"] == "already_run")
    _count_skips(rows, tally)
    _first_runs(entries, tally)
    for key, runs in twice.items():
        tally.notes.append(_explain("DOUBLE", key, runs, rows, cluster))
    for entry in lost:
        tally.notes.append(_explain("LOST", (entry.job, entry.slot or 0), [entry], rows, cluster))
    for row in (r for r in rows if r["outcome"] == "running"):
        tally.notes.append(f"left running: {_row(row)}")
    recorded = {e.job for e in entries if e.slot is None}
    if recorded:
        tally.notes.append(f"bodies without a slot (not scheduled runs): {sorted(recorded)}")


def _count_skips(rows: list[dict[str, Any]], tally: Tally) -> None:
    """`missed` rows, and the slots they say passed unrun (a slot counted once, whichever
    instances recorded it); the same missed slot recorded by two instances is reported."""
    missed = [r for r in rows if r["skip_reason"] == "missed"]
    tally.missed_rows = len(missed)
    by_slot: dict[tuple[str, int | None], list[dict[str, Any]]] = collections.defaultdict(list)
    for row in missed:
        by_slot[row["job_type"], slot_key(row["scheduled_at"])].append(row)
    tally.missed_slots = sum(
        max(_leading_int(r["error"]) for r in same) for same in by_slot.values()
    )
    twice = [same for same in by_slot.values() if len({r["instance"] for r in same}) > 1]
    if twice:
        example = "\n".join(f"    {_row(r)} error={str(r['error'])[:90]}" for r in twice[0])
        tally.notes.append(
            f"{len(twice)} missed slot(s) recorded by two instances, e.g.\n{example}"
        )
    skips = collections.Counter(
        f"{r['skip_reason']} ({_gist(r['error'])})" for r in rows if r["outcome"] == "skipped"
    )
    tally.notes.append("skip rows: " + "; ".join(f"{k}: {n}" for k, n in sorted(skips.items())))


def _gist(error: object) -> str:
    text = str(error or "")
    return "N slots passed unrun" if _leading_int(text) else text.split("(")[0][:70].strip()


def _leading_int(text: object) -> int:
    head = str(text or "").split(maxsplit=1)
    return int(head[0]) if head and head[0].isdigit() else 0


def _first_runs(entries: list[Entry], tally: Tally) -> None:
    """Fault to the first body the successor executed after it (the gap in the schedule)."""
    for fault in tally.faults:
        if fault.successor is None:
            continue
        after = [e.at for e in entries if e.pid == fault.successor and e.at >= fault.at]
        if after:
            tally.first_runs.append(min(after) - fault.at)


def _row(row: dict[str, Any]) -> str:
    fields = ("job_type", "scheduled_at", "trigger", "attempt", "outcome", "skip_reason",
              "instance", "started_at", "finished_at")  # fmt: skip
    return " ".join(f"{name}={row[name]}" for name in fields)


def _explain(
    kind: str, key: tuple[str, int], runs: list[Entry], rows: list[dict[str, Any]], cluster: Cluster
) -> str:
    """Everything about one bad slot: its bodies, its rows, the logs of the processes around."""
    job, slot = key
    names = {i.pid: i.name for i in cluster.every}
    lines = [f"{kind} {job} slot {runs[0].text}"]
    lines += [f"  body by {names.get(e.pid, f'pid {e.pid}')} at {e.at:.3f}" for e in runs]
    lines += [
        f"  row {_row(r)}" for r in rows if (r["job_type"], slot_key(r["scheduled_at"])) == key
    ]
    moment = slot / 1e6
    for instance in cluster.every:
        for record in instance.records():
            near = abs(_when(record) - moment) <= 4
            if near and (record.get("job_type") == job or "job_type" not in record):
                lines.append(f"  log {instance.name}: {json.dumps(record)[:400]}")
    return "\n".join(lines)


# --- raw APScheduler ---------------------------------------------------------------------------


def run_raw(url: str, jobs: int, cycles: list[Cycle], journal: Path) -> Tally:
    tally = Tally("raw APSched")
    process = _start_raw(url, journal, jobs)
    try:
        if not _await_run(journal, process.pid, 0.0, 60):
            raise RuntimeError("raw APScheduler ran nothing")
        started = time.monotonic()
        for cycle in cycles:
            time.sleep(cycle.wait)
            process.kill()  # one process: every fault is a kill -9 and a restart
            fault = Fault(time.time(), "kill", None)
            process.wait(10)
            process = _start_raw(url, journal, jobs)
            fault.successor = process.pid
            tally.faults.append(fault)
            if not _await_run(journal, process.pid, fault.at, 30):
                tally.notes.append(f"cycle {tally.cycles + 1}: no run after the restart")
            tally.cycles += 1
        tally.seconds = time.monotonic() - started
    finally:
        process.kill()
        process.wait(10)
    entries = [e for e in read_journal(journal) if e.slot is not None]
    missed = Path(f"{journal}.missed")
    tally.missed_slots = len(missed.read_text().splitlines()) if missed.exists() else 0
    twice = doubles(entries)
    tally.runs, tally.double = len(entries), len(twice)
    for (job, _), runs in twice.items():
        bodies = ", ".join(f"pid {e.pid} at {e.at:.3f}" for e in runs)
        tally.notes.append(f"raw double: {job} slot {runs[0].text}: {bodies}")
    _first_runs(entries, tally)
    return tally


def _start_raw(url: str, journal: Path, jobs: int) -> subprocess.Popen[bytes]:
    # -c, not -m: the job's textual reference must name the module this code is imported as.
    code = "from bench.faults import raw_child; raw_child()"
    with open(f"{journal}.log", "ab") as log:
        return subprocess.Popen(
            [MEASURED_PYTHON, "-c", code, url, str(journal), str(jobs)], cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _await_run(journal: Path, pid: int, since: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.pid == pid and e.at >= since for e in read_journal(journal)):
            return True
        time.sleep(0.05)
    return False


_run_time = threading.local()


def raw_body(job_id: str) -> None:
    """The raw job: a journal line with the run time the executor set, then 0-0.3 s."""
    slot = _run_time.value.isoformat()
    with open(os.environ["BENCH_FAULT_JOURNAL"], "a") as journal:
        journal.write(f"{job_id} {slot} {os.getpid()} {time.time()}\n")
    time.sleep(random.random() * 0.3)


def raw_child() -> None:
    """The raw APScheduler process: `-c ... URL JOURNAL JOBS`; runs until killed."""
    from apscheduler.events import EVENT_JOB_MISSED
    from apscheduler.executors.base import run_job
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    url, journal, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["BENCH_FAULT_JOURNAL"] = journal

    def each(job: Any, alias: str, run_times: list[datetime], logger: str) -> list[Any]:
        events: list[Any] = []
        for run_time in run_times:  # run_job handles each alike; one at a time, so it is known
            _run_time.value = run_time
            events += run_job(job, alias, [run_time], logger)
        return events

    class Journaling(ThreadPoolExecutor):  # type: ignore[misc]
        def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
            # BasePoolExecutor's, with `each` in place of `run_job`.
            def done(future: Any) -> None:
                error = future.exception()
                if error is not None:
                    self._run_job_error(job.id, error, error.__traceback__)
                else:
                    self._run_job_success(job.id, future.result())

            submitted = self._pool.submit(
                each, job, job._jobstore_alias, run_times, self._logger.name
            )
            submitted.add_done_callback(done)

    def missed(event: Any) -> None:
        with open(f"{journal}.missed", "a") as out:
            out.write(f"{event.job_id} {event.scheduled_run_time.isoformat()}\n")

    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=url)},
        executors={"default": Journaling()},
        timezone=UTC,
    )
    scheduler.add_listener(missed, EVENT_JOB_MISSED)
    scheduler.start(paused=True)
    first = datetime.now(UTC) + timedelta(seconds=1)
    for n in range(jobs):
        job_id = f"raw_{n:03d}"
        if scheduler.get_job(job_id) is None:  # a restart keeps the stored schedule
            scheduler.add_job(
                "bench.faults:raw_body", "interval", seconds=1, id=job_id, args=[job_id],
                next_run_time=first + timedelta(seconds=n / jobs),
            )  # fmt: skip
    scheduler.resume()
    while True:
        time.sleep(3600)


# --- the report --------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f}/{max(values):.2f}s"


def _opt(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def ratio(raw: int, service: int) -> str:
    if service:
        return f"{raw / service:.2f}x"
    return "inf" if raw else "n/a (0 and 0)"


def report(store: str, service: Tally, raw: Tally) -> None:
    print(f"{'system':<12} {'cycles':>6} {'secs':>5} {'runs':>6} {'double':>6} {'running':>7} "
          f"{'lost':>5} {'already_run':>11} {'missed rows/slots':>17} {'term won med/max':>16} "
          f"{'1st run med/max':>16}")  # fmt: skip
    for t in (service, raw):
        won = [f.won for f in t.faults if f.won is not None]
        missed = f"{'-' if t.missed_rows is None else t.missed_rows}/{t.missed_slots}"
        print(f"{t.system:<12} {t.cycles:>6} {t.seconds:>5.0f} {t.runs:>6} {t.double:>6} "
              f"{_opt(t.running):>7} {_opt(t.lost):>5} {_opt(t.already_run):>11} {missed:>17} "
              f"{_spread(won):>16} {_spread(t.first_runs):>16}")  # fmt: skip
    print(f"{store}: double runs raw / service: {ratio(raw.double, service.double)}")
    actions = collections.Counter(f.action for f in service.faults)
    by = collections.Counter(f.by for f in service.faults if f.by)
    leader_faults = [f for f in service.faults if f.successor is not None]
    late = sum(1 for f in leader_faults if f.won is None)
    print(f"{store}: service faults {dict(actions)}; terms won by {dict(by)}; no takeover "
          f"within lease + 5 s: {late} of {len(leader_faults)} (not in the medians)")  # fmt: skip
    for note in service.notes + raw.notes:
        print(f"{store}: {note}")


def main() -> None:
    stores = os.environ.get("BENCH_FAULT_STORES", "sqlite,postgresql").split(",")
    jobs = int(os.environ.get("BENCH_FAULT_JOBS", "20"))
    count = int(os.environ.get("BENCH_FAULT_CYCLES", "20"))
    seed = int(os.environ.get("BENCH_FAULT_SEED", "13"))
    cycles = plan(seed, count)
    print(f"Faults: {jobs} non-idempotent jobs at 1 s (bodies 0-0.3 s), {count} cycles, "
          f"seed {seed}; service: 2 instances, lease {LEASE_SECONDS:g} s; raw APScheduler: "
          "1 process (no leader election), kill -9 each cycle")  # fmt: skip
    for store in stores:
        print(f"\nstore {store}")
        with tempfile.TemporaryDirectory() as tmp:
            with database(store) as url:
                service = run_service(url, jobs, cycles, Path(tmp) / "service.journal")
            with database(store) as url:
                raw = run_raw(url, jobs, cycles, Path(tmp) / "raw.journal")
        report(store, service, raw)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
