"""Delete snapshots older than the retention, a batch of files at a time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from scheduler import BaseTask, JobContext, JobPriority, RunnerResult, job

from ._workspace import snapshots_dir


@dataclass
class PruneResult(RunnerResult):
    path: str = ""


def retention_seconds() -> float:
    return float(os.environ.get("EXAMPLES_SNAPSHOT_RETENTION_SECONDS", "3600"))


@job("prune_snapshots", interval_seconds=120, priority=JobPriority.LOW, batch_size=50)
class PruneSnapshotsTask(BaseTask[PruneResult]):
    """Remove snapshot files past their retention, `batch_size` files at a time."""

    async def _execute_impl(self, context: JobContext) -> list[PruneResult]:
        cutoff = time.time() - retention_seconds()
        stale = (p for p in sorted(snapshots_dir().glob("*.json")) if p.stat().st_mtime < cutoff)
        return await self.process_in_batches(stale, context, self._delete)

    async def _delete(self, paths: list[Path]) -> list[PruneResult]:
        results = []
        for path in paths:
            try:
                path.unlink()
                results.append(PruneResult(success=True, path=str(path)))
            except OSError as error:
                results.append(PruneResult(success=False, message=str(error), path=str(path)))
        return results
