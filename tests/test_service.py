"""The real service, as a subprocess, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import itertools
import signal
import time
from datetime import datetime

from tests.support import ServiceFactory, task_source, wait_until

QUICK = "return [RunnerResult(success=True)]"


def test_runs_jobs_on_their_interval(any_services: ServiceFactory) -> None:
    any_services.write_task("ticker.py", task_source("ticker", QUICK, interval_seconds=0.5))
    service = any_services()
    any_services.wait_for_runs("ticker", 4)
    runs = any_services.runs("ticker")  # with any still in flight, so none is missing
    gaps = [
        (b.scheduled_at - a.scheduled_at).total_seconds()  # type: ignore[operator]
        for a, b in itertools.pairwise(runs)
    ]
    assert all(abs(gap - 0.5) < 0.05 for gap in gaps), gaps
    lags = [(r.started_at - r.scheduled_at).total_seconds() for r in runs]  # type: ignore[operator]
    assert max(lags) < 0.5, lags
    assert {r.instance for r in runs} == {service.instance}
    assert service.stop() == 0


def test_first_runs_start_within_two_seconds(services: ServiceFactory) -> None:
    services.write_task("soon.py", task_source("soon", QUICK, interval_seconds=3600))
    service = services()
    (run,) = services.wait_for_runs("soon", 1, timeout=10)
    # From the moment the instance became active (the interpreter's start-up is not the
    # schedule's): its first run within the 1 s spread, plus a worker's hand-over.
    active = service.wait_for_log("active: this instance runs the jobs")
    became_active = datetime.fromisoformat(active["timestamp"])
    assert (run.started_at - became_active).total_seconds() < 2.0


def test_restart_keeps_the_stored_next_run_time(any_services: ServiceFactory) -> None:
    any_services.write_task("hourly.py", task_source("hourly", QUICK, interval_seconds=3600))
    first = any_services()
    any_services.wait_for_runs("hourly", 1)
    next_run = any_services.stored_next_run_time("hourly")
    assert next_run is not None and next_run > time.time() + 3000
    assert first.stop() == 0

    second = any_services()
    second.wait_for_log("active: this instance runs the jobs")
    second.wait_for_log("Resumed scheduler job processing")
    assert any_services.stored_next_run_time("hourly") == next_run
    assert len(any_services.finished("hourly")) == 1  # no run at the restart
    assert second.find_log("job added", job_type="hourly") is None
    assert second.stop() == 0


def test_changed_interval_updates_the_trigger(services: ServiceFactory) -> None:
    services.write_task("slow.py", task_source("slow", QUICK, interval_seconds=3600))
    first = services()
    services.wait_for_runs("slow", 1)
    assert first.stop() == 0
    second = services(SLOW_INTERVAL_SECONDS="0.3")
    second.wait_for_log("job schedule changed", job_type="slow", schedule="every 0.3s")
    services.wait_for_runs("slow", 4)


def test_disabled_job_is_not_stored_and_does_not_run(services: ServiceFactory) -> None:
    services.write_task("on.py", task_source("on_job", QUICK, interval_seconds=0.2))
    services.write_task("off.py", task_source("off_job", QUICK, interval_seconds=0.2))
    service = services(OFF_JOB_ENABLED="false")
    services.wait_for_runs("on_job", 3)
    assert services.runs("off_job") == []
    assert services.stored_job_ids() == {"on_job"}
    assert service.stop() == 0


def test_deleted_task_file_removes_its_job(services: ServiceFactory) -> None:
    services.write_task("keep.py", task_source("keep", QUICK, interval_seconds=60))
    gone = services.write_task("gone.py", task_source("gone", QUICK, interval_seconds=60))
    first = services()
    wait_until(lambda: services.stored_job_ids() == {"keep", "gone"}, what="both jobs stored")
    assert first.stop() == 0
    gone.unlink()
    service = services()
    removed = service.wait_for_log("job removed", job_type="gone")
    assert removed["reason"] == "task file gone.py was deleted"
    assert services.stored_job_ids() == {"keep"}
    assert service.stop() == 0


def test_broken_task_file_keeps_its_schedule_and_skips_its_runs(services: ServiceFactory) -> None:
    services.write_task("good.py", task_source("good", QUICK, interval_seconds=0.3))
    source = task_source("fragile", QUICK, interval_seconds=0.3)
    services.write_task("fragile.py", source)
    first = services()
    services.wait_for_runs("fragile", 1)
    assert first.stop() == 0

    services.write_task("fragile.py", source + "\ndef broken(:\n")
    second = services()
    second.wait_for_log("task file failed to import", path=str(services.tasks_dir / "fragile.py"))
    kept = second.wait_for_log("job kept, but its task file failed to import; its runs are skipped")
    assert kept["job_type"] == "fragile"
    skipped = wait_until(
        lambda: [
            r for r in services.finished("fragile", "skipped") if r.skip_reason == "not_loaded"
        ],
        what="a not_loaded skip",
    )
    assert "its task file fragile.py failed to import: SyntaxError" in (skipped[0].error or "")
    good_before = len(services.finished("good"))
    services.wait_for_runs("good", good_before + 3)  # the other jobs keep running
    assert "fragile" in services.stored_job_ids()
    assert second.stop() == 0

    services.write_task("fragile.py", source)  # fixed: it runs again on the kept schedule
    services()
    successes = len(services.finished("fragile", "success"))
    services.wait_for_runs("fragile", successes + 2)


def test_sigterm_lets_running_jobs_finish(services: ServiceFactory) -> None:
    services.write_task(
        "steady.py",
        task_source(
            "steady",
            "pathlib.Path(os.environ['MARK']).touch()\nawait asyncio.sleep(1.5)\n" + QUICK,
            interval_seconds=3600,
        ),
    )
    mark = services.workdir / "started.mark"
    service = services(MARK=str(mark), SCHEDULER_SHUTDOWN_GRACE_SECONDS="20")
    wait_until(mark.exists, what="the run to start")
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0
    (run,) = services.finished("steady")
    assert run.outcome == "success"
    assert service.find_log("waiting for running jobs", runs=1) is not None


def test_sigterm_past_the_grace_period_interrupts_runs(services: ServiceFactory) -> None:
    services.write_task(
        "stuck.py",
        task_source("stuck", "await asyncio.sleep(600)\n" + QUICK, interval_seconds=3600),
    )
    service = services(SCHEDULER_SHUTDOWN_GRACE_SECONDS="0.5")
    wait_until(lambda: services.runs("stuck"), what="the run to start")
    started = time.monotonic()
    service.signal(signal.SIGINT)
    assert service.wait(30) == 0
    assert time.monotonic() - started < 10
    (run,) = services.runs("stuck")
    assert run.outcome == "interrupted"
    assert run.finished_at is not None
    assert "shutting down" in (run.error or "")


def test_kill_9_then_restart_records_interrupted_runs_and_reruns_idempotent_ones(
    any_services: ServiceFactory,
) -> None:
    body = "await asyncio.sleep(float(os.environ.get('SLEEP', '0')))\n" + QUICK
    any_services.write_task("safe.py", task_source("safe", body, interval_seconds=3600))
    any_services.write_task(
        "unsafe.py", task_source("unsafe", body, interval_seconds=3600, idempotent=False)
    )
    first = any_services(SLEEP="600")
    wait_until(
        lambda: (
            {r.job_type for r in any_services.runs() if r.outcome == "running"}
            == {"safe", "unsafe"}
        ),
        what="both runs in flight",
    )
    first.signal(signal.SIGKILL)
    first.wait(10)

    second = any_services(SLEEP="0")
    second.wait_for_log("run was interrupted by a stopped process", job_type="unsafe", rerun=False)
    second.wait_for_log("run was interrupted by a stopped process", job_type="safe", rerun=True)
    rerun = any_services.wait_for_runs("safe", 1)
    assert [r.trigger for r in rerun] == ["recovery"]
    for job_type in ("safe", "unsafe"):
        interrupted = any_services.finished(job_type, "interrupted")
        assert len(interrupted) == 1, job_type
        assert interrupted[0].instance == first.instance
        assert "killed or crashed" in (interrupted[0].error or "")
    assert any_services.finished("unsafe", "success") == []
    assert [r for r in any_services.runs() if r.outcome == "running"] == []
    assert second.stop() == 0
