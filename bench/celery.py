"""Celery execution: the scheduler handing runs to `scheduler worker` processes, against plain
Celery beat feeding the same kind of workers, on a private Redis.

For 1, 2 and 4 worker processes (one worker, `-c N`; prefork: one attempt per process at a
time), N jobs on a 1 s interval whose body is a no-op or 50 ms of `asyncio.sleep` (beat's:
`time.sleep`, the same wait for a prefork child), offered more than the workers can run (no-op:
BENCH_CELERY_NOOP_JOBS; I/O: 25 per process, 1.25 times capacity). Each body writes its start
and its lag to a journal: ours from the run's scheduled time, beat's from when beat published
it (beat's own lateness is not counted: in its favour). Over a window after a warm-up:
completed runs/s and lag p50/p99, medians of BENCH_CELERY_REPEATS runs, and the ratios.

Hand-off overhead: 20 no-op jobs on a 1 s interval, one worker process; the median time from
the attempt's start to its result as the history records it, Celery against the local worker
pool (SCHEDULER_EXECUTION=process).

`python -m bench.celery`. BENCH_CELERY_SECONDS (10), BENCH_CELERY_REPEATS (3),
BENCH_CELERY_PROCESSES (1,2,4), BENCH_CELERY_NOOP_JOBS (300).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # celery is an extra: the development environment has it
WARMUP_SECONDS = 4.0

TASKS = """
import asyncio, os, time
from pathlib import Path
from scheduler import BaseTask, JobContext, RunnerResult, job

JOURNAL = Path(os.environ["BENCH_JOURNAL"])
SLEEP = float(os.environ.get("BENCH_SLEEP", "0"))


class _Bench(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        start = time.time()
        lag = start - context.scheduled_time.timestamp()
        with open(JOURNAL / str(os.getpid()), "a") as out:
            out.write(f"{start} {lag}\\n")
        if SLEEP:
            await asyncio.sleep(SLEEP)
        return []


for _i in range(int(os.environ["BENCH_JOBS"])):
    job(f"bench_{_i}", interval_seconds=1)(type(f"Bench{_i}", (_Bench,), {}))
"""


@dataclass(frozen=True)
class Result:
    runs_per_second: float
    lag_p50: float
    lag_p99: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _redis(workdir: Path) -> Iterator[str]:
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout
            != b"PONG\n"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield url
    finally:
        server.kill()
        server.wait()


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    environ.update(env)
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, env=environ, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _measure(journal: Path, seconds: float) -> Result:
    started = time.time()
    time.sleep(seconds)
    lags = []
    for path in journal.iterdir():
        for line in path.read_text().splitlines():
            at, lag = (float(part) for part in line.split())
            if started <= at < started + seconds:
                lags.append(lag)
    if not lags:
        return Result(0.0, float("nan"), float("nan"))
    lags.sort()
    return Result(len(lags) / seconds, lags[len(lags) // 2], lags[int(len(lags) * 0.99)])


def _ours(
    url: str, workdir: Path, processes: int, jobs: int, sleep: float, seconds: float
) -> Result:
    journal = _fresh(workdir / "journal")
    tasks = _fresh(workdir / "tasks")
    (tasks / "bench.py").write_text(textwrap.dedent(TASKS))
    env = {
        "SCHEDULER_EXECUTION": "celery",
        "SCHEDULER_CELERY_BROKER_URL": url,
        "SCHEDULER_CELERY_QUEUE": f"ours-{time.monotonic_ns()}",
        "SCHEDULER_TASKS_DIR": str(tasks),
        "SCHEDULER_DATABASE_URL": f"sqlite:///{workdir / f'ours-{time.monotonic_ns()}.db'}",
        "SCHEDULER_HTTP_PORT": str(_free_port()),
        "SCHEDULER_WORKER_HTTP_PORT": str(_free_port()),
        "SCHEDULER_MAX_WORKERS": "64",
        "SCHEDULER_LOG_LEVEL": "WARNING",
        "BENCH_JOURNAL": str(journal),
        "BENCH_JOBS": str(jobs),
        "BENCH_SLEEP": str(sleep),
    }
    log = workdir / "ours.log"
    worker = _start([PYTHON, "-m", "scheduler", "worker", "-c", str(processes)], env, log)
    service = _start([PYTHON, "-m", "scheduler", "run"], env, log)
    try:
        time.sleep(WARMUP_SECONDS)
        return _measure(journal, seconds)
    finally:
        _stop(service, worker)


def _beat(url: str, workdir: Path, processes: int, jobs: int, kind: str, seconds: float) -> Result:
    journal = _fresh(workdir / "journal")
    env = {
        "BENCH_BROKER": url,
        "BENCH_QUEUE": f"beat-{time.monotonic_ns()}",
        "BENCH_JOURNAL": str(journal),
        "BENCH_JOBS": str(jobs),
        "BENCH_KIND": kind,
    }
    log = workdir / "beat.log"
    celery = [PYTHON, "-m", "celery", "-A", "bench.celery_beat_app"]
    worker = _start([*celery, "worker", "-c", str(processes), "-P", "prefork", "-l", "WARNING",
                     "--without-gossip", "--without-mingle"], env, log)  # fmt: skip
    schedule = str(workdir / f"beat-{time.monotonic_ns()}")
    beat = _start([*celery, "beat", "-l", "WARNING", "-s", schedule], env, log)
    try:
        time.sleep(WARMUP_SECONDS)
        return _measure(journal, seconds)
    finally:
        _stop(beat, worker)


def _handoff(url: str, workdir: Path, execution: str, seconds: float) -> float:
    """Median seconds from an attempt's start to its result, as the history has it (no-op)."""
    journal = _fresh(workdir / "journal")
    tasks = _fresh(workdir / "tasks")
    (tasks / "bench.py").write_text(textwrap.dedent(TASKS))
    database = workdir / f"handoff-{execution}-{time.monotonic_ns()}.db"
    env = {
        "SCHEDULER_EXECUTION": execution,
        "SCHEDULER_WORKERS": "1",
        "SCHEDULER_CELERY_BROKER_URL": url,
        "SCHEDULER_CELERY_QUEUE": f"handoff-{time.monotonic_ns()}",
        "SCHEDULER_TASKS_DIR": str(tasks),
        "SCHEDULER_DATABASE_URL": f"sqlite:///{database}",
        "SCHEDULER_HTTP_PORT": str(_free_port()),
        "SCHEDULER_WORKER_HTTP_PORT": str(_free_port()),
        "SCHEDULER_LOG_LEVEL": "WARNING",
        "BENCH_JOURNAL": str(journal),
        "BENCH_JOBS": "20",
    }
    log = workdir / "handoff.log"
    started = [_start([PYTHON, "-m", "scheduler", "run"], env, log)]
    if execution == "celery":
        started.append(_start([PYTHON, "-m", "scheduler", "worker", "-c", "1"], env, log))
    try:
        time.sleep(WARMUP_SECONDS + seconds)
    finally:
        _stop(*started)
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT started_at, finished_at FROM scheduler_runs WHERE outcome = 'success'")
        ).all()
    engine.dispose()
    durations = [_seconds(finished) - _seconds(start) for start, finished in rows]
    return statistics.median(durations) if durations else float("nan")


