"""Cost of the instrumentation (metrics + logs) per run, against the same pipeline without it.

Runs a no-op job through the real RunCoordinator in-process (gates, worker slot, timeout,
retries bookkeeping) with history disabled, so the difference isolates metrics and log lines.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from typing import Any

from scheduler import BaseTask, JobContext, JobRegistry, RunnerResult, job
from scheduler.execution import NoHistory, RunCoordinator, RunObserver
from scheduler.job_config import resolve_job_configs
from scheduler.job_state import JobStates
from scheduler.logs import configure_logging
from scheduler.metrics import SchedulerMetrics, ServiceStatus
from scheduler.workers import PriorityWorkerPool

JOB = "bench_noop"


class NoopTask(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return [RunnerResult(success=True)]


def _status() -> ServiceStatus:
    return ServiceStatus(0.0, True, 0, 0.0, ())


async def _per_run_seconds(observer: RunObserver | None, runs: int) -> float:
    jobs = resolve_job_configs(JobRegistry.list_jobs(), {}).jobs
    coordinator = RunCoordinator(
        jobs,
        history=NoHistory(),
        states=JobStates(),
        workers=PriorityWorkerPool(4),
        instance="bench",
        observer=observer,
    )
    started = time.perf_counter()
    for _ in range(runs):
        await coordinator.run(JOB)
    return (time.perf_counter() - started) / runs


async def _raw_call_seconds(runs: int) -> float:
    context = JobContext(JOB, JobRegistry.get(JOB).defaults, "raw")
    started = time.perf_counter()
    for _ in range(runs):
        await NoopTask().execute(context)
    return (time.perf_counter() - started) / runs


def measure(runs: int = 5000, repeats: int = 5) -> dict[str, float]:
    if not JobRegistry.is_registered(JOB):
        job(JOB)(NoopTask)
    sink = io.StringIO()
    results: dict[str, list[float]] = {"raw": [], "off": [], "on": []}
    for _ in range(repeats):
        configure_logging("WARNING", "json", sink)  # run lines are INFO: not emitted
        results["raw"].append(asyncio.run(_raw_call_seconds(runs)))
        results["off"].append(asyncio.run(_per_run_seconds(None, runs)))
        configure_logging("INFO", "json", sink)  # every run logs its start and end line
        metrics: Any = SchedulerMetrics(_status)
        metrics.initialise([JOB])
        results["on"].append(asyncio.run(_per_run_seconds(metrics, runs)))
        sink.seek(0)
        sink.truncate()
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    medians = measure()
    micro = {name: value * 1e6 for name, value in medians.items()}
    print("per-run cost of a no-op job, median of 5 x 5,000 runs (µs)")
    off_ratio, on_ratio = micro["off"] / micro["raw"], micro["on"] / micro["off"]
    rows = [
        ("await task.execute() alone", micro["raw"], ""),
        ("pipeline, instrumentation off", micro["off"], f"{off_ratio:.1f}x raw"),
        ("pipeline, metrics + JSON logs on", micro["on"], f"{on_ratio:.2f}x off"),
        ("instrumentation overhead per run", micro["on"] - micro["off"], "(target <= 50)"),
    ]
    for label, value, note in rows:
        print(f"{label:<36} {value:>8.1f}  {note}")


if __name__ == "__main__":
    main()
