"""kill -9 at arbitrary moments under load, on a SQLite file and on PostgreSQL.

After the last kill the service comes up once more. Then no schedule may be lost, and every run
whose body executed (each leaves a line in a journal outside the database) must have its row in
the history with a final outcome.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from tests.support import ServiceFactory, ServiceProcess, wait_until

JOBS = 40

TASKS = """
import asyncio, os, random
from scheduler import BaseTask, JobContext, RunnerResult, job


class Busy(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        # Proof that the body ran, kept where a kill cannot reach (one O_APPEND write).
        with open(os.environ["JOURNAL"], "a") as journal:
            journal.write(f"{{context.run_id}} {{context.attempt}}\\n")
        await asyncio.sleep(random.uniform(0, 0.3))
        return [RunnerResult(success=True)]


for n in range({count}):
    job(f"load_{{n:02d}}", interval_seconds=1, max_retries=0)(type(f"Load{{n}}", (Busy,), {{}}))
"""


def journal_entries(journal: Path) -> set[tuple[str, int]]:
    if not journal.exists():
        return set()
    entries = set()
    for line in journal.read_text().splitlines():
        run_id, attempt = line.split()
        entries.add((run_id, int(attempt)))
    return entries


@contextmanager
def history_writes_blocked(url: str) -> Iterator[None]:
    """Another session holds the lock the service's history writes need: a slow database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connection = sqlite3.connect(str(parsed.database), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")  # the one write lock of the file
        try:
            yield
        finally:
            connection.close()
        return
    engine = create_engine(url)
    with engine.connect() as session, session.begin():
        session.execute(text("LOCK TABLE scheduler_runs IN SHARE ROW EXCLUSIVE MODE"))
        yield
    engine.dispose()


def in_flight(service: ServiceProcess) -> int:
    """Runs handed over and not finished (waiting for their row, or executing)."""
    status, jobs = service.get_json("/api/jobs")
    return sum(job["running"] for job in jobs) if status == 200 else 0


def kill_9(
    services: ServiceFactory, journal: Path, moment: str, more_runs: int, seed: int
) -> ServiceProcess:
    """Start a service and kill -9 it at `moment`, after `more_runs` runs unless at start-up."""
    before = len(journal_entries(journal))
    service = services(JOURNAL=str(journal))
    if moment != "start-up":
        wait_until(
            lambda: len(journal_entries(journal)) >= before + more_runs or service._check_alive(),
            timeout=60,
            what=f"{more_runs} more runs (seed {seed})",
        )
    if moment == "stalled commits":
        with history_writes_blocked(services.database_url):
            # On SQLite the lock stalls the job store's writes too: after one more wakeup no
            # run is handed over, so one waiting run is what can be counted on.
            wait_until(lambda: in_flight(service) >= 1, timeout=30, what="runs to queue up")
            service.signal(signal.SIGKILL)
            service.wait(10)
    service.signal(signal.SIGKILL)
    service.wait(10)
    return service


def test_kill_9_at_any_moment_loses_no_schedule_and_no_started_run(
    any_services: ServiceFactory, tmp_path: Path
) -> None:
    seed = int(os.environ.get("DURABILITY_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    journal = tmp_path / "journal.txt"
    any_services.write_task("load.py", TASKS.format(count=JOBS))
    job_ids = {f"load_{n:02d}" for n in range(JOBS)}
    killed: list[ServiceProcess] = []
    # Kill during start-up (migrations, reconciliation), amid the runs, and while history
    # commits are stalled behind another session's lock (runs handed over, rows not written).
    for moment in ("start-up", "amid runs", "stalled commits", "amid runs"):
        killed.append(kill_9(any_services, journal, moment, rng.randint(1, 150), seed))

    final = any_services(JOURNAL=str(journal))
    wait_until(
        lambda: (
            {
                r.job_type
                for r in any_services.runs()
                if r.instance == final.instance and r.finished_at
            }
            >= job_ids
        ),
        timeout=60,
        what=f"every job to run again after the last kill (seed {seed})",
    )
    assert final.stop() == 0

    assert any_services.stored_job_ids() == job_ids, f"seed {seed}"
    with any_services.engine.connect() as connection:
        unscheduled = connection.execute(
            text("SELECT id FROM scheduler_jobs WHERE next_run_time IS NULL")
        ).all()
    assert unscheduled == [], f"seed {seed}"

    rows = {(r.run_id, r.attempt): r for r in any_services.runs()}
    assert [r for r in rows.values() if r.outcome == "running"] == [], f"seed {seed}"
    started = journal_entries(journal)
    missing = started - rows.keys()
    assert not missing, f"{len(missing)} of {len(started)} runs that ran left no row (seed {seed})"
    by_killed = {service.instance for service in killed}
    interrupted = [r for r in rows.values() if r.outcome == "interrupted"]
    assert all(r.instance in by_killed and r.finished_at for r in interrupted), f"seed {seed}"
