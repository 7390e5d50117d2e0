"""Idle footprint (20 jobs at 60 s: RSS and CPU over 60 s) and start-to-first-run with 200 task
files: this service against raw APScheduler, each in a fresh process on a fresh SQLite file."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from bench import MEASURED_PYTHON
from bench.dispatch import _free_port, _timestamp
from bench.procfs import cpu_seconds, family, rss_mb

TASK_FILE = """
from scheduler import BaseTask, JobContext, RunnerResult, job


@job("job_{n:03d}", interval_seconds={interval})
class Task{n}(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return []
"""

RAW = """
import sys, time, threading
from datetime import UTC, datetime
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.events import EVENT_JOB_EXECUTED

count, interval, url, first_path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
done = threading.Event()
def first(event):
    if not done.is_set():
        done.set()
        open(first_path, "w").write(repr(time.time()))
scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=url)}, timezone=UTC)
scheduler.add_listener(first, EVENT_JOB_EXECUTED)
scheduler.start()
for n in range(count):
    scheduler.add_job("bench.raw_apscheduler:noop", "interval", seconds=interval, id=f"j{n}",
                      next_run_time=datetime.now(UTC))
signal_wait = threading.Event()
signal_wait.wait(float(sys.argv[5]))
"""


def _service(
    tmp: Path, count: int, interval: float, execution: str = "process"
) -> subprocess.Popen[bytes]:
    tasks = tmp / "tasks"
    tasks.mkdir()
    for n in range(count):
        source = textwrap.dedent(TASK_FILE.format(n=n, interval=interval))
        (tasks / f"task_{n:03d}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env.update(
        SCHEDULER_DATABASE_URL=f"sqlite:///{tmp}/s.db",
        SCHEDULER_TASKS_DIR=str(tasks),
        SCHEDULER_HTTP_PORT=str(_free_port()),
        SCHEDULER_LOG_LEVEL="WARNING",
        SCHEDULER_EXECUTION=execution,
    )
    return subprocess.Popen(
        [MEASURED_PYTHON, "-m", "scheduler", "run"], cwd=tmp, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _raw(tmp: Path, count: int, interval: float, lifetime: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [MEASURED_PYTHON, "-c", RAW, str(count), str(interval), f"sqlite:///{tmp}/raw.db",
         str(tmp / "first"), str(lifetime)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _first_service_run(tmp: Path, timeout: float = 60) -> float:
    engine = create_engine(f"sqlite:///{tmp}/s.db")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                with engine.connect() as connection:
                    first = connection.execute(
                        text(
                            "SELECT min(started_at) FROM scheduler_runs WHERE outcome != 'skipped'"
                        )
                    )
                    value = first.scalar()
                if value is not None:
                    return _timestamp(value)
            except Exception:
                pass
            time.sleep(0.02)
    finally:
        engine.dispose()
    raise RuntimeError("no first run")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


SYSTEMS = {"raw APSched": None, "ours process": "process", "ours inline": "inline"}


def idle(system: str, seconds: float) -> tuple[float, float]:
    """(RSS MB at the end, CPU % over the window) with 20 jobs at 60 s: of the whole service,
    the scheduler process and its worker processes together."""
    execution = SYSTEMS[system]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        process = (
            _raw(folder, 20, 60, seconds + 30)
            if execution is None
            else _service(folder, 20, 60, execution)
        )
        time.sleep(5)  # start-up and the first runs are not idleness
        pids = family(process.pid)
        before = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(seconds)
        cpu = (sum(cpu_seconds(pid) for pid in pids) - before) / seconds * 100
        rss = sum(rss_mb(pid) for pid in family(process.pid))
        _stop(process)
    return rss, cpu


def first_run(system: str) -> float:
    """Seconds from process start to the first job run, with 200 jobs."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.time()
        execution = SYSTEMS[system]
        if execution is not None:
            process = _service(folder, 200, 60, execution)
            first = _first_service_run(folder)
        else:
            process = _raw(folder, 200, 60, 60)
            path = folder / "first"
            deadline = time.monotonic() + 60
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            first = float(path.read_text())
        _stop(process)
    return first - started


def main() -> None:
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    seconds = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
    print(
        f"idle: 20 jobs at 60 s, {seconds:g} s; start-to-first-run: 200 jobs; median of {repeats}"
    )
    print(f"{'system':<12} {'RSS':>8} {'CPU':>7} {'first run':>10}")
    for system in SYSTEMS:
        rss, cpu = zip(*(idle(system, seconds) for _ in range(repeats)), strict=True)
        first = [first_run(system) for _ in range(repeats)]
        print(f"{system:<12} {statistics.median(rss):>6.1f}MB {statistics.median(cpu):>6.2f}% "
              f"{statistics.median(first):>9.2f}s")  # fmt: skip


if __name__ == "__main__":
    main()
