"""Log output: structlog JSON, the standard library routed through it, context in every line
of a run, and no secrets."""

from __future__ import annotations

import io
import json
import logging
import threading
import warnings

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.schedulers.background import BackgroundScheduler

from scheduler.logs import configure_logging
from tests.support import ServiceFactory, task_source


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_stdlib_records_come_out_as_the_same_json() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    logging.getLogger("apscheduler.scheduler").info("Added job %s", "x")
    structlog.get_logger("ours").info("hello", answer=42)
    stdlib, ours = lines(stream)
    assert stdlib["event"] == "Added job x" and stdlib["logger"] == "apscheduler.scheduler"
    assert ours["event"] == "hello" and ours["answer"] == 42
    assert {"level", "timestamp"} <= stdlib.keys() & ours.keys()


def test_apschedulers_own_max_instances_warning_is_not_repeated() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    release, skipped = threading.Event(), threading.Event()
    scheduler = BackgroundScheduler()
    scheduler.add_listener(lambda _event: skipped.set(), EVENT_JOB_MAX_INSTANCES)
    scheduler.add_job(release.wait, "interval", seconds=0.05, max_instances=1)
    scheduler.start()
    try:
        assert skipped.wait(10), "APScheduler never reached max_instances"
    finally:
        release.set()
        scheduler.shutdown()
    events = [str(line["event"]) for line in lines(stream)]
    assert any("Scheduler started" in event for event in events)  # its other lines pass
    assert not [event for event in events if "maximum number of running instances" in event]


def test_level_filters_and_console_format() -> None:
    stream = io.StringIO()
    configure_logging("warning", "console", stream)
    structlog.get_logger("x").info("quiet")
    structlog.get_logger("x").warning("loud", n=1)
    output = stream.getvalue()
    assert "quiet" not in output
    assert "loud" in output and "n=1" in output and not output.startswith("{")


def test_secrets_are_masked() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    log = structlog.get_logger("x")
    log.info("connecting", url="postgresql://app:hunter2@db:5432/jobs", api_key="abc123")
    logging.getLogger("sqlalchemy").warning("failed for postgresql://app:hunter2@db/jobs")
    log.info("nested", config={"token": "t0k", "tokens_used": 5, "items": ["redis://:pw@r:6379"]})
    output = stream.getvalue()
    for secret in ("hunter2", "abc123", "t0k", ":pw@"):
        assert secret not in output
    first, second, third = lines(stream)
    assert first["url"] == "postgresql://app:***@db:5432/jobs" and first["api_key"] == "***"
    assert second["event"] == "failed for postgresql://app:***@db/jobs"
    assert third["config"] == {"token": "***", "tokens_used": 5, "items": ["redis://:***@r:6379"]}


def test_every_line_of_a_run_carries_its_context(services: ServiceFactory) -> None:
    body = """
        import structlog
        structlog.get_logger("my.task").info("working", step=1)
        import logging
        logging.getLogger("my.stdlib").warning("stdlib inside the run")
        if context.attempt == 1:
            raise RuntimeError("again")
        return [RunnerResult(success=True)]
    """
    services.write_task(
        "chatty.py",
        task_source("chatty", body, interval_seconds=3600, max_retries=1, retry_delay_seconds=0.1),
    )
    service = services()
    (run,) = services.wait_for_runs("chatty", 1)
    records = [r for r in service.logs() if r.get("run_id") == run.run_id]
    events = [(r["event"], r.get("attempt")) for r in records]
    for attempt in (1, 2):
        assert ("run started", attempt) in events
        assert ("working", attempt) in events
        assert ("stdlib inside the run", attempt) in events
        assert ("run finished", attempt) in events
    assert all(r["job_type"] == "chatty" for r in records)
    ends = [r for r in records if r["event"] == "run finished"]
    assert [r["outcome"] for r in ends] == ["failure", "success"]
    assert all(isinstance(r["duration_seconds"], float) for r in ends)


def test_database_password_never_reaches_the_log(postgres_url: str, tmp_path, tasks_dir) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password="s3cr3t-pw").render_as_string(hide_password=False)
    factory = ServiceFactory(tmp_path, url, tasks_dir)
    try:
        factory.write_task("t.py", task_source("t", "return []", interval_seconds=3600))
        service = factory()
        service.wait_for_log("scheduler starting")
        service.wait_for_log("active: this instance runs the jobs")
        assert "s3cr3t-pw" not in service.log_text()
        starting = service.find_log("scheduler starting")
        assert starting is not None
        assert starting["database"].startswith("postgresql+psycopg://postgres:***@")
        assert starting["event_loop"] == "uvloop"  # installed with the package on Linux
    finally:
        factory.close()


def test_warnings_come_out_as_json_lines_too() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(
            "this option is deprecated; password=hunter2", DeprecationWarning, stacklevel=1
        )
    (line,) = lines(stream)
    assert line["logger"] == "py.warnings" and line["level"] == "warning"
    assert "DeprecationWarning: this option is deprecated; password=***" in str(line["event"])
