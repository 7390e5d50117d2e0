"""Task code that misbehaves, in the real service with real worker processes: every way a task
can end, freeze or bloat its process costs only its own runs, and each is recorded."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from scheduler.records import NOT_EXECUTING_MARK
from tests.support import (
    ServiceFactory,
    ServiceProcess,
    metric,
    run_cli,
    task_source,
    wait_until,
)

QUICK = "return [RunnerResult(success=True)]"
TOKEN = "faults-token"
# The marker makes a body misbehave on its first attempt only, so the re-run can succeed.
FIRST_ATTEMPT_ONLY = """
marker = pathlib.Path(os.environ["MARKER_DIR"]) / context.job_type
if not marker.exists():
    marker.write_text(context.run_id)
    {misbehave}
return [RunnerResult(success=True)]
"""


def workers(service: ServiceProcess) -> list[dict[str, Any]]:
    try:
        status, body = service.get_json("/api/workers")
    except OSError:  # not listening yet
        return []
    return body if status == 200 else []


def ready_pids(service: ServiceProcess) -> set[int]:
    return {w["pid"] for w in workers(service) if w["state"] == "ready"}


def test_the_scheduler_process_runs_no_task_code(services: ServiceFactory, tmp_path: Any) -> None:
    pid_file = tmp_path / "pid"
    body = f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n{QUICK}"
    services.write_task("where.py", task_source("where", body, interval_seconds=0.3))
    service = services()
    services.wait_for_runs("where", 1)
    assert int(pid_file.read_text()) in ready_pids(service)
    assert int(pid_file.read_text()) != service.pid
    assert service.stop() == 0


@pytest.mark.parametrize(
    ("statement", "error"),
    [("raise SystemExit(3)", "SystemExit: 3"), ("raise KeyboardInterrupt", "KeyboardInterrupt")],
)
def test_exit_exceptions_fail_that_run_only(
    any_services: ServiceFactory, statement: str, error: str
) -> None:
    any_services.write_task(
        "exits.py", task_source("exits", statement, interval_seconds=0.3, max_retries=0)
    )
    any_services.write_task("ticker.py", task_source("ticker", QUICK, interval_seconds=0.3))
    service = any_services()
    failed = any_services.wait_for_runs("exits", 3, outcome="failure")
    assert {r.error for r in failed} == {f"{error} (raised by the task)"}
    before = ready_pids(service)
    any_services.wait_for_runs("ticker", 6)
    assert ready_pids(service) == before  # no worker died for it
    assert service.get("/healthz")[0] == 200
    assert service.stop() == 0


@pytest.mark.parametrize(
    ("misbehave", "described"),
    [
        ("os._exit(4)", "exited with code 4"),
        ("os.kill(os.getpid(), 9)", "was killed by SIGKILL"),
        ("import ctypes; ctypes.string_at(0)", "was killed by SIGSEGV"),
    ],
    ids=["os_exit", "sigkill", "segfault"],
)
def test_a_dying_worker_is_recorded_rerun_if_idempotent_and_replaced(
    services: ServiceFactory, tmp_path: Any, misbehave: str, described: str
) -> None:
    body = FIRST_ATTEMPT_ONLY.format(misbehave=misbehave)
    services.write_task(
        "dies.py",
        task_source("dies", body, interval_seconds=3600, retry_delay_seconds=0.1),
    )
    services.write_task(
        "once.py",
        task_source("once", body, interval_seconds=3600, idempotent=False),
    )
    service = services(MARKER_DIR=str(tmp_path))
    wait_until(lambda: len(ready_pids(service)) == 2, what="two workers")
    services.wait_for_runs("dies", 1)  # re-run: it is idempotent
    runs = services.finished("dies")
    assert runs[0].outcome == "crashed" and runs[-1].outcome == "success"
    assert described in str(runs[0].error) and {r.run_id for r in runs} == {runs[0].run_id}
    # A retry that shared its worker with `once` when that one died crashed as a bystander.
    assert all(NOT_EXECUTING_MARK in str(r.error) for r in runs[1:-1]), runs
    (once,) = services.wait_for_runs("once", 1, outcome=None)
    assert once.outcome == "crashed" and once.dead_letter  # not idempotent: not re-run
    wait_until(lambda: len(ready_pids(service)) == 2, timeout=5, what="workers replaced")
    assert metric(service, 'scheduler_worker_exits_total{reason="died"}') >= 1
    assert service.get("/healthz")[0] == 200
    assert service.stop() == 0


def test_a_run_that_ignores_cancellation_is_killed_after_the_grace(
    services: ServiceFactory,
) -> None:
    body = """
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
    """
    services.write_task(
        "stubborn.py",
        task_source("stubborn", body, interval_seconds=3600, timeout_seconds=0.5, max_retries=0),
    )
    service = services(SCHEDULER_KILL_GRACE_SECONDS="0.5")
    (run,) = services.wait_for_runs("stubborn", 1, outcome=None)
    assert run.outcome == "timeout"
    assert "its worker was killed" in str(run.error)
    assert run.duration_seconds is not None and 1.0 <= run.duration_seconds < 3.0
    assert metric(service, 'scheduler_worker_exits_total{reason="timeout"}') == 1
    assert service.stop() == 0


def test_blocking_code_is_named_and_timed_out_while_the_rest_runs(
    services: ServiceFactory,
) -> None:
    services.write_task(
        "blocker.py",
        task_source(
            "blocker",
            "import time\ntime.sleep(30)\nreturn []",
            interval_seconds=3600,
            timeout_seconds=1,
            max_retries=0,
        ),
    )
    # A tick sent to the blocked worker before the watchdog spoke is stuck there until that
    # worker is killed (then recorded `crashed`); later ones go to the other worker.
    ticker = task_source("ticker", QUICK, interval_seconds=0.2, max_concurrent=3)
    services.write_task("ticker.py", ticker)
    service = services(SCHEDULER_KILL_GRACE_SECONDS="1", SCHEDULER_WATCHDOG_SECONDS="0.3")
    blocked = service.wait_for_log("worker event loop blocked by a run", job_type="blocker")
    assert str(blocked["where"]).endswith("blocker.py:9"), blocked  # the time.sleep line
    during = workers(service)
    assert any(w["blocked_job"] == "blocker" and w["blocked_seconds"] > 0 for w in during)
    assert service.get("/healthz")[0] == 200  # the scheduler answers all along
    assert metric(service, 'scheduler_job_loop_blocks_total{job_type="blocker"}') == 1
    (run,) = services.wait_for_runs("blocker", 1, outcome="timeout")
    assert run.duration_seconds is not None and run.duration_seconds < 4.0
    ticks = [
        r
        for r in services.finished("ticker", "success")
        if run.started_at <= r.started_at <= run.finished_at  # type: ignore[operator]
    ]
    # ~10 slots fall in the window; a loaded CI machine runs fewer, a frozen service none.
    assert len(ticks) >= 3, f"the other job kept running while one worker was blocked: {ticks}"
    # The tick stuck on the blocked worker ends with it (recorded `crashed`), not left running.
    wait_until(
        lambda: (
            not [
                r
                for r in services.runs("ticker")
                if r.outcome == "running" and r.started_at <= run.finished_at  # type: ignore[operator]
            ]
        ),
        timeout=10,
        what="the ticks of the blocked worker to end",
    )
    assert service.stop() == 0


def test_a_worker_over_its_memory_limit_is_recycled_or_killed(services: ServiceFactory) -> None:
    leak = "import sys\nsys.modules['builtins'].__dict__.setdefault('_hoard', []).append(" \
        "bytearray(40 * 2**20))\nreturn [RunnerResult(success=True)]"  # fmt: skip
    services.write_task("leaky.py", task_source("leaky", leak, interval_seconds=0.3))
    hog = "hoard = bytearray(400 * 2**20)\nawait asyncio.sleep(30)\nreturn []"
    services.write_task("hog.py", task_source("hog", hog, interval_seconds=3600, idempotent=False))
    service = services(SCHEDULER_WORKER_MAX_MEMORY_MB="150", SCHEDULER_WORKER_KILL_MEMORY_MB="300")
    service.wait_for_log("worker retiring")
    wait_until(
        lambda: metric(service, 'scheduler_worker_exits_total{reason="recycled"}') >= 1,
        what="a worker recycled",
    )
    (hogged,) = services.wait_for_runs("hog", 1, outcome="crashed")
    assert "over the 300 MB limit" in str(hogged.error)
    assert metric(service, 'scheduler_worker_exits_total{reason="memory"}') >= 1
    assert len(services.finished("leaky", "success")) >= 3
    assert service.stop() == 0


def test_a_job_that_keeps_killing_its_worker_is_quarantined_until_resumed(
    any_services: ServiceFactory,
) -> None:
    any_services.write_task(
        "doomed.py",
        task_source("doomed", "os._exit(7)", interval_seconds=0.3, max_retries=0),
    )
    any_services.write_task("fine.py", task_source("fine", QUICK, interval_seconds=0.3))
    env = {"SCHEDULER_ADMIN_TOKEN": TOKEN, "SCHEDULER_QUARANTINE_AFTER": "3"}
    service = any_services(**env)
    wait_until(lambda: state_of(service, "doomed") == "quarantined", what="quarantined")
    (doomed,) = [j for j in service.get_json("/api/jobs")[1] if j["job_type"] == "doomed"]
    assert "its last 3 attempts ended their worker process" in doomed["state_reason"]
    assert metric(service, 'scheduler_job_quarantined{job_type="doomed"}') == 1
    # 3, or more where the job shared a worker with a later run when it died (the run sent
    # last is held to account)
    crashed = len(any_services.finished("doomed", "crashed"))
    assert crashed >= 3
    any_services.wait_for_runs("fine", 10)  # the other job runs on
    assert len(any_services.finished("doomed", "crashed")) == crashed  # not scheduled
    assert service.stop() == 0
    listed = run_cli(
        "list", "--json", "--tasks-dir", str(any_services.tasks_dir),
        cwd=any_services.workdir, env={"SCHEDULER_DATABASE_URL": any_services.database_url},
    )  # fmt: skip
    (doomed,) = [j for j in json.loads(listed.stdout)["jobs"] if j["job_type"] == "doomed"]
    assert doomed["state"] == "quarantined" and "ended their worker" in doomed["state_reason"]

    again = any_services(**env)  # a restart keeps the quarantine
    again.wait_for_log("active: this instance runs the jobs")  # (a standby shows it too)
    wait_until(lambda: state_of(again, "doomed") == "quarantined", what="still quarantined")
    status, _ = again.post_json("/api/jobs/doomed/resume", TOKEN)
    assert status == 200
    again.wait_for_log("quarantine lifted by an operator", job_type="doomed")
    wait_until(lambda: len(any_services.finished("doomed", "crashed")) > crashed, what="runs")
    assert again.stop() == 0


def state_of(service: ServiceProcess, job_type: str) -> str | None:
    try:
        _, jobs = service.get_json("/api/jobs")
    except OSError:
        return None
    return next((j["state"] for j in jobs if j["job_type"] == job_type), None)


def test_a_changed_task_file_lifts_its_quarantine(services: ServiceFactory) -> None:
    path = services.write_task(
        "doomed.py", task_source("doomed", "os._exit(7)", interval_seconds=0.3, max_retries=0)
    )
    service = services(SCHEDULER_QUARANTINE_AFTER="2")
    wait_until(lambda: state_of(service, "doomed") == "quarantined", what="quarantined")
    assert service.stop() == 0
    path.write_text(task_source("doomed", QUICK, interval_seconds=0.3), encoding="utf-8")
    again = services(SCHEDULER_QUARANTINE_AFTER="2")
    again.wait_for_log("quarantine lifted: the task file changed", job_type="doomed")
    services.wait_for_runs("doomed", 2)
    assert again.stop() == 0


@pytest.mark.parametrize("execution", ["process", "inline"])
def test_shutdown_ends_within_the_grace_whatever_the_task_does(
    services: ServiceFactory, execution: str
) -> None:
    body = """
    import time
    while True:
        try:
            time.sleep(0.05)
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
    """
    services.write_task("stuck.py", task_source("stuck", body, interval_seconds=3600))
    service = services(SCHEDULER_EXECUTION=execution, SCHEDULER_SHUTDOWN_GRACE_SECONDS="1")
    wait_until(lambda: services.runs("stuck"), what="the run started")
    started = time.monotonic()
    service.signal(signal.SIGTERM)
    service.wait(timeout=10)
    assert time.monotonic() - started < 1 + 2 + 0.5
    (run,) = services.runs("stuck")
    assert run.outcome != "running"  # every run gets its final row


def test_a_second_signal_stops_at_once(services: ServiceFactory) -> None:
    services.write_task(
        "long.py", task_source("long", "await asyncio.sleep(60)", interval_seconds=3600)
    )
    service = services(SCHEDULER_SHUTDOWN_GRACE_SECONDS="60")
    wait_until(lambda: services.runs("long"), what="the run started")
    service.signal(signal.SIGTERM)
    service.wait_for_log("waiting for running jobs")
    time.sleep(0.6)  # a second signal, not the same one delivered twice
    started = time.monotonic()
    service.signal(signal.SIGINT)
    service.wait(timeout=10)
    assert time.monotonic() - started < 3
    (run,) = services.runs("long")
    assert run.outcome == "interrupted"


def test_workers_do_not_outlive_a_killed_scheduler(services: ServiceFactory) -> None:
    services.write_task("ticker.py", task_source("ticker", QUICK, interval_seconds=0.2))
    service = services()
    pids = wait_until(lambda: len(ready_pids(service)) == 2 and ready_pids(service))
    service.kill()

    def gone() -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            return False
        return True

    wait_until(gone, timeout=5, what="workers gone")


def test_a_plain_def_task_runs_in_a_thread_with_its_timeout(services: ServiceFactory) -> None:
    source = (
        "import time\nfrom scheduler import BaseTask, JobContext, RunnerResult, job\n\n"
        "@job('sync_ok', interval_seconds=0.3)\nclass Ok(BaseTask[RunnerResult]):\n"
        "    def _execute_impl(self, context: JobContext) -> list[RunnerResult]:\n"
        "        time.sleep(0.05)\n        return [RunnerResult(success=True)]\n\n"
        "@job('sync_slow', interval_seconds=3600, timeout_seconds=0.5, max_retries=0)\n"
        "class Slow(BaseTask[RunnerResult]):\n"
        "    def _execute_impl(self, context: JobContext) -> list[RunnerResult]:\n"
        "        time.sleep(30)\n        return []\n"
    )
    services.write_task("sync.py", source)
    service = services()
    services.wait_for_runs("sync_ok", 3)
    (slow,) = services.wait_for_runs("sync_slow", 1, outcome="timeout")
    assert "its thread was abandoned" in str(slow.error)
    service.wait_for_log("worker retiring")
    wait_until(
        lambda: (
            metric(service, 'scheduler_worker_exits_total{reason="timeout"}')
            + metric(service, 'scheduler_worker_exits_total{reason="recycled"}')
            >= 1
        ),
        what="the stuck worker ended",
    )
    assert service.stop() == 0


def test_inline_a_task_that_ends_the_service_cannot_crash_loop_it(
    services: ServiceFactory,
) -> None:
    services.write_task(
        "killer.py", task_source("killer", "os._exit(3)", interval_seconds=3600, max_retries=0)
    )
    exits = []
    for _ in range(3):  # each start: the (recovery) run ends the whole process
        service = services(SCHEDULER_EXECUTION="inline", SCHEDULER_QUARANTINE_AFTER="3")
        exits.append(service.wait(timeout=30))
    assert exits == [3, 3, 3]
    last = services(SCHEDULER_EXECUTION="inline", SCHEDULER_QUARANTINE_AFTER="3")
    wait_until(lambda: state_of(last, "killer") == "quarantined", what="quarantined")
    rows = services.runs("killer")
    assert [r.trigger for r in rows] == ["schedule", "recovery", "recovery"]
    assert {r.outcome for r in rows} == {"interrupted"}
    assert last.stop() == 0


MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


def test_a_worker_the_kernels_oom_killer_ends_is_recorded(
    services: ServiceFactory, tmp_path: Path
) -> None:
    """The real OOM killer: the worker running the hog is moved into a memory cgroup of its
    own with a 200 MB limit, then the hog allocates 600 MB."""
    if os.geteuid() != 0 or not (MEMORY_CGROUPS / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller to make a memory cgroup")
    go = tmp_path / "go"
    body = f"""
    while not pathlib.Path({str(go)!r}).exists():
        await asyncio.sleep(0.05)
    hoard = bytearray(600 * 2**20)
    return []
    """
    services.write_task("hog.py", task_source("hog", body, interval_seconds=3600, idempotent=False))
    service = services()
    busy = wait_until(
        lambda: [w for w in workers(service) if w["runs"] == 1], what="the hog's worker"
    )
    group = MEMORY_CGROUPS / f"taskwarden-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(200 * 2**20))
        (group / "cgroup.procs").write_text(str(busy[0]["pid"]))
        go.touch()
        (run,) = services.wait_for_runs("hog", 1, outcome="crashed")
        assert "was killed by SIGKILL (the kernel's OOM killer sends SIGKILL)" in str(run.error)
        wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), what="it died")
    finally:
        group.rmdir()
    assert metric(service, 'scheduler_worker_exits_total{reason="died"}') == 1
    assert service.stop() == 0
