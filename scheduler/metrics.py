"""Prometheus metrics: counters and histograms fed by the runs, gauges read at scrape time.

Naming follows Prometheus practice: prefix `scheduler_`, base units, `_total` counters, the label
`job_type` (Prometheus owns `job`), bounded label values. Every series of every discovered job
exists from the start at 0, so "rate of failures" has data before the first failure.

Only the active instance exports per-job and worker series: a standby has no runs of its own, and
two copies of every series would double the dashboard's sums. Every instance exports its own
health (leadership, heartbeat, database, build).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from platform import python_version
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .records import FINISHED, ClusterStatus, Outcome, RunRecord, SkipReason

#: From 10 ms to 6 h: jobs run from milliseconds to hours (the client's default stops at 10 s).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
                    1800, 3600, 7200, 14400, 21600)  # fmt: skip
#: From 1 ms to 10 min: how late runs start.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
RUN_OUTCOMES = tuple(str(outcome) for outcome in FINISHED)


def package_version() -> str:
    try:
        return version("taskwarden")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class JobStatus:
    """What the scrape-time gauges report about one job."""

    job_type: str
    #: None: not known (a stored job whose task file failed to import, with a trigger this
    #: service does not build).
    interval_seconds: float | None
    enabled: bool
    last_success: datetime | None
    next_run: datetime | None
    quarantined: bool = False
    #: Paused by an operator (stored without a next run, not by a quarantine).
    paused: bool = False
    #: False for a stored job whose task file failed to import (its runs are skipped).
    loaded: bool = True
    #: How long the oldest run in progress has been going, since its first attempt (0: none).
    oldest_run_age_seconds: float = 0.0


@dataclass(frozen=True)
class ServiceStatus:
    heartbeat_timestamp: float
    is_leader: bool
    discovery_errors: int
    event_loop_lag_seconds: float
    jobs: tuple[JobStatus, ...]
    leadership_epoch: int = 0
    history_rows_dropped: int = 0
    database_up: bool = True
    jobstore_up: bool = True
    history_writer_up: bool = True
    #: Run-history rows submitted and not yet committed.
    history_queue: int = 0


class SchedulerMetrics:
    """The service's metrics, in a registry of their own; also the coordinator's RunObserver
    and the worker pool's PoolObserver."""

    def __init__(
        self,
        status: Callable[[], ServiceStatus],
        workers: Callable[[], Sequence[Any]] = list,
        leading: Callable[[], bool] = lambda: True,
        cluster: Callable[[], ClusterStatus | None] = lambda: None,
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` doubles the output
        self.registry = CollectorRegistry()
        r = None  # the counters are the active role's: registered below, behind `_LeaderOnly`
        self.worker_exits = Counter(
            "scheduler_worker_exits", "Worker processes that ended, by reason (died, timeout: "
            "killed for a run past its timeout, memory: killed over the hard limit, recycled, "
            "cancelled: killed for a cancelled run that did not stop within the kill grace).",
            ["reason"], registry=r,
        )  # fmt: skip
        for reason in ("died", "timeout", "memory", "recycled", "cancelled"):
            self.worker_exits.labels(reason)
        self._by_job: dict[str, _AttemptSeries] = {}
        # Skips come from any thread (the scheduler's, the loop's): their counts take a lock.
        self._skips_lock = threading.Lock()
        role = (self.worker_exits, _WorkerCollector(workers), _ClusterCollector(cluster),
                _AttemptCollector(self._by_job))  # fmt: skip
        self.registry.register(_LeaderOnly(role, leading))
        self.registry.register(_StatusCollector(status))
        # process_start_time_seconds, memory, CPU, open files
        ProcessCollector(registry=self.registry)

    def initialise(self, job_types: Iterable[str]) -> None:
        """Create every series of every job at 0."""
        for job_type in job_types:
            self._series(job_type)

    # RunObserver. Every job's figures are plain numbers, read at scrape time: a
    # prometheus_client child takes a lock on every update, and a job has a dozen of them
    # (memory, and time at start-up, with thousands of jobs).
    def skipped(self, job_type: str, reason: SkipReason) -> None:
        series = self._series(job_type)
        with self._skips_lock:
            series.skips[reason] += 1

    def attempt_started(
        self, job_type: str, lag_seconds: float | None, retry_waited_seconds: float | None
    ) -> None:
        series = self._series(job_type)
        series.in_progress += 1
        if lag_seconds is not None:
            series.lag.observe(max(lag_seconds, 0.0))
        if retry_waited_seconds is not None:
            series.retry_wait.observe(max(retry_waited_seconds, 0.0))

    def attempt_finished(self, record: RunRecord) -> None:
        series = self._series(record.job_type)
        series.in_progress -= 1
        series.attempts[record.outcome] += 1
        if (duration := record.duration_seconds) is not None:
            series.duration.observe(duration)
        if record.outcome == Outcome.SUCCESS:
            series.items_succeeded += record.items_succeeded
            series.items_failed += record.items_failed

    def attempt_skipped(self, job_type: str, reason: SkipReason) -> None:
        """An attempt whose body found it must not run (a requirement): no longer in progress.
        The skip itself is counted once, by `skipped`, when the coordinator records it."""
        self._series(job_type).in_progress -= 1

    def retrying(self, job_type: str) -> None:
        self._series(job_type).retries += 1

    def run_finished(self, job_type: str, outcome: str, dead_letter: bool) -> None:
        series = self._series(job_type)
        series.runs[outcome] += 1
        series.dead_letters += dead_letter

    def interrupted_found(self, job_type: str, rerun: bool) -> None:
        """An attempt a dead process left `running`, closed as interrupted by this one: the run
        ended then too, unless it runs again now (its new outcome is the run's)."""
        series = self._series(job_type)
        series.attempts[Outcome.INTERRUPTED] += 1
        if not rerun:
            series.runs[Outcome.INTERRUPTED] += 1

    # PoolObserver
    def worker_exited(self, reason: str) -> None:
        self.worker_exits.labels(str(reason)).inc()

    def loop_blocked(self, job_type: str | None) -> None:
        if job_type is not None:
            self._series(job_type).loop_blocks += 1

    def _series(self, job_type: str) -> _AttemptSeries:
        series = self._by_job.get(job_type)
        if series is None:  # setdefault: two threads may create it at once
            series = self._by_job.setdefault(job_type, _AttemptSeries())
        return series


class _Buckets:
    """A histogram's counts per bucket (not cumulative) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: a bound is inclusive
        self.sum += value

    def exposition(self) -> tuple[list[tuple[str, float]], float]:
        cumulative = map(float, itertools.accumulate(self.counts))
        return list(zip(_bucket_names(self.bounds), cumulative, strict=True)), self.sum


@functools.cache
def _bucket_names(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The `le` labels, written as prometheus_client writes them ("0.01", "1.0", "+Inf")."""
    return (*(floatToGoString(bound) for bound in bounds), "+Inf")  # type: ignore[no-untyped-call]


class _AttemptSeries:
    """One job's attempt figures."""

    __slots__ = (
        "attempts",
        "dead_letters",
        "duration",
        "in_progress",
        "items_failed",
        "items_succeeded",
        "lag",
        "loop_blocks",
        "retries",
        "retry_wait",
        "runs",
        "skips",
    )

    def __init__(self) -> None:
        self.in_progress = 0
        self.lag = _Buckets(LAG_BUCKETS)
        self.retry_wait = _Buckets(DURATION_BUCKETS)
        self.duration = _Buckets(DURATION_BUCKETS)
        self.attempts = dict.fromkeys(RUN_OUTCOMES, 0)
        self.runs = dict.fromkeys(RUN_OUTCOMES, 0)
        self.dead_letters = 0
        self.items_succeeded = 0
        self.items_failed = 0
        self.retries = 0
        self.loop_blocks = 0
        self.skips = dict.fromkeys(SkipReason, 0)


class _AttemptCollector(Collector):
    """The attempt metrics of every job, from their series at scrape time."""

    def __init__(self, by_job: dict[str, _AttemptSeries]) -> None:
        self._by_job = by_job

    def collect(self) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "scheduler_job_duration_seconds", "How long each attempt of a run took.",
            labels=["job_type"],
        )  # fmt: skip
        lag = HistogramMetricFamily(
            "scheduler_job_lag_seconds", "Start time minus scheduled time of each run's first "
            "attempt (how late the scheduler started it).", labels=["job_type"],
        )  # fmt: skip
        retry_wait = HistogramMetricFamily(
            "scheduler_job_retry_wait_seconds", "From the end of an attempt to the start of its "
            "retry (the backoff, and any wait for a slot).", labels=["job_type"],
        )  # fmt: skip
        runs = CounterMetricFamily(
            "scheduler_job_runs", "Runs that ended, by final outcome (their last attempt's).",
            labels=["job_type", "outcome"],
        )  # fmt: skip
        attempts = CounterMetricFamily(
            "scheduler_job_attempts", "Attempts that ended, by outcome (retries included).",
            labels=["job_type", "outcome"],
        )  # fmt: skip
        dead_letters = CounterMetricFamily(
            "scheduler_job_dead_letters", "Runs that failed for good (after their last retry).",
            labels=["job_type"],
        )  # fmt: skip
        in_progress = GaugeMetricFamily(
            "scheduler_job_in_progress", "Attempts running now.", labels=["job_type"]
        )
        items = CounterMetricFamily(
            "scheduler_job_items", "RunnerResult items returned, by their success.",
            labels=["job_type", "outcome"],
        )  # fmt: skip
        retries = CounterMetricFamily(
            "scheduler_job_retries", "Attempts that were followed by a retry.",
            labels=["job_type"],
        )  # fmt: skip
        skips = CounterMetricFamily(
            "scheduler_job_skipped", "Runs that did not happen, by job and reason.",
            labels=["job_type", "reason"],
        )  # fmt: skip
        loop_blocks = CounterMetricFamily(
            "scheduler_job_loop_blocks", "Times a run blocked its worker's event loop past "
            "SCHEDULER_WATCHDOG_SECONDS.", labels=["job_type"],
        )  # fmt: skip
        for job_type, series in list(self._by_job.items()):
            duration.add_metric([job_type], *series.duration.exposition())
            lag.add_metric([job_type], *series.lag.exposition())
            retry_wait.add_metric([job_type], *series.retry_wait.exposition())
            for outcome, count in list(series.runs.items()):
                runs.add_metric([job_type, outcome], count)
            for outcome, count in list(series.attempts.items()):
                attempts.add_metric([job_type, outcome], count)
            dead_letters.add_metric([job_type], series.dead_letters)
            in_progress.add_metric([job_type], series.in_progress)
            items.add_metric([job_type, "success"], series.items_succeeded)
            items.add_metric([job_type, "failure"], series.items_failed)
            retries.add_metric([job_type], series.retries)
            loop_blocks.add_metric([job_type], series.loop_blocks)
            for reason, count in list(series.skips.items()):
                skips.add_metric([job_type, str(reason)], count)
        yield from (duration, runs, attempts, dead_letters, lag, retry_wait, in_progress, items)
        yield from (retries, skips, loop_blocks)


class _LeaderOnly(Collector):
    """The active role's series, exported only while this instance leads."""

    def __init__(self, collectors: Sequence[Collector], leading: Callable[[], bool]) -> None:
        self._collectors = collectors
        self._leading = leading

    def collect(self) -> Iterator[Metric]:
        if self._leading():
            for collector in self._collectors:
                yield from collector.collect()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing at registration: whether it leads is known only at a scrape


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
            "scheduler_leadership_epoch",
            "The leadership term this instance holds (it only grows); 0 on a standby.",
            status.leadership_epoch,
        )
        yield CounterMetricFamily(
            "scheduler_history_rows_dropped",
            "Run-history rows the database refused even written alone (each logged).",
            value=status.history_rows_dropped,
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
        health = {
            "scheduler_database_up": (
                "1 while the database answers the heartbeat's query, else 0.",
                status.database_up,
            ),
            "scheduler_jobstore_up": (
                "1 while the job store reads and writes the database, else 0 (on a standby, "
                "which has none open: as the database).",
                status.jobstore_up,
            ),
            "scheduler_history_writer_up": (
                "1 while run-history writes succeed, else 0 (failing or stalled).",
                status.history_writer_up,
            ),
        }
        for name, (documentation, up) in health.items():
            yield _gauge(name, documentation, float(up))
        yield _gauge("scheduler_history_writer_queue",
                     "Run-history rows waiting to be written.", status.history_queue)  # fmt: skip
        if status.is_leader:  # a standby's copy would double every per-job sum
            yield from _job_gauges(status.jobs)


class _WorkerCollector(Collector):
    """The worker processes, read from the pool when Prometheus scrapes."""

    def __init__(self, workers: Callable[[], Sequence[Any]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        workers = self._workers()
        count = GaugeMetricFamily(
            "scheduler_workers", "Worker processes, by state.", labels=["state"]
        )
        memory = GaugeMetricFamily(
            "scheduler_worker_memory_bytes", "Resident memory of each worker process.",
            labels=["worker"],
        )  # fmt: skip
        blocked = GaugeMetricFamily(
            "scheduler_worker_loop_blocked_seconds",
            "How long each worker's event loop has been blocked by a run (0: it answers).",
            labels=["worker"],
        )
        runs = GaugeMetricFamily(
            "scheduler_worker_runs", "Attempts in progress on each worker.", labels=["worker"]
        )
        for state in ("starting", "ready", "retiring"):
            count.add_metric([state], sum(1 for w in workers if w.state == state))
        for worker in workers:
            memory.add_metric([str(worker.index)], worker.rss_bytes)
            blocked.add_metric([str(worker.index)], worker.blocked_seconds)
            runs.add_metric([str(worker.index)], worker.runs)
        yield from (count, memory, blocked, runs)


class _ClusterCollector(Collector):
    """The Celery queue and workers (SCHEDULER_EXECUTION=celery), as the broker last said."""

    def __init__(self, cluster: Callable[[], ClusterStatus | None]) -> None:
        self._cluster = cluster

    def collect(self) -> Iterator[Metric]:
        cluster = self._cluster()
        if cluster is None:
            return
        yield _gauge("scheduler_celery_queue_depth",
                     "Attempts sent to the Celery queue that no worker has taken yet.",
                     cluster.queue_depth)  # fmt: skip
        yield _gauge("scheduler_celery_broker_up", "1 while the Celery broker answers.",
                     float(cluster.broker_up))  # fmt: skip
        yield _gauge("scheduler_celery_workers", "Celery workers with a live heartbeat.",
                     len(cluster.workers))  # fmt: skip
        families = {
            "busy": "Attempts each Celery worker runs now.",
            "concurrency": "Attempts each Celery worker runs at most at once.",
            "saturation": "Busy over concurrency of each Celery worker (1: all busy).",
        }
        for name, text in families.items():
            family = GaugeMetricFamily(f"scheduler_celery_worker_{name}", text, labels=["worker"])
            for worker in cluster.workers:
                value = {"busy": worker.busy, "concurrency": worker.concurrency}.get(
                    name, worker.saturation
                )
                family.add_metric([worker.name], value)
            yield family


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
        "scheduler_job_quarantined": (
            "1 while the job is quarantined (its runs kept killing their worker).",
            lambda j: float(j.quarantined),
        ),
        "scheduler_job_paused": (
            "1 while an operator has the job paused (`scheduler pause`).",
            lambda j: float(j.paused),
        ),
        "scheduler_job_loaded": (
            "1 if the job's task file imported; 0 for a stored job whose file failed to import.",
            lambda j: float(j.loaded),
        ),
        "scheduler_job_oldest_run_age_seconds": (
            "How long the job's oldest run in progress has been going, from the start of its "
            "first attempt (0: none in progress).",
            lambda j: j.oldest_run_age_seconds,
        ),
    }
    for name, (documentation, value_of) in families.items():
        family = GaugeMetricFamily(name, documentation, labels=["job_type"])
        for job in jobs:
            value = value_of(job)
            if value is not None:
                family.add_metric([job.job_type], value)
        yield family
