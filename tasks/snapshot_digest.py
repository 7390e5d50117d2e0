"""Summarise the recent snapshots into `digest.json`; depends on `system_snapshot`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from statistics import fmean

from scheduler import BaseTask, JobContext, RunnerResult, job

from ._workspace import snapshots_dir, workspace_dir

RECENT = 20


@dataclass
class DigestResult(RunnerResult):
    snapshots: int = 0


@job("snapshot_digest", interval_seconds=60, dependencies=["system_snapshot"], timeout_seconds=30)
class SnapshotDigestTask(BaseTask[DigestResult]):
    """Average the load of the latest snapshots; runs only while system_snapshot is healthy."""

    async def _execute_impl(self, context: JobContext) -> list[DigestResult]:
        paths = sorted(snapshots_dir().glob("*.json"))[-RECENT:]
        loads = [json.loads(p.read_text(encoding="utf-8"))["load"][0] for p in paths]
        if not loads:
            return [DigestResult(success=False, message="no snapshots yet")]
        digest = {"snapshots": len(loads), "load_avg": fmean(loads), "load_max": max(loads)}
        (workspace_dir() / "digest.json").write_text(json.dumps(digest), encoding="utf-8")
        return [DigestResult(success=True, message=f"{len(loads)} snapshots", snapshots=len(loads))]
