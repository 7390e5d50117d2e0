"""Guarantees under faults, with real services killed, paused and locked out, on a SQLite file
and on PostgreSQL. Each test counts from a journal the task bodies write outside the database
(one O_APPEND line per executed body: job, slot, process) and from the run history: slots run
twice, rows left `running`, runs refused.
"""

from __future__ import annotations

import collections
import os
import pickle
import signal
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import make_url, text

from tests.support import ServiceFactory, ServiceProcess, wait_until

LEASE = {"SCHEDULER_LEASE_SECONDS": "3", "SCHEDULER_SHUTDOWN_GRACE_SECONDS": "1"}

JOURNALED = """
import asyncio, os
from scheduler import BaseTask, JobContext, RunnerResult, job


class Journaled(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        slot = context.scheduled_time.isoformat() if context.scheduled_time else "-"
        with open(os.environ["JOURNAL"], "a") as journal:
            journal.write(f"{{context.job_type}} {{slot}} {{os.getppid()}}\\n")
        await asyncio.sleep({sleep})
        return [RunnerResult(success=True)]


for n in range({count}):
    job(f"once_{{n}}", interval_seconds=1, idempotent=False, max_retries=0)(
        type(f"Once{{n}}", (Journaled,), {{}})
    )
"""


def journal(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


def slots_run_twice(path: Path) -> dict[tuple[str, str], int]:
    counts = collections.Counter((job, slot) for job, slot, _ in journal(path) if slot != "-")
    return {slot: count for slot, count in counts.items() if count > 1}


def runs_by(services: ServiceFactory, service: ServiceProcess) -> int:
    return sum(1 for r in services.runs() if r.instance == service.instance and r.finished_at)


def leader_in(*candidates: ServiceProcess) -> ServiceProcess | None:
    for service in candidates:
        try:
            status, _ = service.get_json("/readyz")
        except OSError:
            continue
        if status == 200:
            return service
    return None


class Payload:
    """What an attacker writes into the job store: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_row_in_the_job_store_runs_no_code_and_is_set_aside(
    any_services: ServiceFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    any_services.write_task("once.py", JOURNALED.format(count=2, sleep=0))
    first = any_services(JOURNAL=str(tmp_path / "journal"))
    any_services.wait_for_runs("once_0", 1)
    assert first.stop() == 0
    crafted = pickle.dumps(Payload(marker))
    with any_services.engine.begin() as connection:
        connection.execute(
            text("UPDATE scheduler_jobs SET job_state = :state WHERE id = 'once_0'"),
            {"state": crafted},
        )
        connection.execute(
            text("INSERT INTO scheduler_jobs (id, next_run_time, job_state) VALUES (:id, 0, :s)"),
            {"id": "intruder", "s": crafted},
        )
        connection.execute(
            text("UPDATE scheduler_jobs SET job_state = :state WHERE id = 'once_1'"),
            {"state": b'{"format": 1, "id": "once_1", "func": "os:system"}'},
        )

    second = any_services(JOURNAL=str(tmp_path / "journal"))
    for job_type in ("once_0", "once_1"):  # rebuilt from the task file, running again
        wait_until(
            lambda job_type=job_type: any(
                r.instance == second.instance and r.finished_at for r in any_services.runs(job_type)
            ),
            timeout=30,
            what=f"{job_type} to run again",
        )
    assert not marker.exists(), "a row of the job store ran code"
    with any_services.engine.connect() as connection:
        set_aside = dict(
            connection.execute(text("SELECT job_id, reason FROM scheduler_jobs_set_aside")).all()
        )
        states = connection.execute(text("SELECT id, job_state FROM scheduler_jobs")).all()
    assert set(set_aside) == {"once_0", "once_1", "intruder"}
    assert "pickle" in set_aside["once_0"] and "pickle" in set_aside["intruder"]
    assert "expected the fields" in set_aside["once_1"]
    assert {job_id for job_id, _ in states} == {"once_0", "once_1"}
    assert all(bytes(state).startswith(b"{") for _, state in states)
    logged = {
        r["job_id"] for r in second.logs() if r.get("event", "").startswith("stored job set aside")
    }
    assert logged == {"once_0", "once_1", "intruder"}
    assert second.stop() == 0


def _terminate_lock_session(url: str) -> int:
    """Cut the leader's advisory-lock session, as a network partition or a proxy would: only
    in this test's database (the server is shared: another test's leader, on another test
    process, holds an advisory lock too)."""
    from sqlalchemy import create_engine

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        cut = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar_one()
    engine.dispose()
    return int(cut)


def test_a_paused_leader_is_fenced_off_and_recovery_runs_at_every_win(
    any_services: ServiceFactory, tmp_path: Path
) -> None:
    paused_leader(any_services, tmp_path, cut_lock_session=False)


def test_a_paused_leader_whose_lock_session_is_cut_is_fenced_off(
    postgres_services: ServiceFactory, tmp_path: Path
) -> None:
    """The lock goes to the standby at once: the old leader wakes up inside its lease."""
    paused_leader(postgres_services, tmp_path, cut_lock_session=True)


def paused_leader(any_services: ServiceFactory, tmp_path: Path, *, cut_lock_session: bool) -> None:
    """SIGSTOP the leader (and maybe cut its lock session): the standby takes over within the
    lease; on SIGCONT the old leader runs no slot the new one runs, is demoted, and
    when the new leader is killed in turn it wins again and closes the rows left `running`."""
    path = tmp_path / "journal"
    any_services.defaults.update(LEASE, JOURNAL=str(path))
    any_services.write_task("once.py", JOURNALED.format(count=6, sleep=0.2))
    a = any_services()
    a.wait_for_log("active: this instance runs the jobs", timeout=30)
    b = any_services()
    b.wait_for_log("standby: another instance is active", timeout=30)
    wait_until(lambda: runs_by(any_services, a) >= 12, timeout=30, what="runs on the leader")

    a.signal(signal.SIGSTOP)
    if cut_lock_session:
        assert _terminate_lock_session(any_services.database_url) >= 1
    won = b.wait_for_log("leadership term won", timeout=15)
    assert won["by"] == ("lock" if cut_lock_session else "lease")
    wait_until(lambda: runs_by(any_services, b) >= 12, timeout=30, what="runs on the successor")

    a.signal(signal.SIGCONT)
    a.wait_for_log("demoted: another instance leads now; this one stands by", timeout=15)
    before = runs_by(any_services, b)
    wait_until(lambda: runs_by(any_services, b) >= before + 12, timeout=30, what="more runs")

    # Kill the new leader with runs in flight: the old one wins a new term and recovers.
    wait_until(
        lambda: any(r.outcome == "running" for r in any_services.runs()),
        timeout=30,
        interval=0.01,
        what="a run in flight",
    )
    b.kill()
    wins = wait_until(
        lambda: (
            len([r for r in a.logs() if r.get("event") == "leadership term won"]) >= 2 and a.logs()
        ),
        timeout=30,
        what="the old leader to win again",
    )
    assert wins
    wait_until(lambda: leader_in(a) is a, timeout=30, what="the old leader ready again")
    wait_until(
        lambda: all(
            r.outcome != "running" or r.instance == a.instance for r in any_services.runs()
        ),
        timeout=30,
        what="rows the killed leader left running to be closed",
    )
    assert a.stop() == 0

    assert slots_run_twice(path) == {}
    assert [r for r in any_services.runs() if r.outcome == "running"] == []


def test_a_kill_right_after_a_start_does_not_run_that_slot_again(
    any_services: ServiceFactory, tmp_path: Path
) -> None:
    """The next run time reaches the table up to 100 ms after a run starts: a kill -9 inside
    that window re-fires the slot after the restart, and the history refuses its second
    first attempt (recorded as skipped `already_run`)."""
    path = tmp_path / "journal"
    any_services.defaults.update(JOURNAL=str(path))
    any_services.write_task("once.py", JOURNALED.format(count=3, sleep=0.5))
    for _ in range(4):
        seen = len(journal(path))
        service = any_services()
        wait_until(
            lambda seen=seen, service=service: len(journal(path)) > seen or service._check_alive(),
            timeout=30,
            interval=0.002,
            what="a run to start",
        )
        service.signal(signal.SIGKILL)  # within a few ms of the body's start
        service.wait(10)
    final = any_services()
    wait_until(
        lambda: len({r.job_type for r in any_services.runs() if r.instance == final.instance}) == 3,
        timeout=30,
        what="every job to run after the last kill",
    )
    assert final.stop() == 0
    assert slots_run_twice(path) == {}
    assert [r for r in any_services.runs() if r.outcome == "running"] == []
    refused = [r for r in any_services.runs() if r.skip_reason == "already_run"]
    for row in refused:
        firsts = [
            r
            for r in any_services.runs(row.job_type)
            if r.scheduled_at == row.scheduled_at
            and r.trigger == "schedule"
            and r.attempt == 1
            and r.outcome != "skipped"
        ]
        assert len(firsts) == 1


BAD_TEXT = """
import os
from scheduler import BaseTask, JobContext, RunnerResult, job


