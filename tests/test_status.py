"""What the service says about itself (status.py): its health, and each job's state."""

from __future__ import annotations

import html
import re

from scheduler.requirements import no_provider
from scheduler.status import NO_WORKER_GRACE_SECONDS, Health, health_problems
from tests.conftest import FIXTURES
from tests.support import ServiceFactory, task_source, wait_until

QUICK = "return [RunnerResult(success=True)]"


def healthy(**fields: object) -> Health:
    health = Health(leader=True, database_ok=True, heartbeat_at=1000.0, scheduler_alive=True)
    for name, value in fields.items():
        setattr(health, name, value)
    return health


def test_a_leader_without_a_ready_worker_is_unhealthy_after_the_grace() -> None:
    assert health_problems(healthy(), 2.0, now=1001.0) == []
    starting = healthy(no_worker_since=1000.0)
    assert health_problems(starting, 2.0, now=1000.0 + NO_WORKER_GRACE_SECONDS - 1) == []
    late = 1000.0 + NO_WORKER_GRACE_SECONDS + 1
    assert health_problems(healthy(no_worker_since=1000.0, heartbeat_at=late), 2.0, now=late) == [
        "no worker process has been ready for 11s"
    ]


def test_a_standby_needs_no_worker() -> None:
    standby = healthy(leader=False, no_worker_since=0.0)
    assert health_problems(standby, 2.0, now=1001.0) == []


def test_start_up_warns_of_jobs_that_cannot_run_and_their_state_says_why(
    services: ServiceFactory,
) -> None:
    services.write_task("fetch.py", task_source("fetch", QUICK, enabled=False))
    services.write_task(
        "report.py", task_source("report", QUICK, interval_seconds=0.2, dependencies=["fetch"])
    )
    services.write_task(
        "my_awesome_job.py", (FIXTURES / "seed_example.py").read_text(encoding="utf-8")
    )
    service = services(SCHEDULER_FIRST_RUN_SPREAD_SECONDS="0")
    dependency = service.wait_for_log(
        "job 'report' depends on disabled job 'fetch': it never runs until 'fetch' is enabled "
        "(a job runs only after its dependencies' latest runs succeeded)"
    )
    assert dependency["level"] == "warning" and dependency["job_type"] == "report"
    requirement = service.wait_for_log(f"job 'my_awesome_job' is blocked: {no_provider('twitter')}")
    assert requirement["level"] == "warning" and requirement["job_type"] == "my_awesome_job"

    service.wait_for_log("active: this instance runs the jobs")
    (skipped, *_) = services.wait_for_runs("report", 1, outcome="skipped")
    assert skipped.skip_reason == "dependency"  # what the warning said: it does not run
    reason = "dependency 'fetch' is disabled: this job never runs until it is enabled"
    status, jobs = service.get_json("/api/jobs")
    assert status == 200
    report = next(job for job in jobs if job["job_type"] == "report")
    assert (report["state"], report["state_reason"]) == ("blocked", reason)
    status, page = service.get("/")
    assert status == 200
    assert f"blocked ({html.escape(reason)})" in page.decode()


def test_a_dependency_disabled_after_it_succeeded_still_blocks_its_dependants(
    services: ServiceFactory,
) -> None:
    services.write_task("fetch.py", task_source("fetch", QUICK, interval_seconds=0.5))
    services.write_task(
        "report.py", task_source("report", QUICK, interval_seconds=0.2, dependencies=["fetch"])
    )
    first = services(SCHEDULER_FIRST_RUN_SPREAD_SECONDS="0")
    services.wait_for_runs("report", 1, outcome="success")
    assert first.stop() == 0

    second = services(SCHEDULER_FIRST_RUN_SPREAD_SECONDS="0", FETCH_ENABLED="false")
    second.wait_for_log("active: this instance runs the jobs")
    successes = len(services.finished("report", "success"))
    blocked = wait_until(
        lambda: [
            r
            for r in services.finished("report", "skipped")
            if "'fetch' is disabled" in (r.error or "")
        ],
        what="a run of report skipped because its dependency is disabled",
    )
    assert blocked[0].skip_reason == "dependency"
    assert len(services.finished("report", "success")) == successes


def test_health_before_the_first_heartbeat_says_so_instead_of_an_epoch_old_heartbeat() -> None:
    health = Health(database_ok=True, started_at=1000.0)
    assert health_problems(health, heartbeat_seconds=2, now=1005.0) == []
    (problem,) = health_problems(health, heartbeat_seconds=2, now=1100.0)
    assert problem == (
        "no heartbeat yet, 100s after the start (the heartbeat begins once the database is ready)"
    )
    health.heartbeat_at = 1090.0
    assert health_problems(health, heartbeat_seconds=2, now=1100.0) == []
    (problem,) = health_problems(health, heartbeat_seconds=2, now=1200.0)
    assert problem == "heartbeat is 110s old (stale after 10s)"


def test_after_a_restart_the_api_shows_each_jobs_last_error_with_its_outcome(
    services: ServiceFactory,
) -> None:
    services.write_task(
        "doomed.py",
        task_source("doomed", "raise RuntimeError('no way')", interval_seconds=3600, max_retries=0),
    )
    service = services()
    services.wait_for_runs("doomed", 1, outcome="failure")
    assert service.stop() == 0
    again = services()
    again.wait_for_log("active: this instance runs the jobs")
    status, jobs = again.get_json("/api/jobs")
    assert status == 200
    (doomed,) = [job for job in jobs if job["job_type"] == "doomed"]
    assert doomed["last_outcome"] == "failure"
    assert doomed["last_error"] == "RuntimeError: no way"
    assert doomed["last_finished_at"] is not None


def test_status_page_lists_broken_task_files_and_is_degraded_not_healthy(
    services: ServiceFactory,
) -> None:
    services.write_task("fine.py", task_source("fine", "return []", interval_seconds=3600))
    services.write_task("broken.py", "def (:\n")
    service = services()
    service.wait_for_log("active: this instance runs the jobs")
    status, body = service.get("/")
    page = body.decode()
    assert status == 200
    assert 'id="health" class="degraded">degraded: 1 task file(s) fail to import' in page
    (section,) = re.findall(r'<table id="broken">.*?</table>', page, re.S)
    assert "broken.py" in section and "SyntaxError: invalid syntax (line 1)" in section
    assert "fine.py" not in section
