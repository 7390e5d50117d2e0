"""Cancelling a run in progress: the coordinator against the inline backend, then the real
service (worker processes) through the API, the command line and the status page's form."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler import BaseTask, JobContext, JobRegistry, RunnerResult, job
from scheduler.backends import InlineBackend
from scheduler.coordinator import RunCoordinator
from scheduler.database import create_database_engine
from scheduler.history import HistoryWriter, RunHistory, migrate
from scheduler.job_config import resolve_job_configs
from scheduler.job_state import JobStates
from scheduler.leadership import sole_term
from scheduler.presentation import runs_table
from scheduler.quarantine import Quarantine
from scheduler.records import (
    NOT_EXECUTING_MARK,
    BodyResult,
    Outcome,
    RunInProgress,
    RunRecord,
    RunSummary,
    StartRefusal,
    new_run_id,
)
from scheduler.slots import PrioritySlots
from scheduler.status_page import render_status_page
from tests.support import (
    ServiceFactory,
    ServiceProcess,
    metric,
    post_form,
    run_cli,
    task_source,
    wait_until,
)

TOKEN = "s3cret-admin-token"

# --- the coordinator, inline ------------------------------------------------------------------


class RecordingHistory:
    """A HistorySink that keeps a copy of every row as written, by (run id, attempt)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], RunRecord] = {}

    async def started(self, record: RunRecord) -> StartRefusal | None:
        self._keep(record)
        return None

    def finished(self, record: RunRecord) -> None:
        self._keep(record)

    def recorded(self, record: RunRecord) -> None:
        self._keep(record)

    def _keep(self, record: RunRecord) -> None:
        self.rows[(record.run_id, record.attempt)] = dataclasses.replace(record)

    def of(self, run_id: str) -> list[RunRecord]:
        return [row for (rid, _), row in sorted(self.rows.items()) if rid == run_id]


BODIES: list[str] = []  # what the task bodies did, in order


