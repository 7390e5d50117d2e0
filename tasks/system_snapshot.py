"""Sample the machine's load, memory and disk into one JSON file per snapshot."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime

from scheduler import BaseTask, JobContext, JobPriority, RunnerResult, job

from ._workspace import snapshots_dir, workspace_dir


@dataclass
class SnapshotResult(RunnerResult):
    path: str = ""


def _memory_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@job(
    "system_snapshot",
    interval_seconds=15,
    priority=JobPriority.HIGH,
    timeout_seconds=10,
    max_retries=2,
    retry_delay_seconds=1,
    requires_workspace=True,
)
class SystemSnapshotTask(BaseTask[SnapshotResult]):
    """Record load average, available memory and free disk space as a JSON snapshot."""

    async def _execute_impl(self, context: JobContext) -> list[SnapshotResult]:
        taken_at = datetime.now(UTC)
        load_1m, load_5m, load_15m = os.getloadavg()
        disk = shutil.disk_usage(workspace_dir())
        snapshot = {
            "taken_at": taken_at.isoformat(),
            "load": [load_1m, load_5m, load_15m],
            "memory_available_bytes": _memory_available_bytes(),
            "disk_free_bytes": disk.free,
            "run_id": context.run_id,
        }
        target = snapshots_dir()
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{taken_at:%Y%m%dT%H%M%S%fZ}.json"
        path.write_text(json.dumps(snapshot), encoding="utf-8")
        return [SnapshotResult(success=True, message=f"load {load_1m:.2f}", path=str(path))]
