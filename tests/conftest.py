"""Fixtures shared by the whole suite: each test gets a clean registry and logging setup."""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from scheduler.discovery import TASKS_PACKAGE
from scheduler.registry import JobRegistry
from scheduler.requirements import RequirementRegistry

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
