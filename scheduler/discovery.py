"""Import every task file of the tasks folder, so that their `@job` decorators register jobs.

Task files are imported as submodules of a package `scheduler.tasks` whose `__path__` is the
tasks folder; that is what makes the seed's relative imports (`from ..base import BaseTask`)
resolve to this package. A file that fails to import is reported and skipped, and nothing it
registered before failing stays registered.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from .errors import DiscoveryError
from .registry import JobRegistry
from .requirements import RequirementRegistry

TASKS_PACKAGE = "scheduler.tasks"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DiscoveryFailure:
    """A task file that could not be imported."""

    path: Path
    error: str  # one line: the exception type and message, with the line for syntax errors
    traceback: str

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


@dataclass(frozen=True, slots=True)
class IgnoredFile:
    """A `.py` file under the tasks folder that gave no job: not imported (a helper, a file in a
    sub-folder), or imported and declaring none. Logged at debug level (`-v`), so that "why
    does my job not appear?" has an answer."""

    path: Path
    why: str


NO_JOB = "declares no @job"
IN_SUB_FOLDER = "in a sub-folder: only top-level files are discovered"
HELPER = "its name starts with '_': a helper, imported only by the task files that import it"


@dataclass(frozen=True, slots=True)
class DiscoveryReport:
    """What one discovery pass found."""

    tasks_dir: Path
    modules: tuple[str, ...]
    job_types: tuple[str, ...]
    failures: tuple[DiscoveryFailure, ...]
    #: job type -> the task file that declared it
    job_files: dict[str, Path]
    seconds: float
    #: Files that were not imported, or declared no job, and why.
    ignored: tuple[IgnoredFile, ...] = ()


def task_files(tasks_dir: Path) -> list[Path]:
    """The task files discovery imports: `*.py`, not starting with `_`, in name order."""
    return sorted(p for p in tasks_dir.glob("*.py") if not p.name.startswith("_"))


def skipped_files(tasks_dir: Path) -> list[IgnoredFile]:
    """The `.py` files of the tasks folder that discovery does not import: helpers, and files
    in sub-folders (hidden folders and `__pycache__` are not looked into)."""
    skipped = [IgnoredFile(p, HELPER) for p in tasks_dir.glob("_*.py")]
    for folder, subfolders, names in os.walk(tasks_dir):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "__pycache__"]
        if Path(folder) != tasks_dir:
            skipped += [
                IgnoredFile(Path(folder, n), IN_SUB_FOLDER) for n in names if n.endswith(".py")
            ]
    return skipped


def ignored_files(tasks_dir: Path, files_without_jobs: Sequence[Path]) -> tuple[IgnoredFile, ...]:
    """Everything a user might expect jobs from that gave none, in path order."""
    ignored = [*skipped_files(tasks_dir), *(IgnoredFile(p, NO_JOB) for p in files_without_jobs)]
    return tuple(sorted(ignored, key=lambda file: file.path))


def log_ignored(report: DiscoveryReport) -> None:
    for file in report.ignored:
        log.debug("task file ignored", path=str(file.path), why=file.why)


class DiscoveryListener(Protocol):
    """Told of each task file as discovery starts and finishes it (the isolated child reports
    through it, so that a file that hangs or ends the process is known by name)."""

    def started(self, path: Path) -> None: ...
    def finished(
        self, path: Path, failure: DiscoveryFailure | None, job_types: list[str]
    ) -> None: ...


def discover(
    tasks_dir: Path, files: Sequence[Path] | None = None, listener: DiscoveryListener | None = None
) -> DiscoveryReport:
    """Import the task files of `tasks_dir` (or just `files` of it) afresh, in this process, and
    report what registered and what failed. The service itself calls this only in inline
    mode: see `isolated_discovery` for the child process that keeps task code out of it."""
    started = time.perf_counter()
    tasks_dir = tasks_dir.resolve()
    if not tasks_dir.is_dir():
        raise DiscoveryError(f"tasks folder {tasks_dir} does not exist or is not a directory")
    _install_tasks_package(tasks_dir)

    modules: list[str] = []
    failures: list[DiscoveryFailure] = []
    job_files: dict[str, Path] = {}
    without_jobs: list[Path] = []
    for path in task_files(tasks_dir) if files is None else files:
        before = {m.job_type for m in JobRegistry.list_jobs()}
        if listener is not None:
            listener.started(path)
        failure = _import_task_file(path)
        if failure is not None:
            failures.append(failure)
            log.error("task file failed to import", path=str(path), error=failure.error)
            log.debug("task file traceback", path=str(path), traceback=failure.traceback)
            new: list[str] = []
        else:
            modules.append(f"{TASKS_PACKAGE}.{path.stem}")
            new = [m.job_type for m in JobRegistry.list_jobs() if m.job_type not in before]
            job_files.update((job_type, path) for job_type in new)
            if not new:
                without_jobs.append(path)
        if listener is not None:
            listener.finished(path, failure, new)

    report = DiscoveryReport(
        tasks_dir=tasks_dir,
        modules=tuple(modules),
        job_types=tuple(job_files),
        failures=tuple(failures),
        job_files=job_files,
        seconds=time.perf_counter() - started,
        # Only a pass over the whole folder looks for what it skipped (the isolated child is
        # handed its files: its parent reports).
        ignored=ignored_files(tasks_dir, without_jobs) if files is None else (),
    )
    log_ignored(report)
    log.info(
        "discovery finished",
        tasks_dir=str(tasks_dir),
        files=len(modules) + len(failures),
        jobs=list(report.job_types),
        failed_files=[str(f.path) for f in failures],
        seconds=round(report.seconds, 4),
    )
    return report


def _install_tasks_package(tasks_dir: Path) -> None:
    """(Re)create `scheduler.tasks` over `tasks_dir`, dropping task modules of earlier passes."""
    for name in [m for m in sys.modules if m == TASKS_PACKAGE or m.startswith(TASKS_PACKAGE + ".")]:
        _forget_module(name)
    spec = importlib.machinery.ModuleSpec(TASKS_PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(tasks_dir)]
    package = importlib.util.module_from_spec(spec)
    package.__doc__ = f"Task files discovered in {tasks_dir}."
    sys.modules[TASKS_PACKAGE] = package
    importlib.invalidate_caches()  # files may have been written since the finders last looked


def _import_task_file(path: Path) -> DiscoveryFailure | None:
    module = f"{TASKS_PACKAGE}.{path.stem}"
    if not path.stem.isidentifier():
        return DiscoveryFailure(
            path, f"{path.name!r} is not a valid Python module name; rename the file", ""
        )
    try:
        importlib.import_module(module)
    except (Exception, SystemExit) as error:  # a task file may raise anything at import time
        _forget_module(module)
        return DiscoveryFailure(path, _describe(error, path), traceback.format_exc())
    return None


def _forget_module(module: str) -> None:
    """Drop a task module and everything it registered."""
    JobRegistry.unregister_module(module)
    RequirementRegistry.unregister_module(module)
    sys.modules.pop(module, None)


def _describe(error: BaseException, path: Path) -> str:
    if isinstance(error, SyntaxError) and error.filename == str(path):
        return f"{type(error).__name__}: {error.msg} (line {error.lineno})"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(path)]
    where = f" (line {frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"
