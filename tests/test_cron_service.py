"""Cron jobs in the real service, on a clock the test sets (libfaketime): the autumn and spring
daylight-saving changes in Europe/Berlin, environment overrides, and a change of schedule kind."""

from __future__ import annotations

import glob
import json
import os
import shutil
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from tests.support import ServiceFactory, ServiceProcess, task_source, wait_until

QUICK = "return [RunnerResult(success=True)]"
BERLIN = {"timezone": "Europe/Berlin"}


def faked_clock(start: str) -> dict[str, str]:
    """Environment that starts the service's wall clock at `start` (UTC); monotonic time, which
    asyncio and the timeouts use, stays real."""
    libraries = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    if not libraries or shutil.which("faketime") is None:
        if os.environ.get("CI"):
            pytest.fail("libfaketime is missing (apt-get install faketime; .ci/run installs it)")
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    return {
        "LD_PRELOAD": libraries[0],
        "FAKETIME": f"@{start}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",  # child processes keep counting from the same start
        "TZ": "UTC",
    }


def jobs_by_type(service: ServiceProcess) -> dict[str, Any]:
    status, jobs = service.get_json("/api/jobs")
    assert status == 200
    return {job["job_type"]: job for job in jobs}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_autumn_repeated_hour_runs_a_wildcard_hour_twice_and_a_fixed_time_once(
    services: ServiceFactory,
) -> None:
    # 2026-10-25 01:00 UTC: Berlin goes from 03:00 CEST back to 02:00 CET.
    services.write_task("hourly.py", task_source("hourly", QUICK, cron="0 * * * *", **BERLIN))
    services.write_task("nightly.py", task_source("nightly", QUICK, cron="0 2 * * *", **BERLIN))
    service = services(**faked_clock("2026-10-25 00:59:50"))
    service.wait_for_log("active: this instance runs the jobs")
    jobs = jobs_by_type(service)
    assert jobs["hourly"]["schedule"] == "cron 0 * * * * (Europe/Berlin)"
    # 02:00 CET today is the second 02:00: a fixed-time job already had its first.
    assert utc(jobs["nightly"]["next_run_time"]) == datetime(2026, 10, 26, 1, tzinfo=UTC)
    assert utc(jobs["hourly"]["next_run_time"]) == datetime(2026, 10, 25, 1, tzinfo=UTC)
    (run, *_) = services.wait_for_runs("hourly", 1)
    assert run.scheduled_at == datetime(2026, 10, 25, 1, tzinfo=UTC)  # 02:00 CET, run again
    next_hour = wait_until(
        lambda: (
            (moment := jobs_by_type(service)["hourly"]["next_run_time"])
            and utc(moment) == datetime(2026, 10, 25, 2, tzinfo=UTC)
        ),
        what="hourly's next run at 03:00 CET",
    )
    assert next_hour
    assert services.finished("nightly") == []


def test_spring_skipped_time_runs_an_hour_later_and_overrides_switch_schedule_kinds(
    services: ServiceFactory,
) -> None:
    # 2026-03-29 01:00 UTC: Berlin goes from 02:00 CET to 03:00 CEST; 02:30 does not exist.
    services.write_task("hourly.py", task_source("hourly", QUICK, interval_seconds=3600))
    services.write_task("nightly.py", task_source("nightly", QUICK, cron="30 2 * * *", **BERLIN))
    clock = faked_clock("2026-03-29 00:59:50")
    service = services(HOURLY_CRON="0 * * * *", HOURLY_TIMEZONE="Europe/Berlin", **clock)
    service.wait_for_log("active: this instance runs the jobs")
    jobs = jobs_by_type(service)
    assert jobs["hourly"]["schedule"] == "cron 0 * * * * (Europe/Berlin)"
    assert jobs["hourly"]["config"]["interval_seconds"] is None
    assert utc(jobs["nightly"]["next_run_time"]) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    (run, *_) = services.wait_for_runs("hourly", 1)
    assert run.scheduled_at == datetime(2026, 3, 29, 1, tzinfo=UTC)  # 03:00 CEST
    assert service.stop() == 0

    # Without the override the job is the decorator's interval job again, nothing of the cron
    # schedule left in the store.
    service = services(**clock)
    service.wait_for_log("job schedule changed", job_type="hourly", schedule="every 3600s")
    assert jobs_by_type(service)["hourly"]["schedule"] == "every 3600s"
    assert service.stop() == 0
    with services.engine.connect() as connection:
        (state,) = connection.execute(
            text("SELECT job_state FROM scheduler_jobs WHERE id = 'hourly'")
        ).one()
    trigger = json.loads(state)["trigger"]
    assert trigger["type"] == "interval" and trigger["seconds"] == 3600
    assert len(services.finished("hourly")) == 1
