"""A real Prometheus scrapes the real service; every dashboard query and alert expression must
return data. Also checks the dashboard's structure and runs the alert rules' unit tests."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import signal
import subprocess
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.records import RunRecord
from tests.conftest import REPO_ROOT
from tests.support import (
    ServiceFactory,
    ServiceProcess,
    free_port,
    system_tool,
    task_source,
    wait_until,
)

DASHBOARD = REPO_ROOT / "grafana" / "dashboards" / "scheduler.json"
ALERTS = REPO_ROOT / "prometheus" / "alerts.yml"
ALERTMANAGER = REPO_ROOT / "prometheus" / "alertmanager.yml"
# Alerts this test drives into firing; the rest are checked on the signal they compare.
DRIVEN = {
    "SchedulerJobFailing",
    "SchedulerJobStale",
    "SchedulerTaskFilesFailing",
    "SchedulerJobQuarantined",
    "SchedulerJobNotLoaded",
    "SchedulerJobOverrunning",
}
AFTER_KILL = {"SchedulerDown", "SchedulerNoActiveInstance"}
# Alerts a single healthy service cannot fire: every series they read must have data.
SIGNAL_ONLY = {
    "SchedulerHeartbeatStale",
    "SchedulerTwoLeaders",
    "SchedulerDatabaseDown",
    "SchedulerHistoryWritesFailing",
}
TOKEN = "prometheus-test-token"
CELERY_SERIES = "scheduler_celery_"


def tool(name: str, package: str = "prometheus") -> str:
    return system_tool(name, package)


def test_the_alertmanager_config_is_valid() -> None:
    result = subprocess.run(
        [tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = yaml.safe_load(ALERTMANAGER.read_text())["receivers"]
    (webhook,) = [hook for receiver in receivers for hook in receiver["webhook_configs"]]
    assert webhook["url"].startswith("http://alert-receiver.invalid/")  # the placeholder
    prometheus = yaml.safe_load((ALERTS.parent / "prometheus.yml").read_text())
    (alertmanagers,) = prometheus["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def concrete(expr: str) -> str:
    """The query Grafana would send: template variables filled in."""
    return expr.replace("$job_type", ".*").replace("$__rate_interval", "15s")


def test_dashboard_structure() -> None:
    text = DASHBOARD.read_text()
    assert "${DS_" not in text  # file provisioning cannot resolve import placeholders
    dashboard = json.loads(text)
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job_type"]["includeAll"] and variables["job_type"]["multi"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("outcome", "failure ratio", "p50", "p95", "p99", "lag", "retries", "skipped",
                  "in progress", "last success", "next run", "leader", "heartbeat",
                  "skipped runs per second by job", "overrunning", "history writer",
                  "does not import"):  # fmt: skip
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            if "rate(" in target["expr"]:
                assert "[$__rate_interval]" in target["expr"], target["expr"]
            assert "$job_type" in target["expr"] or "scheduler_job_" not in target["expr"]


def test_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load(
        (REPO_ROOT / "grafana/provisioning/dashboards/scheduler.yaml").read_text()
    )
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load(
        (REPO_ROOT / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert datasource["datasources"][0]["type"] == "prometheus"


def test_alert_rules_pass_their_unit_tests() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts.test.yml"],
        cwd=ALERTS.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    names = {rule["alert"] for rule in alert_rules()}
    assert names == DRIVEN | AFTER_KILL | SIGNAL_ONLY


class Prometheus:
    def __init__(
        self, workdir: Path, target: str, alertmanager: str | None = None, rules: Path = ALERTS
    ) -> None:
        self.port = free_port()
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "scheduler", "static_configs": [{"targets": [target]}]}
            ],
        }
        if alertmanager is not None:
            targets = [{"static_configs": [{"targets": [alertmanager]}]}]
            config["alerting"] = {"alertmanagers": targets}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = tool("prometheus")  # before the log is opened: it may skip the test
        self.log = open(workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                binary, f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                # Alertmanagers are known some seconds after the start: resend soon, not in 1m.
                "--rules.alert.resend-delay=1s",
            ],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip

    def query(self, expr: str) -> list[Any]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target: str, **options: Any) -> Prometheus:
        prometheus = Prometheus(tmp_path, target, **options)
        started.append(prometheus)
        wait_until(prometheus.ready, timeout=30, what="Prometheus to be ready")
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()


class Webhook(http.server.ThreadingHTTPServer):
    """A webhook receiver: keeps the alerts Alertmanager posts."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                webhook.alerts.extend(json.loads(body)["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_a_firing_alert_reaches_the_webhook_through_a_real_alertmanager(
    tmp_path: Path, prometheus_for: Any
) -> None:
    """The shipped Alertmanager configuration, its webhook URL pointed at a local receiver and
    its grouping wait shortened, behind a real Prometheus whose one rule always fires."""
    name = "prometheus-alertmanager" if shutil.which("prometheus-alertmanager") else "alertmanager"
    binary = tool(name, "prometheus-alertmanager")
    webhook = Webhook()
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["route"].update(group_wait="0s", group_interval="1s")
    config["receivers"][0]["webhook_configs"][0]["url"] = (
        f"http://127.0.0.1:{webhook.server_address[1]}/hook"
    )
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    rule = {
        "alert": "SchedulerDatabaseDown",
        "expr": "vector(1)",
        "labels": {"severity": "critical"},
    }
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "always", "rules": [rule]}]}))
    port = free_port()
    with open(tmp_path / "alertmanager.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary, f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=", "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        prometheus_for("127.0.0.1:1", alertmanager=f"127.0.0.1:{port}", rules=rules)
        (alert, *_) = wait_until(lambda: webhook.alerts, timeout=30, what="the webhook call")
        assert alert["status"] == "firing"
        assert alert["labels"]["alertname"] == "SchedulerDatabaseDown"
    finally:
        process.terminate()
        process.wait(10)
        webhook.shutdown()
        webhook.server_close()


def test_every_panel_and_alert_returns_data_from_a_real_prometheus(
    services: ServiceFactory, prometheus_for: Any
) -> None:
    mixed = "return [RunnerResult(success=True), RunnerResult(success=False)]"
    services.write_task("fine.py", task_source("fine", mixed, interval_seconds=0.5))
    services.write_task(
        "flaky.py",
        task_source("flaky", "raise RuntimeError('down')", interval_seconds=1, max_retries=1,
                    retry_delay_seconds=0.1),
    )  # fmt: skip
    services.write_task(
        "sleepy.py",
        task_source("sleepy", "await asyncio.sleep(5)", interval_seconds=0.5, timeout_seconds=0.3,
                    idempotent=False),
    )  # fmt: skip
    services.write_task(
        "blocked.py", task_source("blocked", "return []", interval_seconds=0.5, requires_moon=True)
    )
    services.write_task("broken.py", "def (:\n")
    services.write_task(  # ends its worker at every run: quarantined after three
        "doomed.py", task_source("doomed", "os._exit(7)", interval_seconds=0.5, max_retries=0)
    )
    services.write_task(  # one run that outlasts its interval
        "overrun.py",
        task_source("overrun", "await asyncio.sleep(300)", interval_seconds=1,
                    timeout_seconds=600, idempotent=False),
    )  # fmt: skip
    services.write_task("fragile.py", task_source("fragile", "return []", interval_seconds=3600))
    # Every skip gets its own history row (no summaries): the test counts them against the metric.
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN, SCHEDULER_SKIP_SUMMARY_SECONDS="0")
    services.wait_for_runs("fragile", 1)
    services.write_task("fragile.py", "def (:\n")  # a bad deploy: stored, no longer loaded
    service.signal(signal.SIGHUP)
    service.wait_for_log("task files reloaded")
    prometheus = prometheus_for(f"127.0.0.1:{service.http_port}")
    wait_until(
        lambda: prometheus.query('up{job="scheduler"} == 1'), timeout=30, what="first scrape"
    )
    wait_until(
        lambda: prometheus.query(concrete(
            'sum(increase(scheduler_job_runs_total{outcome="failure"}[1m])) >= 3'
        )),
        timeout=40, what="three failures to be scraped",
    )  # fmt: skip

    empty = [
        (title, expr)
        for title, expr in dashboard_queries()
        if CELERY_SERIES not in expr and not prometheus.query(concrete(expr))
    ]  # the Celery panels have data with SCHEDULER_EXECUTION=celery: see tests/test_celery.py
    assert empty == [], empty

    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    for name in DRIVEN:
        assert wait_until(lambda n=name: prometheus.query(rules[n]), timeout=20, what=name)
    for name in SIGNAL_ONLY:
        for series in set(re.findall(r"\bscheduler_[a-z_]+", rules[name])):
            assert prometheus.query(series), (name, series)

    the_values_match_the_run_history(services, service, prometheus)

    service.kill()
    for name in AFTER_KILL:
        assert wait_until(lambda n=name: prometheus.query(rules[n]), timeout=20, what=name)


