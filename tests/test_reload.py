"""Hot reload in the real service: task files written into a running service's folder."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from watchfiles import Change

from scheduler.reload import TaskFolderWatcher
from tests.support import ServiceFactory, ServiceProcess, task_source, wait_until

QUICK = "return [RunnerResult(success=True)]"
RELOAD = {"SCHEDULER_RELOAD": "true"}


def jobs_by_type(service: ServiceProcess) -> dict[str, Any]:
    status, jobs = service.get_json("/api/jobs")
    assert status == 200
    return {job["job_type"]: job for job in jobs}


def reloads(service: ServiceProcess) -> list[dict[str, Any]]:
    return [line for line in service.logs() if line.get("event") == "task files reloaded"]


def wait_for_reload(service: ServiceProcess, count: int) -> dict[str, Any]:
    """The `count`-th reload's log line (reloads are counted: a test waits for its own)."""
    return wait_until(
        lambda: len(done := reloads(service)) >= count and done[count - 1],
        timeout=10,
        what=f"reload number {count}",
    )


def test_files_added_changed_and_removed_are_applied_and_nothing_else_moves(
    services: ServiceFactory,
) -> None:
    services.write_task("steady.py", task_source("steady", QUICK, interval_seconds=3600))
    services.write_task("edited.py", task_source("edited", QUICK, interval_seconds=3600))
    services.write_task("doomed.py", task_source("doomed", QUICK, interval_seconds=3600))
    service = services(**RELOAD)
    service.wait_for_log("active: this instance runs the jobs")
    service.wait_for_log("watching the task files for changes")
    # Its first run is due within a second of the start; then an hour later.
    steady_next = wait_until(
        lambda: (at := services.stored_next_run_time("steady")) and at > time.time() + 600 and at,
        timeout=10,
        what="steady's first run and its next run time an hour on",
    )
    assert steady_next is not None

    services.write_task("fresh.py", task_source("fresh", QUICK, interval_seconds=0.5))
    line = wait_for_reload(service, 1)
    assert line["added"] == ["fresh"] and line["removed"] == []
    assert "fresh" in jobs_by_type(service)
    services.wait_for_runs("fresh", 2)

    services.write_task("edited.py", task_source("edited", QUICK, interval_seconds=1800))
    wait_for_reload(service, 2)
    wait_until(lambda: jobs_by_type(service)["edited"]["schedule"] == "every 1800s", timeout=5)

    (services.tasks_dir / "doomed.py").unlink()
    line = wait_for_reload(service, 3)
    assert line["removed"] == ["doomed"]
    wait_until(lambda: "doomed" not in services.stored_job_ids(), timeout=5)
    assert "doomed" not in jobs_by_type(service)

    # What did not change was not touched: same next run time, never updated or rescheduled.
    assert services.stored_next_run_time("steady") == steady_next
    touched = {
        line["job_type"]
        for line in service.logs()
        if line.get("event") in ("job added", "job updated", "job schedule changed")
        and line.get("timestamp", "") > reloads(service)[0].get("timestamp", "")
    }
    assert "steady" not in touched
    assert touched >= {"edited"}
    assert [r for r in services.runs() if r.outcome == "running" and r.job_type != "fresh"] == []


def test_a_file_broken_on_reload_keeps_its_schedule_and_costs_only_its_own_runs(
    services: ServiceFactory,
) -> None:
    services.write_task("flaky.py", task_source("flaky", QUICK, interval_seconds=0.5))
    services.write_task("other.py", task_source("other", QUICK, interval_seconds=0.5))
    service = services(**RELOAD)
    services.wait_for_runs("flaky", 1)
    services.write_task("flaky.py", "def broken(:\n")
    line = wait_for_reload(service, 1)
    assert [Path(path).name for path in line["failed_task_files"]] == ["flaky.py"]
    assert line["not_loaded"] == ["flaky"] and line["removed"] == []
    assert "flaky" in services.stored_job_ids()  # its schedule survives the bad edit
    skipped = wait_until(
        lambda: [
            r
            for r in services.finished("flaky", "skipped")
            if r.skip_reason == "not_loaded"
            and "flaky.py failed to import: SyntaxError" in (r.error or "")
        ],
        timeout=10,
        what="a run of flaky skipped as not loaded, naming the file and the error",
    )
    before = len(services.finished("other", "success"))
    services.wait_for_runs("other", before + 2)  # the other job never noticed

    services.write_task("flaky.py", task_source("flaky", QUICK, interval_seconds=0.5))
    wait_for_reload(service, 2)
    fixed_at = skipped[-1].started_at
    wait_until(
        lambda: [r for r in services.finished("flaky", "success") if r.started_at > fixed_at],
        timeout=10,
        what="flaky running again once fixed",
    )
    service.stop()
    assert [r for r in services.runs() if r.outcome == "running"] == []
    assert [r for r in services.runs() if r.outcome == "crashed"] == []


