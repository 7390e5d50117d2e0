"""The run metrics as Prometheus reads them: values, bucket edges and series that exist at 0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.metrics import SchedulerMetrics, ServiceStatus
from scheduler.records import Outcome, RunRecord, SkipReason


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
        metrics.attempt_started("busy", lag)
    metrics.attempt_finished(attempt("busy", 0.01, Outcome.SUCCESS, items=3))
    metrics.attempt_finished(attempt("busy", 2.0, Outcome.FAILURE))
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
    assert value("scheduler_job_duration_seconds_bucket", job_type="busy", le="2.5") == 2
    assert value("scheduler_job_duration_seconds_sum", job_type="busy") == 2.01
    assert value("scheduler_job_in_progress", job_type="busy") == 1  # 3 started, 2 ended
    assert value("scheduler_job_runs_total", job_type="busy", outcome="success") == 1
    assert value("scheduler_job_runs_total", job_type="busy", outcome="failure") == 1
    assert value("scheduler_job_items_total", job_type="busy", outcome="success") == 3
    assert value("scheduler_job_skipped_total", job_type="busy", reason="dependency") == 1
    assert value("scheduler_job_retries_total", job_type="busy") == 1
    # Every series of a job that never ran is there, at 0.
    quiet = {k: v for k, v in seen.items() if ("job_type", "quiet") in k[1]}
    assert value("scheduler_job_runs_total", job_type="quiet", outcome="timeout") == 0
    assert value("scheduler_job_lag_seconds_bucket", job_type="quiet", le="+Inf") == 0
    assert len(quiet) > 40 and set(quiet.values()) == {0.0}


def test_the_term_and_the_dropped_history_rows_are_exported() -> None:
    status = ServiceStatus(0.0, True, 0, 0.0, (), leadership_epoch=7, history_rows_dropped=3)
    seen = samples(SchedulerMetrics(lambda: status))
    assert seen[("scheduler_leadership_epoch", ())] == 7
    assert seen[("scheduler_history_rows_dropped_total", ())] == 3