def _seconds(value: object) -> float:
    from datetime import datetime

    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.timestamp()


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.runs_per_second for r in results),
        statistics.median(r.lag_p50 for r in results),
        statistics.median(r.lag_p99 for r in results),
    )


def main() -> None:
    seconds = float(os.environ.get("BENCH_CELERY_SECONDS", "10"))
    repeats = int(os.environ.get("BENCH_CELERY_REPEATS", "3"))
    counts = [int(n) for n in os.environ.get("BENCH_CELERY_PROCESSES", "1,2,4").split(",")]
    noop_jobs = int(os.environ.get("BENCH_CELERY_NOOP_JOBS", "300"))
    print(f"Celery execution: medians of {repeats} runs, {seconds:g} s windows")
    print("kind  procs  offered/s | ours runs/s  p50 ms  p99 ms | beat runs/s  p50 ms  p99 ms"
          " | runs/s ours/beat  p99 ours/beat")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp, _redis(Path(tmp)) as url:
        workdir = Path(tmp)
        for kind, sleep in (("noop", 0.0), ("io", 0.05)):
            for processes in counts:
                jobs = noop_jobs if kind == "noop" else 25 * processes
                ours = _median([_ours(url, workdir, processes, jobs, sleep, seconds)
                                for _ in range(repeats)])  # fmt: skip
                beat = _median([_beat(url, workdir, processes, jobs, kind, seconds)
                                for _ in range(repeats)])  # fmt: skip
                print(
                    f"{kind:<5} {processes:>5}  {jobs:>9} | {ours.runs_per_second:>11.0f}"
                    f"  {ours.lag_p50 * 1e3:>6.1f}  {ours.lag_p99 * 1e3:>6.0f} |"
                    f" {beat.runs_per_second:>11.0f}  {beat.lag_p50 * 1e3:>6.1f}"
                    f"  {beat.lag_p99 * 1e3:>6.0f} |"
                    f" {_ratio(ours.runs_per_second, beat.runs_per_second):>17}"
                    f"  {_ratio(ours.lag_p99, beat.lag_p99):>13}",
                    flush=True,
                )
        celery = statistics.median(
            _handoff(url, workdir, "celery", seconds) for _ in range(repeats)
        )
        local = statistics.median(
            _handoff(url, workdir, "process", seconds) for _ in range(repeats)
        )
        print(
            f"hand-off, attempt start to result (no-op, 20 jobs/s, one worker process): "
            f"celery {celery * 1e3:.1f} ms, process pool {local * 1e3:.1f} ms, "
            f"celery costs {(celery - local) * 1e3:.1f} ms more per run ({_ratio(celery, local)})"
        )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


if __name__ == "__main__":
    main()
