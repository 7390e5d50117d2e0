"""N no-op jobs on a 1 s interval: this service against raw APScheduler, same store, same run.

For each system, store (SQLite file, PostgreSQL) and N: runs completed against runs expected
in a measured window, runs missed, and start lag p50/p99. "staggered": due times spread over
each second; "aligned": all N due at the same instant.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from bench import MEASURED_PYTHON
from bench.procfs import cpu_seconds, family, rss_mb

PG_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REPO = Path(__file__).resolve().parent.parent
#: SCHEDULER_MAX_WORKERS for the service; unset: its default.
MAX_WORKERS = os.environ.get("BENCH_MAX_WORKERS", "")

JOBS_FILE = """
from scheduler import BaseTask, JobContext, RunnerResult, job



class Noop(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return []


for n in range({count}):
    job(f"bench_{{n:05d}}", interval_seconds=1, max_retries=0, timeout_seconds=30)(
        type(f"Bench{{n}}", (Noop,), {{}})
    )
"""


Measure = Callable[[int, float, float, str, bool], "Result"]


@dataclass(frozen=True)
class Result:
    expected: int
    completed: int
    lags: list[float]
    #: CPU seconds spent in the window: the scheduler process and its worker processes.
    cpu_seconds: float
    #: Resident memory at the window's end: the scheduler process, and its workers together.
    rss_mb: float
    worker_rss_mb: float = 0.0
    #: Seconds from the process's start to its first run (raw APScheduler: not measured, its
    #: jobs are added with a first run time well ahead).
    first_run_seconds: float = float("nan")
    #: The service's log (at WARNING), bytes per minute of its run (raw APScheduler: 0).
    log_bytes_per_minute: float = 0.0

    @property
    def missed(self) -> int:
        return self.expected - self.completed

    @property
    def cpu_ms_per_run(self) -> float:
        return self.cpu_seconds / self.completed * 1000 if self.completed else float("inf")

    @property
    def completed_ratio(self) -> float:
        return self.completed / self.expected if self.expected else 0.0

    def lag(self, q: float) -> float:
        if not self.lags:
            return float("nan")
        ordered = sorted(self.lags)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@contextmanager
def database(store: str) -> Iterator[str]:
    """A fresh SQLite file or PostgreSQL database for one measurement."""
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    name = f"taskwarden_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure_raw(count: int, seconds: float, warmup: float, url: str, aligned: bool) -> Result:
    output = subprocess.run(
        [MEASURED_PYTHON, "-m", "bench.raw_apscheduler", str(count), str(seconds), str(warmup),
         url, "aligned" if aligned else "staggered"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=seconds + warmup + 600,
    ).stdout  # fmt: skip
    data = json.loads(output.strip().splitlines()[-1])
    low, high = data["window"]
    ran = [(s, t) for s, t in data["ran"] if low <= s < high]
    lags = [t - s for s, t in ran]
    return Result(count * round(seconds), len(ran), lags, data["cpu"], data["rss"])


def measure_raw_memory(
    count: int, seconds: float, warmup: float, url: str, aligned: bool
) -> Result:
    """Raw APScheduler with its in-memory store: the machinery's own limit."""
    return measure_raw(count, seconds, warmup, "memory", aligned)


def measure_service(
    count: int,
    seconds: float,
    warmup: float,
    url: str,
    aligned: bool,
    execution: str = "process",
) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp) / "tasks"
        tasks.mkdir()
        (tasks / "bench_jobs.py").write_text(textwrap.dedent(JOBS_FILE.format(count=count)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        env.update(
            SCHEDULER_DATABASE_URL=url,
            SCHEDULER_TASKS_DIR=str(tasks),
            SCHEDULER_LOG_LEVEL="WARNING",
            SCHEDULER_HTTP_PORT=str(_free_port()),
            SCHEDULER_FIRST_RUN_SPREAD_SECONDS="0" if aligned else "1",
            SCHEDULER_EXECUTION=execution,
        )
        if MAX_WORKERS:  # else the service's default: the targets hold at default settings
            env["SCHEDULER_MAX_WORKERS"] = MAX_WORKERS
        with open(Path(tmp) / "service.log", "wb") as log:
            launched = time.time()
            process = subprocess.Popen(
                [MEASURED_PYTHON, "-m", "scheduler", "run"], cwd=tmp, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                started = _first_run(url, process, timeout=120)
                window = (started + warmup, started + warmup + seconds)
                time.sleep(max(window[0] - time.time(), 0))
                pids = family(process.pid)
                cpu_before = sum(cpu_seconds(pid) for pid in pids)
                time.sleep(max(window[1] - time.time(), 0))
                pids = family(process.pid)  # a worker replaced in the window counts from 0
                cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
                rss = rss_mb(process.pid)
                worker_rss = sum(rss_mb(pid) for pid in pids[1:])
                time.sleep(1.5)
                log_bytes = (Path(tmp) / "service.log").stat().st_size
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(120)
        expected, lags = _service_result(url, count, seconds, window)
        return Result(
            expected, len(lags), lags, cpu, rss, worker_rss, started - launched,
            log_bytes / (time.time() - started) * 60,
        )  # fmt: skip


def _first_run(url: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited with {process.returncode}")
            try:
                with engine.connect() as connection:
                    first = connection.execute(
                        text(
                            "SELECT min(started_at) FROM scheduler_runs WHERE outcome != 'skipped'"
                        )
                    ).scalar()
                if first is not None:
                    return _timestamp(first)
            except Exception:  # the tables do not exist yet
                pass
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise RuntimeError("no run started")


def _service_result(
    url: str, count: int, seconds: float, window: tuple[float, float]
) -> tuple[int, list[float]]:
    """Runs expected in the window, and the start lag of each that succeeded."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT scheduled_at, started_at, outcome FROM scheduler_runs")
        ).all()
    engine.dispose()
    lags = []
    for scheduled, started, outcome in rows:
        due = _timestamp(scheduled)
        if window[0] <= due < window[1] and outcome == "success":
            lags.append(_timestamp(started) - due)
    return count * round(seconds), lags


def _timestamp(value: object) -> float:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Summary:
    """Each figure the median of that figure over the repeats (runs are noisy)."""

    completed_ratio: float
    missed: float
    lag_p50: float
    lag_p99: float
    cpu_ms_per_run: float
    rss_mb: float
    worker_rss_mb: float
    first_run_seconds: float
    log_kb_per_minute: float
    runs: list[str]  # every repeat's figures, to show the spread

    @classmethod
    def of(cls, results: list[Result]) -> Summary:
        def each(r: Result) -> str:
            return f"{r.completed_ratio:.1%}/{r.lag(0.99) * 1000:.0f}ms"

        def median(figure: Callable[[Result], float]) -> float:
            return statistics.median(figure(r) for r in results)

        return cls(
            median(lambda r: r.completed_ratio),
            median(lambda r: r.missed),
            median(lambda r: r.lag(0.5)),
            median(lambda r: r.lag(0.99)),
            median(lambda r: r.cpu_ms_per_run),
            median(lambda r: r.rss_mb),
            median(lambda r: r.worker_rss_mb),
            median(lambda r: r.first_run_seconds),
            median(lambda r: r.log_bytes_per_minute) / 1024,
            [each(r) for r in results],
        )

    def row(self) -> str:
        first = (
            ""
            if self.first_run_seconds != self.first_run_seconds
            else (f"{self.first_run_seconds:.2f}s")
        )
        return (f"{self.completed_ratio:>8.1%} {self.missed:>7.0f} {self.lag_p50 * 1000:>7.1f}ms "
                f"{self.lag_p99 * 1000:>7.1f}ms {self.cpu_ms_per_run:>6.3f}ms "
                f"{self.rss_mb:>5.0f}+{self.worker_rss_mb:<4.0f}MB {first:>6} "
                f"{self.log_kb_per_minute:>6.0f}KB  [{' '.join(self.runs)}]")  # fmt: skip


RAW_SYSTEMS: dict[str, tuple[str, Measure]] = {
    "memory": ("raw memory", measure_raw_memory),
    "store": ("raw store", measure_raw),
}


def main() -> None:
    counts = [int(n) for n in os.environ.get("BENCH_COUNTS", "100,1000,5000").split(",")]
    stores = os.environ.get("BENCH_STORES", "sqlite,postgresql").split(",")
    modes = os.environ.get("BENCH_MODES", "staggered,aligned").split(",")
    executions = os.environ.get("BENCH_EXECUTIONS", "process,inline").split(",")
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    # "memory,store" (the default) for the ratios; none ("") for a quick look at ours alone
    raw_systems = [s for s in os.environ.get("BENCH_RAW", "memory,store").split(",") if s]
    warmup = 3.0
    print(f"N no-op jobs at 1 s for {seconds:g} s after {warmup:g} s warm-up; median of {repeats}")
    print("cpu/run: CPU of the process and its workers in the window per completed run; "
          "rss: scheduler+workers; first: process start to first run")  # fmt: skip
    header = (f"{'store':<10} {'mode':<9} {'N':>5}  {'system':<12} {'completed':>9} "
              f"{'missed':>7} {'lag p50':>9} {'lag p99':>9} {'cpu/run':>8} {'rss':>10} "
              f"{'first':>6} {'log/min':>8}  each run: completed/p99")  # fmt: skip
    print(header)
    for store in stores:
        for mode in modes:
            for count in counts:
                systems = [RAW_SYSTEMS[name] for name in raw_systems]
                systems += [
                    (f"ours {execution}", functools.partial(measure_service, execution=execution))
                    for execution in executions
                ]
                # Interleaved repeats: a slow moment of the shared machine hits every system.
                results: dict[str, list[Result]] = {system: [] for system, _ in systems}
                for _ in range(repeats):
                    for system, measure in systems:
                        with database(store) as url:
                            aligned = mode == "aligned"
                            results[system].append(measure(count, seconds, warmup, url, aligned))
                rows = {system: Summary.of(each) for system, each in results.items()}
                for system, summary in rows.items():
                    print(f"{store:<10} {mode:<9} {count:>5}  {system:<12} {summary.row()}")
                if "raw memory" not in rows or "raw store" not in rows:
                    continue
                memory, raw = rows["raw memory"], rows["raw store"]
                for system, ours in rows.items():
                    if not system.startswith("ours"):
                        continue
                    completed = (
                        ours.completed_ratio / raw.completed_ratio
                        if raw.completed_ratio
                        else float("inf")
                    )
                    cpu = ours.cpu_ms_per_run / memory.cpu_ms_per_run
                    lag = ours.lag_p99 / memory.lag_p99
                    print(f"{'':<10} {'':<9} {'':>5}  {'ratio ' + system[5:]:<12} "
                          f"{completed:>8.2f}x completed vs raw store; vs raw memory: "
                          f"cpu/run {cpu:.2f}x, lag p99 {lag:.2f}x")  # fmt: skip
            sys.stdout.flush()


if __name__ == "__main__":
    main()
