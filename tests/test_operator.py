"""The operator API and CLI: run now, pause, resume, run history; only with the token."""

from __future__ import annotations

import json
import time

from tests.support import ServiceFactory, run_cli, task_source, wait_until

QUICK = "return [RunnerResult(success=True)]"
TOKEN = "correct-horse-battery-staple"


def test_write_endpoints_are_disabled_without_a_token(services: ServiceFactory) -> None:
    services.write_task("job.py", task_source("job", QUICK, interval_seconds=3600))
    service = services()
    service.wait_for_log("active: this instance runs the jobs")
    for action in ("run", "pause", "resume"):
        status, body = service.post_json(f"/api/jobs/job/{action}", token="anything")
        assert status == 403, action
        assert body["detail"] == (
            "write endpoints are disabled: set SCHEDULER_ADMIN_TOKEN to enable them"
        )


def test_write_endpoints_need_the_right_token(services: ServiceFactory) -> None:
    services.write_task("job.py", task_source("job", QUICK, interval_seconds=3600))
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    service.wait_for_log("active: this instance runs the jobs")
    for token in (None, "", "wrong", TOKEN + "x"):
        status, body = service.post_json("/api/jobs/job/pause", token=token)
        assert status in (401, 403) and status == 401, (token, body)
    assert service.post_json("/api/jobs/nope/pause", token=TOKEN)[0] == 404
    assert "job" in services.stored_job_ids()


def test_run_now_respects_requirements_and_max_concurrent(services: ServiceFactory) -> None:
    services.write_task("quick.py", task_source("quick", QUICK, interval_seconds=3600))
    services.write_task(
        "needy.py", task_source("needy", QUICK, interval_seconds=3600, requires_unicorn=True)
    )
    services.write_task(
        "long.py", task_source("long_job", "await asyncio.sleep(30)", interval_seconds=3600)
    )
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    services.wait_for_runs("quick", 1)
    status, body = service.post_json("/api/jobs/quick/run", token=TOKEN)
    assert status == 200 and body["status"] == "success" and body["attempts"] == 1
    manual = wait_until(  # the history is written by its own thread, just after the answer
        lambda: [r for r in services.finished("quick") if r.trigger == "manual"],
        what="the manual run's history row",
    )
    assert [r.run_id for r in manual] == [body["run_id"]]

    status, body = service.post_json("/api/jobs/needy/run", token=TOKEN)
    assert (body["status"], body["skip_reason"]) == ("skipped", "requirement")
    assert "requirement 'unicorn'" in body["error"]

    wait_until(lambda: [r for r in services.runs("long_job") if r.outcome == "running"])
    status, body = service.post_json("/api/jobs/long_job/run", token=TOKEN)
    assert (body["status"], body["skip_reason"]) == ("skipped", "max_instances")


def test_run_now_answers_started_for_a_long_run(services: ServiceFactory) -> None:
    body = "await asyncio.sleep(30)\n" + QUICK
    services.write_task(
        "slow.py", task_source("slow", body, interval_seconds=3600, max_concurrent=2)
    )
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    wait_until(lambda: services.runs("slow"), what="the scheduled run")  # one of the two slots
    started = time.monotonic()
    status, answer = service.post_json("/api/jobs/slow/run", token=TOKEN)
    assert status == 200 and answer["status"] == "started"
    assert time.monotonic() - started < 10  # it answers once the run starts, not when it ends
    running = wait_until(
        lambda: [r for r in services.runs("slow") if r.run_id == answer["run_id"]],
        what="the manual run's row",
    )
    assert running[0].trigger == "manual" and running[0].outcome == "running"


def test_pause_survives_a_restart_and_resume_runs_again(services: ServiceFactory) -> None:
    services.write_task("tick.py", task_source("tick", QUICK, interval_seconds=0.3))
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    services.wait_for_runs("tick", 2)
    status, body = service.post_json("/api/jobs/tick/pause", token=TOKEN)
    assert status == 200 and body == {"job_type": "tick", "state": "paused", "next_run_time": None}
    metrics = service.get("/metrics")[1].decode()
    assert 'scheduler_job_paused{job_type="tick"} 1.0' in metrics  # so it does not page as stale
    paused_at = time.time()
    assert service.stop() == 0
    runs_before = len(services.runs("tick"))

    second = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    second.wait_for_log("Resumed scheduler job processing")  # reconciled, scheduling
    status, jobs = second.get_json("/api/jobs")
    api_tick = next(j for j in jobs if j["job_type"] == "tick")
    assert api_tick["state"] == "paused"
    # `list --json` on the same database shows the same model, with the same values.
    listed = run_cli(
        "list", "--json", "--tasks-dir", str(services.tasks_dir),
        cwd=services.workdir, env={"SCHEDULER_DATABASE_URL": services.database_url},
    )  # fmt: skip
    (cli_tick,) = [j for j in json.loads(listed.stdout)["jobs"] if j["job_type"] == "tick"]
    assert cli_tick == {**api_tick, "running": 0}
    assert (cli_tick["last_outcome"], cli_tick["next_run_time"]) == ("success", None)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # five intervals: a running job would have run
        assert len(services.runs("tick")) == runs_before
        time.sleep(0.1)
    assert time.time() - paused_at > 1.5

    status, body = second.post_json("/api/jobs/tick/resume", token=TOKEN)
    assert status == 200 and body["state"] == "scheduled" and body["next_run_time"]
    services.wait_for_runs("tick", runs_before + 2)