@job("surrogate", interval_seconds=1, max_retries=0)
class Surrogate(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        raise OSError("cannot open " + os.fsdecode(b"/data/caf\\xe9.csv") + " \\x00")


@job("huge", interval_seconds=1, max_retries=0)
class Huge(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        raise ValueError("x" * 10_000_000)


@job("fine", interval_seconds=1)
class Fine(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return [RunnerResult(success=True)]
"""


def test_text_the_databases_refuse_is_cleaned_and_blocks_nothing(
    any_services: ServiceFactory,
) -> None:
    any_services.write_task("bad_text.py", BAD_TEXT)
    service = any_services()
    surrogate = any_services.wait_for_runs("surrogate", 2, outcome="failure", timeout=30)
    huge = any_services.wait_for_runs("huge", 2, outcome="failure", timeout=30)
    any_services.wait_for_runs("fine", 3, timeout=30)
    assert "caf\\udce9.csv" in str(surrogate[0].error)
    assert "\x00" not in str(surrogate[0].error)
    assert len(str(huge[0].error)) <= 2000
    for path in ("/", "/api/jobs/surrogate/runs", "/api/jobs/huge/runs", "/healthz"):
        status, body = service.get(path)
        assert status == 200, (path, body[:300])
    status, runs = service.get_json("/api/jobs/surrogate/runs")
    assert "caf\\udce9.csv" in runs["runs"][0]["error"]
    logged = [r for r in service.logs() if r.get("job_type") == "huge" and r.get("error")]
    assert logged and max(len(r["error"]) for r in logged) <= 2000
    assert service.stop() == 0


def test_a_sqlite_file_locked_by_another_process_is_reported_and_runs_resume(
    services: ServiceFactory, tmp_path: Path
) -> None:
    path = tmp_path / "journal"
    services.defaults.update(LEASE, JOURNAL=str(path))
    services.write_task("once.py", JOURNALED.format(count=2, sleep=0))
    service = services()
    services.wait_for_runs("once_0", 2, timeout=30)
    database = make_url(services.database_url).database
    locker = sqlite3.connect(str(database), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the file's one write lock
    try:
        service.wait_for_log(
            "lease not renewed (database unreachable or locked): no runs start until it is",
            timeout=15,
        )
        wait_until(
            lambda: (
                service.get("/healthz")[0] == 503
                and b"lease not renewed" in service.get("/healthz")[1]
            ),
            timeout=15,
            what="/healthz to report the lock",
        )
    finally:
        locker.close()
    service.wait_for_log("lease renewed again: resuming the schedule", timeout=15)
    wait_until(lambda: service.get("/healthz")[0] == 200, timeout=15, what="/healthz 200")
    missed = wait_until(
        lambda: [r for r in services.runs("once_0") if r.skip_reason == "missed"],
        timeout=15,
        what="the missed slots recorded",
    )
    assert "did not happen" in str(missed[0].error)
    before = len(services.finished("once_0", "success"))
    services.wait_for_runs("once_0", before + 2, timeout=15)
    assert service.stop() == 0
    assert slots_run_twice(path) == {}


LONG_IDEMPOTENT = """
import asyncio
from scheduler import BaseTask, JobContext, RunnerResult, job


@job("long", interval_seconds=3600, idempotent=True)
class Long(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        if context.scheduled_time is not None and context.attempt == 1 and not {recovered!r}:
            await asyncio.sleep(60)
        return [RunnerResult(success=True)]
"""


def test_an_idempotent_run_cut_off_by_sigterm_runs_again_at_the_next_start(
    services: ServiceFactory,
) -> None:
    services.defaults.update(SCHEDULER_SHUTDOWN_GRACE_SECONDS="0.5")
    services.write_task("long.py", LONG_IDEMPOTENT.format(recovered=False))
    service = services()
    wait_until(
        lambda: [r for r in services.runs("long") if r.outcome == "running"],
        timeout=30,
        what="the long run to start",
    )
    assert service.stop() == 0
    (cut,) = services.finished("long")
    assert cut.outcome == "interrupted" and "runs again at the next start" in str(cut.error)

    services.write_task("long.py", LONG_IDEMPOTENT.format(recovered=True))
    again = services()
    rerun = wait_until(
        lambda: [r for r in services.finished("long", "success") if r.trigger == "recovery"],
        timeout=30,
        what="the cut-off run to run again",
    )
    assert rerun[0].scheduled_at == cut.scheduled_at
    assert again.stop() == 0
    third = services()
    third.wait_for_log("active: this instance runs the jobs", timeout=30)
    assert third.stop() == 0
    assert len([r for r in services.runs("long") if r.trigger == "recovery"]) == 1


def test_slots_missed_while_stopped_are_recorded(services: ServiceFactory, tmp_path: Path) -> None:
    services.defaults.update(JOURNAL=str(tmp_path / "journal"))
    services.write_task("once.py", JOURNALED.format(count=1, sleep=0))
    first = services()
    services.wait_for_runs("once_0", 1, timeout=30)
    assert first.stop() == 0
    # As if the service had been down for 30 s: the stored next run time is 30 slots old.
    past = (datetime.now(UTC) - timedelta(seconds=30)).timestamp()
    with services.engine.begin() as connection:
        connection.execute(
            text("UPDATE scheduler_jobs SET next_run_time = :t WHERE id = 'once_0'"), {"t": past}
        )
    updated = time.monotonic()
    second = services()
    (missed,) = wait_until(
        lambda: [r for r in services.runs("once_0") if r.skip_reason == "missed"],
        timeout=30,
        what="the missed slots recorded",
    )
    count = int(str(missed.error).split()[0])
    # 30 slots, and one more for each second the (loaded) machine took to start the service.
    assert 29 <= count <= 31 + time.monotonic() - updated, missed.error
    assert second.stop() == 0
