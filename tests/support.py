"""Test support: the real service as a subprocess, and real databases to point it at."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, create_engine, text

from scheduler import JobPriority
from scheduler.database import create_database_engine
from scheduler.history import RunHistory
from scheduler.records import RunRecord

T = TypeVar("T")

PG_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = bool(os.environ.get("CI"))


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m scheduler ARGS` in a clean environment (no inherited SCHEDULER_* variables)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=timeout,
    )


def wait_until(
    condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def task_source(job_type: str, body: str, *, header: str = "", **options: Any) -> str:
    """A task file declaring `job_type` whose `_execute_impl` runs `body`."""
    rendered = ", ".join(f"{key}={_literal(value)}" for key, value in options.items())
    return (
        "import asyncio, os, pathlib\n"
        "from scheduler import (BaseTask, JobContext, JobPriority, NonRetryableError,\n"
        "                       RunnerResult, job, requirement, RequirementUnavailable)\n"
        f"{textwrap.dedent(header)}\n"
        f"@job({job_type!r}{', ' if rendered else ''}{rendered})\n"
        "class Task(BaseTask[RunnerResult]):\n"
        "    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:\n"
        + textwrap.indent(textwrap.dedent(body).strip() or "pass", " " * 8)
        + "\n"
    )


def _literal(value: object) -> str:
    return f"JobPriority.{value.name}" if isinstance(value, JobPriority) else repr(value)


class ServiceProcess:
    """`python -m scheduler run` in a subprocess, with its JSON log captured to a file."""

    def __init__(self, workdir: Path, database_url: str, tasks_dir: Path, env: dict[str, str]):
        self.workdir = workdir
        self.database_url = database_url
        self.tasks_dir = tasks_dir
        self.env = env
        self.log_path = workdir / f"service-{uuid.uuid4().hex[:8]}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = free_port()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        """GET `path` from the service's HTTP port: (status, body), 4xx/5xx included."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.get(path)
        return status, json.loads(body)

    def post_json(self, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        return self.request_json("POST", path, token, body)

    def request_json(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """`method` `path` with the bearer `token` and `body` as JSON (if not None)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def start(self, **extra_env: str) -> ServiceProcess:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        environ.update(
            SCHEDULER_DATABASE_URL=self.database_url,
            SCHEDULER_TASKS_DIR=str(self.tasks_dir),
            SCHEDULER_LOG_FORMAT="json",
            SCHEDULER_LOG_LEVEL="INFO",
            SCHEDULER_HEARTBEAT_SECONDS="0.5",
            SCHEDULER_STANDBY_POLL_SECONDS="0.5",
            SCHEDULER_HTTP_PORT=str(self.http_port),
            SCHEDULER_WORKERS="2",  # whatever the machine's CPU count: tests count workers
        )
        environ.update(self.env)
        environ.update(extra_env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "run"],
                cwd=self.workdir,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def instance(self) -> str:
        return f"{socket.gethostname()}:{self.pid}"

    def logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                records.append({"event": line, "level": "raw"})
        return records

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def find_log(self, event: str, **fields: Any) -> dict[str, Any] | None:
        for record in self.logs():
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record
        return None

    def wait_for_log(self, event: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        return wait_until(
            lambda: self.find_log(event, **fields) or self._check_alive(),
            timeout,
            what=f"log {event!r} {fields}",
        )

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"service exited with {self.process.returncode}:\n{self.log_text()[-4000:]}"
            )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class ServiceFactory:
    """Starts services against one database and one tasks folder; stops them all at the end."""

    def __init__(self, workdir: Path, database_url: str, tasks_dir: Path) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.tasks_dir = tasks_dir
        self.services: list[ServiceProcess] = []
        self._engine: Engine | None = None
        #: Environment every service of this factory starts with (a test's own env wins).
        self.defaults: dict[str, str] = {}

    def __call__(self, **env: str) -> ServiceProcess:
        environ = {**self.defaults, **env}
        service = ServiceProcess(self.workdir, self.database_url, self.tasks_dir, environ)
        self.services.append(service)
        return service.start()

    def write_task(self, filename: str, source: str) -> Path:
        path = self.tasks_dir / filename
        path.write_text(source, encoding="utf-8")
        return path

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_database_engine(self.database_url)
        return self._engine

    def runs(self, job_type: str | None = None) -> list[RunRecord]:
        """Run-history rows, oldest first ([] while the table does not exist yet)."""
        try:
            return list(reversed(RunHistory(self.engine).recent(job_type, limit=100_000)))
        except Exception:
            return []

    def finished(self, job_type: str, outcome: str | None = None) -> list[RunRecord]:
        return [
            r
            for r in self.runs(job_type)
            if r.outcome != "running" and (outcome is None or r.outcome == outcome)
        ]

    def wait_for_runs(
        self, job_type: str, count: int, outcome: str | None = "success", timeout: float = 20.0
    ) -> list[RunRecord]:
        return wait_until(
            lambda: (rows := self.finished(job_type, outcome)) and len(rows) >= count and rows,
            timeout,
            what=f"{count} {outcome or 'finished'} run(s) of {job_type}",
        )

    def stored_next_run_time(self, job_type: str) -> float | None:
        with self.engine.connect() as connection:
            return connection.execute(
                text("SELECT next_run_time FROM scheduler_jobs WHERE id = :id"), {"id": job_type}
            ).scalar()

    def stored_job_ids(self) -> set[str]:
        """Ids in the job store (empty while its table does not exist yet)."""
        try:
            with self.engine.connect() as connection:
                return set(connection.execute(text("SELECT id FROM scheduler_jobs")).scalars())
        except Exception:
            return set()

    def close(self) -> None:
        for service in self.services:
            service.kill()
        if self._engine is not None:
            self._engine.dispose()


def postgres_available() -> str | None:
    """None if the shared PostgreSQL server answers, else why not."""
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {error}"
    return None


def require_postgres() -> None:
    reason = postgres_available()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)


@contextmanager
def temporary_database(admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A uniquely named PostgreSQL database on the server of `admin_url`, dropped afterwards."""
    name = f"taskwarden_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(admin.url.set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a spare loopback port, run as an
    unprivileged user, that a test may stop and start at will. Never the shared server."""

    USER = "nobody"

    def __init__(self, root: Path) -> None:
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.bindir = Path(bindir)
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self, *command: str) -> list[str]:
        if os.geteuid() != 0:
            return list(command)
        return ["runuser", "-u", self.USER, "--", *command]

    def _run(self, *command: str) -> None:
        subprocess.run(self._as_user(*command), check=True, capture_output=True, timeout=120)

    def init(self) -> PrivateCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, self.USER)
            os.chmod(self.root, 0o755)
            parent = self.root.parent
            while parent != parent.parent:  # the server user must be able to reach its folder
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
                parent = parent.parent
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def metric(service: ServiceProcess, series: str) -> float:
    """The value of one series (name and labels exactly as exported) on the service's
    /metrics; 0 for a series not exported yet (a counter nothing has incremented)."""
    _, body = service.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def system_tool(name: str, package: str) -> str:
    """The path of a program a Debian package installs: a clear skip where it is missing, a
    failure in CI (whose .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"CI must have {name} (.ci/run installs Debian's {package} package)")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


def post_form(
    service: ServiceProcess, path: str, fields: dict[str, str]
) -> tuple[int, dict[str, str], str]:
    """POST an HTML form as a browser does, without following a redirect: status, headers
    (lowercase names) and body."""
    connection = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=30)
    try:
        connection.request(
            "POST",
            path,
            body=urllib.parse.urlencode(fields),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read().decode()
    finally:
        connection.close()
