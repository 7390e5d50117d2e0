"""Runs on Celery workers: a real Redis (private, so it can be killed), real `scheduler worker`
processes and the real service. Fault tests count from the run history and from a journal the
bodies write: runs left without a final row, attempts whose body ran twice, rows left
`running`. Each must be zero."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.errors import ConfigurationError
from scheduler.records import RunRecord
from scheduler.settings import load_settings
from tests.celery_support import (
    Journal,
    RedisServer,
    WorkerProcess,
    celery_env,
    journaled,
    require_celery,
)
from tests.support import ServiceFactory, ServiceProcess, task_source, wait_until

FIRST_ATTEMPT_ONLY = """
marker = pathlib.Path(os.environ["JOURNAL"] + "." + context.job_type)
if not marker.exists():
    marker.write_text(context.run_id)
    {misbehave}
return [RunnerResult(success=True)]
"""
IGNORES_CANCELLATION = """
while True:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        pass
"""


class Cluster:
    """The Celery side of one test: its broker, its environment, its workers."""

    def __init__(self, workdir: Path, redis: RedisServer, services: ServiceFactory) -> None:
        self.workdir = workdir
        self.redis = redis
        self.journal = Journal(workdir / "journal")
        self.env = celery_env(redis, self.journal.path, SCHEDULER_TASKS_DIR=str(services.tasks_dir))
        services.defaults.update(self.env)
        self.workers: list[WorkerProcess] = []

    def worker(self, concurrency: int = 2, **env: str) -> WorkerProcess:
        worker = WorkerProcess(self.workdir, {**self.env, **env}, concurrency)
        self.workers.append(worker)
        return worker.wait_ready()

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()


def _cluster(tmp_path: Path, services: ServiceFactory) -> Iterator[Cluster]:
    require_celery()
    redis = RedisServer(tmp_path).start()
    cluster = Cluster(tmp_path, redis, services)
    try:
        yield cluster
    finally:
        cluster.close()
        redis.stop()


@pytest.fixture
def cluster(tmp_path: Path, services: ServiceFactory) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, services)


@pytest.fixture
def any_cluster(tmp_path: Path, any_services: ServiceFactory) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, any_services)


@pytest.fixture
def pg_cluster(tmp_path: Path, postgres_services: ServiceFactory) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, postgres_services)


def metric_lines(service: ServiceProcess | WorkerProcess, prefix: str) -> list[str]:
    _, body = service.get("/metrics")
    return [line for line in body.decode().splitlines() if line.startswith(prefix)]


def dropped(worker: WorkerProcess) -> set[str]:
    """Task ids whose message this worker acknowledged without running."""
    found = set()
    for record in worker.logs():
        event = str(record.get("event", ""))
        if event.startswith("attempt already claimed"):
            found.add(str(record.get("task_id")))
        elif event.startswith("Discarding revoked task: taskwarden.attempt["):
            found.add(event.split("[", 1)[1].rstrip("]"))
    return found


def redeliver_unacknowledged(url: str, running: str, journal: Journal) -> None:
    """Put every unacknowledged message back on its queue, as the Redis transport does for
    those past their visibility timeout (kombu 5.6 sweeps only every 100 s)."""
    from kombu import Connection

    wait_until(lambda: any(t == running for t, *_ in journal.entries("start")), what=running)
    with Connection(url, transport_options={"visibility_timeout": 0}) as connection:
        connection.default_channel.qos.restore_visible(num=100)


def runs_by_id(rows: list[RunRecord]) -> dict[str, list[RunRecord]]:
    runs: dict[str, list[RunRecord]] = {}
    for row in rows:
        runs.setdefault(row.run_id, []).append(row)
    return runs


def assert_accounted_for(services: ServiceFactory, journal: Journal) -> None:
    """Every run ended with one final row, none is left `running`, no body ran twice."""
    rows = services.runs()
    assert [r for r in rows if r.outcome == "running"] == []
    for attempts in runs_by_id(rows).values():
        numbers = [r.attempt for r in attempts]
        assert numbers == list(range(1, len(numbers) + 1)), attempts  # one row per attempt
    assert journal.started_twice() == []


def test_runs_execute_on_celery_workers_with_local_semantics(
    any_services: ServiceFactory, any_cluster: Cluster
) -> None:
    services = any_services
    services.write_task("tick.py", task_source("tick", journaled(), interval_seconds=0.4))
    dies = FIRST_ATTEMPT_ONLY.format(misbehave="os._exit(3)")
    services.write_task(
        "dies.py", task_source("dies", dies, interval_seconds=3600, retry_delay_seconds=0.1)
    )
    services.write_task(
        "slow.py",
        task_source("slow", "await asyncio.sleep(5)", interval_seconds=3600, timeout_seconds=0.3,
                    max_retries=0),
    )  # fmt: skip
    services.write_task(
        "stubborn.py",
        task_source("stubborn", IGNORES_CANCELLATION, interval_seconds=3600,
                    timeout_seconds=0.3, max_retries=0),
    )  # fmt: skip
    worker = any_cluster.worker(concurrency=2)
    service = services()
    services.wait_for_runs("tick", 3)
    parents = {ppid for _, ppid, _ in any_cluster.journal.entries("start", "tick")}
    assert parents == {worker.pid}  # bodies ran in the worker's pool, none in the scheduler

    dies_runs = services.wait_for_runs("dies", 1)  # a pool process died: crashed, re-run
    crashed, *_ = services.finished("dies")
    assert crashed.outcome == "crashed" and "Celery worker process was lost" in str(crashed.error)
    assert dies_runs[-1].run_id == crashed.run_id

    (slow,) = services.wait_for_runs("slow", 1, outcome=None)
    assert slow.outcome == "timeout" and "timed out after 0.3s" in str(slow.error)
    (stubborn,) = services.wait_for_runs("stubborn", 1, outcome=None)
    assert stubborn.outcome == "timeout", stubborn
    assert "killed at the hard time limit (0.8s)" in str(stubborn.error)

    wait_until(lambda: metric_lines(service, "scheduler_celery_worker_saturation{"), timeout=5)
    (depth,) = metric_lines(service, "scheduler_celery_queue_depth ")
    assert float(depth.split()[1]) >= 0
    assert metric_lines(service, f'scheduler_celery_worker_concurrency{{worker="{worker.name}"}}')
    assert worker.get("/healthz")[0] == 200
    assert metric_lines(worker, "scheduler_celery_worker_attempts_total")
    assert service.stop() == 0
    assert_accounted_for(services, any_cluster.journal)


def test_a_worker_killed_mid_run_reruns_idempotent_runs_only_and_drops_redelivery(
    any_services: ServiceFactory, any_cluster: Cluster
) -> None:
    services = any_services
    work = "await asyncio.sleep(1.5)"
    services.write_task(
        "idem.py",
        task_source("idem", journaled(work), interval_seconds=3600, retry_delay_seconds=9),
    )
    services.write_task(
        "once.py", task_source("once", journaled(work), interval_seconds=3600, idempotent=False)
    )
    first = any_cluster.worker(concurrency=2)
    services()
    journal = any_cluster.journal
    wait_until(lambda: len(journal.entries("start")) == 2, what="both bodies on the first worker")
    first.kill()
    second = any_cluster.worker(concurrency=2)

    (crashed,) = services.wait_for_runs("idem", 1, outcome="crashed", timeout=15)
    assert "Celery worker was lost" in str(crashed.error)
    (once,) = services.wait_for_runs("once", 1, outcome=None)
    assert once.outcome == "crashed" and once.dead_letter  # not idempotent: not re-run
    # The broker redelivers unacknowledged messages a visibility timeout after delivery; do now
    # what it does then (kombu's own sweep), while the re-run's body runs (re-run at once, on
    # the second worker): the lost worker's two messages and the re-run's are delivered again.
    rerun = f"{crashed.run_id}.2"
    redeliver_unacknowledged(any_cluster.redis.url, rerun, journal)
    lost = {f"{crashed.run_id}.1", f"{once.run_id}.1", rerun}
    wait_until(lambda: dropped(second) >= lost, timeout=15, what="the redeliveries dropped")
    idem = services.wait_for_runs("idem", 1)
    assert idem[-1].run_id == crashed.run_id and idem[-1].attempt == 2
    assert [t for t, *_ in journal.entries("start", "once")] == [f"{once.run_id}.1"]
    assert_accounted_for(services, journal)


def test_a_broker_restart_loses_no_run_and_runs_no_body_twice(
    services: ServiceFactory, cluster: Cluster
) -> None:
    services.write_task(
        "steady.py",
        task_source("steady", journaled(), interval_seconds=0.3, retry_delay_seconds=0.2),
    )
    services.write_task(
        "long.py",
        task_source("long", journaled("await asyncio.sleep(2)"), interval_seconds=3600,
                    idempotent=False),
    )  # fmt: skip
    cluster.worker(concurrency=2)
    services()
    journal = cluster.journal
    wait_until(lambda: journal.entries("start", "long"), what="the long run started")
    services.wait_for_runs("steady", 2)
    cluster.redis.stop()  # every message, claim, lease and result in it is gone
    time.sleep(0.5)  # the outage itself: what the test is about
    cluster.redis.start()
    restarted = time.time()
    (long,) = services.wait_for_runs("long", 1, outcome=None, timeout=25)
    assert long.outcome == "success", long  # its body went on; its result reached the broker
    wait_until(
        lambda: len([e for e in journal.entries("end", "steady") if e[2] > restarted + 1]) >= 3,
        timeout=25,
        what="steady runs after the restart",
    )
    assert services.services[0].stop() == 0
    assert_accounted_for(services, journal)
    for attempts in runs_by_id(services.runs("steady")).values():
        assert attempts[-1].outcome in ("success", "failure", "skipped"), attempts


def test_a_failover_does_not_run_an_attempt_beside_the_one_still_on_a_worker(
    postgres_services: ServiceFactory, pg_cluster: Cluster
) -> None:
    services = postgres_services
    services.write_task(
        "long.py",
        task_source("long", journaled("await asyncio.sleep(2.5)"), interval_seconds=3600),
    )
    pg_cluster.worker(concurrency=2)
    env = {"SCHEDULER_LEASE_SECONDS": "1.5"}
    leader = services(**env)
    leader.wait_for_log("active: this instance runs the jobs", timeout=20)
    standby = services(**env)
    standby.wait_for_log("standby: another instance is active", timeout=20)
    journal = pg_cluster.journal
    wait_until(lambda: journal.entries("start", "long"), what="the run started on a worker")
    leader.kill()  # its attempt goes on on the worker
    standby.wait_for_log("active: this instance runs the jobs", timeout=20)
    wait_until(lambda: len(journal.entries("end", "long")) == 2, timeout=25, what="the re-run")
    (orphan_start, rerun_start) = journal.entries("start", "long")
    orphan_end = next(e for e in journal.entries("end", "long") if e[0] == orphan_start[0])
    assert rerun_start[2] >= orphan_end[2], "the re-run ran beside the attempt it replaces"
    rows = services.wait_for_runs("long", 1)
    assert [r.outcome for r in services.finished("long")] == ["interrupted", "success"]
    assert rows[-1].trigger == "recovery"
    assert standby.stop() == 0
    assert_accounted_for(services, journal)


def test_an_operator_cancels_a_run_on_a_celery_worker(
    services: ServiceFactory, cluster: Cluster
) -> None:
    services.write_task(
        "sleeper.py", task_source("sleeper", journaled("await asyncio.sleep(60)"),
                                  interval_seconds=3600, max_retries=3),
    )  # fmt: skip
    services.write_task(
        "stubborn.py",
        task_source("stubborn", IGNORES_CANCELLATION, interval_seconds=3600, max_retries=3),
    )
    worker = cluster.worker(concurrency=2)
    service = services(SCHEDULER_ADMIN_TOKEN="t0ken")
    journal = cluster.journal
    wait_until(lambda: journal.entries("start", "sleeper"), what="the sleeper on a worker")
    for job_type in ("sleeper", "stubborn"):
        run_id = wait_until(lambda j=job_type: _in_progress(service, j), what=job_type)
        status, body = service.post_json(f"/api/runs/{run_id}/cancel", "t0ken")
        assert status == 200 and body["status"] == "cancelled", body
    (sleeper,) = services.wait_for_runs("sleeper", 1, outcome=None)  # rows are written batched
    assert (sleeper.outcome, sleeper.error) == ("cancelled", "cancelled by an operator")
    assert journal.entries("end", "sleeper") == []  # its body stopped, it did not finish
    (stubborn,) = services.wait_for_runs("stubborn", 1, outcome=None)
    assert stubborn.outcome == "cancelled" and "Celery worker process was killed" in str(
        stubborn.error
    )
    assert worker.get("/healthz")[0] == 200  # its pool replaced the process it lost
    assert service.stop() == 0
    assert_accounted_for(services, journal)


def _in_progress(service: ServiceProcess, job_type: str) -> str | None:
    _, runs = service.get_json("/api/runs/in-progress")
    return next((r["run_id"] for r in runs if r["job_type"] == job_type), None)


def test_the_dashboards_celery_panels_have_data(
    services: ServiceFactory, cluster: Cluster, tmp_path: Path
) -> None:
    from tests.test_prometheus import CELERY_SERIES, Prometheus, concrete, dashboard_queries, tool

    tool("prometheus")
    services.write_task("tick.py", task_source("tick", journaled(), interval_seconds=0.3))
    cluster.worker(concurrency=2)
    service = services()
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{service.http_port}")
    try:
        wait_until(prometheus.ready, timeout=30, what="Prometheus to be ready")
        queries = [(t, e) for t, e in dashboard_queries() if CELERY_SERIES in e]
        assert len(queries) >= 4
        wait_until(
            lambda: all(prometheus.query(concrete(e)) for _, e in queries),
            timeout=20,
            what=f"data for every Celery panel: {queries}",
        )
    finally:
        prometheus.stop()


# In-process: the backend's own edges, against a private Redis with no worker.


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_celery()
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def _backend_and_job(url: str, tmp_path: Path, **settings: Any) -> tuple[Any, Any]:
    from scheduler.celery_app import CeleryOptions
    from scheduler.celery_backend import CeleryBackend
    from scheduler.discovery import discover
    from scheduler.job_config import resolve_job_configs
    from scheduler.registry import JobRegistry

    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "quick.py").write_text(task_source("quick", journaled(), interval_seconds=60))
    discover(tasks)
    jobs = resolve_job_configs(JobRegistry.list_jobs(), {}).jobs
    options = CeleryOptions.from_settings(
        load_settings(execution="celery", celery_broker_url=url, **settings)
    )
    return CeleryBackend(options, jobs), jobs["quick"]


async def _execute_once(backend: Any, job: Any) -> Any:
    from scheduler.base import JobContext
    from scheduler.records import new_run_id

    await backend.start()
    try:
        context = JobContext("quick", job.config, new_run_id())
        return await backend.execute(job, context), context
    finally:
        await backend.stop(0)


def test_an_unreachable_broker_fails_the_attempt_at_once(tmp_path: Path) -> None:
    require_celery()
    from tests.support import free_port

    backend, job = _backend_and_job(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    started = time.monotonic()
    result, _ = asyncio.run(_execute_once(backend, job))
    assert result.outcome == "failure" and result.retryable
    assert "broker is unreachable" in str(result.error) and "did not run" in str(result.error)
    assert time.monotonic() - started < 10


def test_an_attempt_no_worker_starts_fails_and_is_claimed_so_none_ever_will(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    backend, job = _backend_and_job(
        redis_server.url, tmp_path, celery_start_timeout_seconds=0.5, celery_queue="nobody"
    )
    result, context = asyncio.run(_execute_once(backend, job))
    assert result.outcome == "failure" and result.retryable
    assert "no Celery worker started it within 0.5s" in str(result.error)
    task = f"{context.run_id}.1"
    assert redis_server.client().get(f"taskwarden:claim:{task}") == b"scheduler-gave-up"
    # A worker that comes later takes the message (it missed the revoke): its claim drops it.
    env = {
        "SCHEDULER_CELERY_BROKER_URL": redis_server.url,
        "SCHEDULER_CELERY_QUEUE": "nobody",
        "SCHEDULER_TASKS_DIR": str(tmp_path / "tasks"),
        "JOURNAL": str(tmp_path / "journal"),
    }
    late = WorkerProcess(tmp_path, env, concurrency=1).wait_ready()
    try:
        wait_until(lambda: task in dropped(late), what="the late worker to drop the message")
    finally:
        late.kill()
    assert Journal(tmp_path / "journal").entries("start") == []


def test_celery_execution_needs_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_EXECUTION", "celery")
    monkeypatch.delenv("SCHEDULER_CELERY_BROKER_URL", raising=False)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    (problem,) = raised.value.problems
    assert problem.startswith("SCHEDULER_CELERY_BROKER_URL=") and "required" in problem
