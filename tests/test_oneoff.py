"""One-off and delayed runs with params, against the real service (a `scheduler run` subprocess)
on a SQLite file (the restart test on PostgreSQL too), and the pieces they are made of."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, func, select

from scheduler import BaseTask, JobContext, JobDefinitionError, RunnerResult, job
from scheduler.cli import cli, parse_at, parse_params, problem_text, trigger_summary
from scheduler.database import create_database_engine
from scheduler.errors import StaleLeadershipError
from scheduler.history import HistoryWriter, migrate
from scheduler.leadership import sole_term
from scheduler.metadata import JobMetadata
from scheduler.options import JobConfig
from scheduler.params import MAX_PARAMS_BYTES, ParamsError, ParamsTooLarge, encode_params
from scheduler.pending import PendingStore
from scheduler.records import RunRecord, StartRefusal, new_run_id
from scheduler.registry import JobRegistry
from scheduler.tables import pending_runs
from tests.support import ServiceFactory, ServiceProcess, run_cli, wait_until

TOKEN = "one-off-token"

TASKS = """
import asyncio, json, pathlib, time
from pydantic import BaseModel, Field
from scheduler import BaseTask, JobContext, RunnerResult, job

JOURNAL = pathlib.Path(__file__).resolve().parent.parent / "journal.jsonl"


class Greeting(BaseModel):
    name: str
    times: int = Field(1, ge=1)
    {extra_field}


def note(context: JobContext, **extra: object) -> None:
    scheduled = context.scheduled_time
    entry = {{
        "job": str(context.job_type), "run_id": context.run_id, "attempt": context.attempt,
        "params": dict(context.params), "at": time.time(),
        "scheduled": scheduled.isoformat() if scheduled else None, **extra,
    }}
    with JOURNAL.open("a", encoding="utf-8") as journal:
        journal.write(json.dumps(entry) + "\\n")


