"""Helpers shared by the example tasks. Files starting with `_` are not discovered as tasks."""

from __future__ import annotations

import os
from pathlib import Path


def workspace_dir() -> Path:
    """Where the example jobs keep their files: `EXAMPLES_WORKSPACE`, default `data/workspace`."""
    return Path(os.environ.get("EXAMPLES_WORKSPACE", "data/workspace"))


def snapshots_dir() -> Path:
    return workspace_dir() / "snapshots"
