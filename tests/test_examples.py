"""The example jobs in tasks/ are discovered cleanly and do real work."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from scheduler import JobContext, JobRegistry, discover
from tests.conftest import REPO_ROOT


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXAMPLES_WORKSPACE", str(tmp_path))
    return tmp_path


def context(job_type: str, run_id: str = "run-1") -> JobContext:
    return JobContext(job_type, JobRegistry.get(job_type).defaults, run_id)


async def run(job_type: str) -> list[object]:
    task = JobRegistry.get_task_class(job_type)()
    return list(await task.execute(context(job_type)))


def test_examples_cover_batch_size_requirement_and_dependency() -> None:
    report = discover(REPO_ROOT / "tasks")
    assert report.failures == ()
    assert len(report.job_types) >= 3
    jobs = JobRegistry.list_jobs()
    assert any(meta.defaults.batch_size != 10 for meta in jobs)
    assert any(meta.requirements for meta in jobs)
    assert any(meta.dependencies for meta in jobs)


async def test_snapshot_digest_and_prune_work_together(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    discover(REPO_ROOT / "tasks")
    for _ in range(3):
        (snapshot,) = await run("system_snapshot")
        assert snapshot.success  # type: ignore[attr-defined]
    snapshots = sorted((workspace / "snapshots").glob("*.json"))
    assert len(snapshots) == 3
    assert json.loads(snapshots[0].read_text())["run_id"] == "run-1"

    (digest,) = await run("snapshot_digest")
    assert digest.snapshots == 3  # type: ignore[attr-defined]
    assert json.loads((workspace / "digest.json").read_text())["snapshots"] == 3

    old = time.time() - 7200
    os.utime(snapshots[0], (old, old))
    monkeypatch.setenv("EXAMPLES_SNAPSHOT_RETENTION_SECONDS", "3600")
    pruned = await run("prune_snapshots")
    assert [r.path for r in pruned] == [str(snapshots[0])]  # type: ignore[attr-defined]
    assert not snapshots[0].exists() and snapshots[1].exists()


async def test_digest_without_snapshots_reports_a_failed_item(workspace: Path) -> None:
    discover(REPO_ROOT / "tasks")
    (digest,) = await run("snapshot_digest")
    assert digest.success is False  # type: ignore[attr-defined]