def test_a_run_in_progress_ends_on_the_code_it_started_with(
    services: ServiceFactory, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    body = f"""
        pathlib.Path({str(marks)!r}, context.run_id + ".started").touch()
        await asyncio.sleep(1.5)
        pathlib.Path({str(marks)!r}, context.run_id + ".VERSION").touch()
        return [RunnerResult(success=True)]
    """
    services.write_task(
        "slow.py", task_source("slow", body.replace("VERSION", "v1"), interval_seconds=1)
    )
    service = services(**RELOAD)
    wait_until(lambda: list(marks.glob("*.started")), timeout=10, what="a run of slow started")
    services.write_task(
        "slow.py", task_source("slow", body.replace("VERSION", "v2"), interval_seconds=1)
    )
    wait_for_reload(service, 1)
    wait_until(lambda: list(marks.glob("*.v2")), timeout=15, what="a run on the new code")
    service.stop()
    assert list(marks.glob("*.v1")), "the run in progress at the reload was cut short"
    outcomes = {r.outcome for r in services.runs("slow")}
    assert outcomes <= {"success", "skipped"}, outcomes  # none crashed or was interrupted


def test_a_change_that_would_make_the_configuration_invalid_is_refused_whole(
    services: ServiceFactory,
) -> None:
    services.write_task("keeper.py", task_source("keeper", QUICK, interval_seconds=0.5))
    service = services(**RELOAD)
    services.wait_for_runs("keeper", 1)
    services.write_task(
        "orphan.py", task_source("orphan", QUICK, interval_seconds=1, dependencies=["nobody"])
    )
    refused = service.wait_for_log(
        "task files not reloaded: the configuration would be invalid; the jobs stay as they were "
        "until it is fixed"
    )
    assert any("nobody" in problem for problem in refused["problems"])
    assert "orphan" not in services.stored_job_ids()
    assert "orphan" not in jobs_by_type(service)
    before = len(services.finished("keeper", "success"))
    services.wait_for_runs("keeper", before + 2)


def test_reload_in_inline_mode_imports_the_new_code(services: ServiceFactory) -> None:
    services.write_task("first.py", task_source("first", QUICK, interval_seconds=3600))
    service = services(SCHEDULER_EXECUTION="inline", **RELOAD)
    service.wait_for_log("watching the task files for changes")
    services.write_task("second.py", task_source("second", QUICK, interval_seconds=0.5))
    wait_for_reload(service, 1)
    services.wait_for_runs("second", 1)


def test_reload_is_off_unless_asked_for(services: ServiceFactory) -> None:
    services.write_task("first.py", task_source("first", QUICK, interval_seconds=0.5))
    service = services()
    services.wait_for_runs("first", 1)
    assert service.find_log("watching the task files for changes") is None


@pytest.mark.parametrize(
    ("path", "relevant"),
    [
        ("tasks/job.py", True),
        ("tasks/_helper.py", True),
        ("tasks/sub/deep.py", True),
        ("tasks/__pycache__/job.cpython-311.pyc", False),
        ("tasks/notes.txt", False),
        ("tasks/job.py.swp", False),
        ("config/jobs.toml", True),
        ("config/other.toml", False),
        ("elsewhere/job.py", False),
    ],
)
def test_the_watcher_looks_at_python_files_and_the_config_file(
    tmp_path: Path, path: str, relevant: bool
) -> None:
    async def ignore(_paths: list[str]) -> None:
        pass

    watcher = TaskFolderWatcher(tmp_path / "tasks", tmp_path / "config" / "jobs.toml", ignore)
    assert watcher.relevant(Change.modified, str(tmp_path / path)) is relevant


def test_an_edit_of_the_same_size_within_the_second_is_not_hidden_by_cached_bytecode(
    services: ServiceFactory, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    body = f"pathlib.Path({str(marks)!r}, 'VERSION').touch()\nreturn [RunnerResult(success=True)]"
    path = services.write_task(
        "same.py", task_source("same", body.replace("VERSION", "v1"), interval_seconds=0.5)
    )
    service = services(PYTHONDONTWRITEBYTECODE="", **RELOAD)  # bytecode is cached, as by default
    wait_until(lambda: (marks / "v1").exists(), timeout=10, what="a run on the first code")
    assert list((services.tasks_dir / "__pycache__").glob("same.*.pyc"))
    before = path.stat()
    path.write_text(task_source("same", body.replace("VERSION", "v2"), interval_seconds=0.5))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as if within the same second
    assert path.stat().st_size == before.st_size
    wait_for_reload(service, 1)
    wait_until(lambda: (marks / "v2").exists(), timeout=10, what="a run on the edited code")


def test_fixing_a_quarantined_job_while_running_lifts_its_quarantine(
    services: ServiceFactory,
) -> None:
    path = services.write_task(
        "doomed.py", task_source("doomed", "os._exit(7)", interval_seconds=0.3, max_retries=0)
    )
    service = services(SCHEDULER_QUARANTINE_AFTER="2", **RELOAD)
    service.wait_for_log("active: this instance runs the jobs")
    wait_until(lambda: jobs_by_type(service)["doomed"]["state"] == "quarantined", timeout=15)
    path.write_text(task_source("doomed", QUICK, interval_seconds=0.3), encoding="utf-8")
    service.wait_for_log("quarantine lifted: the task file changed", job_type="doomed")
    services.wait_for_runs("doomed", 2)
    assert jobs_by_type(service)["doomed"]["state"] != "quarantined"


def test_sighup_reloads_once_without_a_watcher_and_does_not_end_the_service(
    services: ServiceFactory,
) -> None:
    services.write_task("ticker.py", task_source("ticker", QUICK, interval_seconds=0.2))
    service = services()  # not watching
    services.wait_for_runs("ticker", 1)
    services.write_task("later.py", task_source("later", QUICK, interval_seconds=0.2))
    service.signal(signal.SIGHUP)
    line = wait_for_reload(service, 1)
    assert line["changed"] == ["SIGHUP"] and line["added"] == ["later"]
    services.wait_for_runs("later", 1)
    count = len(services.finished("ticker"))
    services.wait_for_runs("ticker", count + 3)
    assert service.stop() == 0
