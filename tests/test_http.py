"""The service's HTTP endpoints, on the real service in a subprocess."""

from __future__ import annotations

import subprocess

from tests.support import ServiceFactory, system_tool, task_source, wait_until

QUICK = "return [RunnerResult(success=True)]"


def promtool() -> str:
    return system_tool("promtool", "prometheus")


def test_health_readiness_and_standby(services: ServiceFactory) -> None:
    services.write_task("tick.py", task_source("tick", QUICK, interval_seconds=0.5))
    active = services()
    active.wait_for_log("active: this instance runs the jobs")
    wait_until(lambda: active.get("/healthz")[0] == 200, what="healthz 200")
    status, body = active.get_json("/healthz")
    assert body == {"status": "ok", "problems": [], "warnings": []}
    assert active.get_json("/readyz") == (200, {"status": "active"})
    status, schema = active.get_json("/openapi.json")
    assert (
        status == 200 and {"/healthz", "/readyz", "/api/jobs", "/metrics"} <= schema["paths"].keys()
    )

    standby = services()
    standby.wait_for_log("standby: another instance is active")
    wait_until(lambda: standby.get("/healthz")[0] == 200, what="standby healthz 200")
    status, body = standby.get_json("/readyz")
    assert status == 503 and body["status"] == "standby"
    # A standby shows the jobs as the leader stored them, not "never run" and "unscheduled".
    (seen,) = wait_until(
        lambda: (jobs := standby.get_json("/api/jobs")[1]) and jobs[0]["last_success_at"] and jobs,
        what="the standby to show the leader's last success",
    )
    assert (seen["state"], seen["last_outcome"], seen["running"]) == ("scheduled", "success", 0)
    assert seen["next_run_time"] is not None
    page = standby.get("/")[1].decode()
    assert "standby" in page and "never" not in page


def test_healthz_says_degraded_while_a_task_file_fails_to_import(services: ServiceFactory) -> None:
    services.write_task("tick.py", task_source("tick", QUICK, interval_seconds=3600))
    services.write_task("broken.py", "raise ImportError('no such sdk')\n")
    service = services()
    service.wait_for_log("active: this instance runs the jobs")
    _, body = wait_until(
        lambda: (answer := service.get_json("/healthz"))[0] == 200 and answer,
        what="healthz 200",
    )
    # Alive (a restart would not fix the file, and the other jobs run), but not all well.
    assert body["status"] == "degraded" and body["problems"] == []
    (warning,) = body["warnings"]
    assert "broken.py fails to import: ImportError: no such sdk" in warning


def test_api_jobs_reports_state_next_run_and_latest_outcome(services: ServiceFactory) -> None:
    services.write_task("good.py", task_source("good", QUICK, interval_seconds=3600))
    services.write_task(
        "bad.py",
        task_source("bad", "raise RuntimeError('nope')", interval_seconds=3600, max_retries=0),
    )
    services.write_task("off.py", task_source("off", QUICK, enabled=False))
    services.write_task(
        "needy.py", task_source("needy", QUICK, interval_seconds=0.3, requires_unicorn=True)
    )
    service = services()
    services.wait_for_runs("good", 1)
    services.wait_for_runs("bad", 1, outcome="failure")
    services.wait_for_runs("needy", 1, outcome="skipped")
    jobs = wait_until(
        lambda: (
            (body := service.get_json("/api/jobs")[1])
            and all(j["last_outcome"] or j["state"] != "scheduled" for j in body)
            and body
        ),
        what="every scheduled job to report an outcome",
    )
    by_type = {job["job_type"]: job for job in jobs}
    assert by_type["good"]["state"] == "scheduled"
    assert by_type["good"]["last_outcome"] == "success"
    assert by_type["good"]["next_run_time"] is not None
    assert by_type["good"]["config"]["interval_seconds"] == 3600
    assert by_type["bad"]["last_outcome"] == "failure"
    assert by_type["bad"]["last_error"] == "RuntimeError: nope"
    assert by_type["off"]["state"] == "disabled" and by_type["off"]["next_run_time"] is None
    assert by_type["needy"]["state"] == "blocked"
    assert "requirement 'unicorn': no provider is registered" in by_type["needy"]["state_reason"]


def test_metrics_are_valid_preinitialised_and_count_runs(services: ServiceFactory) -> None:
    services.write_task("ok.py", task_source("ok_job", QUICK, interval_seconds=0.3))
    services.write_task(
        "slow.py",
        task_source(
            "slow_job", "await asyncio.sleep(10)", interval_seconds=3600, timeout_seconds=0.2,
            idempotent=False,
        ),
    )  # fmt: skip
    services.write_task("broken.py", "def (:\n")
    service = services()
    services.wait_for_runs("ok_job", 3)
    services.wait_for_runs("slow_job", 1, outcome="timeout")
    status, body = service.get("/metrics")
    assert status == 200
    text = body.decode()
    check = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # every series exists from the start, at 0 where nothing happened
    assert 'scheduler_job_runs_total{job_type="ok_job",outcome="failure"} 0.0' in text
    assert 'scheduler_job_skipped_total{job_type="ok_job",reason="dependency"} 0.0' in text
    assert 'scheduler_job_retries_total{job_type="slow_job"} 0.0' in text
    assert 'scheduler_job_runs_total{job_type="slow_job",outcome="timeout"} 1.0' in text
    assert 'scheduler_job_items_total{job_type="ok_job",outcome="success"}' in text
    assert 'scheduler_job_duration_seconds_bucket{job_type="ok_job",le="21600.0"}' in text
    assert 'scheduler_job_lag_seconds_count{job_type="ok_job"}' in text
    assert "scheduler_is_leader 1.0" in text
    assert "scheduler_discovery_errors 1.0" in text
    assert 'scheduler_job_interval_seconds{job_type="ok_job"} 0.3' in text
    assert 'scheduler_job_enabled{job_type="slow_job"} 1.0' in text
    assert 'scheduler_job_next_run_timestamp_seconds{job_type="ok_job"}' in text
    assert 'scheduler_job_last_success_timestamp_seconds{job_type="slow_job"} 0.0' in text
    assert "scheduler_build_info{" in text
    assert "scheduler_event_loop_lag_seconds" in text
    assert "scheduler_heartbeat_timestamp_seconds" in text
    assert "_created" not in text
    for line in text.splitlines():
        if line.startswith('scheduler_job_runs_total{job_type="ok_job",outcome="success"}'):
            assert float(line.split()[-1]) >= 3


def test_a_taken_port_is_a_clear_error(services: ServiceFactory) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        service = services(SCHEDULER_HTTP_PORT=str(port))
        assert service.wait(30) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in service.log_text()
