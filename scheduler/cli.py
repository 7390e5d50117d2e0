"""The `scheduler` command line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine

from .backends import InlineBackend
from .catalog import JobCatalog, load_catalog, requirement_warning
from .coordinator import NoHistory, RunCoordinator
from .database import create_database_engine, is_sqlite, normalize_url, redact, sqlite_path
from .errors import SchedulerError
from .event_loop import run_on_loop
from .history import RunHistory
from .job_state import JobStates
from .logs import configure_logging
from .masking import mask_secrets
from .presentation import (
    blocked_lines,
    catalog_as_json,
    check_as_json,
    first_cron_runs,
    jobs_table,
    override_lines,
    quarantine_lines,
    runs_as_json,
    runs_table,
    upcoming_runs,
)
from .records import Outcome, RunSummary, Trigger
from .service import SchedulerService
from .settings import ServiceSettings, load_settings
from .slots import PrioritySlots
from .status import jobs_overview
from .stored_jobs import StoredJobs, read_stored_jobs
from .views import RunOutcome

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def catalog_options(command: F) -> F:
    """The options every command that discovers tasks shares."""
    command = click.option(
        "--config-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="TOML file with [jobs.<job_type>] overrides  [env: SCHEDULER_CONFIG_FILE]",
    )(command)
    command = click.option(
        "--tasks-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Folder of task files  [env: SCHEDULER_TASKS_DIR; default: ./tasks]",
    )(command)
    return command


def verbose_option(command: F) -> F:
    return click.option(
        "--verbose", "-v", is_flag=True, help="Also log discovery and configuration details."
    )(command)


def _settings(**overrides: Any) -> ServiceSettings:
    try:
        return load_settings(**overrides)
    except SchedulerError as error:
        raise click.ClickException(str(error)) from None


def _quiet_catalog(tasks_dir: Path | None, config_file: Path | None, verbose: bool) -> JobCatalog:
    settings = _settings(tasks_dir=tasks_dir, config_file=config_file)
    # The report is the output; log lines would only repeat it, unless asked for.
    configure_logging("DEBUG" if verbose else "CRITICAL", "console")
    try:
        return load_catalog(settings, os.environ, isolated=True)  # task code stays in children
    except SchedulerError as error:
        raise click.ClickException(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskwarden", prog_name="scheduler")
def cli() -> None:
    """A persistent job scheduler: discovers @job tasks and runs them on their intervals."""


@cli.command()
@catalog_options
def run(tasks_dir: Path | None, config_file: Path | None) -> None:
    """Run the scheduler service until SIGTERM or SIGINT."""
    settings = _settings(tasks_dir=tasks_dir, config_file=config_file)
    configure_logging(settings.log_level, settings.log_format, cache=True)
    try:
        catalog = load_catalog(settings, os.environ)
        if catalog.problems:
            raise click.ClickException(
                "configuration is invalid:\n" + "\n".join(f"  - {p}" for p in catalog.problems)
            )
        run_on_loop(SchedulerService(settings, catalog).run(), settings.event_loop)
    except SchedulerError as error:
        raise click.ClickException(str(error)) from None


@cli.command()
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              show_default=True, help="Pool processes: attempts run at once.")  # fmt: skip
@click.option("--http-port", type=click.IntRange(1, 65535),
              help="Port of /metrics and /healthz  [env: SCHEDULER_WORKER_HTTP_PORT]")  # fmt: skip
@click.option("--name", help="Worker name (unique per worker)  [default: worker-<pid>@<host>]")
@click.option("--tasks-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of task files  [env: SCHEDULER_TASKS_DIR]")  # fmt: skip
def worker(
    concurrency: int, http_port: int | None, name: str | None, tasks_dir: Path | None
) -> None:
    """Run a Celery worker that executes the runs of an active scheduler started with
    SCHEDULER_EXECUTION=celery (same tasks folder, same SCHEDULER_CELERY_BROKER_URL)."""
    settings = _settings(tasks_dir=tasks_dir, worker_http_port=http_port)
    if not settings.celery_broker_url:
        raise click.ClickException("SCHEDULER_CELERY_BROKER_URL is not set (redis://host:6379/0)")
    configure_logging(settings.log_level, settings.log_format, cache=True)
    try:
        from .worker_node import default_name, run_worker  # celery is an optional extra
    except ImportError as error:
        raise click.ClickException(f"{error}: pip install 'taskwarden[celery]'") from None
    try:
        code = run_worker(settings, concurrency, settings.worker_http_port, name or default_name())
    except SchedulerError as error:
        raise click.ClickException(str(error)) from None
    sys.exit(code)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@catalog_options
@verbose_option
def list_command(
    tasks_dir: Path | None, config_file: Path | None, verbose: bool, as_json: bool
) -> None:
    """List discovered jobs, their effective settings and where overrides came from."""
    catalog = _quiet_catalog(tasks_dir, config_file, verbose)
    stored = _read_only(_settings(), read_stored_jobs, StoredJobs())
    # No requirement provider is asked (a slow one would hold up a look): `check` asks them.
    jobs = list(catalog.jobs.values())
    first = first_cron_runs(jobs, stored.next_runs)  # not stored yet: its expression's next match
    views = [
        view.model_copy(update={"next_run_time": first[view.job_type]})
        if view.job_type in first
        else view
        for view in jobs_overview(catalog, stored.states, stored.next_runs, {}, stored.quarantined)
    ]
    if as_json:
        click.echo(catalog_as_json(catalog, views))
    else:
        states = {view.job_type: view.state for view in views}
        click.echo(jobs_table(jobs, states, upcoming_runs(jobs, stored.next_runs)))
        blocked = catalog.blocked_by_dependencies()
        lines = [
            *override_lines(jobs),
            *blocked_lines(blocked),
            *quarantine_lines(stored.quarantined),
        ]
        for line in lines:
            click.echo(line)
        _report(catalog, verbose)
    if not catalog.ok:
        sys.exit(1)


@cli.command()
@catalog_options
@verbose_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(tasks_dir: Path | None, config_file: Path | None, verbose: bool, as_json: bool) -> None:
    """Validate task files and configuration; exit 1 if anything is wrong."""
    catalog = _quiet_catalog(tasks_dir, config_file, verbose)
    blocked = asyncio.run(catalog.blocked_by_requirements())
    if as_json:
        click.echo(check_as_json(catalog, blocked))
        sys.exit(0 if catalog.ok else 1)
    _report(catalog, verbose)
    for job_type, reasons in blocked.items():
        for why in reasons:
            click.echo(f"warning: {requirement_warning(job_type, why)}", err=True)
    if not catalog.ok:
        count = len(catalog.failures) + len(catalog.problems) + len(catalog.never_run())
        click.echo(f"check failed: {count} problem(s)", err=True)
        sys.exit(1)
    summary = f"ok: {len(catalog.jobs)} job(s) in {catalog.discovery.tasks_dir}"
    if blocked:  # not a failure (a requirement may become available later), but not hidden
        summary += f"; {len(blocked)} blocked by an unavailable requirement (see the warnings)"
    click.echo(summary)


@cli.command()
@click.argument("job_type", required=False)
@click.option("--limit", default=20, show_default=True, help="How many rows, newest first.")
@click.option("--dead-letter", is_flag=True, help="Only runs that failed after their last retry.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def history(job_type: str | None, limit: int, dead_letter: bool, as_json: bool) -> None:
    """Show the run history, newest first, optionally for one JOB_TYPE."""
    settings = _settings()
    configure_logging("WARNING", "console")
    url = normalize_url(settings.database_url)
    path = sqlite_path(url)
    if is_sqlite(url) and (path is None or not path.exists()):
        # A look creates nothing: run from elsewhere, it says so instead of making a database.
        raise click.ClickException(
            f"no run history here: {path.resolve() if path else url} does not exist (run from the "
            "service's folder, or set "
            "SCHEDULER_DATABASE_URL)"
        )
    engine = create_database_engine(settings.database_url)
    try:
        records = RunHistory(engine).recent(job_type, limit=limit, dead_letter_only=dead_letter)
    except Exception as error:  # unreachable, or no history table yet: nothing is created
        raise click.ClickException(
            f"the run history at {redact(settings.database_url)} cannot be read: "
            + mask_secrets(str(error).splitlines()[0])
        ) from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(runs_as_json(records))
    elif records:
        click.echo(runs_table(records))
    else:
        click.echo("no runs recorded" + (f" for {job_type}" if job_type else ""))


@cli.command("run-job")
@click.argument("job_type")
@catalog_options
@click.option(
    "--wait-retry-delays",
    is_flag=True,
    help="Wait the job's own retry delays between attempts  [default: retry at once]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def run_job(
    job_type: str,
    tasks_dir: Path | None,
    config_file: Path | None,
    wait_retry_delays: bool,
    as_json: bool,
) -> None:
    """Run JOB_TYPE once in the foreground, with its timeout and retries; exit 1 unless it
    succeeded. For development: no history is written and dependencies are not checked."""
    settings = _settings(tasks_dir=tasks_dir, config_file=config_file)
    configure_logging(settings.log_level, "console")
    catalog = load_catalog(settings, os.environ, isolated=False)  # it runs here, in the foreground
    if job_type not in catalog.jobs:
        known = ", ".join(catalog.jobs) or "(none)"
        raise click.ClickException(f"no job {job_type!r} in {settings.tasks_dir}; known: {known}")
    jobs = dict(catalog.jobs)
    if not wait_retry_delays:  # a developer waits for the outcome, not for a backoff
        job = jobs[job_type]
        config = job.config.model_copy(update={"retry_delay_seconds": 0.0})
        jobs[job_type] = dataclasses.replace(job, config=config)

    async def once() -> RunSummary:
        coordinator = RunCoordinator(
            jobs,
            history=NoHistory(),
            states=JobStates(),
            slots=PrioritySlots(1),
            backend=InlineBackend(settings.kill_grace_seconds),
            instance="run-job",
            check_dependencies=False,
        )
        return await coordinator.run(job_type, trigger=Trigger.MANUAL)

    summary = asyncio.run(once())
    if as_json:
        click.echo(RunOutcome.of(summary).model_dump_json(indent=2))
    else:
        click.echo(
            f"{job_type}: {summary.outcome} after {summary.attempts} attempt(s), items "
            f"{summary.items_succeeded} ok / {summary.items_failed} failed"
            + (f": {summary.error}" if summary.error else "")
        )
    if summary.outcome != Outcome.SUCCESS:
        sys.exit(1)


def _operator_command(action: str) -> click.Command:
    @click.command(action, help=OPERATOR_ACTIONS[action])
    @click.argument("job_type")
    @click.option("--url", help="The service's base URL  [default: from SCHEDULER_HTTP_HOST/PORT]")
    def command(job_type: str, url: str | None) -> None:
        settings = _settings()
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        base = url or service_url(settings)
        status, body = call_service(f"{base}/api/jobs/{job_type}/{action}", token)
        click.echo(json.dumps(body, indent=2))
        if status >= 400:
            sys.exit(1)

    return command


@cli.command("trigger")
@click.argument("job_type")
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Run later: an ISO 8601 time with its offset (2026-05-01T09:30:00+02:00, ...Z) or a "
    "delay from now (+30s, +5m, +2h, +1d). Default: now.",
)
@click.option(
    "--param",
    "param_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A param of the run (repeatable). VALUE is read as JSON if it is JSON (42, true, "
    '"text", [1,2]), else as a string.',
)
@click.option("--params", "params_json", metavar="JSON", help="The run's params as a JSON object.")
@click.option("--url", help="The service's base URL  [default: from SCHEDULER_HTTP_HOST/PORT]")
def trigger(
    job_type: str,
    at: str | None,
    param_pairs: tuple[str, ...],
    params_json: str | None,
    url: str | None,
) -> None:
    """Ask the running service to run JOB_TYPE now, or at --at, with params (needs
    SCHEDULER_ADMIN_TOKEN). Prints the service's answer as JSON on stdout and a summary on
    stderr. Exit 0: the run succeeded, or is still going, or is scheduled; 1: refused by the
    service, or it cannot be reached; 2: a bad option; 3: the run ended without succeeding
    (it failed, timed out, crashed, was cancelled, or was skipped: the answer says why)."""
    when = None if at is None else parse_at(at, datetime.now(UTC))
    params = parse_params(params_json, param_pairs)
    body: dict[str, Any] = {}
    if when is not None:
        body["at"] = when.isoformat()
    if params is not None:
        body["params"] = params
    settings = _settings()
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    base = url or service_url(settings)
    status, answer = call_service(f"{base}/api/jobs/{job_type}/run", token, body or None)
    click.echo(json.dumps(answer, indent=2))
    click.echo(trigger_summary(job_type, status, answer), err=True)
    if status >= 400:
        sys.exit(1)
    if answer.get("status") not in ("success", "started", "scheduled"):
        sys.exit(3)


_DELAY = re.compile(r"\+(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_at(text: str, now: datetime) -> datetime:
    """`--at`: an ISO 8601 time with an offset, or `+N` seconds/minutes/hours/days from now."""
    text = text.strip()
    delay = _DELAY.fullmatch(text)
    if delay is not None:
        return now + timedelta(**{_UNITS[delay.group(2)]: float(delay.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO 8601 time (2026-05-01T09:30:00+02:00) nor a delay "
            "(+30s, +5m, +2h, +1d)",
            param_hint="--at",
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(
            f"{text!r} has no UTC offset: add one (2026-05-01T09:30:00+02:00, or Z for UTC)",
            param_hint="--at",
        )
    return moment


def parse_params(params_json: str | None, pairs: Sequence[str]) -> dict[str, Any] | None:
    """`--params` (a JSON object), then each `--param KEY=VALUE` over it; None if neither."""
    if params_json is None and not pairs:
        return None
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            params = json.loads(params_json)
        except json.JSONDecodeError as error:
            raise click.BadParameter(f"not JSON: {error}", param_hint="--params") from None
        if not isinstance(params, dict):
            raise click.BadParameter(
                f"must be a JSON object ({{...}}), got {type(params).__name__}",
                param_hint="--params",
            )
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def trigger_summary(job_type: str, status: int, answer: Any, now: datetime | None = None) -> str:
    """One line for people: what the service did with the request, or why it refused it."""
    if status >= 400:
        return f"error: the service refused the request ({status}): {problem_text(answer)}"
    run_id = answer.get("run_id") if isinstance(answer, dict) else None
    if status == 202:
        at = datetime.fromisoformat(str(answer["at"])).astimezone(UTC)
        seconds = (at - (now or datetime.now(UTC))).total_seconds()
        when = f"{at:%Y-%m-%d %H:%M:%S} UTC (in {max(seconds, 0):.0f}s)"
        return f"scheduled: run {run_id} of {job_type} at {when}"
    outcome = answer.get("status") if isinstance(answer, dict) else None
    error = answer.get("error") if isinstance(answer, dict) else None
    return f"run {run_id} of {job_type}: {outcome}" + (f": {error}" if error else "")


def problem_text(answer: Any) -> str:
    """An error body made readable: FastAPI's lists of errors as `field: message` each."""
    detail = answer.get("detail") if isinstance(answer, dict) else answer
    if not isinstance(detail, list):
        return str(detail)
    lines = []
    for item in detail:
        if isinstance(item, dict):
            loc = [str(part) for part in item.get("loc", []) if part != "body"]
            lines.append(f"{'.'.join(loc) or 'request'}: {item.get('msg')}")
        else:
            lines.append(str(item))
    return "; ".join(lines)


