"""N no-op jobs on a 1 s interval: this service against raw APScheduler, same store, same run.

For each system, store (SQLite file, PostgreSQL) and N: runs completed against runs expected
in a measured window, runs missed, and start lag p50/p99. "staggered": due times spread over
each second; "aligned": all N due at the same instant.
"""

from __future__ import annotations

import dataclasses
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
    #: The service's log (at WARNING), bytes per minute of its run (raw APScheduler: 0).
    log_bytes_per_minute: float = 0.0

    @property
    def missed(self) -> int:
        return self.expected - self.completed

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
    return Result(count * round(seconds), len(ran), [t - s for s, t in ran])


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
            process = subprocess.Popen(
                [MEASURED_PYTHON, "-m", "scheduler", "run"], cwd=tmp, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                started = _first_run(url, process, timeout=120)
                window = (started + warmup, started + warmup + seconds)
                time.sleep(max(window[1] - time.time(), 0) + 1.5)
                log_bytes = (Path(tmp) / "service.log").stat().st_size
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(120)
        result = _service_result(url, count, seconds, window)
        elapsed = time.time() - started
        return dataclasses.replace(result, log_bytes_per_minute=log_bytes / elapsed * 60)


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
                        text("SELECT min(started_at) FROM scheduler_runs")
                    ).scalar()
                if first is not None:
                    return _timestamp(first)
            except Exception:  # the tables do not exist yet
                pass
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise RuntimeError("no run started")


def _service_result(url: str, count: int, seconds: float, window: tuple[float, float]) -> Result:
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
    return Result(count * round(seconds), len(lags), lags)


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
    log_kb_per_minute: float
    runs: list[str]  # every repeat's figures, to show the spread

    @classmethod
    def of(cls, results: list[Result]) -> Summary:
        def each(r: Result) -> str:
            return f"{r.completed_ratio:.1%}/{r.lag(0.99) * 1000:.0f}ms"

        return cls(
            statistics.median(r.completed_ratio for r in results),
            statistics.median(r.missed for r in results),
            statistics.median(r.lag(0.5) for r in results),
            statistics.median(r.lag(0.99) for r in results),
            statistics.median(r.log_bytes_per_minute for r in results) / 1024,
            [each(r) for r in results],
        )


def main() -> None:
    counts = [int(n) for n in os.environ.get("BENCH_COUNTS", "100,1000,5000").split(",")]
    stores = os.environ.get("BENCH_STORES", "sqlite,postgresql").split(",")
    modes = os.environ.get("BENCH_MODES", "staggered,aligned").split(",")
    executions = os.environ.get("BENCH_EXECUTIONS", "process,inline").split(",")
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    warmup = 3.0
    print(f"N no-op jobs at 1 s for {seconds:g} s after {warmup:g} s warm-up; median of {repeats}")
    header = (f"{'store':<10} {'mode':<9} {'N':>5}  {'system':<12} {'completed':>9} "
              f"{'missed':>7} {'lag p50':>9} {'lag p99':>9} {'log/min':>9}  "
              "each run: completed/p99")  # fmt: skip
    print(header)
    for store in stores:
        for mode in modes:
            for count in counts:
                rows = {}
                systems: list[tuple[str, Measure]] = [("raw APSched", measure_raw)]
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
                for system, r in rows.items():
                    lag = f"{r.lag_p50 * 1000:>7.1f}ms {r.lag_p99 * 1000:>7.1f}ms"
                    lag += f" {r.log_kb_per_minute:>6.0f} KB"
                    print(f"{store:<10} {mode:<9} {count:>5}  {system:<12} "
                          f"{r.completed_ratio:>8.1%} {r.missed:>7.0f} {lag}  "
                          f"[{' '.join(r.runs)}]")  # fmt: skip
                raw = rows["raw APSched"]
                for system, ours in rows.items():
                    if system == "raw APSched":
                        continue
                    ratio = (
                        ours.completed_ratio / raw.completed_ratio
                        if raw.completed_ratio
                        else float("inf")
                    )
                    print(f"{'':<10} {'':<9} {'':>5}  {'ratio ' + system[5:]:<12} "
                          f"{ratio:>8.2f}x completed vs raw")  # fmt: skip
            sys.stdout.flush()


if __name__ == "__main__":
    main()
