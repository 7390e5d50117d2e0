"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis) against the real service:
no server errors, responses that match the schema, and no write without the token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from scheduler.records import Outcome
from scheduler.views import JobStateName
from tests.support import ServiceFactory, task_source

TOKEN = "fuzz-token-0123456789"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    workdir = tmp_path_factory.mktemp("fuzz")
    tasks = workdir / "tasks"
    tasks.mkdir()
    factory = ServiceFactory(workdir, f"sqlite:///{workdir}/db/s.db", tasks)
    factory.write_task("tick.py", task_source("tick", "return []", interval_seconds=0.5))
    service = factory(SCHEDULER_ADMIN_TOKEN=TOKEN)
    service.wait_for_log("Resumed scheduler job processing")
    factory.wait_for_runs("tick", 1)
    try:
        yield schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")
    finally:
        factory.close()


def test_api_never_fails_and_never_writes_without_the_token(api_schema: Any) -> None:
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, response.text)
            if case.method.upper() == "POST":  # no token, or a wrong one: never a write
                assert response.status_code == 401, (case.formatted_path, response.text)
            case.validate_response(response)
            # The same request by an operator with the token: still never a server error.
            authorized = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            assert authorized.status_code < 500, (case.formatted_path, authorized.text)

        fuzz()


def test_fuzzing_can_see_the_write_endpoints(api_schema: Any) -> None:
    operations = {
        f"{result.ok().method.upper()} {result.ok().path}"
        for result in api_schema.get_all_operations()
    }
    assert {
        "POST /api/jobs/{job_type}/run",
        "POST /api/jobs/{job_type}/pause",
        "POST /api/jobs/{job_type}/resume",
        "GET /api/jobs/{job_type}/runs",
    } <= operations


def test_every_api_answer_has_a_typed_schema(api_schema: Any) -> None:
    """Fuzzing validates answers against the schema, so an untyped answer would pass anything."""
    raw = api_schema.raw_schema
    untyped = []
    for path, item in raw["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if not path.startswith("/api/") or not code.startswith("2"):
                    continue
                schema = response["content"]["application/json"]["schema"]
                refs = [schema, schema.get("items", {}), *schema.get("anyOf", [])]
                if not any("$ref" in s for s in refs):
                    untyped.append(f"{method.upper()} {path} {code}: {schema}")
    assert untyped == []
    job = raw["components"]["schemas"]["JobView"]["properties"]
    assert set(job["state"]["enum"]) == set(get_args(JobStateName))
    run = raw["components"]["schemas"]["RunView"]["properties"]
    assert set(run["outcome"]["enum"]) == {str(o) for o in Outcome}
