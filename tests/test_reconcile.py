"""Reconcile against a real job store: add, keep, change, reschedule, remove, keep broken."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from scheduler import BaseTask, JobContext, JobRegistry, RunnerResult, job
from scheduler.database import create_database_engine
from scheduler.history import migrate
from scheduler.job_config import resolve_job_configs
from scheduler.jobstore import GroupedSQLAlchemyJobStore
from scheduler.leadership import sole_term
from scheduler.reconcile import (
    FIRST_RUN_SPREAD_SECONDS,
    DesiredJob,
    desired_job,
    first_run_time,
    reconcile,
)
from scheduler.schedules import CronSchedule, IntervalSchedule, stored_schedule


def desired(job_type: str, interval: float = 60, **changes: Any) -> DesiredJob:
    values: dict[str, Any] = {
        "job_type": job_type,
        "name": job_type.title(),
        "schedule": IntervalSchedule(interval),
        "max_instances": 1,
        "coalesce": True,
        "misfire_grace_time": 60,
        "task_file": f"{job_type}.py",
    }
    values.update(changes)
    return DesiredJob(**values)


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Any]:
    with started_scheduler(tmp_path) as scheduler:
        yield scheduler


@contextlib.contextmanager
def started_scheduler(tmp_path: Path) -> Iterator[Any]:
    engine = create_database_engine(f"sqlite:///{tmp_path}/s.db")
    migrate(engine)
    store = GroupedSQLAlchemyJobStore(engine, sole_term(engine, "test"))
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=UTC)
    scheduler.start(paused=True)
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=False)
        engine.dispose()


def jobs(scheduler: Any) -> dict[str, Any]:
    return {job.id: job for job in scheduler.get_jobs()}


def test_new_jobs_are_added_to_start_within_the_spread(scheduler: Any, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    report = reconcile(
        scheduler, {"a": desired("a"), "b": desired("b", 0.5)}, disabled=[],
        failed_files={}, tasks_dir=tmp_path, now=now,
    )  # fmt: skip
    assert sorted(report.added) == ["a", "b"]
    stored = jobs(scheduler)
    for job_type in ("a", "b"):
        job = stored[job_type]
        assert job.func_ref == "scheduler.executor:scheduled_run"
        assert job.args == (job_type,) and job.kwargs == {"task_file": f"{job_type}.py"}
        assert now <= job.next_run_time <= now + timedelta(seconds=FIRST_RUN_SPREAD_SECONDS)
    assert stored["b"].next_run_time == first_run_time("b", 0.5, now)


def test_unchanged_jobs_keep_their_next_run_time(scheduler: Any, tmp_path: Path) -> None:
    reconcile(
        scheduler, {"a": desired("a", 3600)}, disabled=[], failed_files={}, tasks_dir=tmp_path
    )
    before = jobs(scheduler)["a"].next_run_time
    report = reconcile(
        scheduler, {"a": desired("a", 3600)}, disabled=[], failed_files={}, tasks_dir=tmp_path,
        now=datetime.now(UTC) + timedelta(minutes=50),
    )  # fmt: skip
    assert report.unchanged == ["a"]
    assert jobs(scheduler)["a"].next_run_time == before


def test_changed_attributes_and_interval(scheduler: Any, tmp_path: Path) -> None:
    reconcile(
        scheduler, {"a": desired("a", 3600)}, disabled=[], failed_files={}, tasks_dir=tmp_path
    )
    before = jobs(scheduler)["a"].next_run_time
    report = reconcile(
        scheduler, {"a": desired("a", 3600, max_instances=3, name="Renamed")}, disabled=[],
        failed_files={}, tasks_dir=tmp_path,
    )  # fmt: skip
    assert report.changed == ["a"] and report.rescheduled == []
    job = jobs(scheduler)["a"]
    assert (job.max_instances, job.name, job.next_run_time) == (3, "Renamed", before)
    report = reconcile(
        scheduler, {"a": desired("a", 5, max_instances=3, name="Renamed")}, disabled=[],
        failed_files={}, tasks_dir=tmp_path,
    )  # fmt: skip
    assert report.rescheduled == ["a"]
    job = jobs(scheduler)["a"]
    assert job.trigger.interval_length == 5
    assert job.next_run_time < datetime.now(UTC) + timedelta(seconds=6)


def test_removed_disabled_and_broken_jobs(scheduler: Any, tmp_path: Path) -> None:
    everything = {name: desired(name) for name in ("kept", "deleted", "moved", "off", "broken")}
    reconcile(scheduler, everything, disabled=[], failed_files={}, tasks_dir=tmp_path)
    (tmp_path / "moved.py").write_text("# the job was renamed away\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    report = reconcile(
        scheduler, {"kept": desired("kept")}, disabled=["off"],
        failed_files={"broken.py": "SyntaxError: invalid syntax (line 1)"}, tasks_dir=tmp_path,
    )  # fmt: skip
    assert report.removed == {
        "deleted": "task file deleted.py was deleted",
        "moved": "no longer declared in moved.py",
        "off": "disabled",
    }
    assert report.kept_not_loaded == {"broken": "broken.py"}
    assert set(jobs(scheduler)) == {"kept", "broken"}


def test_a_cron_job_first_runs_when_its_expression_matches(scheduler: Any, tmp_path: Path) -> None:
    report = reconcile(
        scheduler, {"nightly": desired("nightly", schedule=CronSchedule("30 2 * * *", "Asia/Tokyo"))},  # noqa: E501
        disabled=[], failed_files={}, tasks_dir=tmp_path,
    )  # fmt: skip
    assert report.added == ["nightly"]
    local = jobs(scheduler)["nightly"].next_run_time.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute, local.second) == (2, 30, 0)
    assert datetime.now(UTC) < local <= datetime.now(UTC) + timedelta(days=1)


def test_switching_between_interval_and_cron_keeps_no_stale_state(
    scheduler: Any, tmp_path: Path
) -> None:
    def settle(schedule: Any) -> Any:
        reconcile(
            scheduler, {"a": desired("a", schedule=schedule)}, disabled=[], failed_files={},
            tasks_dir=tmp_path,
        )  # fmt: skip
        return jobs(scheduler)["a"]

    settle(IntervalSchedule(3600))
    scheduler.pause_job("a")  # an operator's pause outlives a change of schedule
    assert jobs(scheduler)["a"].next_run_time is None
    hourly = CronSchedule("0 * * * *", "Europe/Berlin")
    job = settle(hourly)
    assert stored_schedule(job.trigger) == hourly and job.next_run_time is None
    scheduler.resume_job("a")
    assert jobs(scheduler)["a"].next_run_time.astimezone(UTC).minute == 0
    job = settle(IntervalSchedule(7))
    assert stored_schedule(job.trigger) == IntervalSchedule(7)
    assert job.next_run_time <= datetime.now(UTC) + timedelta(seconds=7)
    job = settle(CronSchedule("*/5 * * * *"))
    assert job.next_run_time.astimezone(UTC).minute % 5 == 0


def test_a_cron_schedule_survives_a_restart(tmp_path: Path) -> None:
    weekly = CronSchedule("0 9 * * 1", "America/New_York")
    with started_scheduler(tmp_path) as scheduler:
        reconcile(
            scheduler, {"weekly": desired("weekly", schedule=weekly)}, disabled=[],
            failed_files={}, tasks_dir=tmp_path,
        )  # fmt: skip
        before = jobs(scheduler)["weekly"].next_run_time
    with started_scheduler(tmp_path) as scheduler:
        report = reconcile(
            scheduler, {"weekly": desired("weekly", schedule=weekly)}, disabled=[],
            failed_files={}, tasks_dir=tmp_path,
        )  # fmt: skip
        job = jobs(scheduler)["weekly"]
    assert report.unchanged == ["weekly"]
    assert stored_schedule(job.trigger) == weekly and job.next_run_time == before
    assert before.astimezone(ZoneInfo("America/New_York")).strftime("%a %H:%M") == "Mon 09:00"


def test_a_jobs_own_misfire_grace_and_coalescing_win_over_the_service_defaults(
    scheduler: Any, tmp_path: Path
) -> None:
    class Task(BaseTask[RunnerResult]):
        async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
            return []

    job("own", misfire_grace_seconds=5, coalesce=False)(Task)
    job("defaults")(Task)
    resolved = resolve_job_configs(JobRegistry.list_jobs(), {"DEFAULTS_COALESCE": "no"})
    want = {
        job_type: desired_job(item, f"{job_type}.py", coalesce=True, misfire_grace_seconds=60)
        for job_type, item in resolved.jobs.items()
    }
    reconcile(scheduler, want, disabled=[], failed_files={}, tasks_dir=tmp_path)
    stored = jobs(scheduler)
    assert (stored["own"].misfire_grace_time, stored["own"].coalesce) == (5, False)
    assert (stored["defaults"].misfire_grace_time, stored["defaults"].coalesce) == (60, False)