Key = tuple[str, ...]
Figures = dict[str, dict[Key, float]]
FINAL = ("success", "failure", "timeout", "interrupted", "crashed", "cancelled")


def history_figures(rows: list[RunRecord]) -> Figures:
    """What the metrics must say, counted from the run history (zeros left out)."""
    last_attempts: dict[str, RunRecord] = {}  # a run ended if its latest attempt did
    for row in rows:
        if row.attempt >= getattr(last_attempts.get(row.run_id), "attempt", 0):
            last_attempts[row.run_id] = row
    ended = [r for r in last_attempts.values() if r.outcome in FINAL]
    successes: dict[Key, float] = {}
    for row in rows:
        if row.outcome == "success" and row.finished_at is not None:
            key = (row.job_type,)
            successes[key] = max(row.finished_at.timestamp(), successes.get(key, 0.0))
    return {
        "runs": dict(Counter((r.job_type, r.outcome) for r in ended)),
        "attempts": dict(Counter((r.job_type, r.outcome) for r in rows if r.outcome in FINAL)),
        "skips": dict(
            Counter((r.job_type, str(r.skip_reason)) for r in rows if r.outcome == "skipped")
        ),
        "running": dict(Counter((r.job_type,) for r in rows if r.outcome == "running")),
        "last_success": successes,
    }


