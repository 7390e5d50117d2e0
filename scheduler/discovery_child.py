"""The child process of `isolated_discovery`: imports task files, reports each as JSON lines."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import structlog

from .discovery import DiscoveryFailure, discover
from .registry import JobRegistry
from .requirements import unavailable_requirements
from .wire import Message, encode


class _Reporter:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, message: Message) -> None:
        os.write(self._fd, encode([message]))

    def started(self, path: Path) -> None:
        self.send({"k": "start", "file": path.name})

    def finished(self, path: Path, failure: DiscoveryFailure | None, job_types: list[str]) -> None:
        self.send(
            {
                "k": "end",
                "file": path.name,
                "jobs": [JobRegistry.get(job_type).as_data() for job_type in job_types],
                "error": None if failure is None else failure.error,
                "traceback": None if failure is None else failure.traceback,
            }
        )


def main(argv: list[str]) -> None:
    out = os.dup(1)
    os.dup2(2, 1)  # what task files print goes to stderr, not into the protocol
    probe = None
    if argv[0] == "--probe":
        probe, argv = [n for n in argv[1].split(",") if n], argv[2:]
    tasks_dir = Path(argv[0])
    reporter = _Reporter(out)
    discover(tasks_dir, [tasks_dir / name for name in argv[1:]], reporter)
    if probe is not None:
        unavailable = asyncio.run(unavailable_requirements(probe))
        reporter.send({"k": "requirements", "file": "", "unavailable": unavailable})


if __name__ == "__main__":
    # The parent reports what went wrong; the child's own lines would only repeat it.
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    main(sys.argv[1:])
