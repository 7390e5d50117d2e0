"""Test support for Celery execution: a private Redis server, real `scheduler worker`
processes, and a journal that task bodies append to (to count what ran, and where)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support import IN_CI, free_port, wait_until

#: A body that notes its start and end (task id, job, pid, parent pid, time) in $JOURNAL.
JOURNALED = """
journal = pathlib.Path(os.environ["JOURNAL"])
me = f"{{context.run_id}}.{{context.attempt}} {{context.job_type}} {{os.getpid()}} {{os.getppid()}}"
with journal.open("a") as out:
    out.write(f"start {{me}} {{__import__('time').time()}}\\n")
{work}
with journal.open("a") as out:
    out.write(f"end {{me}} {{__import__('time').time()}}\\n")
return [RunnerResult(success=True)]
"""


def journaled(work: str = "pass") -> str:
    return JOURNALED.format(work=work)


def require_celery() -> None:
    """Skip (fail in CI) unless celery, redis and a redis-server binary are here."""
    missing = []
    for module in ("celery", "redis"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the {module} package (pip install 'taskwarden[celery]')")
    if shutil.which("redis-server") is None:
        missing.append("redis-server on PATH")
    if missing:
        reason = "Celery tests need " + ", ".join(missing)
        if IN_CI:
            pytest.fail(f"CI must run the Celery tests: {reason}")
        pytest.skip(reason)


class RedisServer:
    """A throwaway `redis-server` without persistence on a spare port: a restart loses every
    key and message, like a broker that crashed. Never the shared server."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), timeout=10, what="redis-server to answer")
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


class WorkerProcess:
    """`python -m scheduler worker` in its own session (a kill takes its pool with it)."""

    def __init__(self, workdir: Path, env: dict[str, str], concurrency: int = 2) -> None:
        self.name = f"w{uuid.uuid4().hex[:6]}@test"
        self.http_port = free_port()
        self.log_path = workdir / f"worker-{self.name}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        environ.update(env)
        environ.update(SCHEDULER_LOG_FORMAT="json", SCHEDULER_WORKER_HTTP_PORT=str(self.http_port))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "worker", "-c", str(concurrency),
                 "--name", self.name],
                env=environ, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            url = f"http://127.0.0.1:{self.http_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 20) -> WorkerProcess:
        wait_until(self.healthy, timeout=timeout, what=f"worker {self.name} ready")
        return self

    def pool_pids(self) -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return {int(pid) for pid in out.stdout.split()}

    def kill(self) -> None:
        """SIGKILL to the worker and its pool at once: a machine that is gone."""
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return records


class Journal:
    """What task bodies appended to $JOURNAL: one line per body start and end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self, kind: str, job_type: str | None = None) -> list[tuple[str, int, float]]:
        """(task id, parent pid, time) of each `kind` ("start" or "end") line."""
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 6 and parts[0] == kind and job_type in (None, parts[2]):
                found.append((parts[1], int(parts[4]), float(parts[5])))
        return found

    def started_twice(self) -> list[str]:
        """Attempts (task ids) whose body started more than once: must be none."""
        counts = Counter(task for task, _, _ in self.entries("start"))
        return [task for task, count in counts.items() if count > 1]


def celery_env(redis: RedisServer, journal: Path, **extra: str) -> dict[str, str]:
    """What the scheduler and its workers share (the same image and environment)."""
    return {
        "SCHEDULER_EXECUTION": "celery",
        "SCHEDULER_CELERY_BROKER_URL": redis.url,
        "SCHEDULER_CELERY_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
        "SCHEDULER_CELERY_LEASE_SECONDS": "1.2",
        "SCHEDULER_CELERY_START_TIMEOUT_SECONDS": "6",
        "SCHEDULER_KILL_GRACE_SECONDS": "0.5",
        "JOURNAL": str(journal),
        **extra,
    }
