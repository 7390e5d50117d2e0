"""Stored job state as validated JSON, and the migration of APScheduler's pickles to it."""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, text

from scheduler import job_codec
from scheduler.cron import CrontabTrigger
from scheduler.database import create_database_engine
from scheduler.errors import StoredJobError
from scheduler.executor import JOB_FUNCTION
from scheduler.history import migrate
from scheduler.jobstore import GroupedSQLAlchemyJobStore
from scheduler.leadership import sole_term
from scheduler.tables import JOBS_TABLE


def job_state(**changes: Any) -> dict[str, Any]:
    start = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    state = {
        "version": 1,
        "id": "report",
        "func": JOB_FUNCTION,
        "trigger": IntervalTrigger(seconds=90.5, start_date=start, timezone=UTC),
        "executor": "default",
        "args": ("report",),
        "kwargs": {"task_file": "report.py"},
        "name": "Report",
        "misfire_grace_time": 60,
        "coalesce": True,
        "max_instances": 2,
        "next_run_time": start + timedelta(seconds=181),
    }
    state.update(changes)
    return state


def test_a_job_round_trips_through_json() -> None:
    state = job_state()
    decoded = job_codec.decode(job_codec.encode(state), "report")
    trigger = decoded.pop("trigger")
    expected = job_state()
    assert trigger.__getstate__() == expected.pop("trigger").__getstate__()
    assert decoded == expected


def test_a_cron_job_round_trips_through_json() -> None:
    state = job_state(trigger=CrontabTrigger("0  9 * * 1-5", "Europe/Berlin"))
    document = job_codec.encode(state)
    assert b'"trigger":{"type":"cron","expression":"0 9 * * 1-5","timezone":"Europe/Berlin"}' in (
        document
    )
    trigger = job_codec.decode(document, "report")["trigger"]
    assert isinstance(trigger, CrontabTrigger)
    assert (trigger.expression, trigger.zone_name) == ("0 9 * * 1-5", "Europe/Berlin")


@pytest.mark.parametrize(
    ("trigger", "complaint"),
    [
        ({"type": "cron", "expression": "* * *", "timezone": "UTC"}, "has 3 field(s)"),
        ({"type": "cron", "expression": "* * * * *", "timezone": "Nowhere/X"}, "unknown time zone"),
        ({"type": "cron", "expression": 5, "timezone": "UTC"}, "unexpected cron expression 5"),
        ({"type": "cron", "expression": "* * * * *"}, "unexpected cron trigger fields"),
        ({"type": "date", "run_date": "2026-01-01"}, "neither interval nor cron"),
    ],
)
def test_a_tampered_cron_trigger_is_refused(trigger: dict[str, Any], complaint: str) -> None:
    document = json.loads(job_codec.encode(job_state()))
    document["trigger"] = trigger
    with pytest.raises(StoredJobError, match=re.escape(complaint)):
        job_codec.decode(json.dumps(document).encode(), "report")


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        (b"\x80\x04K\x01.", "is a pickle"),
        (b"{not json", "not valid JSON"),
        (b'{"format": 1}', "expected the fields"),
    ],
)
def test_unreadable_state_is_refused_with_what_is_wrong(document: bytes, complaint: str) -> None:
    with pytest.raises(StoredJobError, match=complaint):
        job_codec.decode(document, "report")


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("func", "os:system", "unexpected function 'os:system'"),
        ("id", "other", "unexpected id 'other'"),
        ("executor", "processpool", "unexpected executor"),
        ("args", ["a", "b"], "unexpected args"),
        ("kwargs", {"task_file": "x.py", "command": "rm"}, "unexpected kwargs"),
        ("max_instances", 0, "unexpected max_instances"),
        ("next_run_time", "2026-01-01T00:00:00", "not a time with a UTC offset"),
    ],
)
def test_a_tampered_field_is_refused(field: str, value: object, complaint: str) -> None:
    import json

    document = json.loads(job_codec.encode(job_state()))
    document[field] = value
    with pytest.raises(StoredJobError, match=complaint):
        job_codec.decode(json.dumps(document).encode(), "report")


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("true",)


def test_a_pickle_is_read_only_through_the_allow_list() -> None:
    state = job_state()
    assert job_codec.legacy_state(pickle.dumps(state), "report")["name"] == "Report"
    for crafted in (pickle.dumps(Payload()), pickle.dumps(job_state(kwargs=Payload()))):
        with pytest.raises(StoredJobError, match=r"posix\.system, which is not allowed"):
            job_codec.legacy_state(crafted, "report")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    yield engine
    engine.dispose()


def test_a_pickled_store_migrates_keeping_every_schedule(engine: Engine, tmp_path: Path) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(job_codec.__file__).parent / "migrations"))
    with engine.begin() as connection:  # a database as the previous release left it
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    legacy = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE)},
        timezone=UTC,
    )
    legacy.start(paused=True)
    next_run = datetime.now(UTC) + timedelta(hours=5)
    for job_type in ("report", "cleanup"):
        legacy.add_job(
            JOB_FUNCTION,
            trigger=IntervalTrigger(seconds=3600, timezone=UTC),
            id=job_type,
            args=(job_type,),
            kwargs={"task_file": f"{job_type}.py"},
            next_run_time=next_run,
        )
    legacy.shutdown()
    with engine.begin() as connection:  # and one row no service of ours wrote
        connection.execute(
            text(f"INSERT INTO {JOBS_TABLE} (id, next_run_time, job_state) VALUES ('x', 1, :s)"),
            {"s": pickle.dumps(Payload())},
        )
        # A slot the old release ran twice (a restart within its write window), and a retry.
        for run_id, attempt in (("first", 1), ("first", 2), ("again", 1)):
            connection.execute(
                text(
                    'INSERT INTO scheduler_runs (run_id, attempt, job_type, "trigger", '
                    "scheduled_at, started_at, outcome, instance) VALUES (:run_id, :attempt, "
                    "'report', 'schedule', :slot, :slot, 'success', 'old')"
                ),
                {"run_id": run_id, "attempt": attempt, "slot": next_run},
            )

    migrate(engine)
    with engine.connect() as connection:
        stored = dict(connection.execute(text(f"SELECT id, job_state FROM {JOBS_TABLE}")).all())
        set_aside = connection.execute(
            text("SELECT job_id, reason FROM scheduler_jobs_set_aside")
        ).all()
    assert set(stored) == {"report", "cleanup"}
    assert all(bytes(state).startswith(b"{") for state in stored.values())
    assert [job_id for job_id, _ in set_aside] == ["x"]
    assert "not allowed" in set_aside[0][1]
    store = GroupedSQLAlchemyJobStore(engine, sole_term(engine, "test"))
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=UTC)
    scheduler.start(paused=True)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    scheduler.shutdown()
    with engine.connect() as connection:
        triggers = dict(
            connection.execute(
                text("SELECT run_id || ':' || attempt, \"trigger\" FROM scheduler_runs")
            ).all()
        )
    assert triggers == {"first:1": "schedule", "first:2": "schedule", "again:1": "recovery"}
    assert set(jobs) == {"report", "cleanup"}
    for job in jobs.values():
        assert abs((job.next_run_time - next_run).total_seconds()) < 1e-3
        assert job.trigger.interval == timedelta(hours=1)
