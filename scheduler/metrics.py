"""Prometheus metrics: counters and histograms fed by the runs, gauges read at scrape time.

Naming follows Prometheus practice: prefix `scheduler_`, base units, `_total` counters, the label
`job_type` (Prometheus owns `job`), bounded label values. Every series of every discovered job
exists from the start at 0, so "rate of failures" has data before the first failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from platform import python_version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .history import RunRecord
from .outcomes import FINISHED, Outcome, SkipReason

#: From 10 ms to 6 h: jobs run from milliseconds to hours (the client's default stops at 10 s).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
                    1800, 3600, 7200, 14400, 21600)  # fmt: skip
#: From 1 ms to 10 min: how late runs start.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
RUN_OUTCOMES = tuple(str(outcome) for outcome in FINISHED)
ITEM_OUTCOMES = ("success", "failure")


def package_version() -> str:
    try:
        return version("taskwarden")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class JobStatus:
    """What the scrape-time gauges report about one job."""

    job_type: str
    interval_seconds: float
    enabled: bool
    last_success: datetime | None
    next_run: datetime | None


@dataclass(frozen=True)
class ServiceStatus:
    heartbeat_timestamp: float
    is_leader: bool
    discovery_errors: int
    event_loop_lag_seconds: float
    jobs: tuple[JobStatus, ...]


class SchedulerMetrics:
    """The service's metrics, in a registry of their own; also the coordinator's RunObserver."""

    def __init__(self, status: Callable[[], ServiceStatus]) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` doubles the output
        self.registry = CollectorRegistry()
        r = self.registry
        self.job_duration = Histogram(
            "scheduler_job_duration_seconds", "How long each attempt of a run took.",
            ["job_type"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.job_runs = Counter(
            "scheduler_job_runs", "Attempts that ended, by outcome.",
            ["job_type", "outcome"], registry=r,
        )  # fmt: skip
        self.job_retries = Counter(
            "scheduler_job_retries", "Attempts that were followed by a retry.", ["job_type"],
            registry=r,
        )  # fmt: skip
        self.job_skips = Counter(
            "scheduler_job_skipped", "Runs that did not happen, by reason.",
            ["job_type", "reason"], registry=r,
        )  # fmt: skip
        self.job_lag = Histogram(
            "scheduler_job_lag_seconds", "Start time minus scheduled time of each attempt.",
            ["job_type"], buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.job_in_progress = Gauge(
            "scheduler_job_in_progress", "Attempts running now.", ["job_type"], registry=r
        )
        self.job_items = Counter(
            "scheduler_job_items", "RunnerResult items returned, by their success.",
            ["job_type", "outcome"], registry=r,
        )  # fmt: skip
        self._by_job: dict[str, _JobSeries] = {}
        r.register(_StatusCollector(status))
        ProcessCollector(registry=r)  # process_start_time_seconds, memory, CPU, open files

    def initialise(self, job_types: Iterable[str]) -> None:
        """Create every series of every job at 0."""
        for job_type in job_types:
            self.job_duration.labels(job_type)
            self.job_lag.labels(job_type)
            self.job_retries.labels(job_type)
            self.job_in_progress.labels(job_type)
            for outcome in RUN_OUTCOMES:
                self.job_runs.labels(job_type, outcome)
            for reason in SkipReason:
                self.job_skips.labels(job_type, str(reason))
            for outcome in ITEM_OUTCOMES:
                self.job_items.labels(job_type, outcome)

    # RunObserver: called for every run, so each job's children are looked up once and cached.
    def skipped(self, job_type: str, reason: SkipReason) -> None:
        self.job_skips.labels(job_type, str(reason)).inc()

    def attempt_started(self, job_type: str, lag_seconds: float | None) -> None:
        series = self._series(job_type)
        series.in_progress.inc()
        if lag_seconds is not None:
            series.lag.observe(max(lag_seconds, 0.0))

    def attempt_finished(self, record: RunRecord) -> None:
        series = self._series(record.job_type)
        series.in_progress.dec()
        series.runs[record.outcome].inc()
        if record.duration_seconds is not None:
            series.duration.observe(record.duration_seconds)
        if record.outcome == Outcome.SUCCESS:
            if record.items_succeeded:
                series.items_succeeded.inc(record.items_succeeded)
            if record.items_failed:
                series.items_failed.inc(record.items_failed)

    def retrying(self, job_type: str) -> None:
        self._series(job_type).retries.inc()

    def _series(self, job_type: str) -> _JobSeries:
        series = self._by_job.get(job_type)
        if series is None:
            series = _JobSeries(
                in_progress=self.job_in_progress.labels(job_type),
                lag=self.job_lag.labels(job_type),
                duration=self.job_duration.labels(job_type),
                runs={outcome: self.job_runs.labels(job_type, outcome) for outcome in RUN_OUTCOMES},
                retries=self.job_retries.labels(job_type),
                items_succeeded=self.job_items.labels(job_type, "success"),
                items_failed=self.job_items.labels(job_type, "failure"),
            )
            self._by_job[job_type] = series
        return series


@dataclass(frozen=True)
class _JobSeries:
    in_progress: Gauge
    lag: Histogram
    duration: Histogram
    runs: dict[str, Counter]
    retries: Counter
    items_succeeded: Counter
    items_failed: Counter


class _StatusCollector(Collector):
    """Gauges whose values are read from the service when Prometheus scrapes."""

    def __init__(self, status: Callable[[], ServiceStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield _gauge(
            "scheduler_heartbeat_timestamp_seconds",
            "When the service last completed its heartbeat.",
            status.heartbeat_timestamp,
        )
        yield _gauge(
            "scheduler_is_leader",
            "1 on the active instance, 0 on a standby.",
            float(status.is_leader),
        )
        yield _gauge(
            "scheduler_discovery_errors",
            "Task files that failed to import.",
            status.discovery_errors,
        )
        yield _gauge("scheduler_event_loop_lag_seconds",
                     "How late the asyncio loop woke a timer, last measured.",
                     status.event_loop_lag_seconds)  # fmt: skip
        build = GaugeMetricFamily(
            "scheduler_build_info", "Version of the scheduler and of Python; always 1.",
            labels=["version", "python_version"],
        )  # fmt: skip
        build.add_metric([package_version(), python_version()], 1.0)
        yield build
        yield from _job_gauges(status.jobs)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _job_gauges(jobs: tuple[JobStatus, ...]) -> Iterator[Metric]:
    families: Mapping[str, tuple[str, Callable[[JobStatus], float | None]]] = {
        "scheduler_job_last_success_timestamp_seconds": (
            "When the job last succeeded (0: never, as far as the run history goes).",
            lambda j: j.last_success.timestamp() if j.last_success else 0.0,
        ),
        "scheduler_job_next_run_timestamp_seconds": (
            "When the job runs next (absent while it is not scheduled).",
            lambda j: j.next_run.timestamp() if j.next_run else None,
        ),
        "scheduler_job_interval_seconds": (
            "The job's effective interval.",
            lambda j: j.interval_seconds,
        ),
        "scheduler_job_enabled": ("1 if the job is enabled.", lambda j: float(j.enabled)),
    }
    for name, (documentation, value_of) in families.items():
        family = GaugeMetricFamily(name, documentation, labels=["job_type"])
        for job in jobs:
            value = value_of(job)
            if value is not None:
                family.add_metric([job.job_type], value)
        yield family
