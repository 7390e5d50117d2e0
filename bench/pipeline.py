"""Cost per run of the whole run pipeline, layer by layer, for a no-op job.

Runs go through the real RunCoordinator in-process (gates, worker slot, timeout, retries
bookkeeping), handed over 500 at a time as the scheduler's executor does, with:
- nothing recorded and no instrumentation;
- metrics and JSON log lines on (two lines per run);
- and the run history on a real SQLite file in WAL mode: each run's `running` row committed
  before its body runs, then completed (the writer thread's work is in the wall time).
Against it, raw APScheduler's own per-run path, `run_job` (what each of its executors calls for
a due job: the misfire check, the call, the execution event, its two INFO log lines), through
the same logging. The scheduler's wakeup and job store are in the dispatch benchmark.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import run_job
from apscheduler.schedulers.background import BackgroundScheduler

from scheduler import BaseTask, JobContext, JobRegistry, RunnerResult, job
from scheduler.backends import InlineBackend
from scheduler.coordinator import HistorySink, NoHistory, RunCoordinator, RunObserver
from scheduler.database import create_database_engine
from scheduler.history import DurableStarts, HistoryWriter, migrate
from scheduler.job_config import resolve_job_configs
from scheduler.job_state import JobStates
from scheduler.leadership import sole_term
from scheduler.logs import configure_logging
from scheduler.metrics import SchedulerMetrics, ServiceStatus
from scheduler.slots import PrioritySlots

JOB = "bench_noop"
CONCURRENT = 500


class NoopTask(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return [RunnerResult(success=True)]


def _status() -> ServiceStatus:
    return ServiceStatus(0.0, True, 0, 0.0, ())


async def _per_run_seconds(
    observer: RunObserver | None, runs: int, history_url: str | None = None
) -> float:
    writer = None
    history: HistorySink = NoHistory()
    if history_url is not None:
        engine = create_database_engine(history_url)
        migrate(engine)
        writer = HistoryWriter(engine, sole_term(engine, "bench"))
        history = DurableStarts(writer, asyncio.get_running_loop())
    coordinator = RunCoordinator(
        resolve_job_configs(JobRegistry.list_jobs(), {}).jobs,
        history=history,
        states=JobStates(),
        slots=PrioritySlots(CONCURRENT),
        backend=InlineBackend(kill_grace_seconds=5.0),
        instance="bench",
        observer=observer,
    )
    started = time.perf_counter()
    for _ in range(runs // CONCURRENT):
        now = datetime.now(UTC)  # handed over as the scheduler's executor does
        # Each its own slot: the history refuses a slot's second first attempt.
        slots = [now + timedelta(microseconds=n) for n in range(CONCURRENT)]
        await asyncio.gather(*(coordinator.start_due(JOB, [slot], None) for slot in slots))
    if writer is not None:  # the completions too
        await asyncio.to_thread(writer.close)
    return (time.perf_counter() - started) / runs


def _noop() -> None:
    pass


def _apscheduler_run_seconds(runs: int) -> float:
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.start(paused=True)  # paused: only its fully configured job is needed
    raw_job = scheduler.add_job(_noop, "interval", seconds=1)
    started = time.perf_counter()
    for _ in range(runs):
        run_job(raw_job, "default", [datetime.now(UTC)], "apscheduler.executors.default")
    elapsed = time.perf_counter() - started
    scheduler.shutdown()
    return elapsed / runs


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
    results: dict[str, list[float]] = {
        "raw": [], "bare": [], "instrumented": [], "whole": [], "apscheduler": []
    }  # fmt: skip
    for _ in range(repeats):
        configure_logging("WARNING", "json", sink)  # run lines are INFO: not emitted
        results["raw"].append(asyncio.run(_raw_call_seconds(runs)))
        results["bare"].append(asyncio.run(_per_run_seconds(None, runs)))
        configure_logging("INFO", "json", sink)  # every run logs its start and end line
        results["apscheduler"].append(_apscheduler_run_seconds(runs))
        metrics: Any = SchedulerMetrics(_status)
        metrics.initialise([JOB])
        results["instrumented"].append(asyncio.run(_per_run_seconds(metrics, runs)))
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            results["whole"].append(asyncio.run(_per_run_seconds(metrics, runs, url)))
        sink.seek(0)
        sink.truncate()
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    micro = {name: value * 1e6 for name, value in measure().items()}
    print(f"per-run cost of a no-op job, {CONCURRENT} at a time, median of 5 x 5,000 runs (µs)")
    rows = [
        ("await task.execute() alone", micro["raw"], ""),
        ("gates, slot, timeout, retries", micro["bare"],
         f"{micro['bare'] / micro['raw']:.0f}x raw"),
        ("+ metrics + JSON logs", micro["instrumented"],
         f"+{micro['instrumented'] - micro['bare']:.1f} (target <= 50)"),
        ("+ history (SQLite, durable start)", micro["whole"],
         f"+{micro['whole'] - micro['instrumented']:.1f}"),
        ("raw APScheduler run_job, INFO logs", micro["apscheduler"],
         f"whole pipeline {micro['whole'] / micro['apscheduler']:.2f}x raw APScheduler"),
    ]  # fmt: skip
    for label, value, note in rows:
        print(f"{label:<36} {value:>8.1f}  {note}")


if __name__ == "__main__":
    main()
