"""Hot reload: watch the tasks folder (and the config file) with watchfiles, and hand each
batch of changes to the service, which discovers the folder again and applies what changed.

watchfiles waits for a quiet `STEP_MS` after the last change of a burst (an editor's write,
rename and chmod; a `git checkout` of many files) and yields the burst as one batch, so a
deploy is one reload, not one per file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from watchfiles import Change, awatch

log = structlog.get_logger(__name__)
#: Its "N changes detected" lines say less than the service's own "task files reloaded".
logging.getLogger("watchfiles").setLevel(logging.WARNING)

#: A burst of changes is over once the folder is quiet for this long.
STEP_MS = 100
#: A burst that never goes quiet is yielded after this long anyway.
DEBOUNCE_MS = 800

#: Handles a batch of changed paths; it must not raise (it would end the watching).
OnChange = Callable[[list[str]], Awaitable[None]]


class TaskFolderWatcher:
    """Calls `on_change` with the changed paths after each burst of changes to the `*.py`
    files under `tasks_dir` (helpers and sub-folders too: task files import them) or to
    `config_file`. Runs until `stop()`."""

    def __init__(self, tasks_dir: Path, config_file: Path | None, on_change: OnChange) -> None:
        self._tasks_dir = tasks_dir.resolve()
        self._config_file = config_file.resolve() if config_file is not None else None
        self._on_change = on_change
        self._stop = asyncio.Event()

    def _roots(self) -> list[Path]:
        # The config file's folder, not the file: editors replace a file by renaming a new
        # one over it, which a watch on the file itself would not survive.
        roots = [self._tasks_dir]
        if self._config_file is not None and self._config_file.parent != self._tasks_dir:
            roots.append(self._config_file.parent)
        return roots

    def relevant(self, _change: Change, path: str) -> bool:
        changed = Path(path)
        if self._config_file is not None and changed == self._config_file:
            return True
        return (
            changed.suffix == ".py"
            and changed.is_relative_to(self._tasks_dir)
            and "__pycache__" not in changed.parts
        )

    async def run(self) -> None:
        log.info("watching the task files for changes", paths=[str(p) for p in self._roots()])
        async for changes in awatch(
            *self._roots(),
            watch_filter=self.relevant,
            step=STEP_MS,
            debounce=DEBOUNCE_MS,
            stop_event=self._stop,
        ):
            paths = sorted({path for _, path in changes})
            _forget_bytecode(paths)
            await self._on_change(paths)

    def stop(self) -> None:
        self._stop.set()


def _forget_bytecode(paths: list[str]) -> None:
    """Drop the cached bytecode of changed files: a `.pyc` is checked against its source's size
    and mtime in whole seconds, so an edit of the same size within the second of the last
    import would otherwise import the old code."""
    for path in paths:
        if path.endswith(".py"):
            with contextlib.suppress(OSError):  # none cached, or not ours to remove
                os.unlink(importlib.util.cache_from_source(path))