class Sleeper(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        BODIES.append(f"sleep {context.attempt}")
        await asyncio.sleep(60)
        return [RunnerResult(success=True)]


class Stubborn(BaseTask[RunnerResult]):
    """Swallows its cancellation and goes on."""

    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        BODIES.append("stubborn")
        until = time.monotonic() + 1.5  # far past the grace, and the test's end soon after
        while time.monotonic() < until:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                BODIES.append("stubborn ignored a cancellation")
        return [RunnerResult(success=True)]


class Threaded(BaseTask[RunnerResult]):
    def _execute_impl(self, context: JobContext) -> list[RunnerResult]:  # type: ignore[override]
        BODIES.append("thread")
        time.sleep(1.5)
        return [RunnerResult(success=True)]


class Failing(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        BODIES.append(f"fail {context.attempt}")
        raise RuntimeError(f"attempt {context.attempt} failed")


def coordinator_for(
    history: RecordingHistory,
    *,
    quarantine: Quarantine | None = None,
    states: JobStates | None = None,
    slots: int = 4,
    grace: float = 0.3,
) -> RunCoordinator:
    return RunCoordinator(
        resolve_job_configs(JobRegistry.list_jobs(), {}).jobs,
        history=history,
        states=states or JobStates(),
        slots=PrioritySlots(slots),
        backend=InlineBackend(kill_grace_seconds=grace),
        instance="test",
        quarantine=quarantine,
    )


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await asyncio.sleep(0.01)


def in_progress_ids(coordinator: RunCoordinator) -> list[str]:
    return [run.run_id for run in coordinator.in_progress()]


async def start(coordinator: RunCoordinator, job_type: str) -> tuple[str, asyncio.Task[Any]]:
    run_id = new_run_id()
    task = coordinator.spawn(job_type, run_id=run_id)
    await until(lambda: run_id in in_progress_ids(coordinator))
    return run_id, task


def run_async(body: Callable[[], Awaitable[None]]) -> None:
    BODIES.clear()
    asyncio.run(asyncio.wait_for(body(), 30))


def test_cancelling_a_running_attempt_records_it_cancelled_and_never_retries() -> None:
    job("sleeper", max_retries=3, retry_delay_seconds=0)(Sleeper)

    async def scenario() -> None:
        history, states = RecordingHistory(), JobStates()
        quarantine = Quarantine(after=3, streaks={"sleeper": 2})
        coordinator = coordinator_for(history, quarantine=quarantine, states=states)
        run_id, task = await start(coordinator, "sleeper")
        (listed,) = coordinator.in_progress()
        assert (listed.job_type, listed.attempt, listed.state) == ("sleeper", 1, "running")
        assert listed.trigger == "manual" and listed.worker_pid is None
        assert history.of(run_id)[0].outcome == Outcome.RUNNING

        assert coordinator.cancel(run_id) is True
        summary: RunSummary = await asyncio.wait_for(task, 5)
        assert (summary.outcome, summary.attempts) == (Outcome.CANCELLED, 1)
        (row,) = history.of(run_id)
        assert row.outcome == Outcome.CANCELLED and row.error == "cancelled by an operator"
        assert row.dead_letter is False and row.finished_at is not None
        assert BODIES == ["sleep 1"]  # no retry, though max_retries=3
        assert coordinator.in_progress() == []
        assert coordinator.cancel(run_id) is False  # over: nothing to cancel
        assert coordinator.cancel(new_run_id()) is False
        assert states.get("sleeper").last_outcome == Outcome.CANCELLED
        assert states.get("sleeper").running == 0
        # Neutral for quarantine: the streak of 2 is still there (one more crash quarantines).
        assert quarantine.reason("sleeper") is None
        quarantine.attempt_ended("sleeper", BodyResult(Outcome.CRASHED, "x", killed_worker=True))
        assert quarantine.reason("sleeper") is not None

    run_async(scenario)


def test_a_run_waiting_to_retry_ends_cancelled_without_its_next_attempt() -> None:
    job("failing", max_retries=2, retry_delay_seconds=600)(Failing)

    async def scenario() -> None:
        history = RecordingHistory()
        coordinator = coordinator_for(history)
        run_id = new_run_id()
        task = coordinator.spawn("failing", run_id=run_id)
        await until(lambda: [r.state for r in coordinator.in_progress()] == ["retrying"])
        (waiting,) = coordinator.in_progress()
        assert (waiting.run_id, waiting.attempt, waiting.worker_pid) == (run_id, 1, None)

        assert coordinator.cancel(run_id) is True
        summary = await asyncio.wait_for(task, 5)  # not 600 s
        assert summary.outcome == Outcome.CANCELLED
        first, second = history.of(run_id)
        assert (first.attempt, first.outcome, first.dead_letter) == (1, Outcome.FAILURE, False)
        assert (second.attempt, second.outcome, second.dead_letter) == (
            2,
            Outcome.CANCELLED,
            False,
        )
        assert second.error is not None and second.error.startswith("cancelled by an operator")
        assert "attempt 2 did not start" in second.error
        assert BODIES == ["fail 1"]
        assert coordinator.in_progress() == []

    run_async(scenario)


def test_a_retry_waiting_for_a_slot_can_be_cancelled() -> None:
    job("failing", max_retries=2, retry_delay_seconds=0)(Failing)
    job("sleeper")(Sleeper)

    async def scenario() -> None:
        history = RecordingHistory()
        coordinator = coordinator_for(history, slots=1)
        failing, blocker = new_run_id(), new_run_id()
        task = coordinator.spawn("failing", run_id=failing)
        # The sleeper waits for the only slot; when the first attempt fails it is handed the
        # slot, and the retry (no delay) waits for it in turn.
        blocker_task = coordinator.spawn("sleeper", run_id=blocker)
        await until(lambda: len(coordinator.in_progress()) == 2)
        states = {run.run_id: run.state for run in coordinator.in_progress()}
        assert states == {failing: "retrying", blocker: "running"}
        assert coordinator.cancel(failing) is True
        assert (await asyncio.wait_for(task, 5)).outcome == Outcome.CANCELLED
        assert [row.outcome for row in history.of(failing)] == ["failure", "cancelled"]
        assert BODIES == ["fail 1", "sleep 1"]
        assert coordinator.cancel(blocker) is True
        await asyncio.wait_for(blocker_task, 5)
        # No slot leaked: a new run gets one at once.
        again, again_task = await start(coordinator, "sleeper")
        coordinator.cancel(again)
        await asyncio.wait_for(again_task, 5)

    run_async(scenario)


def test_a_body_that_ignores_its_cancellation_is_abandoned_inline_and_recorded_cancelled() -> None:
    job("stubborn", max_retries=3)(Stubborn)

    async def scenario() -> None:
        history = RecordingHistory()
        coordinator = coordinator_for(history, grace=0.3)
        run_id, task = await start(coordinator, "stubborn")
        began = time.monotonic()
        coordinator.cancel(run_id)
        (listed,) = coordinator.in_progress()
        assert listed.state == "cancelling"
        summary = await asyncio.wait_for(task, 5)
        assert 0.25 <= time.monotonic() - began < 3
        assert summary.outcome == Outcome.CANCELLED and summary.attempts == 1
        (row,) = history.of(run_id)
        assert row.error == (
            "cancelled by an operator (it ignored its cancellation and was abandoned)"
        )
        assert "stubborn ignored a cancellation" in BODIES

    run_async(scenario)


def test_a_plain_def_body_is_waited_for_then_its_thread_abandoned() -> None:
    job("threaded", max_retries=1)(Threaded)

    async def scenario() -> None:
        history = RecordingHistory()
        coordinator = coordinator_for(history, grace=0.2)
        run_id, task = await start(coordinator, "threaded")
        coordinator.cancel(run_id)
        summary = await asyncio.wait_for(task, 5)
        assert summary.outcome == Outcome.CANCELLED
        (row,) = history.of(run_id)
        assert row.error == (
            "cancelled by an operator (a plain-def body cannot be stopped; its thread was "
            "abandoned)"
        )
        assert BODIES == ["thread"]

    run_async(scenario)


def test_wait_ended_reports_the_final_outcome() -> None:
    job("sleeper")(Sleeper)

    async def scenario() -> None:
        coordinator = coordinator_for(RecordingHistory())
        run_id, task = await start(coordinator, "sleeper")
        assert await coordinator.wait_ended([run_id], 0.05) == {}  # still running
        coordinator.cancel(run_id)
        assert await coordinator.wait_ended([run_id], 5) == {run_id: "cancelled"}
        await task
        assert await coordinator.wait_ended([run_id], 0.05) == {}  # over: not in progress

    run_async(scenario)


def test_cancelled_rows_neither_count_nor_reset_a_stored_crash_streak(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    writer = HistoryWriter(engine, sole_term(engine, "test"))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    endings = [
        (Outcome.SUCCESS, None),
        (Outcome.CRASHED, "its worker process (pid 1) was killed by SIGKILL"),
        (Outcome.CANCELLED, "cancelled by an operator"),
        (Outcome.CANCELLED, "cancelled by an operator; ... so its worker was killed"),
        (Outcome.CRASHED, "its worker process (pid 3) exited with code 9"),
    ]
    for n, (outcome, error) in enumerate(endings):
        moment = start + timedelta(minutes=n)
        writer.write(
            RunRecord(
                new_run_id(),
                1,
                "job",
                "schedule",
                moment,
                "test",
                moment,
                moment,
                outcome,
                None,
                error,
            )
        )
    assert writer.flush(10)
    writer.close()
    # Both crashes count: the cancels between them (a killed worker's too) do not end the
    # streak, nor do they count.
    assert RunHistory(engine).crash_streaks({}) == {"job": 2}
    engine.dispose()


def test_history_prints_whole_run_ids() -> None:
    run_id = new_run_id()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    record = RunRecord(run_id, 1, "job", "manual", moment, "test", None, moment, "cancelled")
    assert run_id in runs_table([record])


def test_the_in_progress_section_escapes_everything_and_needs_no_javascript() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    run = RunInProgress(
        run_id="0123456789abcdef0123456789abcdef",
        job_type="<script>alert(1)</script>",
        attempt=2,
        started_at=now - timedelta(seconds=30),
        trigger='manual"><b>',
        state="running",
        worker_pid=4242,
    )
    page = render_status_page([], [], True, [], now=now, in_progress=[run])
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "manual&quot;&gt;&lt;b&gt;" in page
    form = re.search(r'<form class="cancel" method="post" action="([^"]+)">(.*?)</form>', page)
    assert form is not None and form.group(1) == f"/runs/{run.run_id}/cancel"
    assert '<input type="password" name="token"' in form.group(2)
    assert "4242" in page and "30s ago" in page
    # A notice only for what a cancel's redirect could have said.
    said = render_status_page([], [], True, [], now=now, cancelled=(run.run_id, "cancelled"))
    assert f"Run {run.run_id} was cancelled and ended: cancelled." in said
    forged = render_status_page([], [], True, [], now=now, cancelled=("<b>hi</b>", "cancelled"))
    assert 'id="notice"' not in forged and "<b>hi" not in forged
    assert 'id="notice"' not in render_status_page(
        [], [], True, [], now=now, cancelled=(run.run_id, "<i>")
    )
    assert '<meta http-equiv="refresh"' not in render_status_page(
        [], [], True, [], now=now, refresh=False
    )


# --- the real service ----------------------------------------------------------------------

SLEEPS = "await asyncio.sleep(600)\nreturn [RunnerResult(success=True)]"
QUICK = "return [RunnerResult(success=True)]"


def plain_def_source(job_type: str, seconds: float, **options: Any) -> str:
    rendered = "".join(f", {key}={value!r}" for key, value in options.items())
    return (
        "import time\n"
        "from scheduler import BaseTask, JobContext, RunnerResult, job\n\n"
        f"@job({job_type!r}{rendered})\n"
        "class Task(BaseTask[RunnerResult]):\n"
        "    def _execute_impl(self, context: JobContext) -> list[RunnerResult]:\n"
        f"        time.sleep({seconds})\n"
        "        return [RunnerResult(success=True)]\n"
    )


def start_service(services: ServiceFactory, **env: str) -> ServiceProcess:
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN, SCHEDULER_KILL_GRACE_SECONDS="1", **env)
    service.wait_for_log("active: this instance runs the jobs", timeout=30)
    return service


def in_progress(service: ServiceProcess, job_type: str | None = None) -> list[dict[str, Any]]:
    status, runs = service.get_json("/api/runs/in-progress")
    assert status == 200, runs
    return [run for run in runs if job_type is None or run["job_type"] == job_type]


def shown(run: dict[str, Any], state: str) -> bool:
    """In `state`, and if running, on a worker (not still waiting for one to come up)."""
    return run["state"] == state and (state != "running" or run["worker_pid"] is not None)


def wait_in_progress(
    service: ServiceProcess, job_type: str, count: int = 1, state: str = "running"
) -> list[dict[str, Any]]:
    return wait_until(
        lambda: (
            len(runs := [r for r in in_progress(service, job_type) if shown(r, state)]) >= count
            and runs
        ),
        timeout=20,
        what=f"{count} run(s) of {job_type} {state}",
    )


def common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def final_rows(services: ServiceFactory, run_id: str) -> list[RunRecord]:
    """The run's rows once its latest is final (history rows are written behind the run)."""
    return wait_until(
        lambda: (rows := rows_of(services, run_id)) and rows[-1].outcome != "running" and rows,
        what=f"run {run_id}'s row to be final",
    )


def rows_of(services: ServiceFactory, run_id: str) -> list[RunRecord]:
    return [row for row in services.runs() if row.run_id == run_id]


def assert_no_row_left_running(services: ServiceFactory, *run_ids: str) -> None:
    for run_id in run_ids:
        assert all(row.outcome != "running" for row in rows_of(services, run_id)), run_id


def test_cancel_from_the_api_records_the_run_cancelled(services: ServiceFactory) -> None:
    services.write_task(
        "sleeper.py",
        task_source("sleeper", SLEEPS, interval_seconds=3600, max_retries=3,
                    retry_delay_seconds=0, timeout_seconds=900),
    )  # fmt: skip
    services.write_task("quick.py", task_source("quick", QUICK, interval_seconds=0.3))
    service = start_service(services)
    (run,) = wait_in_progress(service, "sleeper")
    run_id = run["run_id"]
    assert (run["attempt"], run["trigger"]) == (1, "schedule")
    worker_pids = {w["pid"] for w in service.get_json("/api/workers")[1]}
    assert run["worker_pid"] in worker_pids
    datetime.fromisoformat(run["started_at"])

    # Refused without the token, or with a wrong one: the run goes on.
    assert service.post_json(f"/api/runs/{run_id}/cancel")[0] == 401
    assert service.post_json(f"/api/runs/{run_id}/cancel", "wrong")[0] == 401
    # Not a run in progress: 404; too short a prefix: 422.
    assert service.post_json(f"/api/runs/{'f' * 32}/cancel", TOKEN)[0] == 404
    status, body = service.post_json(f"/api/runs/{run_id[:7]}/cancel", TOKEN)
    assert status == 422, body
    assert in_progress(service, "sleeper")[0]["run_id"] == run_id

    status, body = service.post_json(f"/api/runs/{run_id[:20]}/cancel", TOKEN)  # a prefix
    assert status == 200, body
    assert body == {"run_id": run_id, "job_type": "sleeper", "attempt": 1, "status": "cancelled"}
    (row,) = final_rows(services, run_id)  # one attempt: it is not retried
    assert row.outcome == "cancelled" and row.error == "cancelled by an operator"
    assert row.dead_letter is False and row.finished_at is not None
    assert in_progress(service, "sleeper") == []
    # The worker stopped the body itself: nobody was killed.
    assert metric(service, 'scheduler_worker_exits_total{reason="cancelled"}') == 0
    assert {w["pid"] for w in service.get_json("/api/workers")[1]} == worker_pids
    assert metric(service, 'scheduler_job_runs_total{job_type="sleeper",outcome="cancelled"}') == 1
    # Over now: a second cancel finds nothing to cancel.
    assert service.post_json(f"/api/runs/{run_id}/cancel", TOKEN)[0] == 404
    _, runs = service.get_json("/api/jobs/sleeper/runs")
    assert [(r["run_id"], r["outcome"]) for r in runs["runs"]] == [(run_id, "cancelled")]
    _, jobs = service.get_json("/api/jobs")
    assert {j["job_type"]: j["last_outcome"] for j in jobs}["sleeper"] == "cancelled"
    # The service goes on running other jobs.
    done = len(services.finished("quick", "success"))
    services.wait_for_runs("quick", done + 2)
    assert_no_row_left_running(services, run_id)


def test_cancel_a_job_prefixes_that_match_several_runs_and_a_standby(
    services: ServiceFactory,
) -> None:
    for name in ("sleeper", "napper"):
        services.write_task(
            f"{name}.py",
            task_source(name, SLEEPS, interval_seconds=3600, max_concurrent=3,
                        timeout_seconds=900),
        )  # fmt: skip
    services.write_task("idle.py", task_source("idle", QUICK, cron="0 0 1 1 *"))
    service = start_service(services)
    wait_in_progress(service, "sleeper")
    wait_in_progress(service, "napper")

    def shared_prefix() -> str:
        ids = [run["run_id"] for run in in_progress(service)]
        pairs = [common_prefix(a, b) for a in ids for b in ids if a < b]
        return max(pairs, key=len, default="")

    # UUIDv7s begin with the time: runs started within a minute share 8 characters, unless a
    # 65 s boundary fell between them; then one more run shares them with one of these.
    if len(shared_prefix()) < 8:
        assert service.post_json("/api/jobs/sleeper/run", TOKEN)[1]["status"] == "started"
        wait_in_progress(service, "sleeper", 2)
    shared = shared_prefix()
    assert len(shared) >= 8, in_progress(service)
    ids = sorted(run["run_id"] for run in in_progress(service))

    status, body = service.post_json(f"/api/runs/{shared[:8]}/cancel", TOKEN)
    assert status == 409 and "matches" in body["detail"], body
    assert sorted(run["run_id"] for run in in_progress(service)) == ids  # nothing cancelled

    assert service.post_json("/api/jobs/nope/cancel", TOKEN)[0] == 404
    assert service.post_json("/api/jobs/sleeper/cancel")[0] == 401
    status, body = service.post_json("/api/jobs/idle/cancel", TOKEN)  # none in progress
    assert (status, body) == (200, {"job_type": "idle", "cancelled": []})

    standby = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    standby.wait_for_log("standby: another instance is active", timeout=30)
    status, body = standby.post_json(f"/api/runs/{ids[0]}/cancel", TOKEN)
    assert status == 409 and "standby" in body["detail"], body
    assert standby.post_json("/api/jobs/sleeper/cancel", TOKEN)[0] == 409
    assert standby.get_json("/api/runs/in-progress") == (200, [])

    sleepers = sorted(run["run_id"] for run in in_progress(service, "sleeper"))
    status, body = service.post_json("/api/jobs/sleeper/cancel", TOKEN)
    assert status == 200, body
    assert body["job_type"] == "sleeper"
    assert sorted(r["run_id"] for r in body["cancelled"]) == sleepers
    assert {r["status"] for r in body["cancelled"]} == {"cancelled"}
    for run_id in sleepers:
        assert [row.outcome for row in final_rows(services, run_id)] == ["cancelled"]
    # The napper's run goes on, and is still cancellable by its whole id.
    (napper,) = in_progress(service)
    assert napper["job_type"] == "napper"
    assert service.post_json(f"/api/runs/{napper['run_id']}/cancel", TOKEN)[0] == 200
    assert in_progress(service) == []
    assert_no_row_left_running(services, *ids)


def test_a_body_that_blocks_its_loop_is_killed_with_its_worker_and_its_bystander_retried(
    services: ServiceFactory, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    bystander_started = tmp_path / "bystander-started"
    services.write_task(
        "blocker.py",
        task_source(
            "blocker",
            f"""
            import time
            while not os.path.exists({str(go)!r}):
                await asyncio.sleep(0.02)
            time.sleep(600)  # ignores its cancellation: the loop never gets it
            """,
            interval_seconds=3600, max_retries=3, retry_delay_seconds=0, timeout_seconds=900,
        ),
    )  # fmt: skip
    services.write_task(
        "bystander.py",
        task_source(
            "bystander",
            f"""
            pathlib.Path({str(bystander_started)!r}).touch()
            await asyncio.sleep(600)
            """,
            interval_seconds=3600, retry_delay_seconds=600, timeout_seconds=900,
        ),
    )  # fmt: skip
    services.write_task("quick.py", task_source("quick", QUICK, interval_seconds=0.3))
    # One worker: the bystander shares it. Quarantine at the first crash: neither may count.
    service = start_service(services, SCHEDULER_WORKERS="1", SCHEDULER_QUARANTINE_AFTER="1")
    (blocked,) = wait_in_progress(service, "blocker")
    (bystander,) = wait_in_progress(service, "bystander")
    wait_until(bystander_started.exists, what="the bystander's body to start")
    assert blocked["worker_pid"] == bystander["worker_pid"]
    go.touch()
    service.wait_for_log("worker event loop blocked by a run", job_type="blocker")

    began = time.monotonic()
    status, body = service.post_json(f"/api/runs/{blocked['run_id']}/cancel", TOKEN)
    assert (status, body["status"]) == (200, "cancelled"), body
    assert time.monotonic() - began >= 1  # the kill grace
    (row,) = final_rows(services, blocked["run_id"])
    assert row.outcome == "cancelled" and row.dead_letter is False
    assert row.error == (
        "cancelled by an operator; it did not stop within 1s (it ignored its cancellation, "
        "blocked its worker's event loop, or runs in a thread), so its worker was killed"
    )
    exited = service.wait_for_log("worker process ended", reason="cancelled")
    assert exited["pid"] == blocked["worker_pid"]
    assert metric(service, 'scheduler_worker_exits_total{reason="cancelled"}') == 1

    # The bystander: crashed, marked not executing, and retried at once (not in 600 s).
    retried = wait_until(
        lambda: len(rows := rows_of(services, bystander["run_id"])) >= 2 and rows,
        what="the bystander's retry",
    )
    first, second = retried[:2]
    assert first.outcome == "crashed" and first.error is not None
    assert first.error.endswith(NOT_EXECUTING_MARK)
    assert f"pid {blocked['worker_pid']}" in first.error and "cancellation" in first.error
    assert second.attempt == 2 and first.finished_at is not None
    assert second.started_at - first.finished_at < timedelta(seconds=30)
    (again,) = wait_in_progress(service, "bystander")
    assert again["attempt"] == 2 and again["worker_pid"] != blocked["worker_pid"]
    # Neither the cancel nor the bystander's crash counts toward quarantine.
    _, jobs = service.get_json("/api/jobs")
    states = {j["job_type"]: j["state"] for j in jobs}
    assert states["blocker"] == "scheduled" and states["bystander"] == "scheduled"
    # The service keeps running other jobs, on the new worker.
    done = len(services.finished("quick", "success"))
    services.wait_for_runs("quick", done + 2)
    assert_no_row_left_running(services, blocked["run_id"])


def test_cancel_from_the_command_line(services: ServiceFactory) -> None:
    services.write_task(
        "threaded.py", plain_def_source("threaded", 600, interval_seconds=3600, max_retries=2)
    )
    services.write_task(
        "sleeper.py",
        task_source("sleeper", SLEEPS, interval_seconds=3600, max_concurrent=2,
                    timeout_seconds=900),
    )  # fmt: skip
    service = start_service(services)
    env = {"SCHEDULER_ADMIN_TOKEN": TOKEN, "SCHEDULER_HTTP_PORT": str(service.http_port)}

    def cancel(*args: str, token: str = TOKEN) -> Any:
        return run_cli("cancel", *args, cwd=services.workdir,
                       env={**env, "SCHEDULER_ADMIN_TOKEN": token})  # fmt: skip

    (threaded,) = wait_in_progress(service, "threaded")
    usage = cancel()
    assert usage.returncode == 2 and "give a RUN_ID or --job" in usage.stderr
    assert cancel(threaded["run_id"], "--job", "threaded").returncode == 2
    short = cancel(threaded["run_id"][:7])
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    wrong = cancel(threaded["run_id"], token="wrong")
    assert wrong.returncode == 1 and "missing or wrong bearer token (HTTP 401)" in wrong.stderr
    unknown = cancel("f" * 32)
    assert unknown.returncode == 1 and "no run in progress" in unknown.stderr

    # A plain-def body runs in a thread, which cannot be stopped: its worker is killed.
    done = cancel(threaded["run_id"][:20])  # a prefix: the time, the version, random bits
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"cancelled run {threaded['run_id']} of threaded (attempt 1): ended cancelled"
    )
    (row,) = final_rows(services, threaded["run_id"])
    assert row.outcome == "cancelled" and row.error is not None
    assert row.error.endswith("so its worker was killed")
    # Once it is gone, whatever else ran on it has been handed back (and is retried).
    exited = service.wait_for_log("worker process ended", reason="cancelled")
    assert exited["pid"] == threaded["worker_pid"]
    assert metric(service, 'scheduler_worker_exits_total{reason="cancelled"}') == 1
    again = cancel(threaded["run_id"])
    assert again.returncode == 1 and "no run in progress" in again.stderr

    nothing = cancel("--job", "threaded")
    assert nothing.returncode == 1 and "no run of threaded is in progress" in nothing.stderr
    assert cancel("--job", "nope").returncode == 1

    status, body = service.post_json("/api/jobs/sleeper/run", TOKEN)  # a second one
    assert status == 200, body
    # (the scheduled one may have been on the killed worker: then it is on its attempt 2)
    sleepers = wait_in_progress(service, "sleeper", 2)
    by_job = cancel("--job", "sleeper")
    assert by_job.returncode == 0, by_job.stderr
    lines = sorted(by_job.stdout.splitlines())
    assert lines == sorted(
        f"cancelled run {run['run_id']} of sleeper (attempt {run['attempt']}): ended cancelled"
        for run in sleepers
    )
    for run in sleepers:
        assert final_rows(services, run["run_id"])[-1].outcome == "cancelled"
    assert metric(service, 'scheduler_worker_exits_total{reason="cancelled"}') == 1

    # `scheduler history` prints whole run ids.
    table = run_cli("history", "threaded", cwd=services.workdir,
                    env={"SCHEDULER_DATABASE_URL": services.database_url})  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert threaded["run_id"] in table.stdout and "cancelled" in table.stdout
    assert_no_row_left_running(services, threaded["run_id"], *(r["run_id"] for r in sleepers))


def test_cancel_from_the_status_page_form(services: ServiceFactory) -> None:
    services.write_task(
        "sleeper.py",
        task_source("sleeper", SLEEPS, interval_seconds=3600, max_retries=2,
                    timeout_seconds=900),
    )  # fmt: skip
    service = start_service(services)
    (run,) = wait_in_progress(service, "sleeper")
    run_id = run["run_id"]
    status, page = service.get("/")
    html = page.decode()
    assert status == 200 and "<h2>Runs in progress</h2>" in html
    assert "<script" not in html
    form = re.search(r'<form class="cancel" method="post" action="([^"]+)">(.*?)</form>', html)
    assert form is not None, html
    assert form.group(1) == f"/runs/{run_id}/cancel"
    assert '<input type="password" name="token"' in form.group(2)
    assert '<button type="submit">Cancel</button>' in form.group(2)
    assert f'<td><a href="/runs/{run_id}">{run_id}</a></td>' in html  # its page, by its whole id
    assert f"<td>{run['worker_pid']}</td>" in html
    assert '<meta http-equiv="refresh"' not in service.get("/?refresh=off")[1].decode()

    status, _, body = post_form(service, form.group(1), {"token": "wrong"})
    assert status == 401 and "admin token is missing or wrong" in body
    assert post_form(service, form.group(1), {})[0] == 401
    status, _, body = post_form(service, f"/runs/{'f' * 32}/cancel", {"token": TOKEN})
    assert status == 404 and "no run in progress" in body
    assert [r["run_id"] for r in in_progress(service)] == [run_id]

    status, headers, _ = post_form(service, form.group(1), {"token": TOKEN})
    assert status == 303, headers
    assert headers["location"] == f"/?cancelled={run_id}&outcome=cancelled"
    (row,) = final_rows(services, run_id)
    assert row.outcome == "cancelled" and row.error == "cancelled by an operator"
    status, page = service.get(headers["location"])
    html = page.decode()
    assert f"Run {run_id} was cancelled and ended: cancelled." in html
    assert '<tr><td colspan="8">none</td></tr>' in html  # nothing in progress any more
    # Over: the same form again finds nothing to cancel.
    assert post_form(service, form.group(1), {"token": TOKEN})[0] == 404
    assert_no_row_left_running(services, run_id)


def test_in_progress_json_is_typed(services: ServiceFactory) -> None:
    services.write_task("sleeper.py", task_source("sleeper", SLEEPS, interval_seconds=3600))
    service = start_service(services)
    (run,) = wait_in_progress(service, "sleeper")
    assert set(run) == {
        "run_id", "job_type", "attempt", "started_at", "trigger", "state", "worker_pid",
    }  # fmt: skip
    _, schema = service.get_json("/openapi.json")
    paths = schema["paths"]
    assert "/api/runs/in-progress" in paths and "/api/runs/{run_id}/cancel" in paths
    assert "/api/jobs/{job_type}/cancel" in paths
    ok = paths["/api/runs/{run_id}/cancel"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CancelledRun"
    }
    assert json.dumps(schema["components"]["schemas"]["JobCancellation"])