def test_runs_are_paginated(services: ServiceFactory) -> None:
    services.write_task("tick.py", task_source("tick", QUICK, interval_seconds=0.2))
    service = services()
    services.wait_for_runs("tick", 5)
    status, first = service.get_json("/api/jobs/tick/runs?limit=2")
    assert status == 200 and len(first["runs"]) == 2 and first["next_offset"] == 2
    status, second = service.get_json("/api/jobs/tick/runs?limit=2&offset=2")
    assert {r["run_id"] for r in first["runs"]}.isdisjoint(r["run_id"] for r in second["runs"])
    assert first["runs"][0]["started_at"] >= second["runs"][0]["started_at"]
    assert service.get_json("/api/jobs/nope/runs")[0] == 404
    assert service.get_json("/api/jobs/tick/runs?limit=0")[0] == 422


def test_cli_trigger_pause_resume(services: ServiceFactory) -> None:
    services.write_task("tick.py", task_source("tick", QUICK, interval_seconds=3600))
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    service.wait_for_log("active: this instance runs the jobs")
    env = {"SCHEDULER_HTTP_PORT": str(service.http_port), "SCHEDULER_ADMIN_TOKEN": TOKEN}
    triggered = run_cli("trigger", "tick", cwd=services.workdir, env=env)
    assert triggered.returncode == 0, triggered.stderr
    assert '"status": "success"' in triggered.stdout
    assert '"state": "paused"' in run_cli("pause", "tick", cwd=services.workdir, env=env).stdout
    assert '"state": "scheduled"' in run_cli("resume", "tick", cwd=services.workdir, env=env).stdout
    refused = run_cli(
        "pause", "tick", cwd=services.workdir, env={**env, "SCHEDULER_ADMIN_TOKEN": "x"}
    )
    assert refused.returncode == 1 and "missing or wrong bearer token" in refused.stdout
    unreachable = run_cli("pause", "tick", "--url", "http://127.0.0.1:9", cwd=services.workdir)
    assert unreachable.returncode == 1 and "cannot reach the scheduler" in unreachable.stderr


def test_standby_refuses_operator_actions(services: ServiceFactory) -> None:
    services.write_task("tick.py", task_source("tick", QUICK, interval_seconds=3600))
    active = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    active.wait_for_log("active: this instance runs the jobs")
    standby = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    standby.wait_for_log("standby: another instance is active")
    status, body = standby.post_json("/api/jobs/tick/pause", token=TOKEN)
    assert status == 409 and "standby" in body["detail"]


def test_cli_trigger_waits_for_a_short_run_and_exits_3_when_it_did_not_succeed(
    services: ServiceFactory,
) -> None:
    services.write_task(
        "brief.py",
        task_source("brief", "await asyncio.sleep(0.3)\n" + QUICK, interval_seconds=3600),
    )
    services.write_task(
        "broken.py",
        task_source("broken", "raise RuntimeError('no')", interval_seconds=3600, max_retries=0),
    )
    services.write_task(
        "busy.py", task_source("busy", "await asyncio.sleep(30)\n" + QUICK, interval_seconds=3600)
    )
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    wait_until(lambda: [r for r in services.runs("busy") if r.outcome == "running"], what="busy")
    env = {"SCHEDULER_HTTP_PORT": str(service.http_port), "SCHEDULER_ADMIN_TOKEN": TOKEN}
    brief = run_cli("trigger", "brief", cwd=services.workdir, env=env)
    assert brief.returncode == 0 and '"status": "success"' in brief.stdout, brief.stdout
    broken = run_cli("trigger", "broken", cwd=services.workdir, env=env)
    assert broken.returncode == 3 and '"status": "failure"' in broken.stdout, broken.stdout
    busy = run_cli("trigger", "busy", cwd=services.workdir, env=env)  # max_concurrent=1
    assert busy.returncode == 3 and '"skip_reason": "max_instances"' in busy.stdout, busy.stdout
