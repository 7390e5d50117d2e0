"""One active instance per database: a second one waits, and takes over when the first dies.
And a PostgreSQL outage: the service stays up and resumes on its own."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

from scheduler.database import create_database_engine
from scheduler.history import migrate
from scheduler.leadership import FileLeaderLock, LeaderLock, Leadership, PostgresLeaderLock
from tests.support import (
    PrivateCluster,
    ServiceFactory,
    task_source,
    wait_until,
)

QUICK = "return [RunnerResult(success=True)]"


def test_file_lock_admits_one_holder(tmp_path: Path) -> None:
    first, second = FileLeaderLock(tmp_path / "db.lock"), FileLeaderLock(tmp_path / "db.lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire() and second.is_held()
    second.release()


def test_advisory_lock_admits_one_holder_and_notices_a_lost_connection(postgres_url: str) -> None:
    first, second = PostgresLeaderLock(postgres_url), PostgresLeaderLock(postgres_url)
    try:
        assert first.try_acquire() and first.is_held()
        assert not second.try_acquire()
        first._connection.invalidate()  # type: ignore[union-attr]  # the connection breaks
        assert not first.is_held()
        assert wait_until(second.try_acquire, timeout=10, what="the lock to be free")
    finally:
        first.release()
        second.release()


def test_standby_runs_nothing_and_takes_over_when_the_active_one_dies(
    any_services: ServiceFactory,
) -> None:
    any_services.write_task("beat.py", task_source("beat", QUICK, interval_seconds=0.3))
    active = any_services()
    active.wait_for_log("active: this instance runs the jobs")
    any_services.wait_for_runs("beat", 2)
    standby = any_services()
    standby.wait_for_log("standby: another instance is active")
    any_services.wait_for_runs("beat", len(any_services.finished("beat")) + 3)
    assert {r.instance for r in any_services.runs("beat")} == {active.instance}

    active.signal(signal.SIGKILL)
    died = time.monotonic()
    active.wait(10)
    standby.wait_for_log("active: this instance runs the jobs", timeout=10)
    wait_until(
        lambda: [r for r in any_services.finished("beat") if r.instance == standby.instance],
        timeout=10,
        what="the standby's first run",
    )
    assert time.monotonic() - died < 10
    assert standby.stop() == 0


def test_postgres_outage_is_survived_without_a_restart(
    private_cluster: PrivateCluster, tmp_path: Path, tasks_dir: Path
) -> None:
    factory = ServiceFactory(tmp_path, private_cluster.url, tasks_dir)
    try:
        factory.write_task("pulse.py", task_source("pulse", QUICK, interval_seconds=0.5))
        factory.write_task("hourly.py", task_source("hourly", QUICK, interval_seconds=3600))
        factory.defaults.update(SCHEDULER_LEASE_SECONDS="3")
        service = factory()
        factory.wait_for_runs("pulse", 3)
        factory.wait_for_runs("hourly", 1)
        standby = factory()
        standby.wait_for_log("standby: another instance is active", timeout=30)
        hourly_next = factory.stored_next_run_time("hourly")
        factory.engine.dispose()

        private_cluster.stop()
        service.wait_for_log("database unreachable", timeout=15)
        status, health = service.get_json("/healthz")
        assert status == 503 and "database unreachable" in health["problems"]
        status, page = service.get("/")  # the last known state, with a banner; not a 500
        assert status == 200 and b'id="stale"' in page and b'id="jobs"' in page
        outage_ends = time.monotonic() + 30  # the length of the outage is what is under test
        while time.monotonic() < outage_ends:
            assert service.process is not None and service.process.poll() is None, "it died"
            time.sleep(0.5)
        private_cluster.start()
        back = time.monotonic()

        before = len(factory.finished("pulse", "success"))
        factory.wait_for_runs("pulse", before + 2, timeout=10)
        assert time.monotonic() - back < 10
        service.wait_for_log("database reachable again")
        wait_until(lambda: service.get("/healthz")[0] == 200, what="healthy again")
        assert factory.stored_next_run_time("hourly") == hourly_next  # no schedule lost
        # One leader after the outage (whichever won the next term), and the pulses that fell
        # due meanwhile recorded as missed.
        leaders = wait_until(
            lambda: [p for p in (service, standby) if p.get("/readyz")[0] == 200],
            timeout=15,
            what="a leader after the outage",
        )
        assert len(leaders) == 1
        missed = [r for r in factory.runs("pulse") if r.skip_reason == "missed"]
        assert missed and "did not happen" in str(missed[0].error)
        assert service.stop() == 0
        assert standby.stop() == 0
        rows = factory.runs()
        assert [r for r in rows if r.outcome == "running"] == []
        firsts = collections.Counter(
            (r.job_type, r.scheduled_at)
            for r in rows
            if r.trigger == "schedule" and r.attempt == 1 and r.outcome != "skipped"
        )
        assert [slot for slot, count in firsts.items() if count > 1] == []
    finally:
        factory.close()


def test_file_lock_is_held_whichever_thread_asks(tmp_path: Path) -> None:
    import threading

    lock = FileLeaderLock(tmp_path / "db.lock")
    assert lock.try_acquire()
    seen: list[bool] = []
    checker = threading.Thread(target=lambda: seen.append(lock.is_held()))
    checker.start()
    checker.join()
    assert seen == [True]
    lock.release()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def contenders(url: str, lock_path: Path, clock: Clock) -> tuple[Leadership, Leadership]:
    engine = create_database_engine(url)
    migrate(engine)
    engine.dispose()

    def lock() -> LeaderLock:
        return FileLeaderLock(lock_path) if url.startswith("sqlite") else PostgresLeaderLock(url)

    return (
        Leadership(lock(), create_database_engine(url), "a", 3.0, clock),
        Leadership(lock(), create_database_engine(url), "b", 3.0, clock),
    )


def test_terms_are_fenced_and_a_silent_leader_loses_its_lease(
    database_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    a, b = contenders(database_url, tmp_path / "db.lock", clock)
    try:
        assert a.try_take() and a.fence.epoch == 1
        assert not b.try_take()  # the lock is held and the lease is fresh
        clock.now += 2.0
        assert a.renew() and a.lease_valid()
        assert not b.try_take()  # it saw the beat move: the lease starts over
        clock.now += 1.6  # a stops renewing (paused): past half its lease it starts nothing
        assert not a.lease_valid()
        assert not b.try_take()
        clock.now += 1.7  # silent for a whole lease as b sees it: b takes over, lock or not
        assert b.try_take() and b.fence.epoch == 2
        assert not a.renew() and a.fence.epoch is None  # the old leader finds out at once
        a.resign()  # it stands by and gives up the lock
        assert b.renew()
        assert not a.try_take()  # b holds its term by lease and renews it
    finally:
        a.close()
        b.close()


def test_the_lock_of_a_dead_leader_hands_over_at_once(database_url: str, tmp_path: Path) -> None:
    clock = Clock()
    a, b = contenders(database_url, tmp_path / "db.lock", clock)
    try:
        assert a.try_take()
        assert a.renew()
        a.lock.release()  # as the OS or the server does when its process dies
        assert b.try_take() and b.fence.epoch == 2  # no lease to wait out
        clock.now += 1.0  # renewals closer together than a tenth of the lease are not tried
        assert not a.renew()
    finally:
        a.close()
        b.close()


def test_a_session_left_idle_in_a_transaction_is_ended_within_half_the_lease(
    postgres_url: str,
) -> None:
    """A leader paused inside a fenced write holds the leadership row: the server must end
    that session, or the pause would hold back the successor for as long as it lasts."""
    from sqlalchemy import text

    from scheduler.service import _main_engine
    from scheduler.settings import load_settings

    engine = _main_engine(
        load_settings(database_url=postgres_url, heartbeat_seconds=1, lease_seconds=4)
    )
    try:
        with engine.connect() as connection:
            timeout = connection.execute(text("SHOW idle_in_transaction_session_timeout"))
            assert timeout.scalar_one() == "2s"
    finally:
        engine.dispose()
