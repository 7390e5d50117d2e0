"""The run metrics as Prometheus reads them: values, bucket edges and series that exist at 0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.metrics import JobStatus, SchedulerMetrics, ServiceStatus
from scheduler.records import Outcome, RunRecord, SkipReason
from tests.support import (
    PrivateCluster,
    ServiceFactory,
    ServiceProcess,
    task_source,
    wait_until,
)

QUICK = "return [RunnerResult(success=True)]"


def samples(metrics: SchedulerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def attempt(job_type: str, seconds: float, outcome: Outcome, items: int = 0) -> RunRecord:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    return RunRecord(
        run_id="r", attempt=1, job_type=job_type, trigger="schedule", started_at=started,
        instance="test", finished_at=started + timedelta(seconds=seconds), outcome=outcome,
        items_succeeded=items,
    )  # fmt: skip


def test_attempts_are_counted_bucketed_and_summed() -> None:
    metrics = SchedulerMetrics(lambda: ServiceStatus(0.0, True, 0, 0.0, ()))
    metrics.initialise(["quiet", "busy"])
    for lag in (0.001, 0.0011, 700.0):  # on a bound, just above it, above every bound
        metrics.attempt_started("busy", lag, None)
    metrics.attempt_started("busy", None, 3.0)  # a retry: its wait, not a lag
    metrics.attempt_finished(attempt("busy", 0.01, Outcome.SUCCESS, items=3))
    metrics.attempt_finished(attempt("busy", 2.0, Outcome.FAILURE))
    metrics.attempt_finished(attempt("busy", 2.0, Outcome.FAILURE))
    metrics.run_finished("busy", Outcome.SUCCESS, dead_letter=False)
    metrics.run_finished("busy", Outcome.FAILURE, dead_letter=True)
    metrics.interrupted_found("busy", rerun=True)  # its rerun's outcome will be the run's
    metrics.skipped("busy", SkipReason.DEPENDENCY)
    metrics.retrying("busy")
    seen = samples(metrics)

    def value(name: str, **labels: str) -> float:
        return seen[(name, tuple(sorted(labels.items())))]

    assert value("scheduler_job_lag_seconds_bucket", job_type="busy", le="0.001") == 1
    assert value("scheduler_job_lag_seconds_bucket", job_type="busy", le="0.005") == 2
    assert value("scheduler_job_lag_seconds_bucket", job_type="busy", le="600.0") == 2
    assert value("scheduler_job_lag_seconds_bucket", job_type="busy", le="+Inf") == 3
    assert value("scheduler_job_lag_seconds_count", job_type="busy") == 3
    assert abs(value("scheduler_job_lag_seconds_sum", job_type="busy") - 700.0021) < 1e-9
    assert value("scheduler_job_duration_seconds_bucket", job_type="busy", le="0.01") == 1
    assert value("scheduler_job_duration_seconds_bucket", job_type="busy", le="2.5") == 3
    assert value("scheduler_job_duration_seconds_sum", job_type="busy") == 4.01
    assert value("scheduler_job_retry_wait_seconds_count", job_type="busy") == 1
    assert value("scheduler_job_retry_wait_seconds_sum", job_type="busy") == 3.0
    assert value("scheduler_job_in_progress", job_type="busy") == 1  # 4 started, 3 ended
    assert value("scheduler_job_attempts_total", job_type="busy", outcome="success") == 1
    assert value("scheduler_job_attempts_total", job_type="busy", outcome="failure") == 2
    assert value("scheduler_job_attempts_total", job_type="busy", outcome="interrupted") == 1
    assert value("scheduler_job_runs_total", job_type="busy", outcome="success") == 1
    assert value("scheduler_job_runs_total", job_type="busy", outcome="failure") == 1
    assert value("scheduler_job_runs_total", job_type="busy", outcome="interrupted") == 0
    assert value("scheduler_job_dead_letters_total", job_type="busy") == 1
    assert value("scheduler_job_items_total", job_type="busy", outcome="success") == 3
    assert value("scheduler_job_skipped_total", job_type="busy", reason="dependency") == 1
    assert value("scheduler_job_retries_total", job_type="busy") == 1
    # Every series of a job that never ran is there, at 0.
    quiet = {k: v for k, v in seen.items() if ("job_type", "quiet") in k[1]}
    assert value("scheduler_job_runs_total", job_type="quiet", outcome="timeout") == 0
    assert value("scheduler_job_lag_seconds_bucket", job_type="quiet", le="+Inf") == 0
    assert value("scheduler_job_dead_letters_total", job_type="quiet") == 0
    assert len(quiet) > 60 and set(quiet.values()) == {0.0}


def test_the_term_and_the_dropped_history_rows_are_exported() -> None:
    status = ServiceStatus(0.0, True, 0, 0.0, (), leadership_epoch=7, history_rows_dropped=3)
    seen = samples(SchedulerMetrics(lambda: status))
    assert seen[("scheduler_leadership_epoch", ())] == 7
    assert seen[("scheduler_history_rows_dropped_total", ())] == 3


def scraped(service: ServiceProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = service.get("/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_runs_attempts_dead_letters_and_lag_match_the_run_history(
    services: ServiceFactory,
) -> None:
    recovers = "if context.attempt == 1:\n    raise RuntimeError('flaky')\n" + QUICK
    services.write_task(
        "recovers.py",
        task_source("recovers", recovers, interval_seconds=3600, max_retries=1,
                    retry_delay_seconds=1.0),
    )  # fmt: skip
    services.write_task(
        "doomed.py",
        task_source("doomed", "raise RuntimeError('no')", interval_seconds=3600, max_retries=0),
    )
    service = services()
    services.wait_for_runs("recovers", 1)
    services.wait_for_runs("doomed", 1, outcome="failure")
    seen = scraped(service)  # nothing else runs for an hour: the history is complete

    def value(name: str, **labels: str) -> float:
        return seen[(name, tuple(sorted(labels.items())))]

    history = services.finished("recovers")
    assert [r.outcome for r in history] == ["failure", "success"]
    # One run, which succeeded; two attempts; a retry that waited its backoff.
    assert value("scheduler_job_runs_total", job_type="recovers", outcome="success") == 1
    assert value("scheduler_job_runs_total", job_type="recovers", outcome="failure") == 0
    assert value("scheduler_job_attempts_total", job_type="recovers", outcome="failure") == 1
    assert value("scheduler_job_attempts_total", job_type="recovers", outcome="success") == 1
    assert value("scheduler_job_dead_letters_total", job_type="recovers") == 0
    waited = (history[1].started_at - history[0].finished_at).total_seconds()  # type: ignore[operator]
    assert value("scheduler_job_retry_wait_seconds_count", job_type="recovers") == 1
    assert abs(value("scheduler_job_retry_wait_seconds_sum", job_type="recovers") - waited) < 0.05
    assert waited >= 1.0
    # The lag is the first attempt's only: the backoff does not show as lag.
    assert value("scheduler_job_lag_seconds_count", job_type="recovers") == 1
    assert value("scheduler_job_lag_seconds_sum", job_type="recovers") < 1.0
    dead = [r for r in services.finished("doomed") if r.dead_letter]
    assert len(dead) == 1
    assert value("scheduler_job_dead_letters_total", job_type="doomed") == 1
    assert value("scheduler_job_runs_total", job_type="doomed", outcome="failure") == 1


def test_runs_a_killed_process_left_running_are_counted_interrupted_after_recovery(
    services: ServiceFactory,
) -> None:
    body = "await asyncio.sleep(60)\n" + QUICK
    services.write_task(
        "long.py", task_source("long", body, interval_seconds=3600, idempotent=False)
    )
    service = services()
    wait_until(lambda: [r for r in services.runs("long") if r.outcome == "running"], what="run")
    service.kill()
    again = services()
    again.wait_for_log("active: this instance runs the jobs")
    (interrupted,) = services.finished("long", "interrupted")
    assert interrupted.outcome == "interrupted"
    seen = scraped(again)
    labels = (("job_type", "long"), ("outcome", "interrupted"))
    assert seen[("scheduler_job_attempts_total", labels)] == 1
    assert seen[("scheduler_job_runs_total", labels)] == 1  # not idempotent: not run again


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def per_job(seen: Samples) -> set[str]:
    """The names of the series that belong to the active role: per job, or per worker."""
    return {
        name
        for name, labels in seen
        if any(key in ("job_type", "worker") for key, _ in labels)
        or name.startswith(("scheduler_worker", "scheduler_job_"))
    }


INSTANCE_SERIES = {
    "scheduler_is_leader",
    "scheduler_heartbeat_timestamp_seconds",
    "scheduler_build_info",
    "scheduler_database_up",
    "scheduler_jobstore_up",
    "scheduler_history_writer_up",
    "scheduler_history_writer_queue",
}


def test_a_standby_exports_only_the_instance_series() -> None:
    leading = [False]
    job = JobStatus("tick", 60.0, True, None, None)
    metrics = SchedulerMetrics(
        lambda: ServiceStatus(1.0, leading[0], 0, 0.0, (job,)), leading=lambda: leading[0]
    )
    metrics.initialise(["tick"])
    metrics.skipped("tick", SkipReason.MISFIRE)
    standby = samples(metrics)
    assert per_job(standby) == set()
    assert INSTANCE_SERIES <= {name for name, _ in standby}
    leading[0] = True
    active = samples(metrics)
    assert active[("scheduler_job_skipped_total", (("job_type", "tick"), ("reason", "misfire")))]
    assert {"scheduler_job_runs_total", "scheduler_job_enabled", "scheduler_workers"} <= per_job(
        active
    )


def test_a_job_not_loaded_keeps_its_series_as_far_as_known() -> None:
    jobs = (
        JobStatus("fine", 60.0, True, None, None),
        JobStatus("gone", None, True, datetime(2026, 1, 1, tzinfo=UTC), None, loaded=False),
    )
    seen = samples(SchedulerMetrics(lambda: ServiceStatus(0.0, True, 0, 0.0, jobs)))
    assert seen[("scheduler_job_loaded", (("job_type", "fine"),))] == 1
    assert seen[("scheduler_job_loaded", (("job_type", "gone"),))] == 0
    assert seen[("scheduler_job_enabled", (("job_type", "gone"),))] == 1
    assert seen[("scheduler_job_last_success_timestamp_seconds", (("job_type", "gone"),))] > 0
    assert ("scheduler_job_interval_seconds", (("job_type", "gone"),)) not in seen  # unknown


def value_of(seen: Samples, name: str, **labels: str) -> float:
    return seen[(name, tuple(sorted(labels.items())))]


def test_a_stored_job_whose_task_file_fails_to_import_keeps_its_series(
    services: ServiceFactory,
) -> None:
    services.write_task("fragile.py", task_source("fragile", QUICK, interval_seconds=3600))
    services.write_task("steady.py", task_source("steady", QUICK, interval_seconds=3600))
    first = services()
    (success,) = services.wait_for_runs("fragile", 1)
    assert first.stop() == 0
    services.write_task("fragile.py", "def (:\n")  # a bad deploy: the stored job stays
    again = services()
    again.wait_for_log("active: this instance runs the jobs")
    seen = scraped(again)
    assert value_of(seen, "scheduler_job_loaded", job_type="fragile") == 0
    assert value_of(seen, "scheduler_job_loaded", job_type="steady") == 1
    assert value_of(seen, "scheduler_job_enabled", job_type="fragile") == 1
    assert value_of(seen, "scheduler_job_interval_seconds", job_type="fragile") == 3600
    assert success.finished_at is not None
    last = value_of(seen, "scheduler_job_last_success_timestamp_seconds", job_type="fragile")
    assert abs(last - success.finished_at.timestamp()) < 1.0
    stored = services.stored_next_run_time("fragile")
    assert stored is not None
    next_run = value_of(seen, "scheduler_job_next_run_timestamp_seconds", job_type="fragile")
    assert abs(next_run - stored) < 1e-3
    assert value_of(seen, "scheduler_job_oldest_run_age_seconds", job_type="fragile") == 0


def test_a_run_going_for_longer_than_its_interval_shows_its_age(
    services: ServiceFactory,
) -> None:
    body = "await asyncio.sleep(60)\n" + QUICK
    services.write_task(
        "overrun.py",
        task_source("overrun", body, interval_seconds=1, timeout_seconds=120, idempotent=False),
    )
    service = services()
    (running,) = wait_until(
        lambda: [r for r in services.runs("overrun") if r.outcome == "running"], what="a run"
    )

    def age() -> float:
        return value_of(
            scraped(service), "scheduler_job_oldest_run_age_seconds", job_type="overrun"
        )

    assert wait_until(lambda: age() > 1.5, timeout=10, what="the run to outlast its interval")
    assert running.started_at is not None
    expected = datetime.now(UTC).timestamp() - running.started_at.timestamp()
    assert abs(age() - expected) < 1.0
    skipped = (("job_type", "overrun"), ("reason", "max_instances"))
    assert wait_until(lambda: scraped(service)[("scheduler_job_skipped_total", skipped)] >= 1)


def test_health_series_follow_a_real_database_outage(
    private_cluster: PrivateCluster, tmp_path: Path, tasks_dir: Path
) -> None:
    factory = ServiceFactory(tmp_path, private_cluster.url, tasks_dir)
    try:
        factory.write_task("pulse.py", task_source("pulse", QUICK, interval_seconds=0.3))
        service = factory()
        factory.wait_for_runs("pulse", 2)
        names = ("scheduler_database_up", "scheduler_jobstore_up", "scheduler_history_writer_up")

        def health() -> tuple[float, ...]:
            seen = scraped(service)
            return (
                *(seen[(name, ())] for name in names),
                seen[("scheduler_history_writer_queue", ())],
            )

        assert wait_until(lambda: health() == (1, 1, 1, 0), what="all up")
        factory.engine.dispose()
        private_cluster.stop()
        down = wait_until(lambda: (h := health())[:3] == (0, 0, 0) and h, timeout=20,
                          what="every health series to go 0")  # fmt: skip
        assert down[3] > 0  # the rows of the runs that went on are queued
        private_cluster.start()
        assert wait_until(lambda: health() == (1, 1, 1, 0), timeout=30, what="all up again")
    finally:
        factory.close()


def test_a_standby_exports_no_copy_of_the_job_series_until_it_takes_over(
    any_services: ServiceFactory,
) -> None:
    """Two instances on one database (SQLite and PostgreSQL): only the leader's job series."""
    any_services.write_task("beat.py", task_source("beat", QUICK, interval_seconds=0.3))
    active = any_services()
    active.wait_for_log("active: this instance runs the jobs")
    standby = any_services()
    standby.wait_for_log("standby: another instance is active")
    seen = wait_until(lambda: (s := scraped(standby))[("scheduler_heartbeat_timestamp_seconds", ())]
                      and s, what="the standby's heartbeat")  # fmt: skip
    assert per_job(seen) == set()
    assert INSTANCE_SERIES <= {name for name, _ in seen}
    assert seen[("scheduler_is_leader", ())] == 0
    health = ("scheduler_database_up", "scheduler_jobstore_up", "scheduler_history_writer_up")
    assert [seen[(name, ())] for name in health] == [1, 1, 1]
    leader = scraped(active)
    assert value_of(leader, "scheduler_job_enabled", job_type="beat") == 1
    assert [leader[(name, ())] for name in health] == [1, 1, 1]

    active.kill()
    standby.wait_for_log("active: this instance runs the jobs", timeout=15)
    seen = scraped(standby)
    assert seen[("scheduler_is_leader", ())] == 1
    assert value_of(seen, "scheduler_job_enabled", job_type="beat") == 1
    assert "scheduler_workers" in per_job(seen)
