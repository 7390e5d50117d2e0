"""The run metrics as Prometheus reads them: values, bucket edges and series that exist at 0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.metrics import SchedulerMetrics, ServiceStatus
from scheduler.records import Outcome, RunRecord, SkipReason
from tests.support import ServiceFactory, ServiceProcess, task_source, wait_until

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
