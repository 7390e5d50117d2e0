"""Discovery in a child process: task files are imported there, never in the scheduler.

`python -m scheduler.isolated_discovery TASKS_DIR FILE...` imports the files and writes, one
JSON line each, when it starts a file and what the file declared (as `JobMetadata` data) or why
it failed. The parent gives each file `timeout_seconds`: a file that hangs is killed with the
child, one that exits or crashes the child is reported with the exit code or signal, and a new
child carries on with the files after it. Each bad file costs only its own jobs.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .discovery import DiscoveryFailure, DiscoveryReport, ignored_files, task_files
from .errors import DiscoveryError
from .metadata import JobMetadata
from .registry import JobRegistry
from .wire import LineBuffer, Message

#: What the child runs: a module the package does not import, so `-m` runs it cleanly.
CHILD_MODULE = "scheduler.discovery_child"


@dataclass(frozen=True)
class IsolatedDiscovery:
    report: DiscoveryReport
    jobs: tuple[JobMetadata, ...]

    def register(self) -> None:
        """Make the registry hold exactly these jobs (as metadata)."""
        JobRegistry.clear()
        for meta in self.jobs:
            JobRegistry.register(meta)


def discover_isolated(tasks_dir: Path, timeout_seconds: float) -> IsolatedDiscovery:
    """Discover `tasks_dir` in child processes; register the jobs found as metadata here."""
    found = scan_isolated(tasks_dir, timeout_seconds)
    found.register()
    return found


def scan_isolated(tasks_dir: Path, timeout_seconds: float) -> IsolatedDiscovery:
    """Discover `tasks_dir` in child processes, registering nothing: safe off the loop while
    the service reads the registry (a reload registers the result on the loop, at once)."""
    started = time.perf_counter()
    tasks_dir = tasks_dir.resolve()
    if not tasks_dir.is_dir():
        raise DiscoveryError(f"tasks folder {tasks_dir} does not exist or is not a directory")
    remaining = [path.name for path in task_files(tasks_dir)]
    found: dict[str, tuple[list[JobMetadata], DiscoveryFailure | None]] = {}
    while remaining:
        _one_child(tasks_dir, remaining, timeout_seconds, found)
    jobs = [meta for name in sorted(found) for meta in found[name][0]]
    failures = tuple(f for _, f in found.values() if f is not None)
    report = DiscoveryReport(
        tasks_dir=tasks_dir,
        modules=tuple(f"scheduler.tasks.{Path(n).stem}" for n in sorted(found) if not found[n][1]),
        job_types=tuple(meta.job_type for meta in jobs),
        failures=failures,
        job_files={meta.job_type: tasks_dir / _file_of(meta, found) for meta in jobs},
        seconds=time.perf_counter() - started,
        ignored=ignored_files(
            tasks_dir, [tasks_dir / n for n in sorted(found) if _no_job(found[n])]
        ),
    )
    return IsolatedDiscovery(report, tuple(jobs))


def _no_job(outcome: tuple[list[JobMetadata], DiscoveryFailure | None]) -> bool:
    jobs, failure = outcome
    return not jobs and failure is None


def _file_of(meta: JobMetadata, found: Mapping[str, tuple[list[JobMetadata], object]]) -> str:
    return next(name for name, (jobs, _) in found.items() if meta in jobs)


def _one_child(
    tasks_dir: Path,
    remaining: list[str],
    timeout_seconds: float,
    found: dict[str, tuple[list[JobMetadata], DiscoveryFailure | None]],
) -> None:
    """Run one child over `remaining` until it finishes, hangs or dies; record what it said."""
    child = subprocess.Popen(
        [sys.executable, "-m", CHILD_MODULE, str(tasks_dir), *remaining],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert child.stdout is not None
    messages = _messages(child.stdout)
    current: str | None = None
    while True:
        try:
            message = messages.get(timeout=timeout_seconds)
        except queue.Empty:
            child.kill()
            child.wait()
            while messages.get() is not None:  # until the reader's end: its stream is closed
                pass
            assert current is not None or remaining, "a child hung before its first file"
            current = current or remaining[0]
            why = f"import did not finish within {timeout_seconds:g}s (does it block at import?)"
            _failed(tasks_dir, current, why, found, remaining)
            return
        if message is None:  # the child ended
            code = child.wait()
            if current is not None:
                _failed(tasks_dir, current, _ended(code), found, remaining)
            elif code != 0:
                raise DiscoveryError(f"the discovery process failed to start ({_ended(code)})")
            return
        name = message["file"]
        if message["k"] == "start":
            current = name
            continue
        current = None
        remaining.remove(name)
        failure = None
        if message.get("error") is not None:
            failure = DiscoveryFailure(tasks_dir / name, message["error"], message["traceback"])
        found[name] = ([JobMetadata.from_data(m) for m in message["jobs"]], failure)


def _failed(
    tasks_dir: Path,
    name: str,
    why: str,
    found: dict[str, tuple[list[JobMetadata], DiscoveryFailure | None]],
    remaining: list[str],
) -> None:
    remaining.remove(name)
    found[name] = ([], DiscoveryFailure(tasks_dir / name, why, ""))


def _ended(code: int) -> str:
    if code < 0:
        return f"it ended the discovery process: killed by {signal.Signals(-code).name}"
    return f"it ended the discovery process with exit code {code}"


def _messages(stream: IO[bytes]) -> queue.SimpleQueue[Message | None]:
    """The child's messages, read by a thread so that the parent can wait with a deadline."""
    messages: queue.SimpleQueue[Message | None] = queue.SimpleQueue()

    def read() -> None:
        lines = LineBuffer()
        with stream:  # the reader owns it: closed at the child's end (EOF), whatever ended it
            while data := stream.read1(2**16):  # type: ignore[attr-defined]
                for message in lines.feed(data):
                    messages.put(message)
        messages.put(None)

    threading.Thread(target=read, name="discovery-reader", daemon=True).start()
    return messages


def probe_requirements(
    tasks_dir: Path, names: Sequence[str], timeout_seconds: float
) -> dict[str, str]:
    """Which of `names` are unavailable, and why, as the task files' providers say (in a child:
    the providers are task code). For `scheduler check` and `scheduler list`."""
    files = [path.name for path in task_files(tasks_dir.resolve())]
    result = subprocess.run(
        [sys.executable, "-m", CHILD_MODULE, "--probe", ",".join(names), str(tasks_dir), *files],
        capture_output=True,
        timeout=timeout_seconds * (len(files) + 1),
        stdin=subprocess.DEVNULL,
    )
    for message in LineBuffer().feed(result.stdout):
        if message["k"] == "requirements":
            return dict(message["unavailable"])
    return dict.fromkeys(names, "its provider could not be asked (the probe process failed)")
