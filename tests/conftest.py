"""Fixtures shared by the whole suite: each test gets a clean registry and logging setup."""

from __future__ import annotations

import logging
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from scheduler.discovery import TASKS_PACKAGE
from scheduler.registry import JobRegistry
from scheduler.requirements import RequirementRegistry
from tests.support import PrivateCluster, ServiceFactory, require_postgres, temporary_database

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

WriteTask = Callable[[str, str], Path]


def _task_modules() -> dict[str, object]:
    return {
        name: module
        for name, module in sys.modules.items()
        if name == TASKS_PACKAGE or name.startswith(TASKS_PACKAGE + ".")
    }


@pytest.fixture(autouse=True)
def isolated_registry() -> Iterator[None]:
    """Each test starts with no job registered and leaves the registry as it found it."""
    saved_jobs = JobRegistry.list_jobs()
    saved_providers = RequirementRegistry.list_providers()
    saved_modules = _task_modules()
    JobRegistry.clear()
    RequirementRegistry.clear()
    yield
    JobRegistry.clear()
    RequirementRegistry.clear()
    for provider in saved_providers:
        RequirementRegistry.register(provider)
    for name in _task_modules():
        del sys.modules[name]
    sys.modules.update(saved_modules)  # type: ignore[arg-type]
    for meta in saved_jobs:
        JobRegistry.register(meta)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tasks"
    path.mkdir()
    return path


@pytest.fixture
def write_task(tasks_dir: Path) -> WriteTask:
    """Write a task file (dedented) into the temporary tasks folder."""

    def write(filename: str, source: str) -> Path:
        path = tasks_dir / filename
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return path

    return write


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'scheduler.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the shared PostgreSQL server, dropped after the test."""
    require_postgres()
    with temporary_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using it runs once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'scheduler.db'}"
        return
    require_postgres()
    with temporary_database() as url:
        yield url


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    require_postgres()
    # Not under tmp_path: every pytest that starts resets the shared basetemp to mode 0700,
    # and the server's unprivileged user could then no longer reach its data directory.
    cluster = PrivateCluster(Path(tempfile.mkdtemp(prefix="taskwarden-pg-"))).init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def _factory(tmp_path: Path, url: str, tasks_dir: Path) -> Iterator[ServiceFactory]:
    factory = ServiceFactory(tmp_path, url, tasks_dir)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def services(tmp_path: Path, sqlite_url: str, tasks_dir: Path) -> Iterator[ServiceFactory]:
    """Start scheduler services (subprocesses) on a SQLite file; all killed after the test."""
    yield from _factory(tmp_path, sqlite_url, tasks_dir)


@pytest.fixture
def any_services(tmp_path: Path, database_url: str, tasks_dir: Path) -> Iterator[ServiceFactory]:
    """Like `services`, once on SQLite and once on PostgreSQL."""
    yield from _factory(tmp_path, database_url, tasks_dir)


@pytest.fixture
def postgres_services(
    tmp_path: Path, postgres_url: str, tasks_dir: Path
) -> Iterator[ServiceFactory]:
    """Like `services`, on PostgreSQL only (for what only PostgreSQL has)."""
    yield from _factory(tmp_path, postgres_url, tasks_dir)