def scraped_figures(prometheus: Prometheus) -> Figures:
    """The same figures, as Prometheus holds them now (zeros left out)."""

    def values(metric: str, *labels: str) -> dict[Key, float]:
        return {
            tuple(s["metric"][label] for label in labels): float(s["value"][1])
            for s in prometheus.query(metric)
            if float(s["value"][1])
        }

    return {
        "runs": values("scheduler_job_runs_total", "job_type", "outcome"),
        "attempts": values("scheduler_job_attempts_total", "job_type", "outcome"),
        "skips": values("scheduler_job_skipped_total", "job_type", "reason"),
        "running": values("scheduler_job_in_progress", "job_type"),
        "last_success": values("scheduler_job_last_success_timestamp_seconds", "job_type"),
    }


def same_figures(want: Figures, got: Figures) -> bool:
    """Counts equal; last successes within a second (the gauge is set as the row is closed)."""
    want, got = dict(want), dict(got)
    last_want, last_got = want.pop("last_success"), got.pop("last_success")
    close = last_want.keys() == last_got.keys() and all(
        abs(last_want[key] - last_got[key]) < 1.0 for key in last_want
    )
    return close and want == got


def the_values_match_the_run_history(
    services: ServiceFactory, service: ServiceProcess, prometheus: Prometheus
) -> None:
    """Quiet every job (paused; the long run goes on), then what Prometheus holds must equal
    what the run history says: runs by final outcome, attempts, skips, last successes and runs
    in progress."""
    for job_type in ("fine", "flaky", "sleepy", "blocked", "overrun", "fragile"):
        assert service.post_json(f"/api/jobs/{job_type}/pause", TOKEN)[0] == 200, job_type

    def only_the_long_run() -> bool:
        runs = service.get_json("/api/runs/in-progress")[1]
        return [run["job_type"] for run in runs] == ["overrun"]

    wait_until(only_the_long_run, what="every run but the long one to end")

    def matches() -> bool:
        return same_figures(history_figures(services.runs()), scraped_figures(prometheus))

    try:
        wait_until(matches, timeout=15, interval=0.5, what="the scraped values to match")
    except AssertionError:
        assert scraped_figures(prometheus) == history_figures(services.runs())  # the difference
        raise
    want = history_figures(services.runs())
    assert want["runs"] and want["attempts"] and want["skips"] and want["last_success"]
    assert want["running"] == {("overrun",): 1}
