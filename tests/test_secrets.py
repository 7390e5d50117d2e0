"""No secret reaches a log line, a response, a page or a metric: known secrets are planted in
every path a task can put them on, and every output of the real service is searched for them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scheduler.masking import mask_secrets, register_secret
from tests.support import ServiceFactory, run_cli, task_source

PROVIDED = "tok-PROVIDED-SECRET-42"
LOCAL = "LOCAL-FRAME-SECRET-77"
URL_PASSWORD = "URL-SECRET-PASS-13"
HEADER = "HEADER-SECRET-TOKEN-9"
KEY_VALUE = "KV-SECRET-KEY-5"
DB_PASSWORD = "PG-URL-SECRET-31"
PLANTED = (PROVIDED, LOCAL, URL_PASSWORD, HEADER, KEY_VALUE, DB_PASSWORD)

PROVIDER = f"""
    @requirement("vault")
    def vault_token() -> str:
        return {PROVIDED!r}
"""
USES_TOKEN = "raise RuntimeError(f\"the API refused {context.resources['vault']}\")"
# A local whose name says nothing: only dropping frame locals keeps it out of tracebacks.
HOLDS_A_LOCAL = f"dsn = {LOCAL!r}\nraise RuntimeError('boom: ' + str(len(dsn)))"
SAYS_TOO_MUCH = (
    f'raise RuntimeError("connect to postgresql://app:{URL_PASSWORD}@db/x failed; '
    f"headers={{'Authorization': 'Bearer {HEADER}'}}; api_key={KEY_VALUE}\")"
)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql+psycopg://u:pw-123@h:5432/d down", "postgresql+psycopg://u:***@h:5432/d down"),
        ("headers={'Authorization': 'Bearer abc.def-123'}", "headers={'Authorization': '***'}"),
        ('{"api_key": "k-123456", "user": "bob"}', '{"api_key": "***", "user": "bob"}'),
        (
            "password=hunter2 DB_PASSWORD: x1 secret_key=abc",
            "password=*** DB_PASSWORD: *** secret_key=***",
        ),
        ("curl -H 'Authorization: Basic dXNlcjpwYXNz'", "curl -H 'Authorization: ***'"),
        ("sent Bearer eyJhbGciOi.payload.sig", "sent Bearer ***"),
        ("no token in /tmp/x/token", "no token in /tmp/x/token"),
        ("max_tokens: 5, tokenizer=x", "max_tokens: 5, tokenizer=x"),
        ("RuntimeError: no way", "RuntimeError: no way"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_registered_values_are_masked_anywhere() -> None:
    register_secret("short")  # too short to mask: it would mask words
    register_secret("a-handed-over-token-0")
    assert mask_secrets("got a-handed-over-token-0, short") == "got ***, short"


def test_no_planted_secret_reaches_any_output(
    postgres_services: ServiceFactory, tmp_path: Path
) -> None:
    services = postgres_services
    url = services.database_url.replace("://postgres@", f"://postgres:{DB_PASSWORD}@")
    assert DB_PASSWORD in url  # trust auth: any password is accepted
    services.database_url = url
    services.write_task(
        "leaky.py",
        task_source("leaky", USES_TOKEN, header=PROVIDER, interval_seconds=3600,
                    requires_vault=True, max_retries=0),
    )  # fmt: skip
    services.write_task(
        "local.py", task_source("local", HOLDS_A_LOCAL, interval_seconds=3600, max_retries=0)
    )
    services.write_task(
        "chatty.py", task_source("chatty", SAYS_TOO_MUCH, interval_seconds=3600, max_retries=0)
    )
    service = services(SCHEDULER_LOG_LEVEL="DEBUG")
    for job_type in ("leaky", "local", "chatty"):
        services.wait_for_runs(job_type, 1, outcome="failure")
    outputs = {"log": service.log_text()}
    for path in ("/", "/api/jobs", "/metrics", "/api/workers", "/healthz"):
        outputs[path] = service.get(path)[1].decode()
    for job_type in ("leaky", "local", "chatty"):
        for path in (f"/api/jobs/{job_type}/runs", f"/jobs/{job_type}"):
            outputs[path] = service.get(path)[1].decode()
        for row in services.runs(job_type):  # the run page shows its traceback
            outputs[f"/runs/{row.run_id}"] = service.get(f"/runs/{row.run_id}")[1].decode()
    assert service.stop() == 0
    outputs["log"] = service.log_text()  # the shutdown's lines too
    env = {"SCHEDULER_DATABASE_URL": url}
    for command in (["history"], ["history", "--json"], ["list", "--json"], ["check", "-v"]):
        args = (
            [*command, "--tasks-dir", str(services.tasks_dir)]
            if command[0] != "history"
            else command
        )
        result = run_cli(*args, cwd=services.workdir, env=env)
        outputs[" ".join(command)] = result.stdout + result.stderr

    for name, text in outputs.items():
        found = [secret for secret in PLANTED if secret in text]
        assert not found, f"{found} in {name}: ...{_around(text, found[0])}..."
    runs = outputs["/api/jobs/chatty/runs"]
    assert "postgresql://app:***@db/x" in runs and "'Authorization': '***'" in runs
    assert "api_key=***" in runs
    assert "the API refused ***" in outputs["/api/jobs/leaky/runs"]
    assert "RuntimeError: boom" in outputs["log"]  # the traceback is logged, its locals not
    (local_run,) = services.runs("local")
    traceback = json.loads(outputs["/api/jobs/local/runs"])["runs"][0]["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")  # stored, and shown
    assert traceback.rstrip().splitlines()[-1] == local_run.error  # "RuntimeError: boom: 40"
    assert "Traceback (most recent call last)" in outputs[f"/runs/{local_run.run_id}"]


def _around(text: str, secret: str) -> str:
    at = text.index(secret)
    return re.sub(r"\s+", " ", text[max(0, at - 150) : at + 50])
