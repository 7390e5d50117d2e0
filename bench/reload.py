"""How long a new task file takes to be scheduled: hot reload against a restart.

A real `scheduler run` (process mode, SQLite) with N task files on an hour's interval. A new
file is written, and the time until its first run is in the run history is measured:
- "reload": the running service with SCHEDULER_RELOAD=true picks it up;
- "restart": what an operator does without reload (SIGTERM, wait for the exit, start again),
  the way Celery beat and APScheduler set-ups pick up new code.
Both to the job store ("scheduled": shown in the API and the status page) and to the first run
(a new job's first run is spread over SCHEDULER_FIRST_RUN_SPREAD_SECONDS, 1 s by default).
Medians of BENCH_RELOAD_REPEATS (5) writes each, for 1 and BENCH_RELOAD_FILES (200) files.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import MEASURED_PYTHON

TASK = """\
from scheduler import BaseTask, JobContext, RunnerResult, job


@job({job_type!r}, interval_seconds={interval})
class Task(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return [RunnerResult(success=True)]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    def __init__(self, root: Path, reload: bool) -> None:
        self.root = root
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")},
            "SCHEDULER_TASKS_DIR": str(root / "tasks"),
            "SCHEDULER_DATABASE_URL": f"sqlite:///{root / 'scheduler.db'}",
            "SCHEDULER_HTTP_PORT": str(_free_port()),
            "SCHEDULER_RELOAD": "true" if reload else "false",
            "SCHEDULER_LOG_LEVEL": "WARNING",
        }
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [MEASURED_PYTHON, "-m", "scheduler", "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def restart(self) -> None:
        self.stop()
        self.process = self._start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def _found(self, query: str, job_type: str) -> bool:
        try:
            with sqlite3.connect(self.root / "scheduler.db", timeout=1) as db:
                return db.execute(query, (job_type,)).fetchone() is not None
        except sqlite3.Error:  # not created yet
            return False

    def stored(self, job_type: str) -> bool:
        return self._found("SELECT 1 FROM scheduler_jobs WHERE id = ?", job_type)

    def ran(self, job_type: str) -> bool:
        query = "SELECT 1 FROM scheduler_runs WHERE job_type = ? AND outcome = 'success'"
        return self._found(query, job_type)


def _wait(condition: Callable[[], bool], timeout: float = 60.0) -> float:
    """When `condition` first held (perf_counter)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout}s")
        time.sleep(0.005)
    return time.perf_counter()


def _write(tasks: Path, job_type: str, interval: float) -> None:
    source = TASK.format(job_type=job_type, interval=interval)
    (tasks / f"{job_type}.py").write_text(source, encoding="utf-8")


def measure(files: int, repeats: int, reload: bool) -> tuple[float, float]:
    """Median seconds from the write until the job is in the job store, and until it ran."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tasks").mkdir()
        for n in range(files):
            _write(root / "tasks", f"steady_{n:04d}", 3600)
        service = Service(root, reload)
        try:
            _wait(lambda: service.ran("steady_0000"))
            stored, ran = [], []
            for n in range(repeats):
                job_type = f"fresh_{n}"
                started = time.perf_counter()
                _write(root / "tasks", job_type, 3600)
                if not reload:
                    service.restart()
                stored.append(_wait(lambda: service.stored(job_type)) - started)  # noqa: B023
                ran.append(_wait(lambda: service.ran(job_type)) - started)  # noqa: B023
                time.sleep(0.5)  # let the workers the reload replaced come up
            return statistics.median(stored), statistics.median(ran)
        finally:
            service.stop()


def main() -> None:
    repeats = int(os.environ.get("BENCH_RELOAD_REPEATS", "5"))
    many = int(os.environ.get("BENCH_RELOAD_FILES", "200"))
    print(f"a new task file until it is scheduled / has run, median of {repeats} (process, SQLite)")
    print(f"{'files':>5} {'':<10} {'hot reload':>11} {'restart':>9} {'ratio':>7}")
    for files in (1, many):
        hot, cold = measure(files, repeats, reload=True), measure(files, repeats, reload=False)
        for label, ours, theirs in (("scheduled", hot[0], cold[0]), ("first run", hot[1], cold[1])):
            ratio = ours / theirs
            times = f"{ours * 1000:>9.0f}ms {theirs * 1000:>7.0f}ms"
            print(f"{files:>5} {label:<10} {times} {ratio:>6.2f}x")


if __name__ == "__main__":
    main()
