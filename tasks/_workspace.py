"""Helpers shared by the example tasks. Files starting with `_` are not discovered as tasks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from scheduler import RequirementUnavailable, requirement


def workspace_dir() -> Path:
    """Where the example jobs keep their files: `EXAMPLES_WORKSPACE`, default `data/workspace`."""
    return Path(os.environ.get("EXAMPLES_WORKSPACE", "data/workspace"))


def snapshots_dir() -> Path:
    return workspace_dir() / "snapshots"


@requirement("workspace")
def writable_workspace() -> Path:
    """`requires_workspace=True` jobs run only while the workspace folder is writable."""
    folder = workspace_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise RequirementUnavailable(f"workspace {folder} is not writable: {error}") from None
    return folder