OPERATOR_ACTIONS = {
    "pause": "Ask the running service to pause JOB_TYPE (needs SCHEDULER_ADMIN_TOKEN).",
    "resume": "Ask the running service to resume JOB_TYPE (needs SCHEDULER_ADMIN_TOKEN).",
}


def service_url(settings: ServiceSettings) -> str:
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    return f"http://{host}:{settings.http_port}"


def call_service(url: str, token: str, body: Any = None) -> tuple[int, Any]:
    """POST to the running service with the admin token (and `body` as JSON, if given);
    (status, decoded JSON body)."""
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, _json_or_text(error.read())
    except OSError as error:
        raise click.ClickException(f"cannot reach the scheduler at {url}: {error}") from None


def _json_or_text(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return {"detail": data.decode(errors="replace").strip()}


cli.add_command(_operator_command("pause"))
cli.add_command(_operator_command("resume"))

#: The shortest run-id prefix `cancel` accepts (as the API does).
MIN_RUN_ID_PREFIX = 8


@cli.command()
@click.argument("run_id", required=False)
@click.option("--job", "job_type", help="Cancel every run of this job type in progress.")
@click.option("--url", help="The service's base URL  [default: from SCHEDULER_HTTP_HOST/PORT]")
@click.option("--json", "as_json", is_flag=True, help="Print the service's JSON answer.")
def cancel(run_id: str | None, job_type: str | None, url: str | None, as_json: bool) -> None:
    """Ask the running service to cancel RUN_ID (its full id or a unique prefix of at least 8
    characters), or with --job every run of JOB_TYPE in progress (needs SCHEDULER_ADMIN_TOKEN).
    The attempt is recorded `cancelled` and not retried.

    Exits 0 when a run was cancelled, 1 when none was (no such run in progress, or the service
    refused), 2 on a usage error."""
    if (run_id is None) == (job_type is None):
        raise click.UsageError("give a RUN_ID or --job JOB_TYPE (one of the two)")
    if run_id is not None and len(run_id.strip()) < MIN_RUN_ID_PREFIX:
        raise click.UsageError(
            f"RUN_ID needs at least {MIN_RUN_ID_PREFIX} characters of the run id "
            "(`scheduler history` shows them whole)"
        )
    settings = _settings()
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    base = url or service_url(settings)
    if run_id is not None:
        path = f"/api/runs/{urllib.parse.quote(run_id.strip(), safe='')}/cancel"
    else:
        path = f"/api/jobs/{urllib.parse.quote(str(job_type), safe='')}/cancel"
    status, body = call_service(base + path, token)
    if as_json:
        click.echo(json.dumps(body, indent=2))
    if not _report_cancel(status, body, job_type, quiet=as_json):
        sys.exit(1)


def _report_cancel(status: int, body: Any, job_type: str | None, *, quiet: bool) -> bool:
    """Say what a cancel did (unless `quiet`); whether any run was cancelled."""
    if status >= 400:
        detail = body.get("detail") if isinstance(body, dict) else body
        if not quiet:
            click.echo(f"error: {_detail_text(detail)} (HTTP {status})", err=True)
        return False
    runs = body.get("cancelled", []) if job_type is not None else [body]
    if not runs:
        if not quiet:
            click.echo(f"no run of {job_type} is in progress", err=True)
        return False
    for run in [] if quiet else runs:
        ended = (
            "still stopping (its worker is killed if it does not stop within the kill grace)"
            if run["status"] == "cancelling"
            else f"ended {run['status']}"
        )
        click.echo(
            f"cancelled run {run['run_id']} of {run['job_type']} "
            f"(attempt {run['attempt']}): {ended}"
        )
    return True


def _detail_text(detail: Any) -> str:
    """FastAPI's `detail`: a message, or a list of validation problems."""
    if isinstance(detail, list):
        return "; ".join(str(item.get("msg", item)) for item in detail if isinstance(item, dict))
    return str(detail)


def _read_only(settings: ServiceSettings, read: Callable[[Engine], T], default: T) -> T:
    """What `read` finds in the database, or `default` where there is none yet or it cannot be
    read: a look that creates and migrates nothing."""
    url = normalize_url(settings.database_url)
    path = sqlite_path(url)
    if is_sqlite(url) and (path is None or not path.exists()):
        return default
    engine = create_database_engine(settings.database_url)
    try:
        return read(engine)
    except Exception:  # unreachable, or not migrated yet
        return default
    finally:
        engine.dispose()


def _report(catalog: JobCatalog, verbose: bool = False) -> None:
    for failure in catalog.failures:
        click.echo(f"error: task file {failure}", err=True)
        if verbose and failure.traceback:
            click.echo(failure.traceback.rstrip(), err=True)
    for problem in [*catalog.problems, *catalog.never_run()]:
        click.echo(f"error: {problem}", err=True)
    for warning in catalog.warnings:
        click.echo(f"warning: {warning}", err=True)


def main() -> None:
    cli()