@job("note", interval_seconds=3600, enabled=False)
class Note(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        note(context)
        return [RunnerResult(success=True)]


@job("greet", enabled=False, params=Greeting, max_retries=2, retry_delay_seconds=0.05)
class Greet(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        greeting = context.params_as(Greeting)
        typed = isinstance(context.params_model, Greeting)
        note(context, greeting=greeting.model_dump(), typed=typed)
        return [RunnerResult(success=True)]


@job("slow_once", enabled=False)
class SlowOnce(BaseTask[RunnerResult]):
    # Hangs on its first run (until the test kills the service), then is quick.

    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        first = not JOURNAL.exists() or '"slow_once"' not in JOURNAL.read_text()
        note(context)
        if first:
            await asyncio.sleep(60)
        return [RunnerResult(success=True)]


@job("strict", enabled=False, misfire_grace_seconds=1)
class Strict(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        note(context)
        return [RunnerResult(success=True)]
"""


def write_tasks(services: ServiceFactory, extra_field: str = "") -> None:
    services.write_task("oneoff.py", TASKS.format(extra_field=extra_field))


def journal(services: ServiceFactory) -> list[dict[str, Any]]:
    path = services.workdir / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def entries(services: ServiceFactory, run_id: str) -> list[dict[str, Any]]:
    return [entry for entry in journal(services) if entry["run_id"] == run_id]


def wait_for_entry(services: ServiceFactory, run_id: str, timeout: float = 15) -> dict[str, Any]:
    found = wait_until(lambda: entries(services, run_id), timeout, what=f"run {run_id} in journal")
    return found[0]


def start(services: ServiceFactory) -> ServiceProcess:
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    service.wait_for_log("active: this instance runs the jobs")
    return service


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def schedule(
    service: ServiceProcess, job_type: str, at: datetime, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"at": at.isoformat()}
    if params is not None:
        body["params"] = params
    status, answer = service.post_json(f"/api/jobs/{job_type}/run", TOKEN, body)
    assert status == 202, answer
    assert answer["status"] == "scheduled" and answer["job_type"] == job_type
    assert datetime.fromisoformat(answer["at"]) == at
    return answer


def rows_of(services: ServiceFactory, run_id: str) -> list[RunRecord]:
    return [r for r in services.runs() if r.run_id == run_id]


def finished_rows(services: ServiceFactory, run_id: str) -> list[RunRecord]:
    return wait_until(
        lambda: (rows := rows_of(services, run_id)) and all(r.outcome != "running" for r in rows)
        and rows,
        what=f"run {run_id}'s rows, finished",
    )  # fmt: skip


# The real service


def test_a_delayed_run_fires_at_its_time_with_its_params(services: ServiceFactory) -> None:
    write_tasks(services)
    service = start(services)
    at = later(1.5)
    params = {"city": "Oslo", "count": 3, "nested": {"tags": ["a", "b"], "ok": True}}
    answer = schedule(service, "note", at, params)
    run_id = answer["run_id"]
    status, pending = service.get_json("/api/runs/scheduled")
    assert status == 200 and [(p["run_id"], p["params"]) for p in pending] == [(run_id, params)]
    assert not entries(services, run_id)  # not before its time

    entry = wait_for_entry(services, run_id)
    assert entry["params"] == params
    assert datetime.fromisoformat(entry["scheduled"]) == at
    assert entry["at"] >= at.timestamp() - 0.01  # it did not run early
    (row,) = finished_rows(services, run_id)
    assert (row.trigger, row.outcome, row.attempt) == ("manual", "success", 1)
    assert row.scheduled_at == at
    assert service.get_json("/api/runs/scheduled") == (200, [])
    status, page = service.get_json("/api/jobs/note/runs")
    assert page["runs"][0]["params"] == params and page["runs"][0]["trigger"] == "manual"


def test_params_are_checked_against_the_model_when_asked_for(services: ServiceFactory) -> None:
    write_tasks(services)
    service = start(services)
    status, answer = service.post_json(
        "/api/jobs/greet/run", TOKEN, {"at": later(60).isoformat(), "params": {"times": "many"}}
    )
    assert status == 422, answer
    problems = {tuple(item["loc"]): item["msg"] for item in answer["detail"]}
    assert problems == {
        ("body", "params", "name"): "Field required",
        ("body", "params", "times"): (
            "Input should be a valid integer, unable to parse string as an integer"
        ),
    }
    assert service.get_json("/api/runs/scheduled") == (200, [])  # nothing stored
    status, answer = service.post_json("/api/jobs/greet/run", TOKEN, {"params": {"times": 0}})
    assert status == 422 and answer["detail"][0]["loc"] == ["body", "params", "name"]
    assert service.post_json("/api/jobs/greet/run", TOKEN)[0] == 422  # no params: no name

    status, answer = service.post_json(
        "/api/jobs/greet/run", TOKEN, {"params": {"name": "Ada", "times": "2"}}
    )
    assert status == 200 and answer["status"] == "success", answer
    entry = wait_for_entry(services, answer["run_id"])
    assert entry["greeting"] == {"name": "Ada", "times": 2} and entry["typed"] is True
    assert entry["params"] == {"name": "Ada", "times": "2"}  # as given; the model converted

    def refused(body: Any) -> tuple[int, str]:
        status, answer = service.post_json("/api/jobs/note/run", TOKEN, body)
        return status, json.dumps(answer["detail"])

    naive = datetime.now() + timedelta(minutes=5)
    status, text = refused({"at": naive.isoformat()})
    assert status == 422 and "Input should have timezone info" in text
    status, text = refused({"at": later(400 * 86400).isoformat()})
    assert status == 422 and "at most 366 days ahead" in text
    status, text = refused({"params": {"blob": "x" * MAX_PARAMS_BYTES}})
    assert status == 413 and f"at most {MAX_PARAMS_BYTES}" in text
    assert refused({"params": [1, 2]})[0] == 422  # an object, not a list
    assert refused({"parms": {}})[0] == 422  # a typo is not ignored
    status, answer = service.post_json("/api/jobs/note/run", "wrong", {"params": {}})
    assert status == 401
    _, jobs = service.get_json("/api/jobs")
    schemas = {j["job_type"]: j["params_schema"] for j in jobs}
    assert schemas["note"] is None and schemas["greet"]["required"] == ["name"]


@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
def test_a_pending_run_survives_a_stop_and_runs_once(services: ServiceFactory, how: str) -> None:
    write_tasks(services)
    first = start(services)
    at = later(4)
    run_id = schedule(first, "note", at, {"n": 1})["run_id"]
    if how == "sigterm":
        assert first.stop() == 0
    else:
        first.kill()
    assert datetime.now(UTC) < at, "the service took too long to stop: test inconclusive"
    assert not entries(services, run_id)

    second = start(services)
    wait_for_entry(services, run_id)
    # A later run proves the service had every chance to run the first one again.
    marker = schedule(second, "note", later(0.5))["run_id"]
    wait_for_entry(services, marker)
    assert len(entries(services, run_id)) == 1
    (row,) = finished_rows(services, run_id)
    assert (row.outcome, row.trigger, row.scheduled_at) == ("success", "manual", at)
    assert not [r for r in services.runs() if r.outcome == "running"]
    assert second.get_json("/api/runs/scheduled") == (200, [])


def test_a_delayed_run_cut_off_by_a_crash_is_rerun_with_its_params(
    services: ServiceFactory,
) -> None:
    write_tasks(services)
    first = start(services)
    run_id = schedule(first, "slow_once", later(0.3), {"batch": 7})["run_id"]
    wait_for_entry(services, run_id)  # its body is going
    first.kill()
    start(services)
    rerun = wait_until(
        lambda: [e for e in journal(services) if e["job"] == "slow_once" and e["run_id"] != run_id],
        what="the recovery run",
    )
    assert [e["params"] for e in rerun] == [{"batch": 7}]
    (cut_off,) = finished_rows(services, run_id)
    assert (cut_off.outcome, cut_off.trigger) == ("interrupted", "manual")
    (again,) = finished_rows(services, rerun[0]["run_id"])
    assert (again.outcome, again.trigger, again.params) == ("success", "recovery", '{"batch":7}')


def test_a_pending_run_survives_a_restart_on_postgresql(
    postgres_services: ServiceFactory,
) -> None:
    services = postgres_services
    write_tasks(services)
    first = start(services)
    at = later(3)
    run_id = schedule(first, "note", at, {"db": "postgresql"})["run_id"]
    first.kill()
    second = start(services)
    assert wait_for_entry(services, run_id)["params"] == {"db": "postgresql"}
    marker = schedule(second, "note", later(0.3))["run_id"]
    wait_for_entry(services, marker)
    assert len(entries(services, run_id)) == 1
    (row,) = finished_rows(services, run_id)
    assert (row.outcome, row.scheduled_at) == ("success", at)


def test_a_cancelled_run_never_runs(services: ServiceFactory) -> None:
    write_tasks(services)
    service = start(services)
    doomed = schedule(service, "note", later(1.0))["run_id"]
    kept = schedule(service, "note", later(2.0))["run_id"]
    path = f"/api/runs/scheduled/{doomed}"
    assert service.request_json("DELETE", path)[0] == 401
    status, answer = service.request_json("DELETE", path, TOKEN)
    assert status == 200 and answer["status"] == "cancelled" and answer["run_id"] == doomed
    assert service.request_json("DELETE", path, TOKEN)[0] == 404
    _, pending = service.get_json("/api/runs/scheduled")
    assert [p["run_id"] for p in pending] == [kept]
    wait_for_entry(services, kept)
    assert not entries(services, doomed) and not rows_of(services, doomed)
    status, answer = service.request_json("DELETE", f"/api/runs/scheduled/{kept}", TOKEN)
    assert status == 409 and "started already" in answer["detail"]


def test_runs_due_while_the_service_was_down(services: ServiceFactory) -> None:
    """Stored before the start, as if the service had been down past their time."""
    write_tasks(services)
    engine = services.engine
    migrate(engine)
    now = datetime.now(UTC)
    overdue = insert_pending(engine, "note", now - timedelta(minutes=10), {"late": True})
    missed = insert_pending(engine, "strict", now - timedelta(seconds=30))  # grace: 1 s
    gone = insert_pending(engine, "vanished", now - timedelta(seconds=5))
    start(services)
    assert wait_for_entry(services, overdue)["params"] == {"late": True}
    (row,) = finished_rows(services, missed)
    assert (row.outcome, row.skip_reason, row.trigger) == ("skipped", "misfire", "manual")
    assert "past the job's 1s misfire grace" in (row.error or "")
    (row,) = finished_rows(services, gone)
    assert (row.outcome, row.skip_reason) == ("skipped", "not_loaded")
    assert not entries(services, missed)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(pending_runs)).scalar() == 0


def test_params_that_no_longer_validate_fail_without_retries(services: ServiceFactory) -> None:
    write_tasks(services)
    first = start(services)
    run_id = schedule(first, "greet", later(3), {"name": "Ada"})["run_id"]
    assert first.stop() == 0
    write_tasks(services, extra_field="surname: str")  # the model changed meanwhile
    start(services)
    (row,) = finished_rows(services, run_id)
    assert (row.outcome, row.attempt, row.dead_letter) == ("failure", 1, True)
    assert "params do not validate against Greeting (not retried)" in (row.error or "")
    assert "surname" in (row.error or "") and not entries(services, run_id)


def test_cli_trigger_at_with_params_and_history(services: ServiceFactory) -> None:
    write_tasks(services)
    service = start(services)
    env = {
        "SCHEDULER_HTTP_PORT": str(service.http_port),
        "SCHEDULER_ADMIN_TOKEN": TOKEN,
        "SCHEDULER_DATABASE_URL": services.database_url,
    }
    cwd = services.workdir
    triggered = run_cli(
        "trigger", "note", "--at", "+1s", "--params", '{"tags": ["x"], "n": 1}',
        "--param", "n=3", "--param", "city=Oslo", "--param", 'quoted="7"',
        cwd=cwd, env=env,
    )  # fmt: skip
    assert triggered.returncode == 0, triggered.stderr
    answer = json.loads(triggered.stdout)
    assert answer["status"] == "scheduled"
    assert f"scheduled: run {answer['run_id']} of note at " in triggered.stderr
    entry = wait_for_entry(services, answer["run_id"])
    assert entry["params"] == {"tags": ["x"], "n": 3, "city": "Oslo", "quoted": "7"}

    now = run_cli("trigger", "note", cwd=cwd, env=env)  # no options: run now, as before
    assert now.returncode == 0 and json.loads(now.stdout)["status"] == "success", now.stderr
    finished_rows(services, json.loads(now.stdout)["run_id"])
    rows = json.loads(run_cli("history", "note", "--json", cwd=cwd, env=env).stdout)
    (row,) = [row for row in rows if row["run_id"] == answer["run_id"]]
    assert (row["trigger"], row["outcome"], row["params"]) == ("manual", "success", entry["params"])
    assert datetime.fromisoformat(row["scheduled_at"]) == datetime.fromisoformat(entry["scheduled"])
    table = run_cli("history", "note", cwd=cwd, env=env).stdout.splitlines()
    assert len(table) == 3 and all(line.split()[5:7] == ["manual", "success"] for line in table[1:])

    rejected = run_cli("trigger", "greet", "--param", "times=x", cwd=cwd, env=env)
    assert rejected.returncode == 1
    assert "error: the service refused the request (422): params.name: Field required" in (
        rejected.stderr
    )


# The pieces


def insert_pending(
    engine: Engine, job_type: str, run_at: datetime, params: dict[str, Any] | None = None
) -> str:
    run_id = new_run_id()
    with engine.begin() as connection:
        connection.execute(
            pending_runs.insert().values(
                run_id=run_id,
                job_type=job_type,
                run_at=run_at,
                params=json.dumps(params) if params else None,
                created_at=datetime.now(UTC),
            )
        )
    return run_id


@pytest.fixture
def engine(database_url: str) -> Any:
    engine = create_database_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def start_row(run_id: str, **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "run_id": run_id,
        "attempt": 1,
        "job_type": "note",
        "trigger": "manual",
        "started_at": datetime.now(UTC),
        "instance": "test:1",
    }
    return RunRecord(**{**values, **fields})


def written(writer: HistoryWriter, record: RunRecord) -> StartRefusal | None:
    ticket = writer.write(record)
    assert writer.flush(10)
    return writer.refusal(ticket)


def pending_ids(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(select(pending_runs.c.run_id)).scalars())


def test_a_start_consumes_its_pending_row_in_its_own_transaction(engine: Engine) -> None:
    fence = sole_term(engine, "test")
    store = PendingStore(engine, fence)
    first = store.add("note", datetime.now(UTC), {"a": 1}).run_id
    skipped = store.add("note", datetime.now(UTC), {}).run_id
    writer = HistoryWriter(engine, fence)
    writer.claim_pending(first)
    assert written(writer, start_row(first)) is None
    assert first not in pending_ids(engine)
    writer.claim_pending(first)  # fired again (it must not be): its pending row is gone
    assert written(writer, start_row(first)) == StartRefusal.NOT_PENDING
    writer.claim_pending(skipped)
    assert written(writer, start_row(skipped, outcome="skipped", skip_reason="misfire")) is None
    assert pending_ids(engine) == set()
    # A deposed leader consumes nothing: the run is its successor's.
    third = store.add("note", datetime.now(UTC), {}).run_id
    sole_term(engine, "successor")
    writer.claim_pending(third)
    assert written(writer, start_row(third)) == StartRefusal.NOT_LEADER
    assert pending_ids(engine) == {third}
    writer.close()
    deposed = sole_term(engine, "deposed")
    sole_term(engine, "next")
    with pytest.raises(StaleLeadershipError, match="has ended"):
        PendingStore(engine, deposed).add("note", datetime.now(UTC), {})
    with pytest.raises(StaleLeadershipError, match="does not lead"):
        PendingStore(engine).cancel(third)
    assert pending_ids(engine) == {third}


def test_params_on_the_context_are_read_only_and_typed() -> None:
    class Point(BaseModel):
        x: int
        y: int = 0

    config = JobConfig()
    context = JobContext("job", config, "run", params={"x": "3"})
    assert context.params == {"x": "3"} and context.params_model is None
    with pytest.raises(TypeError):
        context.params["x"] = 4  # type: ignore[index]
    assert context.params_as(Point) == Point(x=3)
    model = Point(x=5)
    validated = context.with_params({"x": 5}, model)
    assert validated.params_as(Point) is model
    assert JobContext("job", config, "run").params == {}
    with pytest.raises(ValidationError):
        JobContext("job", config, "run").params_as(Point)


def test_the_params_option_of_job() -> None:
    class Settings(BaseModel):
        depth: int

    @job("with_params", params=Settings)
    class WithParams(BaseTask[RunnerResult]):
        async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
            return []

    meta = JobRegistry.get("with_params")
    assert meta.params_model is not None and meta.params_model.endswith("Settings")
    assert json.loads(meta.params_schema or "")["required"] == ["depth"]
    assert JobRegistry.get_params_model("with_params") is Settings
    assert JobMetadata.from_data(meta.as_data()) == meta
    with pytest.raises(JobDefinitionError, match="'params' must be a pydantic BaseModel"):

        @job("bad_params", params=dict)  # type: ignore[arg-type]
        class BadParams(BaseTask[RunnerResult]):
            async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
                return []


def test_params_must_be_plain_json_and_small() -> None:
    assert encode_params({"a": [1, 2.5, None, "é"]}) == '{"a":[1,2.5,null,"é"]}'
    with pytest.raises(ParamsError, match="plain JSON"):
        encode_params({"a": float("nan")})
    with pytest.raises(ParamsError, match="plain JSON"):
        encode_params({"a": "\udce9"})
    with pytest.raises(ParamsTooLarge):
        encode_params({"a": "x" * MAX_PARAMS_BYTES})


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--at", "tomorrow"], "neither an ISO 8601 time"),
        (["--at", "2030-01-01T10:00:00"], "has no UTC offset"),
        (["--params", "{oops"], "not JSON"),
        (["--params", "[1]"], "must be a JSON object"),
        (["--param", "novalue"], "is not KEY=VALUE"),
    ],
)
def test_cli_trigger_refuses_bad_options_with_exit_2(options: list[str], complaint: str) -> None:
    result = CliRunner().invoke(cli, ["trigger", "note", *options, "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and complaint in result.output, result.output


def test_cli_reads_at_and_params() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_at("+30s", now) == now + timedelta(seconds=30)
    assert parse_at("+1.5m", now) == now + timedelta(seconds=90)
    assert parse_at("+2h", now) == now + timedelta(hours=2)
    assert parse_at("+1d", now) == now + timedelta(days=1)
    assert parse_at("2026-05-01T14:00:00Z", now) == datetime(2026, 5, 1, 14, tzinfo=UTC)
    for bad in ("30s", "+5w", "2026-05-01T14:00:00", "soon"):
        with pytest.raises(click.BadParameter):
            parse_at(bad, now)
    assert parse_params(None, ()) is None
    assert parse_params("{}", ()) == {}
    assert parse_params('{"a": 1}', ["b=x", "c=1.5", "d=null", "e=[1]", "a=2", "f=a=b"]) == {
        "a": 2, "b": "x", "c": 1.5, "d": None, "e": [1], "f": "a=b",
    }  # fmt: skip
    problems = {"detail": [{"loc": ["body", "params", "n"], "msg": "Field required"}]}
    assert problem_text(problems) == "params.n: Field required"
    assert problem_text({"detail": "no job 'x'"}) == "no job 'x'"
    at = now + timedelta(minutes=5)
    summary = trigger_summary("job", 202, {"run_id": "r1", "at": at.isoformat()}, now)
    assert summary == "scheduled: run r1 of job at 2026-05-01 12:05:00 UTC (in 300s)"


def test_a_task_can_read_its_params_inline(tmp_path: Path) -> None:
    """The inline backend validates and hands over params as the worker does."""
    import asyncio

    from scheduler.backends import InlineBackend
    from scheduler.discovery import discover
    from scheduler.job_config import resolve_job_configs

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "oneoff.py").write_text(textwrap.dedent(TASKS.format(extra_field="")))
    discover(tasks)
    jobs = resolve_job_configs(JobRegistry.list_jobs(), {}).jobs
    backend = InlineBackend(1.0)
    greet = jobs["greet"]

    async def run(params: dict[str, Any]) -> Any:
        problem = await backend.validate_params(greet, params)
        context = JobContext("greet", greet.config, new_run_id(), params=params)
        return problem, await backend.execute(greet, context)

    problem, result = asyncio.run(run({"name": "Bo"}))
    assert problem is None and result.outcome == "success"
    (entry,) = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert entry["greeting"] == {"name": "Bo", "times": 1} and entry["typed"] is True
    problem, result = asyncio.run(run({}))
    assert problem is not None and problem.errors[0]["loc"] == ["name"]
    assert result.outcome == "failure" and not result.retryable


def test_the_readme_example_task_works(tmp_path: Path) -> None:
    import asyncio
    import re

    from scheduler.backends import InlineBackend
    from scheduler.discovery import discover
    from scheduler.job_config import resolve_job_configs
    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    (example,) = [
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "ExportParams" in b
    ]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "export_report.py").write_text(example, encoding="utf-8")
    assert discover(tasks).failures == ()
    job = resolve_job_configs(JobRegistry.list_jobs(), {}).jobs["export_report"]
    assert job.metadata.params_schema is not None and not job.config.enabled
    backend = InlineBackend(1.0)

    async def run(params: dict[str, Any]) -> Any:
        context = JobContext("export_report", job.config, new_run_id(), params=params)
        return await backend.validate_params(job, params), await backend.execute(job, context)

    problem, result = asyncio.run(run({"account": "acme", "days": "30"}))
    assert problem is None and (result.outcome, result.items_succeeded) == ("success", 1)
    problem, result = asyncio.run(run({"days": 0}))
    assert problem is not None and [e["loc"] for e in problem.errors] == [["account"], ["days"]]
    assert result.outcome == "failure" and "not retried" in (result.error or "")
